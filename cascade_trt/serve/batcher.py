"""`Batcher`: gathers requests into pipeline calls when the pipeline is free, as Triton's dynamic batcher does.

Ray Serve's `@serve.batch` forms a batch as soon as its wait runs out, whether or not the previous one is still
running: under load the finished batches queue behind the running one with whatever arrived in each short
window, and a replica that could run four images at a time runs them two by two (measured on CPU: at 16 requests
in flight, 84 % of the images ran in batches of 2 at `--max-batch 4`). Here a batch forms only when the pipeline
can take it, so the requests that arrived while it ran all join the next call:

- the oldest waiting request decides the next call's key (size, steps, guidance); requests of that key join it in
  arrival order while their images fit under `max_batch`, the others keep their place for a later call;
- a call starts as soon as a full batch waits, or `wait_s` after its oldest request arrived (time spent waiting
  for the previous call counts: under load nothing waits twice);
- a request whose caller gave up (a timeout, a disconnect) before its call starts is dropped, not computed.

No Ray here: `run` is `ImageWorker.run`, called on one executor thread, one call at a time (the pipeline is not
re-entrant), while the event loop goes on taking requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from cascade_trt.serve.worker import Job, Result

Run = Callable[[list[Job]], list[Result | Exception]]


@dataclass
class _Waiting:
    job: Job
    future: asyncio.Future[Result | Exception]
    arrived: float  # the event loop's clock


class Batcher:
    def __init__(self, run: Run, executor: Executor, max_batch: int, wait_s: float) -> None:
        if max_batch < 1 or wait_s < 0:
            raise ValueError(
                f"max_batch must be 1 or more and wait_s 0 or more, got {max_batch} and {wait_s}"
            )
        self._run, self._executor = run, executor
        self.max_batch, self.wait_s = max_batch, wait_s
        self._waiting: deque[_Waiting] = deque()
        self._arrival = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, job: Job) -> Result | Exception:
        """The job's result (or the exception its call failed with, as a value), once its call has run.
        Cancelling the caller before the call starts withdraws the job."""
        if job.n > self.max_batch:
            raise ValueError(f"a job of {job.n} images cannot run at max_batch {self.max_batch}")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._serve(), name="cascade-batcher")
        future: asyncio.Future[Result | Exception] = loop.create_future()
        self._waiting.append(_Waiting(job, future, loop.time()))
        self._arrival.set()
        return await future  # a cancelled caller cancels the future: `_next_batch` then drops the job

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            try:
                results = await loop.run_in_executor(self._executor, self._run, [w.job for w in batch])
            except Exception as exc:  # noqa: BLE001 (run reports failures per job; this is run itself failing)
                results = [exc] * len(batch)
            if len(results) != len(batch):
                results = [RuntimeError(f"{len(results)} results for {len(batch)} jobs")] * len(batch)
            for waiting, result in zip(batch, results, strict=True):
                if not waiting.future.done():
                    waiting.future.set_result(result)

    async def _next_batch(self) -> list[_Waiting]:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_withdrawn()
            if not self._waiting:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            oldest = self._waiting[0]
            batch = self._fitting(oldest.job.key)
            images = sum(w.job.n for w in batch)
            remaining = oldest.arrived + self.wait_s - loop.time()
            if images >= self.max_batch or remaining <= 0:
                for waiting in batch:
                    self._waiting.remove(waiting)
                return batch
            self._arrival.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), remaining)

    def _fitting(self, key: tuple[object, ...]) -> list[_Waiting]:
        """The waiting jobs of `key`, oldest first, that fit together under max_batch (the oldest always does)."""
        batch, images = [], 0
        for waiting in self._waiting:
            if waiting.job.key == key and images + waiting.job.n <= self.max_batch:
                batch.append(waiting)
                images += waiting.job.n
                if images == self.max_batch:
                    break
        return batch

    def _drop_withdrawn(self) -> None:
        self._waiting = deque(w for w in self._waiting if not w.future.done())
