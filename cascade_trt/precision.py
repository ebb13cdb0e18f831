"""Precision per stage: one policy, read by export, engine build and the torch backend alike.

Stable Cascade's full Stage C overflows in fp16 (NaNs / black images: diffusers #6970, ComfyUI #2824, and
Stability's own model card); NVIDIA's demo ships it in bf16. Stage B, Stage A, the text and image encoders and
the lite Stage C are reported fp16-safe. `auto` therefore means bf16 for the full Stage C and fp16 for the rest
on a GPU. On a CPU it means bf16 for the torch backend where the CPU computes bf16 natively (AVX512-BF16 or
AMX: `devices.cpu_has_native_bf16`), and fp32 everywhere else: on CPUs without it, for ONNX Runtime's CPU
provider (no fp16/bf16 kernels for most ops) and so for exports made on a CPU, which are for that provider.

TensorRT 11 builds strongly typed networks only, so the precision must live in the ONNX graph: the policy is
applied when the graph is made (the module is exported in the policy's dtype), and the same dtypes applied to
the PyTorch modules give the torch backend identical precision.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from cascade_trt.configs import CascadeConfig
from cascade_trt.devices import cpu_has_native_bf16
from cascade_trt.errors import PrecisionError
from cascade_trt.stages import STAGE_NAMES

PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NAMES = {v: k for k, v in DTYPES.items()}


def fp16_unsafe_stages(config: CascadeConfig) -> frozenset[str]:
    """Stages known to overflow in fp16 for this architecture.

    The full prior (conditioning width 2048) is the one with reported overflow; the 1536-wide lite prior and
    the tiny test prior are not.
    """
    wide = config.stage_c is not None and config.stage_c.conditioning_dim >= 2048
    return frozenset({"stage_c"}) if wide else frozenset()


def precision_argument(
    precision: str | dict[str, str], torch_dtype: torch.dtype | None
) -> str | dict[str, str]:
    """`precision`, or diffusers' `torch_dtype=` (one dtype for every stage) in its place."""
    if torch_dtype is None:
        return precision
    if precision != "auto":
        raise PrecisionError(
            f"precision={precision!r} and torch_dtype={torch_dtype}: pass one of them", argument="torch_dtype"
        )
    if torch_dtype not in NAMES:
        raise PrecisionError(
            f"torch_dtype={torch_dtype}: cascade_trt runs {', '.join(map(str, NAMES))}",
            argument="torch_dtype",
        )
    return NAMES[torch_dtype]


@dataclass(frozen=True)
class PrecisionPolicy:
    """The precision of each stage, by name ("fp32", "fp16" or "bf16")."""

    stages: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for stage, precision in self.stages.items():
            if stage not in STAGE_NAMES:
                raise PrecisionError(
                    f"unknown stage {stage!r} in precision policy: use {', '.join(STAGE_NAMES)}"
                )
            if precision not in PRECISIONS:
                raise PrecisionError(f"{stage}: unknown precision {precision!r}: use {', '.join(PRECISIONS)}")

    def __getitem__(self, stage: str) -> str:
        return self.stages.get(stage, "fp32")

    def dtype(self, stage: str) -> torch.dtype:
        return DTYPES[self[stage]]

    def dtypes(self) -> dict[str, torch.dtype]:
        return {stage: DTYPES[p] for stage, p in self.stages.items()}

    @classmethod
    def resolve(
        cls,
        config: CascadeConfig,
        precision: str | dict[str, str] = "auto",
        *,
        device: str | torch.device = "cuda",
        target: str = "torch",
    ) -> PrecisionPolicy:
        """Turn a user's choice into a per-stage policy.

        `precision` is "auto", one precision for every stage, or a dict of stage -> precision (stages left out
        take "auto"). `target` is what runs (or is made from) the stages: "torch", "onnxruntime", "tensorrt"
        or "onnx" (an export). An explicit fp16 on a stage known to overflow is honoured with a warning. fp16
        or bf16 for ONNX Runtime on the CPU is refused: its CPU provider lacks those kernels.
        """
        on_cpu = torch.device(device).type == "cpu"
        unsafe = fp16_unsafe_stages(config)
        cpu_auto = "bf16" if on_cpu and target == "torch" and cpu_has_native_bf16() else "fp32"

        def auto(stage: str) -> str:
            if on_cpu:
                return cpu_auto
            return "bf16" if stage in unsafe else "fp16"

        chosen = precision if isinstance(precision, dict) else dict.fromkeys(STAGE_NAMES, precision)
        stages = {}
        for stage in STAGE_NAMES:
            value = chosen.get(stage, "auto")
            if value == "auto":
                value = auto(stage)
            elif value not in PRECISIONS:
                raise PrecisionError(
                    f"unknown precision {value!r} for {stage}: use auto, {', '.join(PRECISIONS)}"
                )
            if value == "fp16" and stage in unsafe:
                warnings.warn(
                    f"{stage} of {config.name} is known to overflow in fp16 (NaN or black images); "
                    "bf16 is the safe choice (--precision auto)",
                    stacklevel=2,
                )
            if on_cpu and value != "fp32" and target == "onnxruntime":
                raise PrecisionError(
                    f"{stage}: {value} cannot run on ONNX Runtime's CPU provider (no {value} kernels for most ops): "
                    "on a CPU pass --precision fp32 (or auto) with graphs exported in fp32, or use a CUDA/TensorRT "
                    "provider"
                )
            stages[stage] = value
        return cls(stages)
