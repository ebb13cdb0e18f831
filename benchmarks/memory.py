"""Peak memory of the measured calls of one backend.

CUDA: `torch.cuda.max_memory_allocated` after resetting the peak (memory held by PyTorch's allocator; ONNX
Runtime's or TensorRT's own allocations are not in it, which the record's `memory_kind` says).
CPU: the process's peak resident set (`VmHWM`), reset before the backend's calls by writing 5 to
`/proc/self/clear_refs` (Linux). Where that reset is refused, the lifetime peak is reported and labelled so.
Both include the models, which are resident for the whole run.
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
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "rss_peak"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            self.kind = "rss_peak_lifetime"

    def read(self) -> int:
        """Peak bytes since the last `reset`."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            match = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
        except OSError:
            match = None
        if match:
            return int(match.group(1)) * 1024
        # Not Linux: the lifetime peak is all there is (ru_maxrss is in bytes on macOS, kB elsewhere).
        import resource

        self.kind = "rss_peak_lifetime"
        scale = 1 if sys.platform == "darwin" else 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
