"""Peak memory of the measured calls of one backend.

CUDA: `torch.cuda.max_memory_allocated` after resetting the peak, plus the bytes the backend's captured CUDA
graphs hold in their memory pool (`add_graph_pool`). A replay allocates nothing, so the activations of a
captured denoising step never show in the allocated peak; they sit in the pool, reserved once at capture, and
leaving them out would compare an eager baseline's activations with none. ONNX Runtime's and TensorRT's own
allocations are not in these figures, which the record's `memory_kind` says.
CPU: the process's peak resident set (`VmHWM`), reset before each call by writing 5 to `/proc/self/clear_refs`
(Linux). Where that reset is refused, the lifetime peak is reported and labelled so.

The peak includes every model resident in the process, and the suite keeps all backends' models loaded at
once, so on the CPU it is nearly the same for every backend. `call_bytes` is therefore reported beside it: the
peak minus what was in use just before the call, i.e. the working memory the call itself needed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakMemory:
    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.kind = "cuda_max_allocated+graph_pool" if self.device.type == "cuda" else "rss_peak"
        self.before = 0
        self.graph_pool = 0

    def reset(self) -> None:
        """Start a new peak; remember what is in use now."""
        self.graph_pool = 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = int(torch.cuda.memory_allocated(self.device))
            return
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            self.kind = "rss_peak_lifetime"
        self.before = _status_bytes("VmRSS") or 0

    def add_graph_pool(self, nbytes: int) -> None:
        """Count the measured backend's CUDA-graph pool in this call's peak and working memory (see above).

        Only on CUDA: on a CPU nothing is captured, and the resident set already holds everything."""
        if self.device.type == "cuda":
            self.graph_pool = int(nbytes)

    def read(self) -> int:
        """Peak bytes since the last `reset`."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device)) + self.graph_pool
        peak = _status_bytes("VmHWM")
        if peak is not None:
            return peak
        # Not Linux: the lifetime peak is all there is (ru_maxrss is in bytes on macOS, kB elsewhere).
        import resource

        self.kind = "rss_peak_lifetime"
        scale = 1 if sys.platform == "darwin" else 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale

    def call_bytes(self) -> int:
        """Peak since the last `reset` above the usage at that reset (0 when nothing was added); on CUDA the
        graph pool counts as working memory of the call, since the captured steps' activations live there."""
        return max(0, self.read() - self.before)


def _status_bytes(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None
