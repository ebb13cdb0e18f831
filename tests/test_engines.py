"""Engine build logic that needs no TensorRT: profiles, manifests and their mismatch messages, the precision
policy as the builder applies it, cache keys, atomic writes, and the missing-TensorRT error (the real import
failure of this environment, not a stand-in)."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from cascade_trt.artifacts import engine_path, file_record, manifest_path, read_manifest
from cascade_trt.configs import FULL, LITE, TINY
from cascade_trt.engines.availability import tensorrt_version
from cascade_trt.engines.builder import BuildOptions, plan_builds, write_engine
from cascade_trt.engines.manifest import (
    Target,
    cache_key,
    check_engine,
    engine_manifest,
    io_precision,
    mismatches,
    rebuild_command,
)
from cascade_trt.engines.onnx_stage import GUIDED, policy_config, read_onnx_stage
from cascade_trt.engines.profiles import BuildShapes, check_request, profiles_to_json, size_flags
from cascade_trt.errors import ArtifactMismatchError, BackendUnavailableError, ConfigError, ShapeError
from cascade_trt.stages import BatchRange, SizeRange, stage_specs

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
SHAPES = BuildShapes(SizeRange.square(512, 1024, 1536), BatchRange(1, 1, 4))
H100 = Target("10.8.0.43", "NVIDIA H100 80GB HBM3", "9.0")


# --- profiles ----------------------------------------------------------------------------------------------


def test_guided_stage_profile_doubles_the_batch_and_follows_the_latent_arithmetic() -> None:
    spec = stage_specs(FULL)["stage_c"]
    profiles = SHAPES.profiles(spec)
    sample = profiles["sample"]
    # Stage C latent: 3 cells per 128 px -> 12 at 512, 24 at 1024, 36 at 1536; batch 1 .. 4 images x 2.
    assert sample.min == (1, 16, 12, 12) and sample.opt == (2, 16, 24, 24) and sample.max == (8, 16, 36, 36)
    assert profiles["clip_text"].max == (8, 77, 1280)
    unguided = BuildShapes(SHAPES.sizes, SHAPES.batches, guidance=False).profiles(spec)
    assert unguided["sample"].max == (4, 16, 36, 36)


def test_unguided_stage_a_keeps_the_image_batch() -> None:
    spec = stage_specs(FULL)["stage_a"]
    latents = SHAPES.profiles(spec)["latents"]
    assert latents.min == (1, 4, 128, 128) and latents.max == (4, 4, 384, 384)


def test_static_profile_has_one_shape() -> None:
    shapes = BuildShapes(SizeRange.static(1024, 768), BatchRange(2, 2, 2))
    p = shapes.profiles(stage_specs(FULL)["stage_b"])["sample"]
    assert p.min[1:] == p.opt[1:] == p.max[1:] == (4, 256, 192)
    assert size_flags(shapes.sizes) == "--static 1024x768"


def test_build_shapes_round_trip_through_json() -> None:
    shapes = BuildShapes(SizeRange(512, 768, 1024, 256, 1024, 2048), BatchRange(1, 2, 3), guidance=False)
    assert BuildShapes.from_json(json.loads(json.dumps(shapes.to_json()))) == shapes


@pytest.mark.parametrize(
    ("batch", "height", "width", "message"),
    [
        (2, 1792, 1024, "built for 512-1536 px, asked 1792x1024: rebuild it with --max-size 1792"),
        (2, 384, 1024, "asked 384x1024: rebuild it with --min-size 384"),
        (
            10,
            1024,
            1024,
            r"batch of 1-8 \(4 images x 2 for guidance\), asked 10: rebuild it with --max-batch 5",
        ),
    ],
)
def test_request_outside_the_engine_names_the_flag(batch: int, height: int, width: int, message: str) -> None:
    spec = stage_specs(FULL)["stage_c"]
    check_request(spec, SHAPES, 8, 1536, 1536, engine="stage_c.plan")  # the corners are inside
    check_request(spec, SHAPES, 1, 512, 512, engine="stage_c.plan")
    with pytest.raises(ShapeError, match=message):
        check_request(spec, SHAPES, batch, height, width, engine="stage_c.plan")


def test_image_prompts_are_an_axis_of_stage_c_profiles_and_requests() -> None:
    """Stage C's clip_img axis (one per image prompt) has its own min/opt/max; engines built before it existed
    read back as 1 image prompt, which serves text and single-image variations."""
    spec = stage_specs(FULL)["stage_c"]
    shapes = BuildShapes(SHAPES.sizes, SHAPES.batches, image_prompts=(1, 1, 3))
    clip_img = shapes.profiles(spec)["clip_img"]
    assert (clip_img.min, clip_img.opt, clip_img.max) == ((1, 1, 768), (2, 1, 768), (8, 3, 768))
    assert shapes.profiles(spec)["sample"] == SHAPES.profiles(spec)["sample"]
    check_request(spec, shapes, 2, 1024, 1024, engine="stage_c.plan", image_prompts=3)
    with pytest.raises(
        ShapeError, match="takes 1-3 image prompts, asked 4: rebuild it with --max-image-prompts 4"
    ):
        check_request(spec, shapes, 2, 1024, 1024, engine="stage_c.plan", image_prompts=4)
    check_request(stage_specs(FULL)["stage_b"], SHAPES, 2, 1024, 1024, engine="stage_b.plan", image_prompts=4)
    old = {key: value for key, value in shapes.to_json().items() if key != "image_prompts"}
    assert BuildShapes.from_json(old).image_prompts == (1, 1, 1)
    assert BuildShapes.from_json(json.loads(json.dumps(shapes.to_json()))) == shapes
    with pytest.raises(ShapeError, match="image prompts must satisfy 1 <= min <= opt <= max"):
        BuildShapes(SHAPES.sizes, SHAPES.batches, image_prompts=(2, 1, 3))


def test_text_encoder_profile_is_the_image_batch_whatever_the_guidance() -> None:
    """The pipeline encodes prompts and negatives in two calls of at most `--max-batch` rows each, so the text
    encoder's engine is not doubled for guidance (and does not depend on the image size)."""
    spec = stage_specs(TINY)["text_encoder"]
    assert not spec.guided
    check_request(spec, SHAPES, 4, 128, 128, engine="text_encoder.plan")
    assert SHAPES.profiles(spec)["input_ids"].max == (4, TINY.text_seq_len)
    assert SHAPES.profiles(spec) == BuildShapes(SHAPES.sizes, SHAPES.batches, guidance=False).profiles(spec)
    with pytest.raises(ShapeError, match=r"takes a batch of 1-4, asked 8: rebuild it with --max-batch 8"):
        check_request(spec, SHAPES, 8, 128, 128, engine="text_encoder.plan")


def test_the_pipeline_runs_the_text_encoder_at_the_prompt_batch_under_guidance() -> None:
    """What the unguided profile relies on: under guidance the text encoder runs twice (prompts, then
    negatives), each time at the prompt count, and the pipeline's shape check asks for that batch too."""
    from cascade_trt import CascadePipeline
    from cascade_trt.random_weights import random_components

    pipe = CascadePipeline.from_components(random_components(TINY), backend="torch", precision="fp32")
    runner = pipe.runners["text_encoder"]
    run, checked = [], []
    execute, check_shape = runner.execute, runner.check_shape
    runner.execute = lambda bindings: (run.append(bindings.batch), execute(bindings))[1]
    runner.check_shape = lambda batch, h, w, **extents: (
        checked.append(batch),
        check_shape(batch, h, w, **extents),
    )[1]
    emb = pipe.encode_prompt(["a cat", "a dog"], ["", "blurry"], num_images_per_prompt=3, guidance=True)
    assert run == [2, 2] and emb.negative_clip_text.shape[0] == 6
    checked.clear()
    pipe.check_inputs(["a cat", "a dog"], height=256, width=256, num_images_per_prompt=3)
    assert checked == [2]


# --- manifests ---------------------------------------------------------------------------------------------


def _manifest(**overrides) -> dict:
    args = dict(
        stage="stage_c",
        precision="bf16",
        onnx={"onnx": "a" * 64, "external_data": "b" * 64},
        shapes=SHAPES,
        profiles=profiles_to_json(SHAPES.profiles(stage_specs(FULL)["stage_c"])),
        flags=BuildOptions(SHAPES).flags(),
        passes=("align_conv_transpose", "cast_around_resize"),
        target=H100,
        onnx_dir="onnx",
    )
    args.update(overrides)
    return engine_manifest(**args)


def test_manifest_round_trips_and_matches_itself() -> None:
    manifest = json.loads(json.dumps(_manifest()))
    assert (
        mismatches(
            manifest, target=H100, precision="bf16", onnx={"onnx": "a" * 64, "external_data": "b" * 64}
        )
        == []
    )
    assert BuildShapes.from_json(manifest["shapes"]) == SHAPES
    assert manifest["target"] == {
        "tensorrt": "10.8.0.43",
        "gpu": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
    }


def test_mismatch_message_says_what_differs_and_how_to_rebuild() -> None:
    manifest = _manifest()
    other = Target("10.9.0.34", "NVIDIA A100-SXM4-80GB", "8.0")
    with pytest.raises(ArtifactMismatchError) as info:
        check_engine(
            manifest, "engines/stage_c.plan", target=other, precision="fp16", onnx={"onnx": "c" * 64}
        )
    text = str(info.value)
    assert "built with TensorRT 10.8.0.43, this is TensorRT 10.9.0.34" in text
    assert "compute capability 9.0" in text and "compute capability 8.0" in text
    assert "built in bf16, fp16 was asked" in text
    assert "ONNX onnx with sha256 aaaaaaaaaaaa, the export now has cccccccccccc" in text
    assert "ONNX external_data with sha256 bbbbbbbbbbbb, the export now has none" in text
    assert (
        "cascade-trt build --onnx onnx --out engines --stages stage_c --precision bf16 "
        "--min-size 512 --opt-size 1024 --max-size 1536 --max-batch 4" in text
    )


def test_same_architecture_other_gpu_model_is_reported() -> None:
    h100_pcie = Target(H100.tensorrt, "NVIDIA H100 PCIe", "9.0")
    assert mismatches(_manifest(), target=h100_pcie) == [
        "built on NVIDIA H100 80GB HBM3, this GPU is NVIDIA H100 PCIe (same architecture, different model)"
    ]


def test_missing_manifest_is_a_mismatch_with_the_build_command() -> None:
    with pytest.raises(
        ArtifactMismatchError, match="missing.*cascade-trt build --onnx ONNX_DIR --out out --stages stage_b"
    ):
        check_engine(None, "out/stage_b.plan")


def test_rebuild_command_keeps_static_size_and_no_guidance() -> None:
    shapes = BuildShapes(SizeRange.static(1024, 1024), BatchRange(1, 1, 2), guidance=False)
    cmd = rebuild_command(_manifest(shapes=shapes), "e/stage_c.plan")
    assert cmd.endswith("--static 1024x1024 --max-batch 2 --no-guidance")


def test_cache_key_depends_on_content_only() -> None:
    base = dict(
        stage="stage_b",
        precision="fp16",
        onnx={"onnx": "1" * 64},
        profiles={"sample": {"min": [1]}},
        flags={"strongly_typed": True},
        passes=(),
        target=H100,
    )
    key = cache_key(**base)
    assert key == cache_key(**dict(base))
    assert _manifest()["cache_key"] == _manifest(onnx_dir="elsewhere")["cache_key"], "paths are not content"
    for change in (
        {"precision": "bf16"},
        {"onnx": {"onnx": "2" * 64}},
        {"profiles": {"sample": {"min": [2]}}},
        {"flags": {"strongly_typed": False}},
        {"target": Target("10.9.0.34", H100.gpu, "9.0")},
        {"passes": ("cast_around_resize",)},
    ):
        assert cache_key(**{**base, **change}) != key, change


def test_weakly_typed_engine_keeps_fp32_io_whatever_it_computes_in() -> None:
    assert io_precision(_manifest(precision="bf16")) == "bf16"
    weak = _manifest(precision="fp16", flags=BuildOptions(SHAPES, strongly_typed=False).flags())
    assert io_precision(json.loads(json.dumps(weak))) == "fp32"
    assert weak["precision"] == "fp16"  # what it computes in, and what `check` judges it by


@pytest.mark.parametrize(
    ("version", "parsed"),
    [("10.8.0.43", (10, 8)), ("10.0.1.6", (10, 0)), ("11.0.0", (11, 0)), ("10", (0, 0)), ("dev", (0, 0))],
)
def test_tensorrt_version_is_major_and_minor(version: str, parsed: tuple[int, int]) -> None:
    assert tensorrt_version(version) == parsed


# --- shared activation memory ------------------------------------------------------------------------------


class _Pointed:
    """Records where `ActivationMemory` points it: the (address, size) a TensorRT context would receive."""

    def set_device_memory(self, address: int, size: int) -> None:
        self.memory = (address, size)


def test_activation_memory_is_sized_to_the_largest_engine_and_never_moves() -> None:
    from cascade_trt.backends.tensorrt_backend import ActivationMemory

    memory = ActivationMemory("cpu")
    for size in (3000, 12_000, 500):  # engines reserve while they load
        memory.reserve(size)
    contexts = [_Pointed() for _ in range(4)]  # then one context per bound shape
    for context in contexts:
        memory.attach(context)
    assert memory.buffer is not None and memory.buffer.numel() == 12_000
    assert {c.memory for c in contexts} == {(memory.buffer.data_ptr(), 12_000)}
    memory.reserve(12_000)  # no larger: fine
    with pytest.raises(ConfigError, match="load every engine before running any"):
        memory.reserve(12_001)  # would move the buffer under contexts (and captured graphs)
    assert memory.buffer.numel() == 12_000


def test_activation_memory_of_an_engine_that_needs_none() -> None:
    from cascade_trt.backends.tensorrt_backend import ActivationMemory

    memory = ActivationMemory("cpu")
    memory.reserve(0)
    context = _Pointed()
    memory.attach(context)
    assert context.memory[1] == 0


# --- atomic writes -----------------------------------------------------------------------------------------


def test_write_engine_writes_engine_then_manifest(tmp_path: Path) -> None:
    path = engine_path(tmp_path, "stage_a")
    write_engine(path, b"PLAN", {"cache_key": "k"})
    assert path.read_bytes() == b"PLAN"
    assert read_manifest(path) == {"cache_key": "k", "files": {"engine": file_record(path)}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage_a.json", "stage_a.plan"]


def test_atomic_writes_get_the_mode_open_would_give(tmp_path: Path) -> None:
    """Not mkstemp's private 0600: another user who can read the engine must be able to read its manifest."""
    old = os.umask(0o022)
    try:
        path = engine_path(tmp_path, "stage_a")
        write_engine(path, b"PLAN", {"cache_key": "k"})
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"stage_a.plan": 0o644, "stage_a.json": 0o644, "plain": 0o644}


def test_failed_write_leaves_no_engine_and_no_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = engine_path(tmp_path, "stage_a")
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        write_engine(path, b"PLAN", {"not json": object()})
    assert list(tmp_path.iterdir()) == []

    write_engine(path, b"OLD", {"cache_key": "old"})

    def killed(*args, **kwargs):
        raise OSError("killed while renaming")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(OSError, match="killed"):
        write_engine(path, b"NEW", {"cache_key": "new"})
    monkeypatch.undo()
    # The old manifest went first, so the old engine is no longer "complete", and nothing new looks valid.
    assert read_manifest(path) is None
    assert path.read_bytes() == b"OLD"
    assert not manifest_path(path).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["stage_a.plan"], "no temporary file is left behind"


# --- precision policy as the builder applies it -------------------------------------------------------------


def _tensor_record(t, precision: str) -> dict:
    names = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
    return {
        "name": t.name,
        "shape": list(t.shape),
        "dtype": names[precision] if t.dtype == "compute" else t.dtype,
    }


def _fake_export(directory: Path, config, stage: str, precision: str) -> None:
    """A manifest in the exporter's format (ONNX content is not read by the planning step)."""
    spec = stage_specs(config)[stage]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stage}.onnx").write_bytes(b"not read")
    source = {"config": (config.stage_c if stage == "stage_c" else config.stage_b).to_diffusers()}
    manifest = {
        "stage": stage,
        "precision": precision,
        "cascade": "prior+decoder",
        "inputs": [_tensor_record(t, precision) for t in spec.inputs],
        "outputs": [_tensor_record(t, precision) for t in spec.outputs],
        "files": {"onnx": file_record(directory / f"{stage}.onnx")},
        "source": source,
    }
    (directory / f"{stage}.json").write_text(json.dumps(manifest))


def test_auto_builds_full_stage_c_in_bf16_and_lite_in_fp16(tmp_path: Path) -> None:
    _fake_export(tmp_path / "full", FULL, "stage_c", "bf16")
    _fake_export(tmp_path / "lite", LITE, "stage_c", "fp16")
    full = plan_builds(tmp_path / "full", options=BuildOptions(SHAPES))
    lite = plan_builds(tmp_path / "lite", options=BuildOptions(SHAPES))
    assert [(p.stage.name, p.precision) for p in full] == [("stage_c", "bf16")]
    assert full[0].passes == ("align_conv_transpose", "cast_around_resize")
    assert [(p.stage.name, p.precision) for p in lite] == [("stage_c", "fp16")]
    assert full[0].profiles["sample"]["max"] == [8, 16, 36, 36]


def test_explicit_fp16_on_full_stage_c_warns(tmp_path: Path) -> None:
    _fake_export(tmp_path, FULL, "stage_c", "fp16")
    with pytest.warns(UserWarning, match="stage_c .* overflow in fp16"):
        plans = plan_builds(tmp_path, precision="fp16", options=BuildOptions(SHAPES))
    assert plans[0].precision == "fp16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fake_export(tmp_path / "lite", LITE, "stage_c", "fp16")
        plan_builds(tmp_path / "lite", precision="fp16", options=BuildOptions(SHAPES))  # no warning for lite


def test_graph_precision_must_match_the_policy(tmp_path: Path) -> None:
    _fake_export(tmp_path, FULL, "stage_c", "fp32")
    # The remedy is a whole command (the prior and decoder placeholders included), not a fragment.
    remedy = rf"`cascade-trt export --prior P --decoder D --out {tmp_path} --stages stage_c --precision bf16`"
    with pytest.raises(
        ArtifactMismatchError, match=rf"fp32 graph but bf16 was asked.*{remedy}.*--weakly-typed"
    ):
        plan_builds(tmp_path, options=BuildOptions(SHAPES))
    weak = plan_builds(tmp_path, options=BuildOptions(SHAPES, strongly_typed=False))
    assert weak[0].precision == "bf16" and weak[0].passes == ()


def test_spec_read_back_from_manifest_matches_the_stage_description(tmp_path: Path) -> None:
    _fake_export(tmp_path, FULL, "stage_c", "bf16")
    spec = read_onnx_stage(tmp_path, "stage_c").spec
    want = stage_specs(FULL)["stage_c"]
    assert spec == want
    assert {"stage_c", "stage_b"} == GUIDED
    assert policy_config([read_onnx_stage(tmp_path, "stage_c")]).stage_c.conditioning_dim == 2048


def test_missing_export_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(
        ArtifactMismatchError, match=rf"no exported stages in {tmp_path}: run `cascade-trt export"
    ):
        plan_builds(tmp_path, options=BuildOptions(SHAPES))
    with pytest.raises(
        ArtifactMismatchError,
        match=rf"stage_b.onnx or its manifest is missing.*--out {tmp_path} --stages stage_b`",
    ):
        plan_builds(tmp_path, stages=["stage_b"], options=BuildOptions(SHAPES))
    with pytest.raises(ArtifactMismatchError, match=r"directory .*nowhere does not exist: export the models"):
        plan_builds(tmp_path / "nowhere", stages=["stage_b"], options=BuildOptions(SHAPES))


# --- without TensorRT ----------------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_backend_without_tensorrt_says_how_to_install(tmp_path: Path) -> None:
    from cascade_trt.backends import backend_options, get_backend

    with pytest.raises(BackendUnavailableError) as info:
        get_backend("tensorrt").load_runners(
            {"stage_a": stage_specs(TINY)["stage_a"]},
            options=backend_options("tensorrt", engine_dir=tmp_path),
            device="cuda",
            dtypes={"stage_a": torch.float16},
        )
    text = str(info.value)
    assert "No module named 'tensorrt'" in text  # the real import failure, passed through
    assert (
        "pip install 'cascade-trt[tensorrt]'" in text and "--extra-index-url https://pypi.nvidia.com" in text
    )


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_fails_cleanly_and_writes_nothing(tmp_path: Path) -> None:
    from cascade_trt.engines.builder import build_engines

    _fake_export(tmp_path / "onnx", FULL, "stage_c", "bf16")
    with pytest.raises(BackendUnavailableError, match=r"pip install 'cascade-trt\[tensorrt\]'"):
        build_engines(tmp_path / "onnx", tmp_path / "engines", options=BuildOptions(SHAPES))
    assert not (tmp_path / "engines").exists()
    # Missing TensorRT is said first: no one should re-export a graph for a build that cannot run.
    _fake_export(tmp_path / "onnx32", FULL, "stage_c", "fp32")
    with pytest.raises(BackendUnavailableError, match="TensorRT is not available"):
        build_engines(tmp_path / "onnx32", tmp_path / "engines", options=BuildOptions(SHAPES))


def test_engine_with_matching_content_key_is_kept_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cascade_trt.engines import builder
    from cascade_trt.engines.builder import build_engine
    from cascade_trt.engines.manifest import onnx_identity

    builds: list[str] = []

    def build_plan(trt, plan, options, *, log_step):  # TensorRT's part: what this test is not about
        builds.append(plan.stage.name)
        return b"BUILT FOR B200"

    monkeypatch.setattr(builder, "_build_plan", build_plan)
    _fake_export(tmp_path / "onnx", FULL, "stage_c", "bf16")
    options = BuildOptions(SHAPES)
    (plan,) = plan_builds(tmp_path / "onnx", options=options)
    manifest = engine_manifest(
        stage="stage_c",
        precision=plan.precision,
        onnx=onnx_identity(plan.stage.manifest),
        shapes=SHAPES,
        profiles=plan.profiles,
        flags=options.flags(),
        passes=plan.passes,
        target=H100,
        onnx_dir="onnx",
    )
    out = engine_path(tmp_path / "engines", "stage_c")
    write_engine(out, b"BUILT BEFORE", manifest)
    kept = build_engine(plan, tmp_path / "engines", trt=None, target=H100, options=options, onnx_dir="onnx")
    assert kept == out and out.read_bytes() == b"BUILT BEFORE" and builds == []
    assert read_manifest(out) == {**manifest, "files": {"engine": file_record(out)}}
    # Another GPU: the content key differs, so the engine is built again and replaces the old one.
    b200 = Target("10.8.0.43", "B200", "10.0")
    rebuilt = build_engine(
        plan, tmp_path / "engines", trt=None, target=b200, options=options, onnx_dir="onnx"
    )
    assert rebuilt == out and builds == ["stage_c"] and out.read_bytes() == b"BUILT FOR B200"
    assert read_manifest(out)["target"]["gpu"] == "B200"
    assert read_manifest(out)["cache_key"] != manifest["cache_key"]


def test_build_flags_give_the_build_shapes() -> None:
    from cascade_trt.cli import build_parser
    from cascade_trt.cli.build import build_shapes
    from cascade_trt.errors import ConfigError

    def shapes(*flags: str) -> BuildShapes:
        return build_shapes(build_parser().parse_args(["build", "--onnx", "o", "--out", "e", *flags]))

    assert shapes() == BuildShapes(SizeRange.square(512, 1024, 1536), BatchRange(1, 1, 4))
    assert shapes("--max-size", "768").sizes == SizeRange.square(512, 768, 768)
    assert shapes("--static", "1024x768", "--max-batch", "2", "--no-guidance") == BuildShapes(
        SizeRange.static(1024, 768), BatchRange(1, 1, 2), guidance=False
    )
    with pytest.raises(ConfigError, match="--static gives one fixed size"):
        shapes("--static", "1024x1024", "--max-size", "1536")
    with pytest.raises(ShapeError, match="height=1500 is not a positive multiple of 128 px"):
        shapes("--max-size", "1500")
