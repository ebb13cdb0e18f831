"""Stable Cascade components with random weights: the real architectures of a `CascadeConfig`, built in place.

What tests, benchmarks and `cascade-trt make-tiny` run when there is no checkpoint: the same classes as a loaded
checkpoint (so the same parameter counts and cost), built directly in each stage's dtype on its device, with an
offline tokenizer (`cascade_trt.tokenizer`). On the meta device they hold no values at all: the architecture
alone, whose cost torch's FLOP counter can count without memory or arithmetic.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch

from cascade_trt.components import CascadeComponents, diffusers_classes
from cascade_trt.configs import CascadeConfig
from cascade_trt.stages import PIPELINE_STAGES
from cascade_trt.tokenizer import build_tokenizer

_FILL_CHUNK = 1 << 22  # values drawn at a time by `randomize_`: 16 MiB of fp32, whatever the parameter's size


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter with random values, in place, in its own dtype and device.

    diffusers initialises the UNets' output convolution (and timestep mappers) to zero, so a freshly built
    model predicts exactly zero: useless for parity tests. Matrices get std 1/sqrt(fan_in) (outputs keep unit
    scale through depth); vectors (biases, norms, layer scales) get small values around zero or one.

    Values are drawn in fp32 on the CPU from one seeded generator, so a model built in fp16 on a GPU holds the
    same weights (rounded) as the fp32 checkpoint that the ONNX export reads. They are drawn in chunks of
    `_FILL_CHUNK`, so the temporary stays small: building the full Stage C peaks at its weights plus the
    runtime (a whole-parameter temporary cost 0.35 GB more).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed % 2**64)  # a stage offset may pass 64 bits
    for name, p in module.named_parameters():
        if p.is_meta:
            continue  # no storage: an architecture built on the meta device, for its shapes and cost only
        if p.ndim >= 2:
            mean, std = 0.0, 1.0 / math.sqrt(math.prod(p.shape[1:]))
        elif name.endswith("weight") and "norm" in name:
            mean, std = 1.0, 0.1
        else:
            mean, std = 0.0, 0.1
        flat = p.view(-1)  # parameters are contiguous: writes through the view land in the parameter
        for part in flat.split(_FILL_CHUNK):
            part.copy_(torch.randn(part.shape, generator=gen).mul_(std).add_(mean))
    return module


def random_components(
    config: CascadeConfig,
    *,
    stages: tuple[str, ...] = PIPELINE_STAGES,
    dtypes: dict[str, torch.dtype] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> CascadeComponents:
    """The real architectures of `config` with random weights, built directly in each dtype on the device.

    Construction runs under the target default dtype and device, so a 3.6B bf16 Stage C never exists in fp32
    or on the host. Weights are filled by `randomize_`.
    """
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    StableCascadeUNet, PaellaVQModel = diffusers_classes()  # noqa: N806 (classes)
    dtypes = dtypes or {}
    out = CascadeComponents(config=config)

    def build(stage: str, factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        with _default_dtype_and_device(dtypes.get(stage, torch.float32), device):
            module = factory()
        return randomize_(module.eval().requires_grad_(False), seed=seed + len(stage))

    if "text_encoder" in stages:
        te = CLIPTextConfig(**vars(config.text_encoder))
        out.tokenizer = build_tokenizer(config.text_encoder)
        out.text_encoder = build("text_encoder", lambda: CLIPTextModelWithProjection(te))
    if "image_encoder" in stages and config.image_encoder is not None:
        ie = CLIPVisionConfig(**vars(config.image_encoder))
        out.image_encoder = build("image_encoder", lambda: CLIPVisionModelWithProjection(ie))
    if "stage_c" in stages:
        out.stage_c = build("stage_c", lambda: StableCascadeUNet(**config.stage_c.to_diffusers()))
    if "stage_b" in stages:
        out.stage_b = build("stage_b", lambda: StableCascadeUNet(**config.stage_b.to_diffusers()))
    if "stage_a" in stages:
        out.stage_a = build("stage_a", lambda: PaellaVQModel(**config.stage_a.to_diffusers()))
    return out


@contextlib.contextmanager
def _default_dtype_and_device(dtype: torch.dtype, device: str | torch.device) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)
