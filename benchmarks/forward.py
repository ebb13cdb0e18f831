"""Bare model forwards of the two denoisers, to split a loop step into model time and loop overhead.

A loop step is the model forward plus everything around it (writing inputs, guidance mix, scheduler update,
progress bar, host syncs). Timing one forward of the same model at the same shape with static inputs, and
nothing else, gives the overhead per step as `1 - forward / step`. The forward is the backend's own: the
UNet module for diffusers, the stage runner (`allocate` once, then `execute`) for the runtime backends.

On CUDA the runtime replays the whole step as one graph while the bare forward launches eagerly, so there the
overhead can come out negative: the graph saved more launch time than the step adds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cascade_trt.benchmarks.drivers import CascadeDriver, DiffusersDriver, Workload
from cascade_trt.stages import StageSpec, stage_specs

DENOISERS = ("stage_c", "stage_b")


def model_batch(stage: str, work: Workload) -> int:
    """The batch the model sees: doubled where the stage runs classifier-free guidance."""
    scale = work.guidance_c if stage == "stage_c" else work.guidance_b
    return work.batch * (2 if scale > 1 else 1)


def bare_forwards(driver: Any, work: Workload) -> dict[str, Callable[[], None]]:
    """One zero-argument callable per denoiser, running a single forward at the workload's shape."""
    if isinstance(driver, DiffusersDriver):
        modules = {"stage_c": driver.prior.prior, "stage_b": driver.decoder.decoder}
        specs = stage_specs(driver.config)
        return {s: _module_forward(modules[s], specs[s], work) for s in DENOISERS}
    if isinstance(driver, CascadeDriver):
        return {s: _runner_forward(driver.pipe.runners[s], work) for s in DENOISERS}
    return {}


def _module_forward(module: torch.nn.Module, spec: StageSpec, work: Workload) -> Callable[[], None]:
    param = next(module.parameters())
    shapes = spec.shapes(model_batch(spec.name, work), work.height, work.width)
    gen = torch.Generator("cpu").manual_seed(work.seed)
    inputs = {
        t.name: torch.randn(shapes[t.name], generator=gen).to(param.device, param.dtype) for t in spec.inputs
    }
    inputs["timestep_ratio"] = torch.full_like(inputs["timestep_ratio"], 0.5)

    @torch.no_grad()
    def forward() -> None:
        module(**inputs, return_dict=False)

    return forward


def _runner_forward(runner: Any, work: Workload) -> Callable[[], None]:
    bindings = runner.allocate(model_batch(runner.spec.name, work), work.height, work.width)
    gen = torch.Generator("cpu").manual_seed(work.seed)
    for tensor in bindings.inputs.values():
        tensor.copy_(torch.randn(tensor.shape, generator=gen))
    bindings.inputs["timestep_ratio"].fill_(0.5)

    def forward() -> None:
        runner.execute(bindings)

    return forward
