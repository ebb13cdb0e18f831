"""The tensor-only schedule against diffusers' `DDPMWuerstchenScheduler.step`, bit for bit in fp32."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMWuerstchenScheduler

from cascade_trt.checkpoints import scheduler_config
from cascade_trt.scheduler import SchedulerConfig, WuerstchenSchedule


def _diffusers_run(scheduler, steps, sample, outputs, seed, dtype):
    """diffusers' loop body: the timestep in the model dtype, one noise draw per step from the generator."""
    scheduler.set_timesteps(steps, device=sample.device)
    gen = torch.Generator().manual_seed(seed)
    result = []
    for t, eps in zip(scheduler.timesteps[:-1], outputs, strict=True):
        ratio = t.expand(sample.size(0)).to(dtype)
        sample = scheduler.step(model_output=eps, timestep=ratio, sample=sample, generator=gen).prev_sample
        result.append(sample)
    return result


def _our_run(schedule, sample, outputs, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    noise = [torch.randn(sample.shape, generator=gen, dtype=dtype).to(sample.device) for _ in outputs]
    index = torch.zeros(1, dtype=torch.int64, device=sample.device)
    result = []
    for eps, n in zip(outputs, noise, strict=True):
        sample = schedule.update(index, sample, eps, n)
        result.append(sample)
        index += 1
    return result


@pytest.mark.parametrize("steps", [1, 3, 20])
@pytest.mark.parametrize("scaler", [1.0, 2.0, 0.5])
def test_update_is_diffusers_step_bit_for_bit_in_fp32(steps, scaler):
    gen = torch.Generator().manual_seed(steps)
    sample = torch.randn(2, 4, 6, 5, generator=gen)
    outputs = [torch.randn(2, 4, 6, 5, generator=gen) for _ in range(steps)]
    config = SchedulerConfig(scaler=scaler)
    schedule = WuerstchenSchedule.build(steps, config=config)
    ours = _our_run(schedule, sample, outputs, seed=7, dtype=torch.float32)
    theirs = _diffusers_run(DDPMWuerstchenScheduler(scaler=scaler), steps, sample, outputs, 7, torch.float32)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.equal(a, b), f"step {i}: max diff {(a - b).abs().max().item()}"


def test_update_matches_diffusers_in_bf16():
    """bf16: diffusers rounds the timestep to bf16 before the schedule and computes the update in fp32."""
    steps = 12
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 16, 4, 4, generator=gen).bfloat16()
    outputs = [torch.randn(1, 16, 4, 4, generator=gen).bfloat16() for _ in range(steps)]
    schedule = WuerstchenSchedule.build(steps, dtype=torch.bfloat16)
    assert schedule.timestep_ratio.dtype == torch.bfloat16 and schedule.sample_scale.dtype == torch.float32
    ours = _our_run(schedule, sample, outputs, seed=3, dtype=torch.bfloat16)
    theirs = _diffusers_run(DDPMWuerstchenScheduler(), steps, sample, outputs, 3, torch.bfloat16)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == torch.bfloat16
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tables_built_on_the_gpu_give_diffusers_steps_there_bit_for_bit(dtype):
    """diffusers computes its schedule on the model's device; so does `build`, so the GPU's own rounding of
    cos and sqrt is in both."""
    steps, gen = 20, torch.Generator().manual_seed(1)
    sample = torch.randn(2, 16, 24, 24, generator=gen).to("cuda", dtype)
    outputs = [torch.randn(2, 16, 24, 24, generator=gen).to("cuda", dtype) for _ in range(steps)]
    schedule = WuerstchenSchedule.build(steps, dtype=dtype, device="cuda")
    assert schedule.sample_scale.device.type == "cuda"
    ours = _our_run(schedule, sample, outputs, seed=5, dtype=dtype)
    theirs = _diffusers_run(DDPMWuerstchenScheduler(), steps, sample, outputs, 5, dtype)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.equal(a, b), f"step {i}: max diff {(a.float() - b.float()).abs().max().item()}"


def test_tables_hold_diffusers_timesteps_and_mask_the_last_noise():
    schedule = WuerstchenSchedule.build(10)
    assert schedule.num_steps == 10
    assert torch.equal(schedule.timestep_ratio, torch.linspace(1.0, 0.0, 11)[:-1])
    assert schedule.noise_scale[-1] == 0 and bool((schedule.noise_scale[:-1] > 0).all())
    assert all(t.shape == (10,) for t in vars(schedule).values())


def test_config_is_read_from_the_checkpoint(tiny_prior, tmp_path):
    assert scheduler_config(tiny_prior) == SchedulerConfig()
    DDPMWuerstchenScheduler(scaler=2.0, s=0.01).save_pretrained(tmp_path / "scheduler")
    assert scheduler_config(tmp_path) == SchedulerConfig(scaler=2.0, s=0.01)
    assert scheduler_config(tmp_path / "missing") == SchedulerConfig()


@pytest.mark.parametrize("steps", [0, -1, 2.5])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match=f"num_steps must be a positive int, got {steps}"):
        WuerstchenSchedule.build(steps)
