"""The modules of one cascade (`CascadeComponents`), loaded from a checkpoint pair.

Components are loaded one by one, by subfolder, with diffusers' and transformers' own `from_pretrained`:
diffusers 0.42 can no longer load a Stable Cascade decoder *pipeline* (its model_index.json names
`PaellaVQModel`, which the pipeline loader does not resolve), but every component loads fine on its own. Each
loads straight into its dtype, so no fp32 copy of a model is ever held. `cascade_trt.random_weights` builds the
same components with random weights instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cascade_trt.checkpoints import CheckpointPair, Location
from cascade_trt.configs import CascadeConfig
from cascade_trt.stages import PIPELINE_STAGES


@dataclass
class CascadeComponents:
    """The modules of one cascade. Any may be None when it was not asked for."""

    config: CascadeConfig
    tokenizer: Any = None
    text_encoder: torch.nn.Module | None = None
    image_encoder: torch.nn.Module | None = None
    feature_extractor: Any = None
    stage_c: torch.nn.Module | None = None
    stage_b: torch.nn.Module | None = None
    stage_a: torch.nn.Module | None = None
    # The checkpoints they were loaded from (what exported graphs are checked against); None for random weights.
    checkpoints: CheckpointPair | None = None

    def diffusers_pipelines(self) -> tuple[Any, Any]:
        """diffusers' `StableCascadePriorPipeline` and `StableCascadeDecoderPipeline` over these very modules
        (shared, not copied), with default schedulers: what `save_pretrained` writes and the baseline runs."""
        from diffusers import (
            DDPMWuerstchenScheduler,
            StableCascadeDecoderPipeline,
            StableCascadePriorPipeline,
        )

        prior = StableCascadePriorPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            prior=self.stage_c,
            scheduler=DDPMWuerstchenScheduler(),
            resolution_multiple=self.config.resolution_multiple,
            feature_extractor=self.feature_extractor if self.image_encoder is not None else None,
            image_encoder=self.image_encoder,
        )
        decoder = StableCascadeDecoderPipeline(
            decoder=self.stage_b,
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            scheduler=DDPMWuerstchenScheduler(),
            vqgan=self.stage_a,
            latent_dim_scale=self.config.latent_dim_scale,
        )
        return prior, decoder


def load_components(
    checkpoints: CheckpointPair,
    *,
    stages: tuple[str, ...] = PIPELINE_STAGES,
    dtypes: dict[str, torch.dtype] | None = None,
    device: str | torch.device = "cpu",
) -> CascadeComponents:
    """The tokenizer and the named stages (the image encoder only where the prior ships one), each loaded
    straight into its dtype (fp32 unless `dtypes` says otherwise) and moved to `device`, frozen."""
    from transformers import CLIPImageProcessor, CLIPTokenizer

    dtypes = dtypes or {}
    text = checkpoints.location("text_encoder")
    out = CascadeComponents(
        config=checkpoints.config(),
        tokenizer=CLIPTokenizer.from_pretrained(text.root, subfolder="tokenizer"),
        checkpoints=checkpoints,
    )
    for stage in stages:
        location = checkpoints.location(stage)
        if stage == "image_encoder" and not location.exists():
            continue  # optional in a prior pipeline
        module = _load(stage, location, dtypes.get(stage, torch.float32))
        setattr(out, stage, module.to(device).eval().requires_grad_(False))
    if out.image_encoder is not None:
        out.feature_extractor = CLIPImageProcessor.from_pretrained(text.root, subfolder="feature_extractor")
    return out


def _load(stage: str, location: Location, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    if stage in ("text_encoder", "image_encoder"):  # transformers spells the dtype `dtype`
        cls = CLIPTextModelWithProjection if stage == "text_encoder" else CLIPVisionModelWithProjection
        return cls.from_pretrained(location.root, subfolder=location.subfolder, dtype=dtype)
    cls = PaellaVQModel if stage == "stage_a" else StableCascadeUNet  # diffusers spells it `torch_dtype`
    return cls.from_pretrained(location.root, subfolder=location.subfolder, torch_dtype=dtype)
