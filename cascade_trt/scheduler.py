"""diffusers' `DDPMWuerstchenScheduler`, as tensors precomputed before the loop.

diffusers recomputes the cosine schedule inside every `step` and finds the previous timestep with an
`argmin(...).item()`: a host sync per step. Every one of those values is known once the number of steps is,
so `WuerstchenSchedule.build` computes them up front, with diffusers' own expressions in diffusers' own order
(so fp32 results match bit for bit), and `update` indexes them with a step index that lives on the device.
One captured step then replays for every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

# diffusers' defaults (scheduler_config.json of the released checkpoints)
DEFAULT_S = 0.008
DEFAULT_SCALER = 1.0


@dataclass(frozen=True)
class SchedulerConfig:
    """The two settings of `DDPMWuerstchenScheduler`."""

    scaler: float = DEFAULT_SCALER
    s: float = DEFAULT_S

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SchedulerConfig:
        """From a diffusers `scheduler_config.json`'s values (what it lacks keeps diffusers' default)."""
        return cls(scaler=float(raw.get("scaler", DEFAULT_SCALER)), s=float(raw.get("s", DEFAULT_S)))


@dataclass(frozen=True)
class WuerstchenSchedule:
    """Per-step values of one sampling run, each a (N,) tensor on the device.

    The update is diffusers' plain DDPM step:
        mu   = sample_scale * (sample - eps_scale * model_output / eps_div)
        next = mu + noise_scale * noise          (noise_scale is 0 on the last step)
    """

    timestep_ratio: torch.Tensor  # (N,) model dtype: the model's `timestep_ratio` input
    sample_scale: torch.Tensor  # (N,) fp32: sqrt(1 / alpha)
    eps_scale: torch.Tensor  # (N,) fp32: 1 - alpha
    eps_div: torch.Tensor  # (N,) fp32: sqrt(1 - alpha_cumprod)
    # (N,) fp32: sqrt((1 - alpha)(1 - alpha_cumprod_prev) / (1 - alpha_cumprod)), zero on the last step
    noise_scale: torch.Tensor

    @property
    def num_steps(self) -> int:
        return self.timestep_ratio.shape[0]

    @classmethod
    def build(
        cls,
        num_steps: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        config: SchedulerConfig = SchedulerConfig(),  # noqa: B008 (frozen, so sharing the default is safe)
    ) -> WuerstchenSchedule:
        """All per-step values for `num_steps` model calls (timesteps `linspace(1, 0, N + 1)`, last dropped)."""
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        # On the device, as diffusers computes them (a GPU's cos may differ from the CPU's in the last bit),
        # all steps at once: an elementwise op computes each element alike however many there are. No host
        # sync: the previous timestep is looked up with a device index.
        grid = timesteps(num_steps, device=device)
        ratio = grid[:-1].to(dtype)
        return cls(ratio, *_step_values(grid, ratio, config))

    def update(
        self, index: torch.Tensor, sample: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The next sample for the step at device index `index` ((1,) int64); no host sync.

        Computed in fp32 (the coefficients are fp32, as in diffusers, which promotes there) and returned in
        the sample's dtype.
        """
        shape = (1,) * sample.dim()
        sample_scale, eps_scale, eps_div, noise_scale = (
            t.index_select(0, index).view(shape)
            for t in (self.sample_scale, self.eps_scale, self.eps_div, self.noise_scale)
        )
        mu = sample_scale * (sample - eps_scale * model_output / eps_div)
        return (mu + noise_scale * noise).to(sample.dtype)


def timesteps(num_steps: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """diffusers' `DDPMWuerstchenScheduler.set_timesteps`: `linspace(1, 0, N + 1)` in fp32 on the device. The
    pipelines run the first N (what a step callback receives as its timestep); the last is the end point."""
    return torch.linspace(1.0, 0.0, num_steps + 1, device=device)


def _alpha_cumprod(t: torch.Tensor, config: SchedulerConfig) -> torch.Tensor:
    """diffusers' `_alpha_cumprod`, same expression and order, on `t`'s device (its `s` and initial value
    are made on the CPU and moved, as diffusers makes them in the scheduler's constructor)."""
    if config.scaler > 1:
        t = 1 - (1 - t) ** config.scaler
    elif config.scaler < 1:
        t = t**config.scaler
    s = torch.tensor([config.s])
    init = (torch.cos(s / (1 + s) * torch.pi * 0.5) ** 2).to(t.device)
    s = s.to(t.device)
    return (torch.cos((t + s) / (1 + s) * torch.pi * 0.5) ** 2 / init).clamp(0.0001, 0.9999)


def _step_values(
    timesteps: torch.Tensor, t: torch.Tensor, config: SchedulerConfig
) -> tuple[torch.Tensor, ...]:
    """The fp32 values diffusers computes in each step, for the (N,) timesteps `t` in the model dtype.

    diffusers passes the timestep already cast to the model dtype and looks up the previous timestep by
    nearest match in fp32 (`argmin` of the distance, first on ties): both kept, so a bf16 run uses the same
    rounded timestep as diffusers does.
    """
    index = (timesteps[None, :] - t[:, None]).abs().argmin(dim=1)
    prev_t = timesteps[index + 1]
    alpha_cumprod = _alpha_cumprod(t, config)
    alpha_cumprod_prev = _alpha_cumprod(prev_t, config)
    alpha = alpha_cumprod / alpha_cumprod_prev
    sample_scale = (1.0 / alpha).sqrt()
    eps_scale = 1 - alpha
    eps_div = (1 - alpha_cumprod).sqrt()
    std = ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt()
    mask = (prev_t != 0).float()
    return sample_scale, eps_scale, eps_div, std * mask
