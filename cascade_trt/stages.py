"""Each stage of the cascade described once, as data: IO names, dtypes, symbolic shapes, profiles.

Export, engine build, the runtime and the benchmarks all read these descriptions, so names and shapes
cannot drift between them.

Shapes are tuples of tokens, parsed once into `Axis` values (`TensorSpec.axes`) that every reader uses:
  * an int is a fixed size;
  * ``"B"`` is the batch the stage's model sees (doubled under classifier-free guidance for Stage C/B);
  * ``"<k>h"`` / ``"<k>w"`` is k times the image height / width in units of 128 px;
  * ``"N"`` is the number of image prompts: Stage C's `clip_img` holds one CLIP image embedding per image
    given for an image variation, side by side (diffusers concatenates them along that axis), and one of
    zeros without images.

A shape is resolved for a batch, an image size and a number of image prompts (1 unless said), the extents
of one request; ONNX dims, TensorRT profiles, static buffers and captured graphs are all keyed by them.

Image sides must be multiples of 128 px: then diffusers' shape arithmetic (Stage C latent
``ceil(H / 42.67)``, Stage B latent ``int(Hc * 10.67)``) is exactly linear, a 1024 px side giving a
24-wide Stage C latent (3 per 128 px) and a 256-wide Stage B latent (32 per 128 px). Other sides give
Stage B sizes that `PixelUnshuffle` and the up-path skips cannot take, so they are refused up front.
A checkpoint with other constants (diffusers' test decoder has a `latent_dim_scale` of 4: a 1024 px
request decodes to a 384 px image) is described the same way, as long as its arithmetic is linear too.

A configuration may describe one side of the cascade only (a prior, or a decoder: `CascadeConfig`'s absent
parts are None); `stage_specs` then describes the stages that side has.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from cascade_trt.configs import (
    CascadeConfig,
    ImageEncoderConfig,
    TextEncoderConfig,
    UNetConfig,
    VQGANConfig,
)
from cascade_trt.errors import ConfigError, ShapeError

SIZE_UNIT = 128
STAGE_NAMES = ("text_encoder", "image_encoder", "stage_c", "stage_b", "stage_a")
PIPELINE_STAGES = ("text_encoder", "stage_c", "stage_b", "stage_a")  # what text to image runs
COMPUTE = "compute"  # dtype token: the stage's precision (fp32, fp16 or bf16)

IMAGE_PROMPTS = "N"  # the token of the image-prompt axis
MAX_UNITS = 64  # 128 px units per side (8192 px): the range the shape arithmetic is checked over

_TOKEN = re.compile(r"^(\d*)([hw])$")


@dataclass(frozen=True)
class Axis:
    """One shape token, parsed: its size is `factor` times the batch, the image height or width in 128 px
    units, the number of image prompts, or 1 (a fixed axis, whose factor is its size)."""

    token: int | str
    kind: Literal["fixed", "batch", "h", "w", "image_prompts"]
    factor: int

    @classmethod
    def parse(cls, token: int | str) -> Axis:
        if isinstance(token, int) and not isinstance(token, bool):
            return cls(token, "fixed", token)
        if token == "B":
            return cls(token, "batch", 1)
        if token == IMAGE_PROMPTS:
            return cls(token, "image_prompts", 1)
        m = _TOKEN.match(token) if isinstance(token, str) else None
        if m is None:
            raise ConfigError(
                f"bad shape token {token!r}: use an int, 'B', '{IMAGE_PROMPTS}', or '<k>h' / '<k>w'"
            )
        return cls(token, m.group(2), int(m.group(1) or 1))  # type: ignore[arg-type]

    @property
    def name(self) -> str | None:
        """The dim name in ONNX graphs, manifests and profiles ("batch", "3h", "image_prompts"); None for a
        fixed axis."""
        if self.kind == "fixed":
            return None
        return str(self.token) if self.spatial else self.kind

    @property
    def spatial(self) -> bool:
        return self.kind in ("h", "w")

    def size(self, batch: int, h_units: int, w_units: int, image_prompts: int = 1) -> int:
        count = {"fixed": 1, "batch": batch, "h": h_units, "w": w_units, "image_prompts": image_prompts}
        return self.factor * count[self.kind]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str = COMPUTE  # COMPUTE, or a fixed dtype name ("int64")
    axes: tuple[Axis, ...] = field(init=False, repr=False, compare=False)  # `shape`, parsed

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", tuple(Axis.parse(token) for token in self.shape))

    def resolve(self, batch: int, height: int, width: int, *, image_prompts: int = 1) -> tuple[int, ...]:
        """Concrete shape for a stage batch, an image size in pixels and a number of image prompts."""
        h, w = check_size(height, width)
        return tuple(axis.size(batch, h, w, image_prompts) for axis in self.axes)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> symbolic name, for every axis that is not fixed."""
        return {i: axis.name for i, axis in enumerate(self.axes) if axis.name is not None}


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # True where the pipeline runs the conditional and unconditional halves in one batch.
    guided: bool = False

    @property
    def spatial(self) -> bool:
        """Whether the stage's shapes depend on the image size (an input has an h or w axis)."""
        return any(axis.spatial for t in self.inputs for axis in t.axes)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def tensors(self) -> tuple[TensorSpec, ...]:
        return self.inputs + self.outputs

    def tensor(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(
            f"{self.name} has no tensor {name!r}; it has {', '.join(t.name for t in self.tensors)}"
        )

    @property
    def image_prompted(self) -> bool:
        """Whether the stage's shapes depend on the number of image prompts (an input has an N axis)."""
        return any(axis.kind == "image_prompts" for t in self.inputs for axis in t.axes)

    def shapes(
        self, batch: int, height: int, width: int, *, image_prompts: int = 1
    ) -> dict[str, tuple[int, ...]]:
        """Concrete shapes of every input and output, for the batch the model sees."""
        return {t.name: t.resolve(batch, height, width, image_prompts=image_prompts) for t in self.tensors}

    def profile(
        self,
        sizes: SizeRange,
        batches: BatchRange,
        *,
        guidance: bool = True,
        image_prompts: tuple[int, int, int] = (1, 1, 1),
    ) -> dict[str, Profile]:
        """min/opt/max shape of each input, for a range of image sizes, prompt batches and image prompts.

        Under guidance a guided stage sees twice the batch; the minimum stays the unguided batch so one engine
        serves both.
        """
        scale = 2 if (guidance and self.guided) else 1
        lo, opt, hi = batches.min, batches.opt * scale, batches.max * scale
        if not self.spatial:
            sizes = SizeRange.static(SIZE_UNIT, SIZE_UNIT)
        n_lo, n_opt, n_hi = image_prompts
        out = {}
        for t in self.inputs:
            out[t.name] = Profile(
                min=t.resolve(lo, sizes.min_height, sizes.min_width, image_prompts=n_lo),
                opt=t.resolve(opt, sizes.opt_height, sizes.opt_width, image_prompts=n_opt),
                max=t.resolve(hi, sizes.max_height, sizes.max_width, image_prompts=n_hi),
            )
        return out


@dataclass(frozen=True)
class Profile:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def contains(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True)
        )


@dataclass(frozen=True)
class SizeRange:
    """Image sides in pixels (multiples of 128), per side, for building profiles."""

    min_height: int
    opt_height: int
    max_height: int
    min_width: int
    opt_width: int
    max_width: int

    def __post_init__(self) -> None:
        check_size(self.min_height, self.min_width)
        check_size(self.opt_height, self.opt_width)
        check_size(self.max_height, self.max_width)
        ok_h = self.min_height <= self.opt_height <= self.max_height
        ok_w = self.min_width <= self.opt_width <= self.max_width
        if not (ok_h and ok_w):
            raise ShapeError(f"size range must satisfy min <= opt <= max on each side, got {self}")

    @classmethod
    def square(cls, min: int = 512, opt: int = 1024, max: int = 1536) -> SizeRange:  # noqa: A002
        return cls(min, opt, max, min, opt, max)

    @classmethod
    def static(cls, height: int, width: int) -> SizeRange:
        return cls(height, height, height, width, width, width)

    def contains(self, height: int, width: int) -> bool:
        return self.min_height <= height <= self.max_height and self.min_width <= width <= self.max_width


@dataclass(frozen=True)
class BatchRange:
    """Images per call (prompts × images per prompt), before guidance doubles it."""

    min: int = 1
    opt: int = 1
    max: int = 4

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise ShapeError(f"batch range must satisfy 1 <= min <= opt <= max, got {self}")


def check_size(height: int, width: int) -> tuple[int, int]:
    """Validate an image size; return it in 128 px units. The error names the side (`argument`)."""
    for side_name, side in (("height", height), ("width", width)):
        if not isinstance(side, int) or isinstance(side, bool) or side < SIZE_UNIT or side % SIZE_UNIT:
            below = (
                max(SIZE_UNIT, (int(side) // SIZE_UNIT) * SIZE_UNIT) if isinstance(side, int) else SIZE_UNIT
            )
            raise ShapeError(
                f"{side_name}={side!r} is not a positive multiple of {SIZE_UNIT} px: Stable Cascade's latent "
                f"arithmetic is only exact there. Use {below} or {below + SIZE_UNIT}.",
                argument=side_name,
            )
    return height // SIZE_UNIT, width // SIZE_UNIT


def latent_sizes(config: CascadeConfig, height: int, width: int) -> dict[str, tuple[int, int]]:
    """Spatial sizes of each stage, by diffusers' own formulas (prior `prepare_latents`, decoder
    `prepare_latents`); the image's too when the configuration has a Stage A."""
    check_size(height, width)
    hc = math.ceil(height / config.resolution_multiple)
    wc = math.ceil(width / config.resolution_multiple)
    hb, wb = int(hc * config.latent_dim_scale), int(wc * config.latent_dim_scale)
    sizes = {"stage_c": (hc, wc), "stage_b": (hb, wb)}
    if config.stage_a is not None:
        up = stage_a_upscale(config)
        sizes["image"] = (hb * up, wb * up)
    return sizes


def stage_a_upscale(config: CascadeConfig) -> int:
    assert config.stage_a is not None
    return config.stage_a.up_down_scale_factor * 2 ** (config.stage_a.levels - 1)


def cells_per_unit(config: CascadeConfig) -> tuple[int, int]:
    """Stage C and Stage B latent cells per 128 px of image side: diffusers' arithmetic, checked to be linear
    (what every `<k>h` token assumes) over every side up to `MAX_UNITS` units."""
    kc = math.ceil(SIZE_UNIT / config.resolution_multiple)
    kb = int(kc * config.latent_dim_scale)
    for units in range(1, MAX_UNITS + 1):
        hc = math.ceil(units * SIZE_UNIT / config.resolution_multiple)
        hb = int(hc * config.latent_dim_scale)
        if (hc, hb) != (kc * units, kb * units):
            raise ConfigError(
                f"{config.name}: resolution_multiple {config.resolution_multiple} and latent_dim_scale "
                f"{config.latent_dim_scale} give latent sizes that are not proportional to the image side "
                f"({units * SIZE_UNIT} px: {hc} and {hb} cells): cascade_trt cannot describe them"
            )
    return kc, kb


def stage_specs(config: CascadeConfig) -> dict[str, StageSpec]:
    """The stages of one cascade configuration, keyed by name: those of the parts it has (a prior alone has
    no Stage B or A; the image encoder only where the prior has one)."""
    kc, kb = cells_per_unit(config)
    seq = config.text_seq_len
    specs = {"text_encoder": _text_encoder_spec(config.text_encoder, seq)}
    if config.image_encoder is not None:
        specs["image_encoder"] = _image_encoder_spec(config.image_encoder)
    if config.stage_c is not None:
        specs["stage_c"] = _stage_c_spec(config.stage_c, kc, seq)
    if config.stage_b is not None:
        specs["stage_b"] = _stage_b_spec(config.stage_b, kc, kb)
    if config.stage_a is not None:
        specs["stage_a"] = _stage_a_spec(config.stage_a, kb, kb * stage_a_upscale(config))
    return specs


def _text_encoder_spec(te: TextEncoderConfig, seq: int) -> StageSpec:
    # clip_text_pooled = text_embeds.unsqueeze(1); clip_text = hidden_states[-1] (before the final LayerNorm).
    return StageSpec(
        "text_encoder",
        inputs=(
            TensorSpec("input_ids", ("B", seq), "int64"),
            TensorSpec("attention_mask", ("B", seq), "int64"),
        ),
        outputs=(
            TensorSpec("clip_text_pooled", ("B", 1, te.projection_dim)),
            TensorSpec("clip_text", ("B", seq, te.hidden_size)),
        ),
        guided=False,  # prompts and negatives are two calls (`encode_prompt`), never one batch
    )


def _image_encoder_spec(ie: ImageEncoderConfig) -> StageSpec:
    # One image per row; the prior sets the rows of several image prompts side by side (the N axis).
    return StageSpec(
        "image_encoder",
        inputs=(TensorSpec("pixel_values", ("B", 3, ie.image_size, ie.image_size)),),
        outputs=(TensorSpec("clip_img", ("B", 1, ie.projection_dim)),),
    )


def _stage_c_spec(c: UNetConfig, kc: int, seq: int) -> StageSpec:
    return StageSpec(
        "stage_c",
        inputs=(
            TensorSpec("sample", ("B", c.in_channels, f"{kc}h", f"{kc}w")),
            TensorSpec("timestep_ratio", ("B",)),
            TensorSpec("clip_text_pooled", ("B", 1, c.clip_text_pooled_in_channels)),
            TensorSpec("clip_text", ("B", seq, c.clip_text_in_channels)),
            TensorSpec("clip_img", ("B", IMAGE_PROMPTS, c.clip_image_in_channels)),
        ),
        outputs=(TensorSpec("prediction", ("B", c.out_channels, f"{kc}h", f"{kc}w")),),
        guided=True,
    )


def _stage_b_spec(b: UNetConfig, kc: int, kb: int) -> StageSpec:
    return StageSpec(
        "stage_b",
        inputs=(
            TensorSpec("sample", ("B", b.in_channels, f"{kb}h", f"{kb}w")),
            TensorSpec("timestep_ratio", ("B",)),
            TensorSpec("clip_text_pooled", ("B", 1, b.clip_text_pooled_in_channels)),
            TensorSpec("effnet", ("B", b.effnet_in_channels, f"{kc}h", f"{kc}w")),
        ),
        outputs=(TensorSpec("prediction", ("B", b.out_channels, f"{kb}h", f"{kb}w")),),
        guided=True,
    )


def _stage_a_spec(a: VQGANConfig, kb: int, ka: int) -> StageSpec:
    # Stage A takes Stage B's latents as they come out of the loop; the graph applies the VQGAN scale factor
    # and the final clamp to [0, 1] itself.
    return StageSpec(
        "stage_a",
        inputs=(TensorSpec("latents", ("B", a.latent_channels, f"{kb}h", f"{kb}w")),),
        outputs=(TensorSpec("images", ("B", a.out_channels, f"{ka}h", f"{ka}w")),),
    )


def select_stages(config: CascadeConfig, names: list[str] | tuple[str, ...] | None) -> dict[str, StageSpec]:
    """The specs named (all of them for None), with a clear error for an unknown or absent name."""
    specs = stage_specs(config)
    if not names:
        return specs
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}: choose from {', '.join(STAGE_NAMES)}")
    absent = [n for n in names if n not in specs]
    if absent:
        why = (
            "the prior checkpoint has no image encoder"
            if absent == ["image_encoder"]
            else "the checkpoints given do not have them: pass the prior and the decoder"
        )
        raise ConfigError(f"{config.name} has no {', '.join(absent)} ({why})")
    return {n: specs[n] for n in names}
