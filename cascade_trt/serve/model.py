"""The model deployment: each replica holds one `ImageWorker` (one pipeline, loaded and warmed up in
`__init__`, so Serve marks a replica running only once it can answer at every served shape).

A request is validated when it reaches the replica, before it joins the batch queue; `@serve.batch` then
gathers requests for up to `batch_wait_ms`, counting images, not requests, against `max_batch`. Batches run
one at a time on one worker thread: the pipeline is never entered twice, and the replica's event loop stays
free to take new requests while a batch runs.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from cascade_trt.serve.config import ServeConfig
from cascade_trt.serve.schema import ImageRequest, RequestError
from cascade_trt.serve.worker import ImageWorker, Job, Result


def _images(jobs: list[Job]) -> int:
    return sum(job.n for job in jobs)


@serve.deployment(name="CascadeModel")
class CascadeModel:
    def __init__(self, config: ServeConfig) -> None:
        self.worker = ImageWorker.load(config)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cascade-pipeline")
        self._batched.set_max_batch_size(config.max_batch)
        self._batched.set_batch_wait_timeout_s(config.batch_wait_ms / 1000)

    async def generate(self, request: dict[str, Any]) -> Result | RequestError:
        """Images for one API request (a dict the ingress has already parsed with `ImageRequest`). A request
        the pipeline refuses comes back as its RequestError, a value: a client's mistake is no replica error."""
        try:
            job = self.worker.job(ImageRequest.model_validate(request))
        except RequestError as exc:
            return exc
        result = await self._batched(job)
        if isinstance(result, Exception):
            raise result
        return result

    @serve.batch(batch_size_fn=_images)
    async def _batched(self, jobs: list[Job]) -> list[Result | Exception]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.worker.run, jobs)

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)
