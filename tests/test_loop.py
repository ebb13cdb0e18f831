"""The shared denoising loop: its device-indexed step equals a plain per-step loop, with no host sync inside."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDPMWuerstchenScheduler
from torch.utils._python_dispatch import TorchDispatchMode

from cascade_trt.backends.torch_backend import TorchRunner
from cascade_trt.configs import TINY
from cascade_trt.cuda_graphs import GraphCache
from cascade_trt.loop import Denoiser, StageRun
from cascade_trt.modules import stage_module
from cascade_trt.random_weights import random_components
from cascade_trt.scheduler import SchedulerConfig
from cascade_trt.stages import stage_specs

HEIGHT, WIDTH = 128, 256
STAGES = ("stage_c", "stage_b")


def _runners(dtype: torch.dtype) -> dict[str, TorchRunner]:
    parts = random_components(
        TINY, stages=("stage_c", "stage_b"), seed=3, dtypes=dict.fromkeys(STAGES, dtype)
    )
    specs = stage_specs(TINY)
    return {s: TorchRunner(specs[s], stage_module(parts, s), dtype=dtype, device="cpu") for s in STAGES}


@pytest.fixture(scope="module")
def runners() -> dict[str, TorchRunner]:
    return _runners(torch.float32)


def _conditioning(
    stage: str, model_batch: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    shapes = stage_specs(TINY)[stage].shapes(model_batch, HEIGHT, WIDTH)
    names = {
        "stage_c": ("clip_text_pooled", "clip_text", "clip_img"),
        "stage_b": ("clip_text_pooled", "effnet"),
    }
    return {n: torch.randn(shapes[n], generator=gen).to(dtype) for n in names[stage]}


def _plain_loop(runner, batch, conditioning, steps, guidance, seed):
    """diffusers' loop, written out: noise drawn inside each scheduler step, model called with cat'd halves."""
    gen = torch.Generator().manual_seed(seed)
    shape = runner.spec.shapes(batch, HEIGHT, WIDTH)["sample"]
    latents = torch.randn(shape, generator=gen, dtype=runner.dtype)
    scheduler = DDPMWuerstchenScheduler()
    scheduler.set_timesteps(steps)
    guided = guidance > 1
    for t in scheduler.timesteps[:-1]:
        ratio = t.expand(batch).to(runner.dtype)
        inputs = {"sample": torch.cat([latents] * 2) if guided else latents}
        inputs["timestep_ratio"] = torch.cat([ratio] * 2) if guided else ratio
        with torch.no_grad():
            pred = runner.module(**inputs, **conditioning)
        if guided:
            cond, uncond = pred.chunk(2)
            pred = torch.lerp(uncond, cond, guidance)
        latents = scheduler.step(pred, ratio, latents, generator=gen).prev_sample
    return latents


@pytest.mark.parametrize(
    ("stage", "guidance", "steps"), [("stage_c", 4.0, 5), ("stage_b", 0.0, 4), ("stage_b", 2.5, 3)]
)
def test_device_indexed_loop_equals_plain_loop(runners, stage, guidance, steps):
    batch = 2
    guided = guidance > 1
    conditioning = _conditioning(stage, 2 * batch if guided else batch)
    denoiser = Denoiser(GraphCache("cpu"))
    run = StageRun(batch, HEIGHT, WIDTH, steps, guidance, conditioning, torch.Generator().manual_seed(5))
    ours = denoiser(runners[stage], run)
    reference = _plain_loop(runners[stage], batch, conditioning, steps, guidance, seed=5)
    assert ours.shape == reference.shape
    assert torch.equal(ours, reference), f"max diff {(ours - reference).abs().max().item()}"


def test_device_indexed_loop_equals_plain_loop_in_bf16():
    """bf16 model, a guidance scale bf16 cannot hold (7.3): the fp32 lerp with a tensor weight is exact."""
    runner = _runners(torch.bfloat16)["stage_c"]
    conditioning = _conditioning("stage_c", 2, torch.bfloat16)
    run = StageRun(1, HEIGHT, WIDTH, 3, 7.3, conditioning, torch.Generator().manual_seed(5))
    ours = Denoiser(GraphCache("cpu"))(runner, run)
    reference = _plain_loop(runner, 1, conditioning, 3, 7.3, seed=5)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, reference), f"max diff {(ours.float() - reference.float()).abs().max().item()}"


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_a_step_never_reads_a_value_back_to_the_host(runners):
    """`.item()`, `bool(tensor)`, `nonzero` all sync with the device; a step must contain none of them."""
    denoiser = Denoiser(GraphCache("cpu"))
    run = StageRun(1, HEIGHT, WIDTH, 3, 4.0, _conditioning("stage_c", 2), torch.Generator().manual_seed(0))
    denoiser(runners["stage_c"], run)
    (loop,) = denoiser._loops.values()
    loop.index.zero_()
    with _OpRecorder() as recorder, torch.no_grad():
        loop.step()
    syncing = {"aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.equal", "aten.is_nonzero"}
    assert recorder.ops, "the recorder saw no ops"
    assert not syncing & set(recorder.ops)
    assert int(loop.index) == 1  # the step advanced its own device-side index


def test_loops_are_kept_per_shape_and_reused(runners):
    denoiser = Denoiser(GraphCache("cpu"))
    runner = runners["stage_b"]
    cond = _conditioning("stage_b", 1)

    def run(steps: int, seed: int) -> torch.Tensor:
        return denoiser(
            runner, StageRun(1, HEIGHT, WIDTH, steps, 0.0, cond, torch.Generator().manual_seed(seed))
        )

    first = run(4, 0)
    (loop,) = denoiser._loops.values()
    address = loop.bindings.inputs["sample"].data_ptr()
    run(2, 1)  # fewer steps: same buffers, no reallocation
    assert loop.capacity == 4 and loop.bindings.inputs["sample"].data_ptr() == address
    again = run(4, 0)
    assert torch.equal(first, again)  # nothing of the earlier run leaks into a later one
    run(6, 0)
    assert loop.capacity == 6 and len(denoiser._loops) == 1
    run_guided = StageRun(
        1, HEIGHT, WIDTH, 2, 3.0, _conditioning("stage_b", 2), torch.Generator().manual_seed(0)
    )
    denoiser(runner, run_guided)
    assert len(denoiser._loops) == 2  # guidance doubles the model batch: its own loop
    denoiser.clear()
    assert not denoiser._loops and torch.equal(run(4, 0), first)


def test_cpu_runs_uncaptured_and_conditioning_names_are_checked_before_allocating(runners):
    graphs = GraphCache("cpu", enabled=True)
    assert not graphs.enabled
    denoiser = Denoiser(graphs)
    denoiser(runners["stage_b"], StageRun(1, HEIGHT, WIDTH, 2, 0.0, _conditioning("stage_b", 1)))
    assert len(graphs) == 0
    fresh = Denoiser(GraphCache("cpu"))
    bad = StageRun(1, HEIGHT, WIDTH, 2, 0.0, {"clip_text_pooled": torch.zeros(1, 1, 32)})
    with pytest.raises(
        ValueError,
        match=r"stage_b conditioning must be \['clip_text_pooled', 'effnet'\], got \['clip_text_pooled'\]",
    ):
        fresh(runners["stage_b"], bad)
    assert not fresh._loops, "a run that cannot start allocated its buffers"
    with pytest.raises(dataclasses.FrozenInstanceError):
        bad.scheduler = SchedulerConfig(scaler=2.0)  # a run is complete when made


def test_graph_cache_refuses_to_capture_without_a_warm_up_run():
    from cascade_trt.errors import ConfigError

    with pytest.raises(ConfigError, match="at least once before capturing"):
        GraphCache("cuda", warmup_steps=0)
    assert GraphCache("cpu", warmup_steps=1).warmup_steps == 1
