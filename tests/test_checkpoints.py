"""Tiny checkpoints: located and validated as a pair, loaded with diffusers'/transformers' own loaders and with
ours; random builds keep their dtype and seed."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from cascade_trt.checkpoints import CheckpointPair
from cascade_trt.components import load_components
from cascade_trt.configs import TINY
from cascade_trt.errors import CheckpointError
from cascade_trt.random_weights import random_components

ALL_STAGES = ("text_encoder", "image_encoder", "stage_c", "stage_b", "stage_a")


def test_components_load_by_subfolder_with_the_libraries_own_loaders(tiny_prior: Path, tiny_decoder: Path):
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    prior = StableCascadeUNet.from_pretrained(tiny_prior, subfolder="prior")
    decoder = StableCascadeUNet.from_pretrained(tiny_decoder, subfolder="decoder")
    vqgan = PaellaVQModel.from_pretrained(tiny_decoder, subfolder="vqgan")
    text = CLIPTextModelWithProjection.from_pretrained(tiny_prior, subfolder="text_encoder")
    image = CLIPVisionModelWithProjection.from_pretrained(tiny_prior, subfolder="image_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(tiny_prior, subfolder="tokenizer")

    assert tuple(prior.config.block_out_channels) == TINY.stage_c.block_out_channels
    assert prior.config.clip_image_in_channels == TINY.stage_c.clip_image_in_channels
    assert tuple(decoder.config.up_blocks_repeat_mappers) == TINY.stage_b.up_blocks_repeat_mappers
    assert decoder.config.effnet_in_channels == TINY.stage_b.effnet_in_channels
    assert vqgan.config.embed_dim == TINY.stage_a.embed_dim
    assert text.config.hidden_size == TINY.text_encoder.hidden_size
    assert image.config.projection_dim == TINY.image_encoder.projection_dim
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == TINY.text_encoder.bos_token_id
    # Both pipelines ship the same text encoder, as the hub checkpoints do.
    assert (tiny_decoder / "text_encoder" / "config.json").is_file()


def test_prior_pipeline_loads_with_diffusers(tiny_prior: Path):
    from diffusers import StableCascadePriorPipeline

    pipe = StableCascadePriorPipeline.from_pretrained(tiny_prior)
    assert pipe.image_encoder is not None and pipe.prior.config.in_channels == 16


def test_load_components_matches_the_library_loaders(tiny_checkpoints: CheckpointPair, tiny_decoder: Path):
    from diffusers import StableCascadeUNet

    parts = load_components(tiny_checkpoints, stages=ALL_STAGES)
    assert all(getattr(parts, s) is not None for s in ALL_STAGES)
    assert parts.tokenizer is not None and parts.feature_extractor is not None
    reference = StableCascadeUNet.from_pretrained(tiny_decoder, subfolder="decoder").state_dict()
    loaded = parts.stage_b.state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    assert not any(p.requires_grad for p in parts.stage_c.parameters())
    assert dataclasses.replace(parts.config, name=TINY.name) == TINY
    assert parts.checkpoints == tiny_checkpoints  # what exported graphs are checked against


def test_load_components_loads_in_the_requested_dtype(tiny_checkpoints: CheckpointPair):
    dtypes = {"stage_c": torch.bfloat16, "stage_b": torch.float16, "text_encoder": torch.float16}
    parts = load_components(tiny_checkpoints, stages=tuple(dtypes), dtypes=dtypes)
    for stage, dtype in dtypes.items():
        assert {p.dtype for p in getattr(parts, stage).parameters()} == {dtype}, stage
    assert parts.stage_a is None and parts.image_encoder is None  # only what was asked for


def test_the_pairs_config_is_the_tiny_preset_and_each_stage_has_its_place(
    tiny_checkpoints: CheckpointPair, tiny_prior: Path, tiny_decoder: Path
):
    config = tiny_checkpoints.config()
    assert config.name == "prior+decoder"  # named after the checkpoints
    assert dataclasses.replace(config, name=TINY.name) == TINY
    places = {stage: tiny_checkpoints.location(stage).path for stage in ALL_STAGES}
    assert places == {
        "text_encoder": tiny_prior / "text_encoder",
        "image_encoder": tiny_prior / "image_encoder",
        "stage_c": tiny_prior / "prior",
        "stage_b": tiny_decoder / "decoder",
        "stage_a": tiny_decoder / "vqgan",
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_random_components_are_built_in_the_requested_dtype(dtype: torch.dtype):
    default = torch.get_default_dtype()
    parts = random_components(TINY, stages=ALL_STAGES, dtypes=dict.fromkeys(ALL_STAGES, dtype))
    assert torch.get_default_dtype() == default  # the build's default-dtype switch does not leak
    for stage in ALL_STAGES:
        module = getattr(parts, stage)
        floats = [t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]
        assert floats and {t.dtype for t in floats} == {dtype}, stage
    # randomize_ replaced diffusers' zero-initialised output layers: the UNet does not predict zeros.
    assert all(p.abs().sum() > 0 for p in parts.stage_c.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_random_weights_are_the_same_in_every_dtype(dtype: torch.dtype):
    """A low-precision build holds the fp32 build's weights, rounded: the ONNX graphs exported from an fp32
    checkpoint and the modules built in fp16/bf16 with the same seed are one model."""
    ref = random_components(TINY, stages=("stage_b",), seed=4).stage_b.state_dict()
    low = random_components(TINY, stages=("stage_b",), seed=4, dtypes={"stage_b": dtype}).stage_b.state_dict()
    randomized = [k for k, v in ref.items() if v.is_floating_point()]
    assert randomized and all(torch.equal(low[k], ref[k].to(dtype)) for k in randomized)


def test_randomize_fills_parameters_larger_than_its_chunk(monkeypatch):
    from cascade_trt import random_weights

    monkeypatch.setattr(random_weights, "_FILL_CHUNK", 7)  # 64 values in 10 chunks, the last one short
    layer = torch.nn.Linear(8, 8).requires_grad_(False)
    layer.weight.zero_()
    random_weights.randomize_(layer, seed=0)
    assert (layer.weight != 0).all()
    assert 0.2 < layer.weight.std().item() < 0.6  # std 1/sqrt(8) = 0.35 asked


def test_random_components_use_seed():
    a = random_components(TINY, stages=("stage_a",), seed=1).stage_a.state_dict()
    b = random_components(TINY, stages=("stage_a",), seed=1).stage_a.state_dict()
    c = random_components(TINY, stages=("stage_a",), seed=2).stage_a.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_missing_directory_names_the_fix(tiny_prior: Path, tmp_path: Path):
    with pytest.raises(
        CheckpointError, match="does not exist: pass a diffusers-format StableCascadeDecoderPipeline"
    ):
        CheckpointPair.resolve(tiny_prior, tmp_path / "missing")


def test_a_file_is_not_a_pipeline_directory(tiny_decoder: Path, tmp_path: Path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is a file, not a pipeline directory"):
        CheckpointPair.resolve(path, tiny_decoder)


def test_swapped_pipelines_are_named(tiny_prior: Path, tiny_decoder: Path):
    with pytest.raises(
        CheckpointError,
        match="StableCascadeDecoderPipeline.*decoder pipeline: pass it as --decoder, and a prior pipeline as --prior",
    ):
        CheckpointPair.resolve(tiny_decoder, tiny_prior)
    with pytest.raises(CheckpointError, match="StableCascadeDecoderPipeline.*pass it as --decoder"):
        CheckpointPair(tiny_decoder, tiny_prior)  # made directly, it is validated all the same


def test_wrong_unet_class_and_missing_components(tiny_prior: Path, tiny_decoder: Path, tmp_path: Path):
    broken = tmp_path / "decoder"
    shutil.copytree(tiny_decoder, broken)
    shutil.rmtree(broken / "vqgan")
    with pytest.raises(CheckpointError, match="lacks vqgan: not a complete Stable Cascade decoder"):
        CheckpointPair.resolve(tiny_prior, broken)
    config = json.loads((broken / "decoder" / "config.json").read_text())
    (broken / "decoder" / "config.json").write_text(
        json.dumps({**config, "_class_name": "UNet2DConditionModel"})
    )
    with pytest.raises(CheckpointError, match="'UNet2DConditionModel', not a StableCascadeUNet"):
        CheckpointPair.resolve(tiny_prior, broken)


def test_lite_subfolder_that_is_absent_is_named(tiny_prior: Path, tiny_decoder: Path):
    with pytest.raises(
        CheckpointError, match="prior_lite/config.json not found: .* is not a Stable Cascade prior directory"
    ):
        CheckpointPair.resolve(tiny_prior, tiny_decoder, prior_subfolder="prior_lite")
