"""A cache of captured CUDA graphs, one per stage and shape (after stable-fast's `cuda/graphs.py`).

What is captured is a whole denoising step (model, guidance mix, scheduler update, step index increment):
`cascade_trt.loop` owns the static buffers that step reads and writes; this module only captures a
callable once per key and replays it. Capture follows the rules that make replay exact:

* warm-up runs first on a side stream (lazy initialisation, cuDNN/cuBLAS autotuning and torch.compile all
  happen there, outside the capture), then the stream is joined back;
* every capture allocates from one memory pool shared by all graphs, so N shapes do not cost N pools;
* the callable must only touch static tensors: whatever it allocates lives in the pool and is overwritten by
  the next replay, so results are copied out of static buffers by the caller.

On a CPU device nothing is captured: `GraphCache.enabled` is False and the loop calls the same step directly.

While a graph is being captured, CUDA (in torch's default, global capture mode) refuses the host
synchronisations and allocations that any thread of the process makes, and a refused call spoils the capture.
So pipelines that share a GPU must not run while another captures: `device_lock` is one lock per CUDA device,
which every pipeline call on that device holds (`cascade_trt.base_pipeline.serialised`). The GPU runs one
stage's kernels at a time anyway; calls on the CPU need no such lock and take none.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable
from typing import Any

import torch

from cascade_trt.errors import ConfigError

# Key: (stage, batch, height, width, image prompts, dtype, guided). `guided` is there because guidance
# doubles the batch the model sees: same images, different graph.
GraphKey = tuple[Hashable, ...]


_DEVICE_LOCKS: dict[int, threading.RLock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def device_lock(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """The lock every pipeline call on a CUDA `device` holds (one per device index, re-entrant; see the module
    docstring); on a CPU, a context that holds nothing."""
    device = torch.device(device)
    if device.type != "cuda":
        return contextlib.nullcontext()
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(index, threading.RLock())


class GraphCache:
    """CUDA graphs keyed by (stage, batch, height, width, image prompts, dtype, guided), sharing one pool."""

    def __init__(self, device: torch.device | str, *, enabled: bool = True, warmup_steps: int = 2) -> None:
        if warmup_steps < 1:
            # Lazy initialisation (cuBLAS handles, TensorRT's first enqueue after binding) must not be captured.
            raise ConfigError(f"warmup_steps={warmup_steps}: run the step at least once before capturing it")
        self.device = torch.device(device)
        self.enabled = bool(enabled) and self.device.type == "cuda"
        self.warmup_steps = warmup_steps
        self._graphs: dict[GraphKey, torch.cuda.CUDAGraph] = {}
        self._pool: Any = None
        self._pool_bytes = 0

    @property
    def pool_bytes(self) -> int:
        """Bytes the shared pool reserved while capturing (the captured steps' working memory).

        A replay allocates nothing, so `torch.cuda.max_memory_allocated` never sees this memory: it sits in
        `memory_reserved`. Measured as the growth of reserved memory across each capture.
        """
        return self._pool_bytes

    def __contains__(self, key: GraphKey) -> bool:
        return key in self._graphs

    def __len__(self) -> int:
        return len(self._graphs)

    def get_or_capture(
        self, key: GraphKey, step: Callable[[], None], *, rewind: Callable[[], None] | None = None
    ) -> torch.cuda.CUDAGraph:
        """The graph of `step` for `key`, captured on first use.

        `step` runs `warmup_steps` times before capture, so it must be safe to run on whatever its buffers
        hold: the caller writes the real inputs after this returns. `rewind`, when given, runs (uncaptured)
        before every warm-up call and before the capture: a step that advances a device-side counter uses it
        to stay inside its tables however few steps they hold.
        """
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture(step, rewind or _nothing)
            self._graphs[key] = graph
        return graph

    def drop(self, key: GraphKey) -> None:
        """Forget one graph (its static buffers were reallocated, so its addresses are stale)."""
        self._graphs.pop(key, None)
        if not self._graphs:
            self._release_pool()

    def clear(self) -> None:
        self._graphs.clear()
        self._release_pool()

    def _release_pool(self) -> None:
        # With no graph left the pool may be freed; the next capture takes a fresh handle rather than
        # reviving one whose use count fell to zero (memory such as cuBLAS's workspace can outlive the graphs).
        self._pool = None
        self._pool_bytes = 0

    def _capture(self, step: Callable[[], None], rewind: Callable[[], None]) -> torch.cuda.CUDAGraph:
        with torch.cuda.device(self.device):
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            current = torch.cuda.current_stream()
            side = torch.cuda.Stream()
            side.wait_stream(current)
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(self.warmup_steps):
                    rewind()
                    step()
                rewind()
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph, pool=self._pool):
                # Read inside the context: entering it empties the allocator's cache, which is not the pool.
                reserved = torch.cuda.memory_reserved()
                step()
            self._pool_bytes += max(0, torch.cuda.memory_reserved() - reserved)
            return graph


def _nothing() -> None:
    return None
