"""The model deployment: each replica holds one `ImageWorker` (one pipeline, loaded and warmed up in
`__init__`, so Serve marks a replica running only once it can answer at every served shape).

A request is validated when it reaches the replica, before it joins the batch queue; a `Batcher` then runs the
queue as pipeline calls of up to `max_batch` images, forming each call when the pipeline is free (not Ray's
`@serve.batch`, which forms batches while the previous one still runs: see `batcher`). Calls run one at a time
on one worker thread: the pipeline is never entered twice, and the replica's event loop stays free to take new
requests while a call runs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from cascade_trt.serve.batcher import Batcher
from cascade_trt.serve.config import ServeConfig
from cascade_trt.serve.schema import ImageRequest, RequestError
from cascade_trt.serve.worker import ImageWorker, Result


@serve.deployment(name="CascadeModel")
class CascadeModel:
    def __init__(self, config: ServeConfig) -> None:
        self.worker = ImageWorker.load(config)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cascade-pipeline")
        self._batcher = Batcher(
            self.worker.run, self._executor, config.max_batch, config.batch_wait_ms / 1000
        )

    async def generate(self, request: dict[str, Any]) -> Result | RequestError:
        """Images for one API request (a dict the ingress has already parsed with `ImageRequest`). A request
        the pipeline refuses comes back as its RequestError, a value: a client's mistake is no replica error."""
        try:
            job = self.worker.job(ImageRequest.model_validate(request))
        except RequestError as exc:
            return exc
        result = await self._batcher.submit(job)
        if isinstance(result, Exception):
            raise result
        return result

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)
