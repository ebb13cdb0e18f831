"""Optimization profiles of an engine, derived from the stage descriptions, and the check that a request fits.

An engine is built for a `BuildShapes`: a range of image sizes, a range of images per call, whether guided
stages see the doubled (conditional + unconditional) batch, and how many image prompts Stage C takes (1, the
zeros of a text-only call or one image, unless built for more). `StageSpec.profile` turns that into min/opt/max
shapes per input; the same `BuildShapes`, stored in the engine's manifest, lets the runtime refuse a request
outside it with the exact flag to rebuild with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cascade_trt.errors import ShapeError
from cascade_trt.stages import BatchRange, Profile, SizeRange, StageSpec


@dataclass(frozen=True)
class BuildShapes:
    """What an engine is built to serve: image sizes (px), images per call, guidance, and the min/opt/max
    number of image prompts (Stage C's `clip_img` axis)."""

    sizes: SizeRange
    batches: BatchRange
    guidance: bool = True
    image_prompts: tuple[int, int, int] = (1, 1, 1)

    def __post_init__(self) -> None:
        lo, opt, hi = self.image_prompts
        if not 1 <= lo <= opt <= hi:
            raise ShapeError(f"image prompts must satisfy 1 <= min <= opt <= max, got {self.image_prompts}")

    def profiles(self, spec: StageSpec) -> dict[str, Profile]:
        return spec.profile(
            self.sizes, self.batches, guidance=self.guidance, image_prompts=self.image_prompts
        )

    def batch_scale(self, spec: StageSpec) -> int:
        """How many model rows one image is: 2 for a guided stage under guidance (cond + uncond), else 1."""
        return 2 if (self.guidance and spec.guided) else 1

    def to_json(self) -> dict[str, Any]:
        s, b = self.sizes, self.batches
        return {
            "height": [s.min_height, s.opt_height, s.max_height],
            "width": [s.min_width, s.opt_width, s.max_width],
            "batch": [b.min, b.opt, b.max],
            "guidance": self.guidance,
            "image_prompts": list(self.image_prompts),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildShapes:
        (h0, h1, h2), (w0, w1, w2), (b0, b1, b2) = data["height"], data["width"], data["batch"]
        prompts = tuple(data.get("image_prompts", (1, 1, 1)))  # engines built before the axis existed: 1
        return cls(SizeRange(h0, h1, h2, w0, w1, w2), BatchRange(b0, b1, b2), bool(data["guidance"]), prompts)


def profiles_to_json(profiles: dict[str, Profile]) -> dict[str, dict[str, list[int]]]:
    return {
        name: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for name, p in profiles.items()
    }


def profiles_from_json(data: dict[str, dict[str, list[int]]]) -> dict[str, Profile]:
    return {name: Profile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"])) for name, p in data.items()}


def size_flags(sizes: SizeRange) -> str:
    """The `cascade-trt build` flags that give this size range."""
    s = sizes
    if (s.min_height, s.max_height) == (s.opt_height, s.opt_height) and s.min_width == s.max_width:
        return f"--static {s.opt_height}x{s.opt_width}"
    if (s.min_height, s.opt_height, s.max_height) == (s.min_width, s.opt_width, s.max_width):
        return f"--min-size {s.min_height} --opt-size {s.opt_height} --max-size {s.max_height}"
    return (
        f"--min-size {min(s.min_height, s.min_width)} --opt-size {s.opt_height} "
        f"--max-size {max(s.max_height, s.max_width)}"
    )


def check_request(
    spec: StageSpec,
    shapes: BuildShapes,
    batch: int,
    height: int,
    width: int,
    *,
    engine: str,
    image_prompts: int = 1,
) -> None:
    """ShapeError, naming the flag to rebuild with, when (model batch, height, width, image prompts) is outside
    the engine."""
    low, high = shapes.image_prompts[0], shapes.image_prompts[2]
    if spec.image_prompted and not low <= image_prompts <= high:
        raise ShapeError(
            f"{engine} takes {low}-{high} image prompts, asked {image_prompts}: rebuild it with "
            f"--max-image-prompts {image_prompts}",
            argument="images",
        )
    scale = shapes.batch_scale(spec)
    lo, hi = shapes.batches.min, shapes.batches.max * scale
    if not lo <= batch <= hi:
        per = f" ({shapes.batches.max} images x 2 for guidance)" if scale == 2 else ""
        fix = f"--max-batch {math.ceil(batch / scale)}" if batch > hi else f"a minimum batch of {batch}"
        raise ShapeError(f"{engine} takes a batch of {lo}-{hi}{per}, asked {batch}: rebuild it with {fix}")
    if not spec.spatial or shapes.sizes.contains(height, width):
        return
    s = shapes.sizes
    need_min = min(height, width, s.min_height, s.min_width)
    need_max = max(height, width, s.max_height, s.max_width)
    fixes = []
    if height < s.min_height or width < s.min_width:
        fixes.append(f"--min-size {need_min}")
    if height > s.max_height or width > s.max_width:
        fixes.append(f"--max-size {need_max}")
    built = _range_text(s)
    raise ShapeError(
        f"{engine} was built for {built}, asked {height}x{width}: rebuild it with {' '.join(fixes)} "
        f"(was {size_flags(s)})"
    )


def check_profiles(
    spec: StageSpec,
    profiles: dict[str, Profile],
    batch: int,
    height: int,
    width: int,
    *,
    engine: str,
    image_prompts: int = 1,
) -> None:
    """ShapeError when a concrete input shape falls outside the engine's stored profile (the final word)."""
    for t in spec.inputs:
        shape = t.resolve(batch, height, width, image_prompts=image_prompts)
        profile = profiles.get(t.name)
        if profile is not None and not profile.contains(shape):
            raise ShapeError(
                f"{engine}: {t.name} of shape {list(shape)} is outside the engine's profile "
                f"{list(profile.min)}..{list(profile.max)}: rebuild it for this size and batch"
            )


def _range_text(s: SizeRange) -> str:
    if (s.min_height, s.max_height) == (s.min_width, s.max_width):
        return f"{s.min_height}-{s.max_height} px" if s.min_height != s.max_height else f"{s.min_height} px"
    return f"heights {s.min_height}-{s.max_height} px and widths {s.min_width}-{s.max_width} px"
