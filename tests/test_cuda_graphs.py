"""Whole-step CUDA graphs: the captured loop equals the uncaptured one, is cached per shape, and never syncs.

GPU only (the `gpu` marker skips these without CUDA); on CPU the same step runs uncaptured and
tests/test_loop.py checks it against a plain per-step loop.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from cascade_trt import CascadePipeline
from cascade_trt.configs import TINY
from cascade_trt.random_weights import random_components

pytestmark = pytest.mark.gpu

PROMPTS = ["a photo of a cat", "a dog"]
CALL = dict(
    height=256, width=384, num_images_per_prompt=2, prior_num_inference_steps=6, num_inference_steps=4
)


def _pipe(cuda_graphs: bool, precision: str = "fp32") -> CascadePipeline:
    # Fresh components per pipeline: the torch backend casts modules in place to the requested precision.
    components = random_components(TINY, device="cuda", seed=1)
    pipe = CascadePipeline.from_components(
        components, backend="torch", device="cuda", precision=precision, cuda_graphs=cuda_graphs
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _half(pipe: CascadePipeline, stage: str) -> Any:
    """The half of the combined pipeline that runs `stage` (each has its own graphs and loops)."""
    return pipe.prior_pipe if stage == "stage_c" else pipe.decoder_pipe


def _count(pipe: CascadePipeline) -> int:
    return sum(len(half.runtime.graphs) for half in (pipe.prior_pipe, pipe.decoder_pipe))


def _loops(pipe: CascadePipeline) -> dict:
    return {**pipe.prior_pipe.runtime.denoiser._loops, **pipe.decoder_pipe.runtime.denoiser._loops}


def _graph(pipe: CascadePipeline, key: tuple) -> torch.cuda.CUDAGraph:
    """The graph already captured for `key`: `get_or_capture` with a step that fails if it is ever run."""

    def recapture() -> None:
        raise AssertionError(f"{key} was captured again")

    graphs = _half(pipe, key[0]).runtime.graphs
    assert key in graphs
    return graphs.get_or_capture(key, recapture)


def _latents(pipe: CascadePipeline, **overrides) -> torch.Tensor:
    kwargs = {**CALL, "prior_guidance_scale": 4.0, "decoder_guidance_scale": 2.0, **overrides}
    return pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs).images


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_captured_loop_equals_uncaptured(precision):
    captured, eager = _pipe(True, precision), _pipe(False, precision)
    a, b = _latents(captured), _latents(eager)
    assert _count(captured) == 2 and _count(eager) == 0
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    assert ("stage_c", 4, 256, 384, 1, dtype, True) in captured.prior_pipe.runtime.graphs
    assert torch.isfinite(a).all()
    # Replay launches the kernels eager runs, so the results should be identical; the bound allows one
    # rounding step of the precision (cuBLAS may pick another algorithm on the capture stream's workspace).
    relative = 1e-6 if precision == "fp32" else 2**-7
    scale = max(b.float().abs().max().item(), 1.0)
    assert (a.float() - b.float()).abs().max().item() <= relative * scale, "replay differs from eager"


def test_graphs_are_reused_across_calls_and_guidance_scales():
    captured, eager = _pipe(True), _pipe(False)
    _latents(captured)
    keys = list(_loops(captured))  # a loop per captured step, under the same key
    graphs = {key: _graph(captured, key) for key in keys}
    # Another guidance scale (still guided) and fewer steps: the same graphs, replayed.
    a = _latents(captured, prior_guidance_scale=6.5, prior_num_inference_steps=3)
    assert {key: _graph(captured, key) for key in keys} == graphs
    b = _latents(eager, prior_guidance_scale=6.5, prior_num_inference_steps=3)
    assert torch.allclose(a, b, rtol=0, atol=1e-6 * b.abs().max().item())
    # More steps than the tables hold: reallocated, recaptured, still equal.
    a = _latents(captured, num_inference_steps=7)
    b = _latents(eager, num_inference_steps=7)
    assert torch.allclose(a, b, rtol=0, atol=1e-6 * b.abs().max().item())
    # Another size: new entries beside the old ones.
    _latents(captured, height=128, width=128)
    assert _count(captured) == 4


@pytest.mark.parametrize("stage", ["stage_c", "stage_b"])
def test_neither_the_step_nor_its_replay_syncs_with_the_host(stage):
    pipe = _pipe(True)
    _latents(pipe)
    key, loop = next((key, loop) for key, loop in _loops(pipe).items() if key[0] == stage)
    graph = _graph(pipe, key)
    loop.index.zero_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            graph.replay()
        loop.step()  # the uncaptured step too
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert loop.index.item() == 4


def test_clearing_the_caches_releases_the_pool_and_captures_again():
    """After `clear_caches` no graph is left on the pool; the next call captures on a fresh one."""
    captured, eager = _pipe(True), _pipe(False)
    _latents(captured)
    assert captured.graph_pool_bytes > 0  # captured activations: not in max_memory_allocated
    captured.clear_caches()
    assert _count(captured) == 0 and captured.graph_pool_bytes == 0
    torch.cuda.empty_cache()
    a, b = _latents(captured), _latents(eager)
    assert _count(captured) == 2 and captured.graph_pool_bytes > 0
    assert torch.allclose(a, b, rtol=0, atol=1e-6 * b.abs().max().item())


def test_capture_stays_inside_tables_of_one_step_and_of_one_more_step():
    """Capture's warm-up runs the step from index 0: a 1-step table has no step 1, and after a 4-step run the
    index rests at 4, which a table regrown to 5 steps holds only once."""
    captured, eager = _pipe(True), _pipe(False)
    for steps in (1, 4, 5):
        a = _latents(captured, prior_num_inference_steps=steps, num_inference_steps=steps)
        b = _latents(eager, prior_num_inference_steps=steps, num_inference_steps=steps)
        torch.cuda.synchronize()  # an out-of-range index_select would surface here as a device assert
        assert torch.allclose(a, b, rtol=0, atol=1e-6 * b.abs().max().item()), f"{steps} steps"


def test_a_call_with_a_step_callback_runs_uncaptured_with_one_warning_and_keeps_the_graphs():
    """A callback needs Python between the steps: that call's loops run uncaptured (a warning says why, once
    per stage), compute what the uncaptured pipeline computes, and the graphs stay for calls without one."""
    captured, eager = _pipe(True), _pipe(False)
    _latents(captured)
    graphs = {key: _graph(captured, key) for key in _loops(captured)}
    seen: list[int] = []

    def halve(pipe, step, timestep, kwargs):
        seen.append(step)
        return {"latents": kwargs["latents"] * 0.5}

    hooks = dict(prior_callback_on_step_end=halve, callback_on_step_end=halve)
    with pytest.warns(UserWarning, match="runs uncaptured") as warned:
        a = _latents(captured, **hooks)
    assert len([w for w in warned if "runs uncaptured" in str(w.message)]) == 2  # one per stage
    assert seen == [*range(6), *range(4)]
    b = _latents(eager, **hooks)
    assert torch.allclose(a, b, rtol=0, atol=1e-6 * b.abs().max().item())
    assert {key: _graph(captured, key) for key in graphs} == graphs and _count(captured) == 2
