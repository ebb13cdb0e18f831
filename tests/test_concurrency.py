"""One pipeline (or a prior and a decoder pipeline) shared by several threads: each call returns what the same
call returns alone.

A pipeline's static buffers, bound sessions and captured graphs are per shape and not re-entrant, so the
pipeline serialises its callers. Without that, two threads at the same shape write each other's latents and
step index (wrong images, or an index past the schedule), and two at different shapes share the text
encoder's and Stage A's buffers when their batches agree.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from cascade_trt import CascadePipeline

# Equal sizes twice (the same static buffers), different sizes, different prompt counts; 3 + 2 steps.
JOBS = [
    {"prompt": "a cat", "height": 128, "width": 128, "seed": 1},
    {"prompt": "a dog", "height": 128, "width": 128, "seed": 2},
    {"prompt": "a fox", "height": 256, "width": 128, "seed": 3},
    {"prompt": ["a owl", "a bee"], "height": 128, "width": 256, "seed": 4},
]


def _call(pipe: CascadePipeline, job: dict, start: threading.Barrier | None = None) -> torch.Tensor:
    if start is not None:
        start.wait()  # every thread enters the pipeline at once
    return pipe(
        job["prompt"],
        height=job["height"],
        width=job["width"],
        prior_num_inference_steps=3,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(job["seed"]),
        output_type="pt",
    ).images


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_threads_sharing_a_pipeline_get_what_each_call_gets_alone(
    tiny_prior, tiny_decoder, tiny_onnx, backend
):
    onnx_dir = tiny_onnx("fp32")["stage_a"].parent if backend == "onnxruntime" else None
    pipe = CascadePipeline.from_pretrained(
        tiny_prior, tiny_decoder, backend=backend, device="cpu", precision="fp32", onnx_dir=onnx_dir
    )
    pipe.set_progress_bar_config(disable=True)
    alone = [_call(pipe, job) for job in JOBS]
    for rounds in range(2):  # the second round finds every shape's buffers already allocated
        start = threading.Barrier(len(JOBS))
        with ThreadPoolExecutor(max_workers=len(JOBS)) as pool:
            together = list(pool.map(_call, [pipe] * len(JOBS), JOBS, [start] * len(JOBS)))
        for job, a, b in zip(JOBS, alone, together, strict=True):
            assert torch.equal(a, b), (
                f"round {rounds}: {job['prompt']!r} differs from the same call made alone"
            )


def _two_pipelines(prior, decoder, job: dict, start: threading.Barrier | None = None) -> torch.Tensor:
    """diffusers' two-pipeline flow: the prior's latents handed to the decoder."""
    if start is not None:
        start.wait()
    generator = torch.Generator().manual_seed(job["seed"])
    size = {"height": job["height"], "width": job["width"]}
    effnet = prior(job["prompt"], num_inference_steps=3, generator=generator, **size).image_embeddings
    return decoder(
        effnet, prompt=job["prompt"], num_inference_steps=2, generator=generator, output_type="pt"
    ).images


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_threads_sharing_a_prior_and_a_decoder_get_what_each_call_gets_alone(
    tiny_prior, tiny_decoder, tiny_onnx, backend
):
    """The prior and decoder pipelines each hold their own lock: a thread in the decoder and another in the
    prior run at once, and every call still returns what it returns alone."""
    from cascade_trt import CascadeDecoderPipeline, CascadePriorPipeline

    onnx_dir = tiny_onnx("fp32")["stage_a"].parent if backend == "onnxruntime" else None
    load = dict(backend=backend, device="cpu", precision="fp32", onnx_dir=onnx_dir)
    prior = CascadePriorPipeline.from_pretrained(tiny_prior, **load)
    decoder = CascadeDecoderPipeline.from_pretrained(tiny_decoder, **load)
    for pipe in (prior, decoder):
        pipe.set_progress_bar_config(disable=True)
    assert prior._lock is not decoder._lock
    alone = [_two_pipelines(prior, decoder, job) for job in JOBS]
    start = threading.Barrier(len(JOBS))
    with ThreadPoolExecutor(max_workers=len(JOBS)) as pool:
        together = list(
            pool.map(_two_pipelines, [prior] * len(JOBS), [decoder] * len(JOBS), JOBS, [start] * len(JOBS))
        )
    for job, a, b in zip(JOBS, alone, together, strict=True):
        assert torch.equal(a, b), f"{job['prompt']!r} differs from the same calls made alone"


def test_pipelines_on_one_gpu_share_its_lock_and_cpu_pipelines_take_none() -> None:
    """A capture on a GPU is spoiled by another thread's host sync there, so every pipeline on that device holds
    one lock (the same object for each spelling of the device); a CPU pipeline holds nothing beyond its own."""
    from cascade_trt.cuda_graphs import device_lock

    assert device_lock("cuda:0") is device_lock(torch.device("cuda", 0))
    assert device_lock("cuda:1") is not device_lock("cuda:0")
    lock = device_lock("cuda:0")  # re-entrant: a call that holds it enters stage methods that take it again
    assert lock.acquire(timeout=1) and lock.acquire(timeout=1)
    lock.release()
    lock.release()
    assert type(device_lock("cpu")).__name__ == "nullcontext"
