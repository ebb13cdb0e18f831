"""The `torch` backend: runs the stage wrappers of `cascade_trt.modules`, eagerly or through `torch.compile`.

The wrappers take exactly the spec's inputs, so this runner is the reference every other backend is compared
with, and the exported ONNX graphs compute the same function by construction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cascade_trt.backends.base import Bindings, StageRunner
from cascade_trt.stages import StageSpec


class TorchRunner(StageRunner):
    """One stage's wrapper module on its device. `execute` launches kernels only: capturable on CUDA."""

    capturable = True

    def __init__(
        self,
        spec: StageSpec,
        module: nn.Module,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        compile: bool = False,  # noqa: A002 (the public option's name)
    ) -> None:
        super().__init__(spec, dtype, device)
        self.module = module.to(self.device).eval().requires_grad_(False)
        # dynamic=False: each (batch, size) gets its own specialised graph, as the CUDA-graph cache does.
        self.forward = torch.compile(self.module, dynamic=False) if compile else self.module

    def execute(self, bindings: Bindings) -> None:
        with torch.no_grad():
            result = self.forward(*(bindings.inputs[name] for name in self.spec.input_names))
        results = result if isinstance(result, tuple) else (result,)
        for name, value in zip(self.spec.output_names, results, strict=True):
            bindings.outputs[name].copy_(value)


def create_runner(
    spec: StageSpec,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    module: nn.Module | None = None,
    compile: bool = False,  # noqa: A002
    **_: Any,
) -> TorchRunner:
    """Registry factory: needs the stage's wrapper module (`cascade_trt.modules.stage_module`)."""
    if module is None:
        raise ValueError(f"the torch backend runs modules: pass the {spec.name} wrapper module")
    return TorchRunner(spec, module, dtype=dtype, device=device, compile=compile)
