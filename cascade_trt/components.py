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

diffusers is needed only for the UNets and the VQGAN as PyTorch modules (the torch backend, export, random
weights): `diffusers_classes` imports them, or says what to install. The tokenizer and the feature extractor
are transformers', which the onnxruntime and tensorrt backends use without diffusers.
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
from cascade_trt.errors import BackendUnavailableError, CheckpointError
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
        diffusers_classes()  # the install hint, when diffusers is missing
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
    variant: str | None = None,
) -> CascadeComponents:
    """The tokenizer, the prior's feature extractor (where it has one: what image prompts are preprocessed
    with, whatever runs the image encoder) and the named stages (the image encoder only where the prior ships
    one), each loaded straight into its dtype (fp32 unless `dtypes` says otherwise) and moved to `device`,
    frozen. `variant` picks the weight files as diffusers' does ("bf16": `*.bf16.safetensors`)."""
    from transformers import CLIPTokenizer

    dtypes = dtypes or {}
    text = checkpoints.location("text_encoder")
    out = CascadeComponents(
        config=checkpoints.config(),
        tokenizer=CLIPTokenizer.from_pretrained(text.root, subfolder="tokenizer"),
        checkpoints=checkpoints,
    )
    for stage in stages:
        if not checkpoints.has(stage):
            continue  # the image encoder is optional in a prior pipeline
        module = _load_checked(stage, checkpoints.location(stage), dtypes.get(stage, torch.float32), variant)
        setattr(out, stage, module.to(device).eval().requires_grad_(False))
    out.feature_extractor = load_feature_extractor(checkpoints)
    return out


def _load_checked(
    stage: str, location: Location, dtype: torch.dtype, variant: str | None = None
) -> torch.nn.Module:
    """`_load`, with the checkpoint's faults said as such (see the module docstring)."""
    check_weight_files(location)
    try:
        return _load(stage, location, dtype, variant)
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


def load_feature_extractor(checkpoints: CheckpointPair) -> Any:
    """The prior's `feature_extractor/` (transformers' CLIPImageProcessor), or None where it has none."""
    if checkpoints.prior is None or not (checkpoints.prior / "feature_extractor").is_dir():
        return None
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_pretrained(checkpoints.prior, subfolder="feature_extractor")


_TRANSFORMERS = ("text_encoder", "image_encoder")  # the CLIP encoders; the rest are diffusers models


def _load(stage: str, location: Location, dtype: torch.dtype, variant: str | None = None) -> torch.nn.Module:
    cls = _library_class(stage)
    if stage in _TRANSFORMERS:  # transformers spells the dtype `dtype`
        return cls.from_pretrained(location.root, subfolder=location.subfolder, dtype=dtype, variant=variant)
    return cls.from_pretrained(  # diffusers spells it `torch_dtype`
        location.root, subfolder=location.subfolder, torch_dtype=dtype, variant=variant
    )


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
    """The class that loads a stage's component: transformers' CLIP encoders, diffusers' UNet and VQGAN."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    if stage in _TRANSFORMERS:
        return CLIPTextModelWithProjection if stage == "text_encoder" else CLIPVisionModelWithProjection
    unet, vqgan = diffusers_classes()
    return vqgan if stage == "stage_a" else unet


# The diffusers releases the Stable Cascade modules were tested with; diffusers deprecated its Stable Cascade
# pipelines after 0.35.2 and still ships the modules in 0.42.
TESTED_DIFFUSERS = "0.42.1"
INSTALL = "pip install 'cascade-trt[torch-backend]'"


def diffusers_classes() -> tuple[type, type]:
    """diffusers' `StableCascadeUNet` and `PaellaVQModel` (Stage C/B and Stage A as PyTorch modules).

    BackendUnavailableError, naming what to install, without diffusers or with a diffusers that no longer
    ships them; the onnxruntime and tensorrt backends never call this.
    """
    try:
        import diffusers
    except ModuleNotFoundError as exc:
        raise BackendUnavailableError(
            f"running the Stable Cascade models in PyTorch (the torch backend, export, random weights) needs "
            f"diffusers, which is not installed: {INSTALL} (the onnxruntime and tensorrt backends do not)"
        ) from exc
    try:
        from diffusers import StableCascadeUNet
        from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    except ImportError as exc:
        raise BackendUnavailableError(
            f"diffusers {diffusers.__version__} does not ship Stable Cascade's modules ({exc}): install the "
            f"release cascade_trt was tested with, pip install 'diffusers=={TESTED_DIFFUSERS}'"
        ) from exc
    return StableCascadeUNet, PaellaVQModel
