"""The one interface every backend implements: a stage runner over static, named device tensors.

The denoising loop (cascade_trt.loop) owns the schedule, guidance and noise; a runner only runs one stage's
model. For a given shape the loop asks the runner once for its `Bindings` (static input and output tensors,
bound to the backend once), writes the inputs in place, and calls `execute` for every step. Because the
tensors never move, a step can be captured in a CUDA graph and replayed, whatever the backend:

    bindings = runner.allocate(batch, height, width)   # once per shape (and number of image prompts)
    bindings.inputs["sample"].copy_(latents)           # the loop writes inputs in place...
    runner.execute(bindings)                           # ...runs the model on the current stream...
    bindings.outputs["prediction"]                     # ...and reads the output in place

`execute` must be asynchronous with respect to the host (no sync, no allocation visible to the caller's
stream ordering) when `capturable` is True. `artifact_dir` is how a backend that runs files from disk takes the
directory its options require.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cascade_trt.errors import ConfigError
from cascade_trt.stages import COMPUTE, StageSpec

_FIXED_DTYPES = {"int64": torch.int64, "int32": torch.int32, "float32": torch.float32}


@dataclass
class Bindings:
    """Static tensors of one stage at one shape, plus whatever the backend bound them to."""

    batch: int
    height: int
    width: int
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    state: Any = field(default=None, repr=False)  # backend-specific: an ORT IOBinding, a TRT context...


class StageRunner(ABC):
    """Runs one stage. Subclasses implement `execute` and, when they must bind buffers, `bind`."""

    #: whether `execute` can be captured in a CUDA graph (False for backends that sync with the host)
    capturable: bool = False

    def __init__(self, spec: StageSpec, dtype: torch.dtype, device: torch.device | str) -> None:
        self.spec = spec
        self.dtype = dtype
        self.device = torch.device(device)

    def tensor_dtype(self, token: str) -> torch.dtype:
        return self.dtype if token == COMPUTE else _FIXED_DTYPES[token]

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the stage computes in. The loop draws noise and rounds timesteps in it, as diffusers does
        in the model's dtype; it differs from `dtype` (that of the IO) only for an engine with fp32 IO."""
        return self.dtype

    def check_shape(self, batch: int, height: int, width: int, *, image_prompts: int = 1) -> None:
        """Raise `ShapeError` when the runner cannot run this shape (outside an engine's profile, say)."""
        return None

    def allocate(self, batch: int, height: int, width: int, *, image_prompts: int = 1) -> Bindings:
        """Static buffers for one shape, bound to the backend once."""
        self.check_shape(batch, height, width, image_prompts=image_prompts)
        shapes = self.spec.shapes(batch, height, width, image_prompts=image_prompts)

        def empty(t) -> torch.Tensor:
            return torch.empty(shapes[t.name], dtype=self.tensor_dtype(t.dtype), device=self.device)

        bindings = Bindings(
            batch=batch,
            height=height,
            width=width,
            inputs={t.name: empty(t) for t in self.spec.inputs},
            outputs={t.name: empty(t) for t in self.spec.outputs},
        )
        bindings.state = self.bind(bindings)
        return bindings

    def bind(self, bindings: Bindings) -> Any:
        """Bind the static tensors to the backend; the result is kept as `bindings.state`."""
        return None

    def to(self, device: torch.device) -> None:
        """Run on `device` from now on. Runners of files bound to a device at load (ONNX Runtime sessions,
        TensorRT engines) cannot move: load them on the device instead."""
        if torch.device(device) != self.device:
            raise ConfigError(
                f"the {self.spec.name} runner was loaded on {self.device} and cannot move to {device}: pass "
                f"device={str(device)!r} to from_pretrained",
                argument="device",
            )

    @abstractmethod
    def execute(self, bindings: Bindings) -> None:
        """Read `bindings.inputs`, write `bindings.outputs`, on the current CUDA stream (or synchronously on CPU)."""


def artifact_dir(value: str | Path | None, option: str, needed: str) -> Path:
    """The directory of files a backend runs, as a Path; when it is missing, a ConfigError that says why it is
    `needed` and names the option and its flag."""
    if value is None:
        raise ConfigError(f"{needed}: pass {option}=<directory> (--{option.replace('_', '-')})")
    return Path(value)
