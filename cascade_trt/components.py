"""The modules of one cascade (`CascadeComponents`), loaded from a checkpoint pair.

Components are loaded one by one, by subfolder, with diffusers' and transformers' own `from_pretrained`:
diffusers 0.42 can no longer load a Stable Cascade decoder *pipeline* (its model_index.json names
`PaellaVQModel`, which the pipeline loader does not resolve), but every component loads fine on its own. Each
loads straight into its dtype, so no fp32 copy of a model is ever held. `cascade_trt.random_weights` builds the
same components with random weights instead.

What can go wrong in a checkpoint is said in its terms: a truncated weight file is named before loading
(`check_weight_files`); when a library refuses to load a component, a config.json that disagrees with the
weights beside it is named with the first tensor whose shape differs, and anything else is a `CheckpointError`
naming the component's directory and the library's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cascade_trt.checkpoints import (
    CheckpointPair,
    Location,
    check_weight_files,
    safetensors_shapes,
    weight_files,
)
from cascade_trt.configs import CascadeConfig
from cascade_trt.errors import CheckpointError
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
        module = _load_checked(stage, location, dtypes.get(stage, torch.float32))
        setattr(out, stage, module.to(device).eval().requires_grad_(False))
    if out.image_encoder is not None:
        out.feature_extractor = CLIPImageProcessor.from_pretrained(text.root, subfolder="feature_extractor")
    return out


def _load_checked(stage: str, location: Location, dtype: torch.dtype) -> torch.nn.Module:
    """`_load`, with the checkpoint's faults said as such (see the module docstring)."""
    check_weight_files(location)
    try:
        return _load(stage, location, dtype)
    except (MemoryError, ImportError):  # the machine or the install, not the checkpoint
        raise
    except Exception as exc:  # the libraries' errors differ by version: say what is wrong in the checkpoint
        cause = config_disagreement(stage, location)
        if cause is None:
            reason = (str(exc).strip().splitlines() or [""])[0]
            cause = f"could not load {stage} from {location.path} ({type(exc).__name__}: {reason})"
        raise CheckpointError(cause) from exc


def config_disagreement(stage: str, location: Location) -> str | None:
    """Where a component's config.json and its weights disagree: the first tensor whose shape in the weight
    files differs from the shape the config makes (None: no such tensor, or no way to tell)."""
    try:
        made = _configured_shapes(stage, location)
    except Exception:  # a config the library cannot build at all: the loader's own error is the better one
        return None
    for path in weight_files(location.path):
        if path.suffix != ".safetensors":
            continue
        for name, shape in safetensors_shapes(path).items():
            if name in made and made[name] != shape:
                return (
                    f"{location.path / 'config.json'} disagrees with the weights in {path.name}: {name} is "
                    f"{shape} there but {made[name]} by the config; restore the config.json that came with "
                    "these weights"
                )
    return None


_TRANSFORMERS = ("text_encoder", "image_encoder")  # the CLIP encoders; the rest are diffusers models


def _load(stage: str, location: Location, dtype: torch.dtype) -> torch.nn.Module:
    cls = _library_class(stage)
    if stage in _TRANSFORMERS:  # transformers spells the dtype `dtype`
        return cls.from_pretrained(location.root, subfolder=location.subfolder, dtype=dtype)
    return cls.from_pretrained(location.root, subfolder=location.subfolder, torch_dtype=dtype)


def _configured_shapes(stage: str, location: Location) -> dict[str, list[int]]:
    """The shape of every tensor of the module the config.json describes, built on the meta device."""
    cls = _library_class(stage)
    with torch.device("meta"):
        if stage in _TRANSFORMERS:
            module = cls(cls.config_class.from_pretrained(location.root, subfolder=location.subfolder))
        else:
            module = cls.from_config(cls.load_config(location.root, subfolder=location.subfolder))
    return {name: list(t.shape) for name, t in module.state_dict().items()}


def _library_class(stage: str) -> Any:
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    return {
        "text_encoder": CLIPTextModelWithProjection,
        "image_encoder": CLIPVisionModelWithProjection,
        "stage_c": StableCascadeUNet,
        "stage_b": StableCascadeUNet,
        "stage_a": PaellaVQModel,
    }[stage]
