"""Export-time patches that keep an ONNX graph computing bit-for-bit what PyTorch computes.

`StableCascadeUNet.get_timestep_ratio_embedding` builds its sinusoid frequencies with
`arange(...).mul(-c).exp()` on every call. Traced, that is a chain of constant ops which the ONNX optimizer
folds with its own `exp`, which differs from torch's in the last bit for about a third of the entries. The
frequencies are then multiplied by `10000 * timestep_ratio` and go through sin/cos, which turns one ulp into
~3e-4 absolute error in the embedding and ~1e-4 relative error in the UNet's output: the whole fp32 parity
budget, from a constant. Computing the table eagerly with torch and handing it to the trace as a constant
makes the graph use torch's own values; the function is otherwise unchanged (same ops, same dtypes).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn


def _frequencies(half_dim: int, max_positions: int) -> torch.Tensor:
    # The exact expression diffusers evaluates, run eagerly so torch's exp produces the values.
    emb = math.log(max_positions) / (half_dim - 1)
    return torch.arange(half_dim).float().mul(-emb).exp()


@contextlib.contextmanager
def exact_timestep_embedding(module: nn.Module) -> Iterator[None]:
    """Within the block, the Stable Cascade UNets inside `module` embed timesteps with eager-made tables."""
    from cascade_trt.components import diffusers_classes

    StableCascadeUNet, _ = diffusers_classes()  # noqa: N806 (a class)
    if not any(isinstance(m, StableCascadeUNet) for m in module.modules()):
        yield
        return
    tables: dict[tuple[int, int], torch.Tensor] = {}
    original = StableCascadeUNet.get_timestep_ratio_embedding

    def get_timestep_ratio_embedding(self, timestep_ratio, max_positions=10000):
        r = timestep_ratio * max_positions
        half_dim = self.config.timestep_ratio_embedding_dim // 2
        emb = tables[(half_dim, max_positions)].to(r.device)
        emb = r[:, None] * emb[None, :]
        emb = torch.cat([emb.sin(), emb.cos()], dim=1)
        if self.config.timestep_ratio_embedding_dim % 2 == 1:  # zero pad
            emb = nn.functional.pad(emb, (0, 1), mode="constant")
        return emb.to(dtype=r.dtype)

    for m in module.modules():
        if isinstance(m, StableCascadeUNet):
            half_dim = m.config.timestep_ratio_embedding_dim // 2
            tables[(half_dim, 10000)] = _frequencies(half_dim, 10000)
    StableCascadeUNet.get_timestep_ratio_embedding = get_timestep_ratio_embedding
    try:
        yield
    finally:
        StableCascadeUNet.get_timestep_ratio_embedding = original
