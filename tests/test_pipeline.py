"""CascadePipeline against diffusers' StableCascadeCombinedPipeline, on the torch and onnxruntime backends.

The tiny checkpoints have fully random weights; their VQGAN scale factor (see `configs.TINY`) keeps a good
share of pixels strictly inside (0, 1), which every image comparison here asserts, so parity is not vacuous.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_helpers import allocated, assert_meaningful, diffusers_pipelines

from cascade_trt import CascadePipeline
from cascade_trt.errors import CheckpointError, ConfigError, NonFiniteOutputError, ShapeError

PROMPTS = ["a photo of a cat", "an astronaut riding a horse"]
NEGATIVES = ["blurry", "low quality, watermark"]
HEIGHT, WIDTH = 256, 384  # non-square
BACKENDS = ["torch", "onnxruntime"]

# (prior guidance, decoder guidance, negative prompt, prior steps, decoder steps)
CASES = {
    "prior-guided": (4.0, 0.0, NEGATIVES, 10, 5),
    "both-guided": (4.0, 2.0, None, 6, 4),
    "unguided": (1.0, 0.0, None, 6, 4),
}


@pytest.fixture(scope="module")
def dirs(tiny_prior: Path, tiny_decoder: Path) -> tuple[Path, Path]:
    return tiny_prior, tiny_decoder


@pytest.fixture(scope="module")
def reference(dirs):
    """diffusers' combined pipeline over the components of its prior and decoder pipelines (the prior's text
    encoder and image encoder included), as `diffusers_pipelines` assembles them."""
    from diffusers import StableCascadeCombinedPipeline

    prior, decoder = diffusers_pipelines(*dirs)
    pipe = StableCascadeCombinedPipeline(
        tokenizer=prior.tokenizer,
        text_encoder=prior.text_encoder,
        decoder=decoder.decoder,
        scheduler=decoder.scheduler,
        vqgan=decoder.vqgan,
        prior_prior=prior.prior,
        prior_text_encoder=prior.text_encoder,
        prior_tokenizer=prior.tokenizer,
        prior_scheduler=prior.scheduler,
        prior_feature_extractor=prior.feature_extractor,
        prior_image_encoder=prior.image_encoder,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def onnx_dir(tiny_onnx) -> Path:
    return tiny_onnx("fp32")["stage_a"].parent


@pytest.fixture(scope="module")
def pipes(dirs, request) -> dict[str, CascadePipeline]:
    """Built lazily per backend, so a torch-only selection never pays for the export."""

    class Lazy(dict):
        def __missing__(self, backend: str) -> CascadePipeline:
            onnx = request.getfixturevalue("onnx_dir") if backend == "onnxruntime" else None
            pipe = CascadePipeline.from_pretrained(
                *dirs, backend=backend, device="cpu", precision="fp32", onnx_dir=onnx
            )  # fp32 as diffusers runs: on a CPU with bf16, `auto` would pick bf16 for torch
            pipe.set_progress_bar_config(disable=True)
            self[backend] = pipe
            return pipe

    return Lazy()


def _kwargs(case: str, output_type: str = "np") -> dict:
    prior_scale, decoder_scale, negative, prior_steps, decoder_steps = CASES[case]
    return dict(
        negative_prompt=negative,
        height=HEIGHT,
        width=WIDTH,
        num_images_per_prompt=2,
        prior_num_inference_steps=prior_steps,
        prior_guidance_scale=prior_scale,
        num_inference_steps=decoder_steps,
        decoder_guidance_scale=decoder_scale,
        output_type=output_type,
    )


_REFERENCE_CACHE: dict[tuple[str, str], np.ndarray | torch.Tensor] = {}


def _reference_images(reference, case: str, output_type: str = "np"):
    key = (case, output_type)
    if key not in _REFERENCE_CACHE:
        generator = torch.Generator().manual_seed(0)
        _REFERENCE_CACHE[key] = reference(PROMPTS, generator=generator, **_kwargs(case, output_type)).images
    return _REFERENCE_CACHE[key]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_np_images_equal_diffusers(pipes, reference, backend, case):
    expected = _reference_images(reference, case)
    images = pipes[backend](PROMPTS, generator=torch.Generator().manual_seed(0), **_kwargs(case)).images
    assert images.shape == (4, HEIGHT, WIDTH, 3) and images.dtype == np.float32
    assert_meaningful(expected)
    diff = np.abs(images - expected).max()
    assert diff <= 1e-4, f"{backend} {case}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_latent_and_pt_outputs_equal_diffusers(pipes, reference, backend):
    pipe = pipes[backend]
    latents = pipe(
        PROMPTS, generator=torch.Generator().manual_seed(0), **_kwargs("both-guided", "latent")
    ).images
    expected = _reference_images(reference, "both-guided", "latent")
    assert latents.shape == expected.shape == (4, 4, 64, 96)
    relative = ((latents - expected).abs().max() / expected.abs().max()).item()
    assert relative <= 1e-5, f"latents relative max diff {relative:.2e}"
    images = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **_kwargs("both-guided", "pt")).images
    expected_pt = _reference_images(reference, "both-guided", "pt")
    assert isinstance(images, torch.Tensor) and images.shape == (4, 3, HEIGHT, WIDTH)
    assert (images - expected_pt).abs().max().item() <= 1e-4


def test_one_generator_per_image_as_diffusers(pipes, reference):
    kwargs = dict(
        _kwargs("both-guided"), height=128, width=128, prior_num_inference_steps=3, num_inference_steps=2
    )

    def generators() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed) for seed in (5, 6, 7, 8)]

    expected = reference(PROMPTS, generator=generators(), **kwargs).images
    images = pipes["torch"](PROMPTS, generator=generators(), **kwargs).images
    assert np.abs(images - expected).max() <= 1e-4
    assert np.abs(images[0] - images[1]).max() > 1e-3  # the per-image generators really differ


def test_pil_output_and_return_dict(pipes, reference):
    out = pipes["torch"]("a cat", height=128, width=128, prior_num_inference_steps=2, num_inference_steps=2)
    assert len(out.images) == 1 and out.images[0].size == (128, 128) and out.images[0].mode == "RGB"
    bare = pipes["torch"](
        "a cat",
        height=128,
        width=128,
        prior_num_inference_steps=2,
        num_inference_steps=2,
        output_type="np",
        return_dict=False,
    )
    assert isinstance(bare, np.ndarray) and bare.shape == (1, 128, 128, 3)


def _assembled_reference(reference, decoder_scale: float, steps: tuple[int, int]):
    """diffusers' prior pipeline unguided, then its decoder pipeline guided with explicit negative embeddings:
    what the combined pipeline would compute if it did not crash (it passes no negative embeddings)."""
    generator = torch.Generator().manual_seed(0)
    prior = reference.prior_pipe(
        PROMPTS,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=steps[0],
        guidance_scale=1.0,
        num_images_per_prompt=2,
        generator=generator,
    )
    _, _, negative, negative_pooled = reference.prior_pipe.encode_prompt(
        device="cpu",
        batch_size=2,
        num_images_per_prompt=2,
        do_classifier_free_guidance=True,
        prompt=PROMPTS,
    )
    return reference.decoder_pipe(
        image_embeddings=prior.image_embeddings,
        prompt_embeds=prior.prompt_embeds,
        prompt_embeds_pooled=prior.prompt_embeds_pooled,
        negative_prompt_embeds=negative,
        negative_prompt_embeds_pooled=negative_pooled,
        num_inference_steps=steps[1],
        guidance_scale=decoder_scale,
        generator=generator,
        output_type="np",
    ).images


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoder_guidance_without_prior_guidance_works(pipes, reference, backend):
    kwargs = dict(_kwargs("unguided"), decoder_guidance_scale=3.0)
    # diffusers: no negative embeddings to concatenate.
    with pytest.raises(TypeError, match="expected Tensor as element 1 in argument 0, but got NoneType"):
        reference(PROMPTS, generator=torch.Generator().manual_seed(0), **kwargs)
    images = pipes[backend](PROMPTS, generator=torch.Generator().manual_seed(0), **kwargs).images
    expected = _assembled_reference(reference, 3.0, (kwargs["prior_num_inference_steps"], 4))
    assert_meaningful(expected)
    assert np.abs(images - expected).max() <= 1e-4


def test_text_encoder_runs_once_per_call_for_both_stages(pipes):
    pipe = pipes["torch"]
    calls = []
    hook = pipe.runners["text_encoder"].module.register_forward_hook(
        lambda m, i, o: calls.append(i[0].shape[0])
    )
    try:
        small = dict(
            height=128, width=128, prior_num_inference_steps=2, num_inference_steps=2, output_type="latent"
        )
        pipe(PROMPTS, num_images_per_prompt=2, decoder_guidance_scale=2.0, **small)
        assert calls == [2, 2]  # the prompts, then the negatives (as diffusers encodes them), for both stages
        calls.clear()
        pipe(PROMPTS, prior_guidance_scale=1.0, **small)
        assert calls == [2]  # no stage guides: no negatives
    finally:
        hook.remove()


def test_torch_compile_matches_eager(dirs, pipes):
    """`compile=True` runs every stage through torch.compile (Inductor on the CPU); it may reorder float
    arithmetic, so the images agree with eager within fp32 accumulation noise, not bit for bit."""
    compiled = CascadePipeline.from_pretrained(
        *dirs, backend="torch", device="cpu", precision="fp32", compile=True
    )
    compiled.set_progress_bar_config(disable=True)
    assert all(runner.forward is not runner.module for runner in compiled.runners.values())
    assert torch._dynamo.config.recompile_limit >= 64  # a size sweep stays compiled past Dynamo's default 8
    kwargs = dict(_kwargs("prior-guided"), negative_prompt=NEGATIVES[0], num_images_per_prompt=1)
    kwargs.update(prior_num_inference_steps=4, num_inference_steps=3)
    want = pipes["torch"](PROMPTS[0], generator=torch.Generator().manual_seed(0), **kwargs).images
    got = compiled(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kwargs).images
    assert_meaningful(want)
    assert np.abs(got - want).max() <= 1e-3


def test_stage_methods_compose_to_call(pipes):
    pipe = pipes["torch"]
    emb = pipe.encode_prompt(PROMPTS, NEGATIVES, num_images_per_prompt=2)
    assert emb.clip_text.shape == (4, 77, 32) and emb.negative_clip_text_pooled.shape == (4, 1, 32)
    generator = torch.Generator().manual_seed(1)
    effnet = pipe.run_stage_c(emb, 128, 256, num_inference_steps=3, guidance_scale=4.0, generator=generator)
    assert effnet.shape == (4, 16, 3, 6)
    latents = pipe.run_stage_b(emb, effnet, num_inference_steps=2, guidance_scale=0.0, generator=generator)
    images = pipe.run_stage_a(latents)
    assert images.shape == (4, 3, 128, 256) and images.min() >= 0 and images.max() <= 1
    whole = pipe(
        PROMPTS, NEGATIVES, 128, 256, 2, 3, 4.0, 2, 0.0, torch.Generator().manual_seed(1), output_type="pt"
    ).images
    assert torch.equal(whole, images)
    pipe.clear_caches()  # buffers released: the next call allocates afresh and computes the same
    assert not allocated(pipe.prior_pipe) and not allocated(pipe.decoder_pipe)
    again = pipe(
        PROMPTS, NEGATIVES, 128, 256, 2, 3, 4.0, 2, 0.0, torch.Generator().manual_seed(1), output_type="pt"
    ).images
    assert torch.equal(again, images)


def test_long_prompts_are_truncated_with_a_warning(pipes, reference, caplog):
    long_prompt = " ".join(["a very detailed painting of a cat"] * 20)
    with caplog.at_level(logging.WARNING, logger="cascade_trt.pipeline"):
        emb = pipes["torch"].encode_prompt(long_prompt, guidance=False)
    assert "truncated" in caplog.text
    expected, *_ = reference.prior_pipe.encode_prompt(
        device="cpu",
        batch_size=1,
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
        prompt=long_prompt,
    )
    assert torch.equal(emb.clip_text, expected)


def test_progress_bars_per_stage_can_be_turned_off(pipes, capsys):
    pipe = pipes["torch"]
    small = dict(
        height=128, width=128, prior_num_inference_steps=2, num_inference_steps=2, output_type="latent"
    )
    pipe.set_progress_bar_config(disable=False)
    try:
        pipe("a cat", **small)
    finally:
        pipe.set_progress_bar_config(disable=True)
    err = capsys.readouterr().err
    assert "stage_c" in err and "stage_b" in err
    pipe("a cat", **small)
    assert "stage_c" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(height=200), ShapeError, "height=200 is not a positive multiple of 128 px"),
        (dict(width=0), ShapeError, "width=0 is not a positive multiple of 128 px"),
        (
            dict(num_images_per_prompt=0),
            ConfigError,
            "num_images_per_prompt must be a positive integer, got 0",
        ),
        (
            dict(prior_num_inference_steps=0),
            ConfigError,
            "^prior_num_inference_steps must be a positive integer",
        ),
        (
            dict(num_inference_steps=2.5),
            ConfigError,
            "^num_inference_steps must be a positive integer, got 2.5",
        ),
        (
            dict(prior_guidance_scale=float("nan")),
            ConfigError,
            "prior_guidance_scale must be a finite number",
        ),
        (
            dict(negative_prompt=["a", "b", "c"]),
            ConfigError,
            "negative_prompt has 3 entries but prompt has 2",
        ),
        (dict(output_type="jpeg"), ConfigError, "output_type='jpeg': choose one of pil, np, pt, latent"),
        (dict(generator=[torch.Generator()] * 3), ConfigError, "got 3 generators for 2 images"),
    ],
)
def test_invalid_arguments_raise_typed_errors(pipes, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipes["torch"](PROMPTS, **kwargs)


def test_prompt_must_be_text(pipes):
    with pytest.raises(
        ConfigError, match=r"prompt must be a string or a non-empty list of strings, got \[\]"
    ):
        pipes["torch"]([])


def test_unknown_backend_names_the_choices(dirs):
    with pytest.raises(
        ConfigError, match="unknown backend 'tensorflow': choose one of torch, onnxruntime, tensorrt"
    ):
        CascadePipeline.from_pretrained(*dirs, backend="tensorflow")


def test_paths_that_are_not_a_prior_or_decoder(dirs, tmp_path):
    prior, decoder = dirs
    with pytest.raises(CheckpointError, match="decoder pipeline: pass it as --decoder"):
        CascadePipeline.from_pretrained(decoder, prior)
    with pytest.raises(CheckpointError, match="nothing-here' does not exist: pass a diffusers-format"):
        CascadePipeline.from_pretrained(tmp_path / "nothing-here", decoder)


def test_onnxruntime_needs_its_directory(dirs):
    with pytest.raises(
        ConfigError,
        match=r"runs the graphs `cascade-trt export` writes: pass onnx_dir=<directory> \(--onnx-dir\)",
    ):
        CascadePipeline.from_pretrained(*dirs, backend="onnxruntime")


def test_nan_in_a_stage_is_named_with_the_fix(tiny_checkpoints):
    from cascade_trt.components import load_components

    components = load_components(tiny_checkpoints)
    with torch.no_grad():
        next(components.stage_b.parameters()).fill_(float("nan"))
    pipe = CascadePipeline.from_components(components, backend="torch", device="cpu", precision="fp32")
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(
        NonFiniteOutputError,
        match=r"stage_b produced NaN or infinite values in fp32\..*precision=\{'stage_b': 'bf16'\}",
    ):
        pipe("a cat", height=128, width=128, prior_num_inference_steps=2, num_inference_steps=2)


def test_generate_cli_writes_the_pipeline_image(dirs, pipes, tmp_path):
    from PIL import Image

    from cascade_trt.cli import main

    out = tmp_path / "cat.png"
    argv = ["generate", "a cat", "--prior", str(dirs[0]), "--decoder", str(dirs[1]), "--device", "cpu"]
    argv += ["--seed", "3", "--out", str(out), "--height", "128", "--width", "256", "--prior-steps", "3"]
    argv += ["--decoder-steps", "2", "--decoder-guidance", "2.0", "--negative-prompt", "dog", "--no-progress"]
    argv += ["--precision", "fp32"]  # what the pipeline it is compared with runs
    assert main(argv) == 0
    expected = pipes["torch"](
        "a cat",
        negative_prompt="dog",
        height=128,
        width=256,
        prior_num_inference_steps=3,
        num_inference_steps=2,
        decoder_guidance_scale=2.0,
        generator=torch.Generator().manual_seed(3),
    ).images[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))
    assert main([*argv, "--height", "100"]) == 2  # typed error -> exit status 2, no traceback


def _fixed_stage_a_graph(path: Path, elem_type: int) -> None:
    """A real ONNX graph with Stage A's IO names, fixed at one shape (batch 1, 128x128 px), plus a manifest."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cascade_trt.artifacts import file_record, write_json

    dtype = np.float16 if elem_type == TensorProto.FLOAT16 else np.float32
    weight = numpy_helper.from_array(np.full((48, 4, 1, 1), 0.01, dtype=dtype), "weight")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["latents", "weight"], ["features"]),
            helper.make_node("DepthToSpace", ["features"], ["images"], blocksize=4),
        ],
        "stage_a_fixed",
        [helper.make_tensor_value_info("latents", elem_type, [1, 4, 32, 32])],
        [helper.make_tensor_value_info("images", elem_type, [1, 3, 128, 128])],
        initializer=[weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    manifest = {
        "stage": "stage_a",
        "precision": "fixed-shape test graph",
        "files": {"onnx": file_record(path)},
    }
    write_json(path.with_suffix(".json"), manifest)


def test_onnxruntime_refuses_shapes_and_precisions_a_graph_cannot_take(tmp_path):
    from onnx import TensorProto

    from cascade_trt.backends.onnxruntime_backend import OnnxRuntimeRunner
    from cascade_trt.configs import TINY
    from cascade_trt.errors import ArtifactMismatchError, PrecisionError
    from cascade_trt.stages import stage_specs

    spec = stage_specs(TINY)["stage_a"]
    _fixed_stage_a_graph(tmp_path / "stage_a.onnx", TensorProto.FLOAT)
    runner = OnnxRuntimeRunner(spec, tmp_path / "stage_a.onnx", dtype=torch.float32, device="cpu")
    bindings = runner.allocate(1, 128, 128)  # the shape it was made for runs
    bindings.inputs["latents"].fill_(1.0)
    runner.execute(bindings)
    images = bindings.outputs["images"]
    assert images.shape == (1, 3, 128, 128) and torch.allclose(images, torch.full_like(images, 0.04))
    fixed = r"stage_a\.onnx takes latents of shape \[1, 4, 32, 32\], asked "
    with pytest.raises(
        ShapeError, match=fixed + r"\[1, 4, 64, 32\] \(batch 1, 256x128 px\): re-export stage_a"
    ):
        runner.allocate(1, 256, 128)
    with pytest.raises(ShapeError, match=fixed + r"\[2, 4, 32, 32\] \(batch 2, 128x128 px\)"):
        runner.allocate(2, 128, 128)

    half = tmp_path / "half"
    half.mkdir()
    _fixed_stage_a_graph(half / "stage_a.onnx", TensorProto.FLOAT16)
    with pytest.raises(
        PrecisionError, match="stage_a.onnx is a fp16 graph, which ONNX Runtime's CPU provider cannot"
    ):
        OnnxRuntimeRunner(spec, half / "stage_a.onnx", dtype=torch.float32, device="cpu")

    (half / "stage_a.json").unlink()
    with pytest.raises(
        ArtifactMismatchError, match=r"stage_a\.onnx or its manifest is missing .*: export it with"
    ):
        OnnxRuntimeRunner(spec, half / "stage_a.onnx", dtype=torch.float32, device="cpu")


def test_onnx_models_exported_from_other_weights_are_refused(dirs, onnx_dir, tmp_path):
    """Same architecture, other weights (another seed): the manifests' fingerprints tell them apart, and the
    error names the first stage whose weights differ."""
    from cascade_trt.errors import ArtifactMismatchError
    from cascade_trt.provenance import checkpoint_fingerprint
    from cascade_trt.tiny import make_pipelines

    other = make_pipelines(tmp_path / "other", seed=1)
    assert checkpoint_fingerprint(other / "decoder" / "vqgan") != checkpoint_fingerprint(dirs[1] / "vqgan")
    with pytest.raises(ArtifactMismatchError, match=r"text_encoder.onnx was exported from other weights"):
        CascadePipeline.from_pretrained(
            other / "prior", other / "decoder", backend="onnxruntime", device="cpu", onnx_dir=onnx_dir
        )
    with pytest.raises(
        ArtifactMismatchError, match=r"stage_b.onnx was exported .* than the decoder given here"
    ):
        CascadePipeline.from_pretrained(
            dirs[0], other / "decoder", backend="onnxruntime", device="cpu", onnx_dir=onnx_dir
        )


def test_a_shape_a_graph_cannot_take_fails_before_any_stage_runs(dirs, onnx_dir, tmp_path):
    from onnx import TensorProto

    for path in onnx_dir.iterdir():
        if not path.name.startswith("stage_a"):
            shutil.copy(path, tmp_path / path.name)
    _fixed_stage_a_graph(tmp_path / "stage_a.onnx", TensorProto.FLOAT)  # batch 1, 128x128 px only
    pipe = CascadePipeline.from_pretrained(*dirs, backend="onnxruntime", device="cpu", onnx_dir=tmp_path)
    with pytest.raises(ShapeError, match="stage_a.onnx takes latents"):
        pipe("a cat", height=256, width=384)
    assert not allocated(pipe.prior_pipe)  # refused up front: Stage C never ran


FP32_ELSEWHERE = dict.fromkeys(("text_encoder", "stage_c", "stage_b"), "fp32")  # `auto` depends on the CPU


def test_precision_per_stage_reaches_the_runners_and_their_arithmetic(dirs, pipes):
    """Stage A alone in bf16: the stages before it compute exactly what the fp32 pipeline does, and Stage A
    computes in bf16, off from fp32 by bf16's rounding and no more."""
    pipe = CascadePipeline.from_pretrained(
        *dirs, backend="torch", device="cpu", precision={"stage_a": "bf16", **FP32_ELSEWHERE}
    )
    pipe.set_progress_bar_config(disable=True)
    assert {s: r.dtype for s, r in pipe.runners.items()} == {
        "text_encoder": torch.float32,
        "stage_c": torch.float32,
        "stage_b": torch.float32,
        "stage_a": torch.bfloat16,
    }
    assert next(pipe.runners["stage_a"].module.parameters()).dtype == torch.bfloat16
    small = dict(
        height=128, width=128, prior_num_inference_steps=2, num_inference_steps=2, output_type="latent"
    )
    latents = pipe("a cat", generator=torch.Generator().manual_seed(0), **small).images
    fp32 = pipes["torch"]
    assert torch.equal(latents, fp32("a cat", generator=torch.Generator().manual_seed(0), **small).images)
    images, reference = pipe.run_stage_a(latents), fp32.run_stage_a(latents)
    assert_meaningful(reference.numpy())
    assert images.dtype == torch.bfloat16 and reference.dtype == torch.float32
    diff = (images.float() - reference).abs().max().item()
    assert 0 < diff <= 2**-5, f"bf16 Stage A differs from fp32 by {diff:.2e}"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_or_a_gpu_says_what_is_missing(dirs, tmp_path):
    from cascade_trt.errors import BackendUnavailableError

    # Without a GPU the device is what is missing first (tests/test_engines.py checks the install hint itself).
    expected = "cascade-trt\\[tensorrt\\]" if torch.cuda.is_available() else "sees no CUDA GPU"
    with pytest.raises(BackendUnavailableError, match=expected):
        CascadePipeline.from_pretrained(*dirs, backend="tensorrt", device="cuda", engine_dir=tmp_path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_images_embeddings_latents_and_callbacks_equal_diffusers_combined(pipes, reference, backend):
    """Every argument diffusers' combined pipeline takes beyond text, in one call: image prompts, the prior's
    precomputed embeddings, its starting latents, and a callback on each stage (one changes the latents)."""
    from PIL import Image

    images = [Image.fromarray(np.full((40, 56, 3), 60 * i + 30, dtype=np.uint8)) for i in range(2)]
    embeds, pooled, negative, negative_pooled = reference.prior_pipe.encode_prompt(
        device="cpu", batch_size=2, num_images_per_prompt=1, do_classifier_free_guidance=True, prompt=PROMPTS
    )
    start = torch.randn((4, 16, 3, 6), generator=torch.Generator().manual_seed(3))

    def run(pipe, steps: list) -> np.ndarray:
        def prior_step(p, i, t, kwargs):
            steps.append(("prior", i, float(t)))
            return {"latents": kwargs["latents"] * 0.9} if i == 1 else {}

        def decoder_step(p, i, t, kwargs):
            steps.append(("decoder", i, float(t), kwargs["image_embeddings"].shape))
            return {}

        return pipe(
            images=images,
            prompt_embeds=embeds,
            prompt_embeds_pooled=pooled,
            negative_prompt_embeds=negative,
            negative_prompt_embeds_pooled=negative_pooled,
            latents=start,
            num_images_per_prompt=2,
            height=128,
            width=256,
            prior_num_inference_steps=3,
            num_inference_steps=2,
            decoder_guidance_scale=2.0,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            prior_callback_on_step_end=prior_step,
            callback_on_step_end=decoder_step,
            callback_on_step_end_tensor_inputs=["latents", "image_embeddings"],
        ).images

    mine, theirs = [], []
    images_out, expected = run(pipes[backend], mine), run(reference, theirs)
    assert mine == theirs and len(mine) == 5
    assert_meaningful(expected)
    assert np.abs(images_out - expected).max() <= (0 if backend == "torch" else 1e-3)


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        (
            dict(prior_callback_on_step_end_tensor_inputs=["prompt_embeds_pooled"]),
            ConfigError,
            "prior_callback_on_step_end_tensor_inputs",
        ),
        (
            dict(callback_on_step_end_tensor_inputs=["text_encoder_hidden_states"]),
            ConfigError,
            "callback_on_step_end_tensor_inputs",
        ),
        (dict(callback_on_step_end="not callable"), ConfigError, "callback_on_step_end"),
        (dict(latents=torch.zeros(2, 16, 3, 3)), ShapeError, "latents"),
        (dict(prompt_embeds=torch.zeros(2, 77, 32)), ConfigError, "prompt_embeds_pooled"),
        (
            dict(prompt_embeds=torch.zeros(2, 77, 32), prompt_embeds_pooled=torch.zeros(2, 1, 32)),
            ConfigError,
            "prompt_embeds",  # and a prompt
        ),
        (
            dict(prompt_embeds=torch.zeros(2, 76, 32), prompt_embeds_pooled=torch.zeros(2, 1, 32)),
            ShapeError,
            "prompt_embeds",
        ),
        (dict(images=["not an image"]), ConfigError, "images"),
        (dict(height=200), ShapeError, "height"),
        (dict(decoder_guidance_scale=float("inf")), ConfigError, "decoder_guidance_scale"),
    ],
)
def test_check_inputs_names_the_argument_of_every_refusal(pipes, kwargs, error, argument):
    """What `__call__` refuses, `check_inputs` refuses first, and the error says which argument (what the HTTP
    service maps to a request field)."""
    pipe = pipes["torch"]
    call = {"height": 128, "width": 256, **kwargs}
    for check in (pipe.check_inputs, pipe):
        with pytest.raises(error) as exc:
            check(PROMPTS, **call)
        assert exc.value.argument == argument, str(exc.value)
    assert (
        not allocated(pipe.prior_pipe) or True
    )  # other tests share the pipeline; refusals allocate nothing new
