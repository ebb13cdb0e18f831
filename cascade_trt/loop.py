"""The denoising loop shared by every backend: Stage C and Stage B both run through `Denoiser`.

One step is: write the model inputs (sample, timestep ratio) into the runner's static tensors, `runner.execute`,
mix the guidance halves, apply the scheduler update, advance the step index. Everything a step reads that
changes between steps (timestep ratio, scheduler coefficients, noise) sits in a table on the device indexed by
a device-side step counter, so the step has no host sync, no `.item()`, no branch on a value: the same step
is captured once as a CUDA graph and replayed for every step (on CUDA), or called as is (on CPU).

Randomness follows diffusers exactly (`cascade_trt.noise`): with the user's generator, the initial latents
first (unless the caller gives them), then one noise draw per step (the last one masked to zero), each in the
model dtype. All of a stage's draws happen before the loop, in that order, so a given CPU `torch.Generator`
gives diffusers' images.

A run may ask to see the latents after every step (`StageRun.on_step`, what diffusers' `callback_on_step_end`
is built on): that run's loop is not captured, since Python must run between the steps, and whatever the hook
returns is written back into the loop's static latents before the next step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import torch

from cascade_trt.backends.base import Bindings, StageRunner
from cascade_trt.cuda_graphs import GraphCache, GraphKey
from cascade_trt.errors import CaptureError, ShapeError
from cascade_trt.noise import Generators, draw_noise
from cascade_trt.scheduler import SchedulerConfig, WuerstchenSchedule

Progress = Callable[[Iterable[int], str], Iterable[int]]
# Called after step i with a copy of the latents; a tensor it returns replaces them (None: keep the copy,
# which it may have changed in place).
OnStep = Callable[[int, torch.Tensor], torch.Tensor | None]
# Inputs the loop writes itself every step; the rest of a stage's inputs are conditioning, written once.
LOOP_INPUTS = ("sample", "timestep_ratio")


def no_progress(steps: Iterable[int], desc: str) -> Iterable[int]:
    return steps


class StageLoop:
    """The static state of one stage's loop at one shape: bindings, latents, schedule, noise, step index.

    Allocated once per (stage, batch, height, width, image prompts, dtype, guided) and reused by every later
    call, so a captured step's addresses stay valid. Tables are sized for `capacity` steps; more steps
    reallocate them (and the owner drops the graph that pointed at the old ones).
    """

    def __init__(
        self,
        runner: StageRunner,
        *,
        batch: int,
        height: int,
        width: int,
        guided: bool,
        image_prompts: int = 1,
    ) -> None:
        self.runner, self.batch, self.guided = runner, batch, guided
        model_batch = 2 * batch if guided else batch
        self.bindings: Bindings = runner.allocate(model_batch, height, width, image_prompts=image_prompts)
        for t in (*self.bindings.inputs.values(), *self.bindings.outputs.values()):
            t.zero_()  # warm-up before capture runs on these: keep it off uninitialised memory
        sample = self.bindings.inputs["sample"]
        # The latents live in the model's own input: the conditional half under guidance (the loop copies it
        # to the unconditional half), the whole input without.
        self.latents = sample[:batch]
        self.index = torch.zeros(1, dtype=torch.int64, device=runner.device)
        self.weight = torch.zeros((), dtype=torch.float32, device=runner.device)  # guidance scale
        self.capacity = 0
        self.schedule: WuerstchenSchedule | None = None
        self.noise = torch.empty(0)

    def reserve(self, num_steps: int) -> bool:
        """Make the tables hold `num_steps` steps. True when they were reallocated (addresses changed)."""
        if num_steps <= self.capacity:
            return False
        device, dtype = self.runner.device, self.runner.dtype
        self.schedule = WuerstchenSchedule(
            *(
                torch.zeros(
                    num_steps, dtype=dtype if f.name == "timestep_ratio" else torch.float32, device=device
                )
                for f in fields(WuerstchenSchedule)
            )
        )
        self.noise = torch.zeros((num_steps, *self.latents.shape), dtype=dtype, device=device)
        self.capacity = num_steps
        return True

    def load(
        self,
        schedule: WuerstchenSchedule,
        latents: torch.Tensor,
        noise: torch.Tensor,
        conditioning: dict[str, torch.Tensor],
        guidance_scale: float,
    ) -> None:
        """Write one run's values into the static buffers and rewind the step index (host side, before the loop)."""
        n = schedule.num_steps
        assert self.schedule is not None and n <= self.capacity, "reserve() the steps first"
        for f in fields(WuerstchenSchedule):
            getattr(self.schedule, f.name)[:n].copy_(getattr(schedule, f.name))
        self.noise[:n].copy_(noise)
        self.latents.copy_(latents)
        for name, value in conditioning.items():
            self.bindings.inputs[name].copy_(value)
        self.weight.fill_(float(guidance_scale))
        self.index.zero_()

    def step(self) -> None:
        """One denoising step, all on the device. Python branches here are on structure (guided), never on values."""
        inputs, i = self.bindings.inputs, self.index
        assert self.schedule is not None
        ratio = inputs["timestep_ratio"]
        ratio.copy_(self.schedule.timestep_ratio.index_select(0, i).expand(ratio.shape))
        if self.guided:
            inputs["sample"][self.batch :].copy_(self.latents)
        self.runner.execute(self.bindings)
        prediction = self.bindings.outputs["prediction"]
        if self.guided:
            cond, uncond = prediction.chunk(2)  # diffusers' batch order: [conditional, unconditional]
            # lerp in fp32 with an fp32 weight: diffusers' lerp with a Python-float weight computes the same
            # (upcast, one rounding) and the weight stays a device tensor, so a new scale needs no recapture.
            prediction = torch.lerp(uncond.float(), cond.float(), self.weight).to(prediction.dtype)
        noise = self.noise.index_select(0, i)[0]
        self.latents.copy_(self.schedule.update(i, self.latents, prediction, noise))
        i.add_(1)


@dataclass(frozen=True)
class StageRun:
    """What one call of a stage loop needs, besides the runner: complete when made, never changed after."""

    batch: int  # images (prompts x images per prompt), before guidance doubles it
    height: int
    width: int
    num_steps: int
    guidance_scale: float
    conditioning: dict[str, torch.Tensor]  # every model input but sample/timestep_ratio, at the model's batch
    generator: Generators = None
    scheduler: SchedulerConfig = SchedulerConfig()  # frozen, so one shared default is safe
    image_prompts: int = 1  # Stage C's clip_img axis: one per image prompt (1 without images)
    latents: torch.Tensor | None = None  # the initial latents; None: drawn from the generator
    on_step: OnStep | None = None  # see `OnStep`; the run is then not captured

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1  # diffusers' `do_classifier_free_guidance`


class Denoiser:
    """Runs stage loops, keeping each shape's `StageLoop` (and, on CUDA, its captured step) for later calls."""

    def __init__(self, graphs: GraphCache) -> None:
        self.graphs = graphs
        self._loops: dict[GraphKey, StageLoop] = {}

    def __call__(self, runner: StageRunner, run: StageRun, progress: Progress = no_progress) -> torch.Tensor:
        """The stage's final latents (a fresh tensor, copied out of the static buffers)."""
        expected = set(runner.spec.input_names) - set(LOOP_INPUTS)
        if set(run.conditioning) != expected:  # before any buffer is allocated for a run that cannot start
            raise ValueError(
                f"{runner.spec.name} conditioning must be {sorted(expected)}, got {sorted(run.conditioning)}"
            )
        loop, key = self._loop(runner, run)
        if loop.reserve(run.num_steps):
            self.graphs.drop(key)
        step = loop.step
        capturable = self.graphs.enabled and runner.capturable
        if capturable and run.on_step is None:
            # Capture before loading: warm-up runs the step on the buffers, from step 0 each time (the index
            # may still hold a previous run's end, and a 1-step table has no step 1 to read).
            step = self._captured(key, runner, loop)
        elif capturable:
            warnings.warn(
                f"{runner.spec.name}: a step callback runs Python between the steps, so this call's loop runs "
                "uncaptured (no CUDA graph); calls without a callback still replay the captured step",
                UserWarning,
                stacklevel=2,
            )
        # In the compute dtype, as diffusers draws and rounds in the model's dtype; `load` casts to the IO's.
        schedule = WuerstchenSchedule.build(
            run.num_steps, dtype=runner.compute_dtype, device=runner.device, config=run.scheduler
        )
        latents, noise = draw_noise(
            loop.latents.shape,
            run.num_steps,
            run.generator,
            runner.compute_dtype,
            runner.device,
            latents=run.latents,
        )
        loop.load(schedule, latents, noise, run.conditioning, run.guidance_scale)
        with torch.no_grad():
            for i in progress(range(run.num_steps), runner.spec.name):
                step()
                if run.on_step is not None:
                    _call_back(run.on_step, i, loop.latents)
        return loop.latents.clone()

    def _captured(self, key: GraphKey, runner: StageRunner, loop: StageLoop) -> Callable[[], None]:
        try:
            return self.graphs.get_or_capture(key, loop.step, rewind=loop.index.zero_).replay
        except RuntimeError as exc:  # CUDA reports a capture-breaking op as a RuntimeError
            raise CaptureError(
                f"capturing the {runner.spec.name} step at batch {key[1]}, {key[2]}x{key[3]} in a CUDA graph "
                f"failed ({exc}); create the pipeline with cuda_graphs=False (--no-cuda-graphs) to run it uncaptured"
            ) from exc

    def clear(self) -> None:
        """Forget every loop's buffers (drop the graphs that point at them too: `GraphCache.clear`)."""
        self._loops.clear()

    def _loop(self, runner: StageRunner, run: StageRun) -> tuple[StageLoop, GraphKey]:
        key = (
            runner.spec.name,
            run.batch,
            run.height,
            run.width,
            run.image_prompts,
            runner.dtype,
            run.guided,
        )
        loop = self._loops.get(key)
        if loop is None:
            loop = StageLoop(
                runner,
                batch=run.batch,
                height=run.height,
                width=run.width,
                guided=run.guided,
                image_prompts=run.image_prompts,
            )
            self._loops[key] = loop
        return loop, key


def _call_back(on_step: OnStep, index: int, latents: torch.Tensor) -> None:
    """Hand step `index`'s latents (a copy: a hook may keep it) to the hook; write back what it returns."""
    seen = latents.clone()
    returned = on_step(index, seen)
    result = seen if returned is None else returned
    if not isinstance(result, torch.Tensor) or result.shape != latents.shape:
        got = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise ShapeError(
            f"the step callback returned latents of shape {got}, expected {tuple(latents.shape)}",
            argument="callback_on_step_end",
        )
    latents.copy_(result)
