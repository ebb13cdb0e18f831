"""Clocks and statistics.

On CUDA a mark is an event recorded on the current stream, so a span is GPU time between two points of the
stream and marking never syncs; `sync()` is called once per measured call, after its last mark. On the CPU a
mark is `time.perf_counter()` (monotonic); PyTorch CPU ops and ONNX Runtime's CPU provider are synchronous,
so a span is the wall time of the work between the marks.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch


class Clock:
    """Monotonic host clock (CPU runs)."""

    kind = "perf_counter"

    def mark(self) -> Any:
        return time.perf_counter()

    def sync(self) -> None:
        return None

    def seconds(self, start: Any, end: Any) -> float:
        return float(end - start)


class CudaClock(Clock):
    """CUDA events on the current stream (GPU runs)."""

    kind = "cuda_events"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def mark(self) -> Any:
        # The measured device's current stream, which need not be the current device's.
        with torch.cuda.device(self.device):
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
        return event

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000.0  # elapsed_time is in milliseconds


def make_clock(device: torch.device | str) -> Clock:
    device = torch.device(device)
    return CudaClock(device) if device.type == "cuda" else Clock()


@dataclass(frozen=True)
class Stats:
    """Summary of repeated measurements, in seconds."""

    median: float
    p10: float
    p90: float
    min: float
    mean: float
    n: int

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of an ascending list; q in [0, 100]."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples: list[float]) -> Stats:
    values = sorted(samples)
    return Stats(
        median=percentile(values, 50),
        p10=percentile(values, 10),
        p90=percentile(values, 90),
        min=values[0],
        mean=sum(values) / len(values),
        n=len(values),
    )
