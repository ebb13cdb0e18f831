"""Devices: the one check of a `device` argument, made before anything is loaded, and what the CPU computes
natively.

torch accepts "cuda" on a CPU-only build until the first allocation, which then fails deep inside a
checkpoint loader with "Torch not compiled with CUDA enabled"; an unknown type fails with torch's list of
every device type it knows. Both are said here, in the user's terms, naming what to pass instead.

`cpu_has_native_bf16` is what the precision policy asks before it picks bf16 on a CPU: with AVX512-BF16 or
AMX, oneDNN runs bf16 matrix products natively (on a 2-core Sapphire Rapids VM the lite UNets ran about twice
as fast as in fp32); without, bf16 saves nothing and only costs accuracy. Machines differ (one cloud VM has
it, the next does not), so it is detected, never assumed.
"""

from __future__ import annotations

import torch

from cascade_trt.errors import BackendUnavailableError, ConfigError

# torch's CPU feature queries (cpuinfo underneath), in the order asked; private but present since torch 2.1.
_BF16_QUERIES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def check_device(device: str | torch.device | None) -> torch.device:
    """`device` as a `torch.device`, if cascade_trt can run there: "cpu", "cuda" or "cuda:N" with a GPU N;
    None is "cuda" where torch sees a GPU, else "cpu"."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device={device!r} is not a device: pass 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ConfigError(f"device={device!r}: cascade_trt runs on 'cpu' or an NVIDIA GPU ('cuda', 'cuda:N')")
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"device={device!r}, but this torch ({torch.__version__}) sees no CUDA GPU: pass device='cpu' "
            "(--device cpu), or run on a machine with an NVIDIA GPU and a CUDA build of torch"
        )
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise ConfigError(
            f"device={device!r}, but this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
        )
    return resolved


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX), as torch detects it."""
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in _BF16_QUERIES)
