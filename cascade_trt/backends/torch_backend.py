"""The `torch` backend: runs the stage wrappers of `cascade_trt.modules`, eagerly or through `torch.compile`.

The wrappers take exactly the spec's inputs, so this runner is the reference every other backend is compared
with, and the exported ONNX graphs compute the same function by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from cascade_trt.backends.base import Bindings, StageRunner
from cascade_trt.components import CascadeComponents
from cascade_trt.errors import ConfigError
from cascade_trt.modules import stage_module
from cascade_trt.stages import StageSpec


@dataclass(frozen=True)
class TorchOptions:
    """What the torch backend takes besides the modules."""

    compile: bool = False  # torch.compile every stage (Inductor), one specialised graph per shape


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
        if compile:
            allow_recompiles(RECOMPILE_LIMIT)
        self.forward = torch.compile(self.module, dynamic=False) if compile else self.module

    def to(self, device: torch.device) -> None:
        self.module.to(device)  # in place: `forward` (compiled or not) wraps this module
        self.device = torch.device(device)

    def execute(self, bindings: Bindings) -> None:
        with torch.no_grad():
            result = self.forward(*(bindings.inputs[name] for name in self.spec.input_names))
        results = result if isinstance(result, tuple) else (result,)
        for name, value in zip(self.spec.output_names, results, strict=True):
            bindings.outputs[name].copy_(value)


# Shapes one compiled stage may specialise for. Dynamo's default (8) counts every (model batch, height, width)
# of a stage's wrapper class across all its instances, guided and unguided apart; past it, Dynamo warns once
# and runs the stage eagerly from then on, which a size sweep would silently report as compiled.
RECOMPILE_LIMIT = 64


def allow_recompiles(limit: int) -> None:
    """Raise Dynamo's per-function recompile limit to at least `limit` (a process-wide setting)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    setattr(config, name, max(int(getattr(config, name)), limit))


def load_runners(
    specs: Mapping[str, StageSpec],
    *,
    options: TorchOptions,
    device: torch.device | str,
    dtypes: Mapping[str, torch.dtype],
    components: CascadeComponents | None = None,
) -> dict[str, TorchRunner]:
    """A runner per stage over its wrapper module, cast in place to the stage's dtype (`nn.Module.to`: a 3.6B
    Stage C is never held twice)."""
    if components is None:
        raise ConfigError(
            "the torch backend runs PyTorch modules: pass the components (load_components or random_components)"
        )
    runners = {}
    for name, spec in specs.items():
        module = stage_module(components, name).to(device=device, dtype=dtypes[name])
        runners[name] = TorchRunner(spec, module, dtype=dtypes[name], device=device, compile=options.compile)
    return runners
