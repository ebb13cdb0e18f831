"""What the pipeline tests share: diffusers' own pipelines over the tiny checkpoints (the reference), the guard
that an image comparison is not vacuous, and a look at whether a pipeline allocated anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def diffusers_pipelines(prior: Path, decoder: Path) -> tuple[Any, Any]:
    """diffusers' `StableCascadePriorPipeline` and `StableCascadeDecoderPipeline` on the checkpoints, each with
    its own text encoder, assembled from components loaded by subfolder: diffusers 0.42 cannot load a Stable
    Cascade decoder pipeline whole (its model_index.json names PaellaVQModel, which the loader no longer
    resolves), but loads every component on its own."""
    from diffusers import (
        DDPMWuerstchenScheduler,
        StableCascadeDecoderPipeline,
        StableCascadePriorPipeline,
        StableCascadeUNet,
    )
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    has_images = (prior / "image_encoder").is_dir()
    prior_pipe = StableCascadePriorPipeline(
        tokenizer=CLIPTokenizer.from_pretrained(prior, subfolder="tokenizer"),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(prior, subfolder="text_encoder"),
        prior=StableCascadeUNet.from_pretrained(prior, subfolder="prior"),
        scheduler=DDPMWuerstchenScheduler.from_pretrained(prior, subfolder="scheduler"),
        feature_extractor=CLIPImageProcessor.from_pretrained(prior, subfolder="feature_extractor")
        if has_images
        else None,
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(prior, subfolder="image_encoder")
        if has_images
        else None,
    )
    decoder_pipe = StableCascadeDecoderPipeline(
        decoder=StableCascadeUNet.from_pretrained(decoder, subfolder="decoder"),
        tokenizer=CLIPTokenizer.from_pretrained(decoder, subfolder="tokenizer"),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(decoder, subfolder="text_encoder"),
        scheduler=DDPMWuerstchenScheduler.from_pretrained(decoder, subfolder="scheduler"),
        vqgan=PaellaVQModel.from_pretrained(decoder, subfolder="vqgan"),
        latent_dim_scale=_model_index(decoder).get("latent_dim_scale", 10.67),
    )
    for pipe in (prior_pipe, decoder_pipe):
        pipe.set_progress_bar_config(disable=True)
    return prior_pipe, decoder_pipe


def _model_index(directory: Path) -> dict[str, Any]:
    import json

    return json.loads((directory / "model_index.json").read_text())


def assert_meaningful(images: np.ndarray) -> None:
    """A comparison of images is only worth something if they are not clamped to 0 or 1 almost everywhere."""
    inside = ((images > 0) & (images < 1)).mean()
    assert inside > 0.25, (
        f"only {inside:.1%} of the pixels are inside (0, 1): the comparison would be vacuous"
    )


def buffers(pipe: Any) -> set:
    """The shapes a prior or decoder pipeline holds static buffers for (a stage ran at each)."""
    runtime = pipe.runtime
    return {*runtime.denoiser._loops, *runtime._bindings}


def allocated(pipe: Any) -> bool:
    """Whether a prior or decoder pipeline holds static buffers of any shape (a stage ran)."""
    return bool(buffers(pipe))
