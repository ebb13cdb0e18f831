"""The service's batcher on a real event loop and executor thread: which requests share a pipeline call, when a
call starts, and what happens to a request withdrawn or failed. The `run` given to it records each call and can be
held, like a pipeline call that takes a while; what is checked is the batcher's own policy."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cascade_trt.serve.batcher import Batcher
from cascade_trt.serve.worker import Job, Result

DEADLINE_S = 30  # no test waits longer than this for anything


def job(prompt: str, n: int = 1, width: int = 128) -> Job:
    return Job(prompt, "", n, 0, width, 128, 2, 4.0, 2, 0.0)


class Recorder:
    """Stands in for `ImageWorker.run`: records each call's prompts; `hold()` keeps the next call running until
    `release()`, as a long pipeline call does."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.started: list[float] = []
        self.fail = fail
        self._gate = threading.Event()
        self._gate.set()
        self.running = threading.Event()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def __call__(self, jobs: list[Job]) -> list[Result | Exception]:
        self.started.append(time.monotonic())
        self.calls.append([j.prompt for j in jobs])
        self.running.set()
        assert self._gate.wait(DEADLINE_S)
        if self.fail:
            raise RuntimeError("the pipeline failed")
        batch = sum(j.n for j in jobs)
        return [Result([b""] * j.n, [j.seed], batch) for j in jobs]


def run(coroutine) -> object:
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE_S))


async def submit_all(batcher: Batcher, jobs: list[Job]) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(batcher.submit(j)) for j in jobs]
    await asyncio.sleep(0)  # each task reaches the queue
    return tasks


async def busy(recorder: Recorder, max_batch: int, wait_s: float) -> tuple[Batcher, list[asyncio.Task]]:
    """A batcher whose pipeline is running a first call ("busy", `max_batch` images) until `recorder.release()`."""
    batcher = Batcher(recorder, ThreadPoolExecutor(1), max_batch=max_batch, wait_s=wait_s)
    recorder.hold()
    first = await submit_all(batcher, [job("busy", n=max_batch)])
    while not recorder.running.is_set():
        await asyncio.sleep(0.005)
    return batcher, first


def test_requests_that_arrive_during_a_call_fill_the_next_calls() -> None:
    recorder = Recorder()
    wait_s = 0.02

    async def scenario() -> list[Result]:
        batcher, first = await busy(recorder, max_batch=4, wait_s=wait_s)
        rest = []
        for i in range(8):  # arriving one by one, each long after the last one's wait ran out
            rest += await submit_all(batcher, [job(f"r{i}")])
            await asyncio.sleep(wait_s * 3)
        recorder.release()
        return await asyncio.gather(*first, *rest)

    results = run(scenario())
    assert recorder.calls == [["busy"], ["r0", "r1", "r2", "r3"], ["r4", "r5", "r6", "r7"]]
    assert [r.batch_size for r in results] == [4] * 9


def test_a_full_batch_starts_without_waiting() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        # A wait far longer than the test: a call that starts at all started because its batch was full.
        batcher = Batcher(recorder, ThreadPoolExecutor(1), max_batch=2, wait_s=3600)
        await asyncio.gather(*(batcher.submit(job(p)) for p in "abcd"))

    run(scenario())
    assert recorder.calls == [["a", "b"], ["c", "d"]]


def test_a_partial_batch_waits_from_its_oldest_arrival_not_from_the_pipeline_freeing() -> None:
    recorder = Recorder()
    wait_s = 1.0

    async def scenario() -> float:
        batcher, first = await busy(recorder, max_batch=4, wait_s=wait_s)
        late = await submit_all(batcher, [job("b")])
        await asyncio.sleep(wait_s * 1.5)  # b's wait runs out while "busy" still runs
        released = time.monotonic()
        recorder.release()
        await asyncio.gather(*first, *late)
        return released

    released = run(scenario())
    assert recorder.calls == [["busy"], ["b"]]
    # b had waited its wait_s already: its call followed the first at once, it did not wait wait_s again
    assert recorder.started[1] - released < wait_s / 2


def test_one_key_per_call_oldest_first_and_images_fit_under_max_batch() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        batcher, first = await busy(recorder, max_batch=4, wait_s=0.05)
        queued = [
            job("x3", n=3),
            job("wide", width=256),  # another shape: never in a 128-wide call
            job("x2", n=2),  # does not fit beside x3: waits for the next 128-wide call
            job("x1", n=1),  # fits beside x3
        ]
        tasks = await submit_all(batcher, queued)
        recorder.release()
        await asyncio.gather(*first, *tasks)

    run(scenario())
    assert recorder.calls == [["busy"], ["x3", "x1"], ["wide"], ["x2"]]


def test_a_withdrawn_request_is_not_computed() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        batcher, first = await busy(recorder, max_batch=4, wait_s=0.05)
        gone, kept = await submit_all(batcher, [job("gone"), job("kept")])
        gone.cancel()  # the caller timed out or disconnected
        await asyncio.sleep(0)
        recorder.release()
        await asyncio.gather(*first, kept)
        assert gone.cancelled()

    run(scenario())
    assert recorder.calls == [["busy"], ["kept"]]


def test_a_failed_call_fails_its_requests_and_the_batcher_goes_on() -> None:
    recorder = Recorder(fail=True)

    async def scenario() -> tuple[list[object], object]:
        batcher = Batcher(recorder, ThreadPoolExecutor(1), max_batch=2, wait_s=0.05)
        failed = await asyncio.gather(batcher.submit(job("a")), batcher.submit(job("b")))
        recorder.fail = False
        return failed, await batcher.submit(job("c"))

    failed, after = run(scenario())
    assert [str(r) for r in failed] == ["the pipeline failed"] * 2
    assert isinstance(after, Result) and recorder.calls[-1] == ["c"]


def test_more_images_than_max_batch_is_refused() -> None:
    batcher = Batcher(Recorder(), ThreadPoolExecutor(1), max_batch=2, wait_s=0)
    with pytest.raises(ValueError, match="3 images cannot run at max_batch 2"):
        run(batcher.submit(job("big", n=3)))
