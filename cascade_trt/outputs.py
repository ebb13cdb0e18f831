"""What the pipelines return, shaped as diffusers' outputs, and the image conversions, without diffusers.

`ImagePipelineOutput` and `CascadePriorPipelineOutput` behave as diffusers' `BaseOutput` subclasses do: fields
by attribute (`.images`), by name (`out["images"]`, `out.get("prompt_embeds")`) or by position (`out[0]`),
`to_tuple()`, and a field that is None is not a key (so positions skip it). Like diffusers' outputs they are
not unpacked directly: `return_dict=False` gives the tuple.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cascade_trt.errors import ConfigError


class PipelineOutput(Mapping):
    """A dataclass whose non-None fields are also its mapping and its tuple (diffusers' `BaseOutput`)."""

    def _present(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]  # type: ignore[arg-type]

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self._present():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._present())

    def __len__(self) -> int:
        return len(self._present())

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._present())


@dataclass
class ImagePipelineOutput(PipelineOutput):
    """The images: a list of PIL images, an (N, H, W, 3) float array, an (N, 3, H, W) tensor, or latents."""

    images: Any


@dataclass
class CascadePriorPipelineOutput(PipelineOutput):
    """The prior's result, as diffusers' `StableCascadePriorPipelineOutput`: Stage C latents for the decoder
    (`image_embeddings`) and the text embeddings, repeated per image (the negative ones None without guidance)."""

    image_embeddings: torch.Tensor | np.ndarray
    prompt_embeds: torch.Tensor | np.ndarray
    prompt_embeds_pooled: torch.Tensor
    negative_prompt_embeds: torch.Tensor | np.ndarray | None = None
    negative_prompt_embeds_pooled: torch.Tensor | None = None


IMAGE_TYPES = ("pil", "np", "pt", "latent")


def convert_images(images: torch.Tensor, output_type: str) -> Any:
    """diffusers' decoder conversion of (N, 3, H, W) images in [0, 1]: "pt" as is, "np" NHWC float32, "pil"
    through numpy."""
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).cpu().float().numpy()  # float(): numpy has no bf16
    if output_type == "np":
        return array
    if output_type == "pil":
        return numpy_to_pil(array)
    raise ConfigError(
        f"output_type={output_type!r}: choose one of {', '.join(IMAGE_TYPES)}", argument="output_type"
    )


def numpy_to_pil(images: np.ndarray) -> list[Any]:
    """(N, H, W, C) or (H, W, C) floats in [0, 1] to PIL images, rounded as diffusers rounds them."""
    from PIL import Image

    if images.ndim == 3:
        images = images[None, ...]
    pixels = (images * 255).round().astype("uint8")
    if pixels.shape[-1] == 1:  # grayscale
        return [Image.fromarray(p.squeeze(), mode="L") for p in pixels]
    return [Image.fromarray(p) for p in pixels]
