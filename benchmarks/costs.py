"""Compute cost of each stage, as data, and the compute floor of a benchmark run.

The per-forward costs were counted with torch's FLOP counter on the random-weight architectures (at
1024x1024, one image) and are restated here per *model sample*: Stage C's 8.16 TFLOP for the guided batch of
2 is 4.08 per sample, the text encoder's 0.20 for prompt + negative is 0.10 per sequence. A run's cost scales
them by:

* steps (one forward per scheduler step),
* the batch the model sees (images x 2 where that stage runs classifier-free guidance),
* image area relative to 1024x1024 for the spatial stages. This is exact for convolutions and projections and
  slightly over-counts attention below 1024^2 (attention is quadratic in tokens), so floors at other sizes are
  approximate; the reference GPU run is at 1024^2 where the table is exact.

Only the released architectures (`full`, `lite`) have costs; for anything else the floor is not computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cascade_trt.configs import CascadeConfig

REFERENCE_AREA = 1024 * 1024

# TFLOP per forward per model sample at 1024x1024 (text encoder: per 77-token sequence).
FORWARD_TFLOP: dict[str, dict[str, float]] = {
    "full": {"text_encoder": 0.10, "stage_c": 4.08, "stage_b": 6.17, "stage_a": 2.17},
    "lite": {"text_encoder": 0.10, "stage_c": 1.175, "stage_b": 2.22, "stage_a": 2.17},
}


def cost_key(config: CascadeConfig) -> str | None:
    """The cost-table entry of an architecture (a checkpoint's config counts as `full` if its UNets are)."""
    from cascade_trt.configs import PRESETS

    def shape_of(c: CascadeConfig) -> tuple:
        # The fields that set the compute; dropout and the like do not.
        fields = ("block_out_channels", "down_num_layers_per_block", "up_num_layers_per_block", "patch_size")
        fields += ("num_attention_heads", "conditioning_dim", "up_blocks_repeat_mappers")
        return tuple(tuple(getattr(unet, f) for f in fields) for unet in (c.stage_c, c.stage_b))

    for name in FORWARD_TFLOP:
        if shape_of(PRESETS[name]) == shape_of(config):
            return name
    return None


@dataclass(frozen=True)
class RunShape:
    """What one end-to-end call computes: the numbers the cost scales with."""

    height: int
    width: int
    batch: int
    steps_c: int
    steps_b: int
    guidance_c: float
    guidance_b: float


def stage_tflop(preset: str, shape: RunShape) -> dict[str, float] | None:
    """TFLOP of each stage (text_encoder, stage_c, stage_b, stage_a) for one call; None without a cost table."""
    table = FORWARD_TFLOP.get(preset)
    if table is None:
        return None
    area = shape.height * shape.width / REFERENCE_AREA
    # diffusers' semantics: guidance is on only above 1 (torch.lerp with w <= 1 is skipped).
    cfg_c = 2 if shape.guidance_c > 1 else 1
    cfg_b = 2 if shape.guidance_b > 1 else 1
    # The negative prompt is encoded whenever either stage guides.
    sequences = 2 if max(cfg_c, cfg_b) == 2 else 1
    return {
        "text_encoder": table["text_encoder"] * shape.batch * sequences,
        "stage_c": table["stage_c"] * shape.batch * cfg_c * shape.steps_c * area,
        "stage_b": table["stage_b"] * shape.batch * cfg_b * shape.steps_b * area,
        "stage_a": table["stage_a"] * shape.batch * area,
    }


def floor_seconds(preset: str, shape: RunShape, peak_tflops: float) -> dict[str, float] | None:
    """Seconds each stage (and `end_to_end`) would take at the matrix peak: the compute floor."""
    tflop = stage_tflop(preset, shape)
    if tflop is None or peak_tflops <= 0:
        return None
    out = {stage: t / peak_tflops for stage, t in tflop.items()}
    out["end_to_end"] = sum(out.values())
    return out
