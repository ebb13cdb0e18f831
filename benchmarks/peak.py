"""The device's measured bf16 matrix peak: the denominator of the compute floor.

A large square bf16 matmul (8192^3: 1.1 TFLOP per call, long enough that launch overhead is noise), warmed up,
timed with CUDA events over many calls; the best call is the peak the hardware actually sustains here, which is
what a floor should be measured against (datasheet numbers assume boost clocks and sparsity).
"""

from __future__ import annotations

import torch

from cascade_trt.benchmarks.timing import CudaClock


def matmul_peak_tflops(
    device: torch.device | str = "cuda", *, n: int = 8192, warmup: int = 5, repeats: int = 20
) -> float:
    """Best-of-`repeats` TFLOP/s of an n x n x n bf16 matmul on a CUDA device."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("the matrix peak is measured on CUDA devices only")
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(warmup):
        torch.matmul(a, b, out=out)
    clock = CudaClock(device)
    marks = [clock.mark()]
    for _ in range(repeats):
        torch.matmul(a, b, out=out)
        marks.append(clock.mark())
    clock.sync()
    best = min(clock.seconds(s, e) for s, e in zip(marks, marks[1:], strict=False))
    del a, b, out
    torch.cuda.empty_cache()
    return 2 * n**3 / best / 1e12
