"""`ImageWorker`: one `CascadePipeline` serving requests. Validates each request against the pipeline, runs
batches of them as grouped pipeline calls, returns PNGs with their seeds.

No Ray here: the Ray deployment (`cascade_trt.serve.model`) and the cog predictor (`deploy/cog/predict.py`)
both wrap it. It is not re-entrant (the pipeline's static buffers are per shape): callers serialise `run`.

Image i of a request with seed s is drawn from its own `torch.Generator().manual_seed(s + i)`, so it is the
image a direct `pipe(prompt, generator=torch.Generator().manual_seed(s + i))` makes, whatever else shares the
call. A call holds only requests with the same `Job.key` (size, steps, guidance): different shapes never mix.
"""

from __future__ import annotations

import io
import logging
import secrets
from dataclasses import astuple, dataclass
from typing import Any

import torch

from cascade_trt.errors import CascadeError, ConfigError
from cascade_trt.serve.config import ServeConfig, format_size
from cascade_trt.serve.schema import ImageRequest, RequestError, check_limits, pipeline_field

log = logging.getLogger(__name__)

WARM_UP_STEPS = 1  # buffers and CUDA graphs are per shape, not per step count: one step allocates them all
_RANDOM_SEEDS = 2**31  # a seed the service picks; small enough to type back


@dataclass(frozen=True)
class Job:
    """One validated request, ready to share a pipeline call with others of the same `key`."""

    prompt: str
    negative_prompt: str
    n: int
    seed: int
    width: int
    height: int
    prior_num_inference_steps: int
    prior_guidance_scale: float
    num_inference_steps: int
    decoder_guidance_scale: float

    @property
    def key(self) -> tuple[Any, ...]:
        """What must be equal for two jobs to run in one call: everything but prompts, seeds and counts."""
        return astuple(self)[4:]

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]


@dataclass(frozen=True)
class Result:
    images: list[bytes]  # PNG files
    seeds: list[int]
    batch_size: int  # images in the pipeline call that made them


class ImageWorker:
    def __init__(self, pipe: Any, config: ServeConfig) -> None:
        self.pipe, self.config = pipe, config

    @classmethod
    def load(cls, config: ServeConfig) -> ImageWorker:
        """Load the pipeline once, check every served size at the largest batch against it (an engine built
        for less fails here, not on the first big batch), and warm every shape up."""
        from cascade_trt.pipeline import CascadePipeline

        pipe = CascadePipeline.from_pretrained(config.prior, config.decoder, **config.pipeline_options())
        pipe.set_progress_bar_config(disable=True)
        worker = cls(pipe, config)
        for size in map(format_size, config.sizes):
            try:
                worker.job(ImageRequest(prompt="", n=config.max_batch, size=size))
            except RequestError as exc:
                raise ConfigError(f"cannot serve {size} at --max-batch {config.max_batch}: {exc}") from None
        worker.warm_up()
        return worker

    def job(self, request: ImageRequest) -> Job:
        """The request as a Job, checked by the service's limits and by `CascadePipeline.check_inputs`: a
        RequestError naming the field if it cannot run."""
        width, height = check_limits(request, self.config)
        seed = secrets.randbelow(_RANDOM_SEEDS) if request.seed is None else request.seed
        job = Job(
            request.prompt,
            request.negative_prompt,
            request.n,
            seed,
            width,
            height,
            request.prior_num_inference_steps,
            request.prior_guidance_scale,
            request.num_inference_steps,
            request.decoder_guidance_scale,
        )
        try:
            self.pipe.check_inputs(**self._arguments([job]))
        except CascadeError as exc:
            raise RequestError(str(exc), pipeline_field(exc)) from None
        return job

    def run(self, jobs: list[Job]) -> list[Result | Exception]:
        """One pipeline call per group of equal keys, in arrival order; a call that fails fails its own jobs."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.key, []).append(index)
        results: list[Result | Exception] = [RuntimeError("not run")] * len(jobs)
        for indices in groups.values():
            group = [jobs[i] for i in indices]
            try:
                made = self._call(group)
            except Exception as exc:  # noqa: BLE001 (each caller gets its call's error, the replica stays up)
                log.exception("pipeline call for %d request(s) failed", len(group))
                made = [exc] * len(group)
            for i, result in zip(indices, made, strict=True):
                results[i] = result
        return results

    def warm_up(self) -> None:
        """Every served size at every batch up to max_batch, with the API's default guidance (which decides
        each stage's batch): the first request of any of these shapes allocates nothing and captures nothing."""
        defaults = ImageRequest(prompt="")
        for width, height in self.config.sizes:
            for n in range(1, self.config.max_batch + 1):
                request = defaults.model_copy(
                    update={
                        "n": n,
                        "seed": 0,
                        "size": format_size((width, height)),
                        "prior_num_inference_steps": WARM_UP_STEPS,
                        "num_inference_steps": WARM_UP_STEPS,
                    }
                )
                self._call([self.job(request)])
            log.info("warmed up %s at batch 1 to %d", format_size((width, height)), self.config.max_batch)

    def _call(self, jobs: list[Job]) -> list[Result]:
        images = self.pipe(**self._arguments(jobs)).images
        batch = len(images)
        results, start = [], 0
        for job in jobs:
            pngs = [_png(image) for image in images[start : start + job.n]]
            results.append(Result(pngs, job.seeds, batch))
            start += job.n
        return results

    @staticmethod
    def _arguments(jobs: list[Job]) -> dict[str, Any]:
        """`CascadePipeline.__call__` / `check_inputs` keywords for jobs of one key: one prompt per image."""
        first = jobs[0]
        return {
            "prompt": [job.prompt for job in jobs for _ in range(job.n)],
            "negative_prompt": [job.negative_prompt for job in jobs for _ in range(job.n)],
            "height": first.height,
            "width": first.width,
            "num_images_per_prompt": 1,
            "prior_num_inference_steps": first.prior_num_inference_steps,
            "prior_guidance_scale": first.prior_guidance_scale,
            "num_inference_steps": first.num_inference_steps,
            "decoder_guidance_scale": first.decoder_guidance_scale,
            "generator": [torch.Generator().manual_seed(seed) for job in jobs for seed in job.seeds],
            "output_type": "pil",
        }


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
