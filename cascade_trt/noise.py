"""The random draws of a run, made exactly as diffusers makes them, without diffusers.

With the same `torch.Generator`, diffusers' Stable Cascade pipelines draw the initial latents (unless the
caller gives them), then one noise tensor in every scheduler step (the last one masked to zero, but drawn), each
with `diffusers.utils.torch_utils.randn_tensor`. `randn` draws as that function does (one generator, one per
image, none; a CPU generator for a CUDA tensor draws on the CPU and moves the result), so a run here gives
diffusers' images for a given seed; `draw_noise` makes a stage's draws in diffusers' order, all before its loop,
so the loop itself stays free of host work.
"""

from __future__ import annotations

import torch

from cascade_trt.errors import ConfigError

Generators = torch.Generator | list[torch.Generator] | None


def randn(
    shape: tuple[int, ...] | torch.Size,
    generator: Generators = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A standard normal tensor on `device`, drawn as diffusers' `randn_tensor` draws it.

    One generator draws the whole tensor; a list draws row i with generator i (shape (1, ...) each) and
    concatenates them (a list of one is one generator). The draw happens on the generators' device when that is
    the CPU (the values then do not depend on the target device), else on `device`.
    """
    shape, device = tuple(shape), torch.device(device)
    draw_on = device
    if generator is not None:
        kind = (generator[0] if isinstance(generator, list) else generator).device.type
        if kind == "cpu" and device.type != "cpu":
            draw_on = torch.device("cpu")
        elif kind != device.type:
            raise ConfigError(
                f"cannot draw a {device} tensor from a {kind} generator: pass a CPU generator, or one on {device}",
                argument="generator",
            )
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        rows = [torch.randn((1, *shape[1:]), generator=g, device=draw_on, dtype=dtype) for g in generator]
        return torch.cat(rows, dim=0).to(device)
    return torch.randn(shape, generator=generator, device=draw_on, dtype=dtype).to(device)


def draw_noise(
    shape: tuple[int, ...] | torch.Size,
    num_steps: int,
    generator: Generators,
    dtype: torch.dtype,
    device: torch.device | str,
    *,
    latents: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial latents (shape) and per-step noise (num_steps, *shape), in diffusers' order.

    Given `latents` are used as they are (cast to `dtype` on `device`) and nothing is drawn for them: the
    generator then draws only the per-step noise, as in diffusers' `prepare_latents`.
    """
    if latents is None:
        latents = randn(shape, generator, device=device, dtype=dtype)
    else:
        latents = latents.to(device=device, dtype=dtype)
    noise = torch.stack([randn(shape, generator, device=device, dtype=dtype) for _ in range(num_steps)])
    return latents, noise
