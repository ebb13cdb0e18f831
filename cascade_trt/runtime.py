"""`StageRuntime`: the machinery a pipeline runs its stages with, written once for every pipeline.

It holds, for the stages of one pipeline (the prior's text encoder, image encoder and Stage C; the decoder's
text encoder, Stage B and Stage A): the backend's runners on one device, each single-shot stage's static
bindings per shape, the denoising loops' buffers and captured CUDA graphs (`Denoiser`, `GraphCache`), the lock
that serialises callers, the progress-bar options and the NaN check after each stage. The prior and decoder
pipelines each own one; the combined pipeline owns theirs, which share one lock (and their runners where a stage
is common), so it stays one serialised unit as before.

A stage the pipeline may never need (the image encoder, for image prompts) is loaded on first use
(`runner`), so text-to-image never pays for it and an export without it still runs text to image.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from cascade_trt.backends import get_backend
from cascade_trt.backends.base import Bindings, StageRunner
from cascade_trt.components import CascadeComponents
from cascade_trt.cuda_graphs import GraphCache
from cascade_trt.errors import ConfigError, NonFiniteOutputError
from cascade_trt.loop import Denoiser, StageRun
from cascade_trt.precision import NAMES, PrecisionPolicy
from cascade_trt.scheduler import SchedulerConfig
from cascade_trt.stages import stage_specs

LoadLater = Callable[[str, torch.device], StageRunner]  # (stage, device) -> its runner


class StageRuntime:
    """Runners on one device and their static state (see the module docstring). Not re-entrant by itself:
    its owner holds `lock` around every use."""

    def __init__(
        self,
        runners: Mapping[str, StageRunner],
        *,
        device: torch.device | str = "cpu",
        schedulers: Mapping[str, SchedulerConfig] | None = None,
        cuda_graphs: bool = True,
        lock: threading.RLock | None = None,
        load_later: LoadLater | None = None,
    ) -> None:
        self.runners = dict(runners)
        self.device = torch.device(device)
        self.schedulers = {"stage_c": SchedulerConfig(), "stage_b": SchedulerConfig(), **(schedulers or {})}
        self.cuda_graphs = cuda_graphs
        self.graphs = GraphCache(self.device, enabled=cuda_graphs)
        self.denoiser = Denoiser(self.graphs)
        self.lock = lock if lock is not None else threading.RLock()
        self.progress: dict[str, Any] = {}
        self._bindings: dict[tuple[Any, ...], Bindings] = {}
        self._load_later = load_later

    def runner(self, stage: str) -> StageRunner:
        """The runner of `stage`, loaded now if it is one loaded on first use."""
        if stage not in self.runners:
            if self._load_later is None:
                raise ConfigError(f"this pipeline has no {stage}")
            self.runners[stage] = self._load_later(stage, self.device)
        return self.runners[stage]

    def run_once(
        self, stage: str, batch: int, height: int, width: int, *inputs: torch.Tensor, image_prompts: int = 1
    ) -> dict[str, torch.Tensor]:
        """One call of a single-shot stage on bindings allocated once per shape; outputs copied out."""
        runner = self.runner(stage)
        key = (stage, batch, height, width, image_prompts)
        bindings = self._bindings.get(key)
        if bindings is None:
            bindings = self._bindings[key] = runner.allocate(
                batch, height, width, image_prompts=image_prompts
            )
        for name, value in zip(runner.spec.input_names, inputs, strict=True):
            bindings.inputs[name].copy_(value)
        runner.execute(bindings)
        return {name: t.clone() for name, t in bindings.outputs.items()}

    def denoise(self, stage: str, run: StageRun) -> torch.Tensor:
        """One denoising stage's loop; its latents, checked."""
        return self.checked(stage, self.denoiser(self.runner(stage), run, self.progress_bar))

    def checked(self, stage: str, output: torch.Tensor) -> torch.Tensor:
        """One host sync per stage (never per step): refuse NaN/inf with the usual cause and fix."""
        if not bool(torch.isfinite(output).all()):
            dtype = self.runners[stage].dtype
            precision = NAMES.get(dtype, str(dtype))
            raise NonFiniteOutputError(
                f"{stage} produced NaN or infinite values in {precision}. fp16 overflow is the usual cause "
                f"(the full Stage C is known to overflow): run {stage} in bf16, e.g. "
                f"precision={{'{stage}': 'bf16'}} (or fp32)"
            )
        return output

    def progress_bar(self, steps: Iterable[int], desc: str) -> Iterable[int]:
        from tqdm.auto import tqdm

        return tqdm(steps, desc=desc, **self.progress)

    def clear(self) -> None:
        """Release every shape's static buffers and captured graphs."""
        self.denoiser.clear()
        self.graphs.clear()
        self._bindings.clear()

    def to(self, device: torch.device) -> None:
        """Move every runner to `device` (the torch backend's modules move; other backends refuse), and start
        afresh there: buffers and graphs are per device."""
        for runner in self.runners.values():
            runner.to(device)
        self.clear()
        self.device = device
        self.graphs = GraphCache(device, enabled=self.cuda_graphs)
        self.denoiser = Denoiser(self.graphs)


def load_runners(
    components: CascadeComponents,
    stages: Iterable[str],
    *,
    backend: str,
    options: Any,
    device: torch.device,
    policy: PrecisionPolicy,
) -> dict[str, StageRunner]:
    """The backend's runners for `stages`, in the policy's dtypes (one call, so a backend that shares memory
    between its runners, as TensorRT's activation memory, shares it across all of them)."""
    specs = stage_specs(components.config)
    stages = tuple(stages)
    return get_backend(backend).load_runners(
        {stage: specs[stage] for stage in stages},
        options=options,
        device=device,
        dtypes={stage: policy.dtype(stage) for stage in stages},
        components=components,
    )
