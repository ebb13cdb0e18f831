"""ONNX export of every stage on the tiny checkpoints, verified in ONNX Runtime (CPU, fp32), and of a checkpoint
unlike every preset, verified against diffusers end to end.

Each stage is exported once per module (about a minute on 2 cores); every test below reads those files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cascade_trt.artifacts import manifest_path, read_manifest, sha256_file
from cascade_trt.checkpoints import CheckpointPair
from cascade_trt.cli import main
from cascade_trt.components import load_components
from cascade_trt.configs import CT, CTA, TINY, CascadeConfig, TextEncoderConfig
from cascade_trt.errors import ConfigError, PrecisionError, ShapeError
from cascade_trt.export import export_pipeline, export_stage
from cascade_trt.export.manifest import REQUIRED_FIELDS
from cascade_trt.export.verify import (
    CHECK_SHAPES,
    check_model,
    graph_io,
    open_session,
    relative_error,
    run_session,
    verify_export,
)
from cascade_trt.modules import stage_module
from cascade_trt.provenance import checkpoint_fingerprint, weights_hash
from cascade_trt.stages import STAGE_NAMES, stage_specs

TOLERANCE = 1e-4
COMPONENT_DIRS = {
    "text_encoder": ("prior", "text_encoder"),
    "image_encoder": ("prior", "image_encoder"),
    "stage_c": ("prior", "prior"),
    "stage_b": ("decoder", "decoder"),
    "stage_a": ("decoder", "vqgan"),
}


@pytest.fixture(scope="module")
def exported(tiny_onnx) -> dict[str, Path]:
    return tiny_onnx("fp32")


@pytest.fixture(scope="module")
def components(tiny_checkpoints: CheckpointPair):
    return load_components(tiny_checkpoints, stages=STAGE_NAMES)


@pytest.fixture(scope="module")
def specs():
    return stage_specs(TINY)


def test_every_stage_is_exported_with_a_manifest(exported):
    assert sorted(exported) == sorted(STAGE_NAMES)  # the tiny prior ships an image encoder
    for stage, path in exported.items():
        assert path.name == f"{stage}.onnx" and path.is_file()
        assert read_manifest(path) is not None
    leftovers = [p.name for p in next(iter(exported.values())).parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_graph_passes_checker_with_spec_io(exported, specs, stage):
    path, spec = exported[stage], specs[stage]
    check_model(path)
    io = graph_io(path)
    for records, tensors in ((io["inputs"], spec.inputs), (io["outputs"], spec.outputs)):
        assert [r["name"] for r in records] == [t.name for t in tensors]
        for record, tensor in zip(records, tensors, strict=True):
            expected = [tensor.dynamic_axes.get(i, token) for i, token in enumerate(tensor.shape)]
            assert record["dims"] == expected, tensor.name
            assert record["dtype"] == ("int64" if tensor.dtype == "int64" else "float32")


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_onnxruntime_matches_torch_at_untraced_shapes(exported, components, specs, stage):
    traced = read_manifest(exported[stage])["traced_at"]
    assert (traced["batch"], traced["height"], traced["width"]) not in [s[:3] for s in CHECK_SHAPES]
    spec = specs[stage]
    if spec.image_prompted:  # Stage C: checked at image-prompt counts other than the traced one
        assert traced["image_prompts"] not in [s[3] for s in CHECK_SHAPES]
    results = verify_export(exported[stage], stage_module(components, stage), spec, tolerance=TOLERANCE)
    assert len(results) == len(CHECK_SHAPES) >= 2
    for parity in results:
        assert max(parity.errors.values()) <= TOLERANCE
        want = spec.shapes(parity.batch, parity.height, parity.width, image_prompts=parity.image_prompts)
        assert parity.shapes == {t.name: want[t.name] for t in spec.outputs}


def test_text_encoder_matches_what_diffusers_feeds_the_prior(exported, tiny_prior):
    from diffusers import StableCascadePriorPipeline

    pipe = StableCascadePriorPipeline.from_pretrained(tiny_prior)
    prompts = ["a photo of a cat sitting on a red chair", "an astronaut"]
    negatives = ["", "blurry, low quality"]
    with torch.no_grad():
        embeds, pooled, neg_embeds, neg_pooled = pipe.encode_prompt(
            device="cpu",
            batch_size=2,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            prompt=prompts,
            negative_prompt=negatives,
        )
    session = open_session(exported["text_encoder"])
    for texts, want_seq, want_pooled in ((prompts, embeds, pooled), (negatives, neg_embeds, neg_pooled)):
        tokens = pipe.tokenizer(
            texts,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        assert tokens.attention_mask.sum(1).unique().numel() == 2  # different lengths: the mask matters
        out = run_session(session, {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask})
        assert out["clip_text"].shape == tuple(want_seq.shape)
        assert relative_error(out["clip_text"], want_seq) <= TOLERANCE
        assert relative_error(out["clip_text_pooled"], want_pooled) <= TOLERANCE


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_manifest_documents_the_model(exported, components, specs, tiny_prior, tiny_decoder, stage):
    path, spec = exported[stage], specs[stage]
    manifest = json.loads(manifest_path(path).read_text())
    assert set(REQUIRED_FIELDS) <= set(manifest)
    assert manifest["stage"] == stage and manifest["precision"] == "fp32"
    assert [t["name"] for t in manifest["inputs"]] == list(spec.input_names)
    assert [t["name"] for t in manifest["outputs"]] == list(spec.output_names)
    assert [t["shape"] for t in manifest["inputs"]] == [list(t.shape) for t in spec.inputs]
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    assert manifest["opset"] == next(o.version for o in model.opset_import if o.domain == "")
    assert manifest["files"]["onnx"]["sha256"] == sha256_file(path)
    assert {"torch", "onnx", "onnxscript", "onnxruntime", "diffusers", "transformers"} <= set(
        manifest["tools"]
    )
    kind, subfolder = COMPONENT_DIRS[stage]
    root = tiny_prior if kind == "prior" else tiny_decoder
    assert manifest["source"]["config"] == json.loads((root / subfolder / "config.json").read_text())
    assert manifest["source"]["fingerprint"] == checkpoint_fingerprint(root / subfolder)
    assert manifest["weights_hash"] == weights_hash(getattr(components, stage))


def test_a_second_export_keeps_what_is_current_and_redoes_what_is_not(exported, tiny_checkpoints, tmp_path):
    import shutil

    from cascade_trt.tiny import make_pipelines

    out = tmp_path / "onnx"
    shutil.copytree(next(iter(exported.values())).parent, out)

    def stamps() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    before = stamps()
    again = export_pipeline(tiny_checkpoints, out, precision="fp32", progress=False)
    assert sorted(again) == sorted(exported) and stamps() == before, "an up-to-date export is kept as it is"

    forced = export_pipeline(tiny_checkpoints, out, stages=["stage_a"], force=True, progress=False)
    after = stamps()
    assert after["stage_a.onnx"] != before["stage_a.onnx"] and after["stage_b.onnx"] == before["stage_b.onnx"]
    assert forced == {"stage_a": out / "stage_a.onnx"}

    other = make_pipelines(tmp_path / "other", seed=1)  # same architecture, other weights
    export_pipeline(
        CheckpointPair(other / "prior", other / "decoder"), out, stages=["stage_a"], progress=False
    )
    manifest = read_manifest(out / "stage_a.onnx")
    assert manifest["source"]["fingerprint"] == checkpoint_fingerprint(other / "decoder" / "vqgan")
    assert stamps()["stage_a.onnx"] != after["stage_a.onnx"]


def test_interrupted_export_leaves_nothing_that_looks_complete(components, specs, tmp_path, monkeypatch):
    import cascade_trt.export.onnx_export as onnx_export

    staged_files = []

    def interrupt(spec, onnx_file, **kwargs):
        staged_files.append(onnx_file)
        assert onnx_file.is_file()  # the model was fully written, in staging, when the interrupt hits
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "build_manifest", interrupt)
    target = tmp_path / "stage_a.onnx"
    with pytest.raises(KeyboardInterrupt):
        export_stage(stage_module(components, "stage_a"), specs["stage_a"], target, dtype=torch.float32)
    assert staged_files and staged_files[0].parent != tmp_path
    assert list(tmp_path.iterdir()) == []  # no model, no manifest, no staging directory


def test_failed_reexport_keeps_the_previous_complete_model(
    exported, components, specs, tmp_path, monkeypatch
):
    import shutil

    import cascade_trt.export.onnx_export as onnx_export

    target = tmp_path / "stage_a.onnx"
    shutil.copy(exported["stage_a"], target)
    shutil.copy(manifest_path(exported["stage_a"]), manifest_path(target))
    before = sha256_file(target)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(onnx_export, "build_manifest", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_stage(stage_module(components, "stage_a"), specs["stage_a"], target, dtype=torch.float32)
    assert sha256_file(target) == before == read_manifest(target)["files"]["onnx"]["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage_a.json", "stage_a.onnx"]


def test_size_must_be_a_multiple_of_128(components, specs, tmp_path):
    with pytest.raises(ShapeError, match="height=200 is not a positive multiple of 128.*Use 128 or 256"):
        export_stage(
            stage_module(components, "stage_a"), specs["stage_a"], tmp_path / "a.onnx", dtype=torch.float32,
            example_size=(200, 384),
        )  # fmt: skip
    assert not (tmp_path / "a.onnx").exists()


def test_unknown_stage(tiny_checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="unknown stage.*stage_d.*choose from.*stage_c"):
        export_pipeline(tiny_checkpoints, tmp_path, stages=["stage_d"], progress=False)
    assert list(tmp_path.iterdir()) == []


def _export_error(prior: Path, decoder: Path, out: Path, capsys) -> str:
    """`cascade-trt export`'s one-line error for these checkpoints; nothing may be written."""
    assert main(["export", "--prior", str(prior), "--decoder", str(decoder), "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_missing_directory(tiny_decoder, tmp_path, capsys):
    err = _export_error(tmp_path / "nowhere", tiny_decoder, tmp_path / "out", capsys)
    assert "does not exist: pass a diffusers-format StableCascadePriorPipeline" in err


def test_not_a_stable_cascade_directory(tiny_decoder, tmp_path, capsys):
    fake = tmp_path / "sd"
    (fake / "unet").mkdir(parents=True)
    (fake / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    err = _export_error(fake, tiny_decoder, tmp_path / "out", capsys)
    assert "holds a StableDiffusionPipeline, not a StableCascadePriorPipeline" in err
    (fake / "model_index.json").unlink()
    err = _export_error(fake, tiny_decoder, tmp_path / "out", capsys)
    assert (
        f"{fake / 'prior' / 'config.json'} not found: {fake} is not a Stable Cascade prior directory" in err
    )


def test_prior_and_decoder_swapped(tiny_prior, tiny_decoder, tmp_path, capsys):
    err = _export_error(tiny_decoder, tiny_prior, tmp_path / "out", capsys)
    assert "a decoder pipeline: pass it as --decoder, and a prior pipeline as --prior" in err


def test_cli_exports_fp16_that_onnxruntime_cpu_refuses_to_run(tiny_prior, tiny_decoder, tmp_path, capsys):
    """fp16 export is allowed (for GPU targets); running the graph on ORT's CPU provider is refused."""
    out = tmp_path / "onnx"
    args = ["export", "--prior", str(tiny_prior), "--decoder", str(tiny_decoder), "--out", str(out)]
    assert main([*args, "--stages", "stage_a", "--precision", "fp16", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["stage_a.json", "stage_a.onnx"]
    path = out / "stage_a.onnx"
    check_model(path)
    assert read_manifest(path)["precision"] == "fp16"
    assert graph_io(path)["inputs"][0]["dtype"] == "float16"
    with pytest.raises(PrecisionError, match="float16 graph.*Export with --precision fp32 to run on CPU"):
        open_session(path)
    assert main([*args, "--stages", "stage_z"]) == 2
    assert "unknown stage(s) stage_z" in capsys.readouterr().err


def test_exact_timestep_embedding_changes_nothing_in_eager(components):
    from cascade_trt.export.patches import exact_timestep_embedding

    unet = components.stage_c
    r = torch.rand(5)
    before = unet.get_timestep_ratio_embedding(r)
    with exact_timestep_embedding(unet):
        patched = unet.get_timestep_ratio_embedding(r)
    assert torch.equal(patched, before)
    assert torch.equal(unet.get_timestep_ratio_embedding(r), before)  # restored on exit


# A checkpoint unlike every preset, after diffusers' own Stable Cascade test components: a CLIP text encoder
# with its BOS token at id 0 (export once drew token ids below it and crashed), 5 layers of 4 heads, other
# widths and head counts in both UNets, a two-level Stage B, no image encoder, and a decoder latent_dim_scale
# of 4 (a 256x384 request decodes to 96x144 px).
UNLIKE_PRESETS = CascadeConfig(
    name="unlike-presets",
    text_encoder=TextEncoderConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=5,
        num_attention_heads=4,
        projection_dim=32,
        vocab_size=1000,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    ),
    stage_c=dataclasses.replace(
        TINY.stage_c,
        conditioning_dim=48,
        block_out_channels=(48, 48),
        num_attention_heads=(3, 3),
        clip_image_in_channels=768,
    ),
    stage_b=dataclasses.replace(
        TINY.stage_b,
        conditioning_dim=64,
        block_out_channels=(24, 48),
        num_attention_heads=(0, 4),
        down_num_layers_per_block=(1, 2),
        up_num_layers_per_block=(2, 1),
        down_blocks_repeat_mappers=(1, 1),
        up_blocks_repeat_mappers=(3, 2),
        block_types_per_layer=(CT, CTA),
        dropout=(0.0, 0.0),
    ),
    stage_a=TINY.stage_a,
    latent_dim_scale=4.0,
)


def test_a_checkpoint_unlike_the_presets_exports_and_matches_diffusers(tmp_path):
    from pipeline_helpers import assert_meaningful, diffusers_pipelines

    from cascade_trt import CascadePipeline
    from cascade_trt.tiny import make_pipelines

    root = make_pipelines(tmp_path / "ckpt", UNLIKE_PRESETS)
    checkpoints = CheckpointPair.resolve(root / "prior", root / "decoder")
    assert checkpoints.config() == dataclasses.replace(UNLIKE_PRESETS, name=checkpoints.config().name)
    onnx_dir = tmp_path / "onnx"
    assert sorted(export_pipeline(checkpoints, onnx_dir, progress=False)) == [
        "stage_a",
        "stage_b",
        "stage_c",
        "text_encoder",
    ]
    prior, decoder = diffusers_pipelines(root / "prior", root / "decoder")
    generator = torch.Generator().manual_seed(0)
    prompts = ["a photo of a cat", "a dog"]
    embedded = prior(prompts, height=256, width=384, num_inference_steps=3, generator=generator)
    expected = decoder(
        embedded.image_embeddings,
        prompt_embeds=embedded.prompt_embeds,
        prompt_embeds_pooled=embedded.prompt_embeds_pooled,
        negative_prompt_embeds=embedded.negative_prompt_embeds,
        negative_prompt_embeds_pooled=embedded.negative_prompt_embeds_pooled,
        guidance_scale=2.0,
        num_inference_steps=2,
        generator=generator,  # the combined pipeline's one generator, drawn on by both stages
        output_type="np",
    ).images
    assert expected.shape == (2, 96, 144, 3)
    assert_meaningful(expected)
    call = dict(height=256, width=384, prior_num_inference_steps=3, num_inference_steps=2, output_type="np")
    for backend, bound in (("torch", 0.0), ("onnxruntime", 1e-3)):
        pipe = CascadePipeline.from_pretrained(
            root / "prior",
            root / "decoder",
            backend=backend,
            device="cpu",
            precision="fp32",
            onnx_dir=onnx_dir,
        )
        pipe.set_progress_bar_config(disable=True)
        images = pipe(
            prompts, decoder_guidance_scale=2.0, generator=torch.Generator().manual_seed(0), **call
        ).images
        assert np.abs(images - expected).max() <= bound, backend
