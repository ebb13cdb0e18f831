"""One stage at a time, for every backend: the four calls the suite times.

A driver exposes `encode`, `stage_c`, `stage_b`, `stage_a`. The suite puts a clock mark between consecutive
calls, so each span holds one stage and nothing else, and the end-to-end span is the whole sequence.

The diffusers baseline is diffusers' own code, called the way `StableCascadeCombinedPipeline` calls it:
`StableCascadePriorPipeline.encode_prompt` (the text encoder, prompt and negative), the prior pipeline with
those embeddings (the Stage C loop), the decoder pipeline with the prior's outputs and `output_type="latent"`
(the Stage B loop), and the VQGAN decode the decoder pipeline would run next (`vqgan.decode(scale * latents)`
then clamp: Stage A). Between the two pipelines the embeddings are cast to the decoder's dtype, as diffusers'
documentation does when the prior runs in bf16 and the decoder in fp16.

The runtime rows (each runtime backend and its variants: `torch`, `torch-no-graphs`, `torch-compile`, `onnxruntime`,
`tensorrt`) are `CascadePipeline`'s public stage methods, which its `__call__` composes the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from cascade_trt.benchmarks import BACKENDS, BASELINE, runtime_backend
from cascade_trt.components import CascadeComponents


@dataclass(frozen=True)
class Workload:
    """What one measured end-to-end call generates."""

    prompts: tuple[str, ...]
    height: int
    width: int
    steps_c: int = 20
    steps_b: int = 10
    guidance_c: float = 4.0
    guidance_b: float = 0.0
    negative_prompt: str = ""
    seed: int = 0

    @property
    def batch(self) -> int:
        return len(self.prompts)

    @property
    def guided(self) -> bool:
        """Whether the negative prompt is encoded (either stage runs classifier-free guidance)."""
        return self.guidance_c > 1 or self.guidance_b > 1


class Driver(Protocol):
    name: str

    def encode(self, work: Workload) -> Any: ...

    def stage_c(self, emb: Any, work: Workload, generator: torch.Generator) -> Any: ...

    def stage_b(self, emb: Any, effnet: Any, work: Workload, generator: torch.Generator) -> Any: ...

    def stage_a(self, latents: Any) -> torch.Tensor: ...

    def graph_pool_bytes(self) -> int:
        """Device memory held by captured CUDA graphs, which replays use without allocating (0 if none)."""
        ...

    def release(self) -> None:
        """Free what was kept for the shape just measured (static buffers, graphs), before the next shape."""
        ...


class DiffusersDriver:
    """diffusers' prior and decoder pipelines over the given modules (see the module docstring)."""

    name = BASELINE

    def __init__(self, parts: CascadeComponents) -> None:
        self.prior, self.decoder = parts.diffusers_pipelines()
        for pipe in (self.prior, self.decoder):
            pipe.set_progress_bar_config(disable=True)
        self.vqgan = parts.stage_a
        self.config = parts.config

    def graph_pool_bytes(self) -> int:
        return 0  # diffusers runs eagerly: its activations are in max_memory_allocated

    def release(self) -> None:
        return None  # diffusers keeps nothing per shape

    @torch.no_grad()
    def encode(self, work: Workload) -> tuple[torch.Tensor, ...]:
        prompts = list(work.prompts)
        return self.prior.encode_prompt(
            device=self.prior._execution_device,
            batch_size=work.batch,
            num_images_per_prompt=1,
            do_classifier_free_guidance=work.guided,
            prompt=prompts,
            negative_prompt=[work.negative_prompt] * work.batch,
        )

    def stage_c(self, emb: tuple[torch.Tensor, ...], work: Workload, generator: torch.Generator) -> Any:
        embeds, pooled, neg, neg_pooled = emb
        guide = work.guidance_c > 1  # the prior concatenates whatever negatives it is given
        return self.prior(
            height=work.height,
            width=work.width,
            num_inference_steps=work.steps_c,
            guidance_scale=work.guidance_c,
            prompt_embeds=embeds,
            prompt_embeds_pooled=pooled,
            negative_prompt_embeds=neg if guide else None,
            negative_prompt_embeds_pooled=neg_pooled if guide else None,
            generator=generator,
            output_type="pt",
        ).image_embeddings

    def stage_b(
        self, emb: tuple[torch.Tensor, ...], effnet: torch.Tensor, work: Workload, generator: torch.Generator
    ) -> torch.Tensor:
        dtype = self.decoder.decoder.dtype
        embeds, pooled, neg, neg_pooled = (None if t is None else t.to(dtype) for t in emb)
        guide = work.guidance_b > 1
        return self.decoder(
            image_embeddings=effnet.to(dtype),
            num_inference_steps=work.steps_b,
            guidance_scale=work.guidance_b,
            prompt_embeds=embeds,
            prompt_embeds_pooled=pooled,
            negative_prompt_embeds=neg if guide else None,
            negative_prompt_embeds_pooled=neg_pooled if guide else None,
            generator=generator,
            output_type="latent",
        ).images

    @torch.no_grad()
    def stage_a(self, latents: torch.Tensor) -> torch.Tensor:
        latents = self.vqgan.config.scale_factor * latents.to(self.vqgan.dtype)
        return self.vqgan.decode(latents).sample.clamp(0, 1)


class CascadeDriver:
    """`CascadePipeline`'s stage methods."""

    def __init__(self, name: str, pipe: Any) -> None:
        self.name = name
        self.pipe = pipe
        pipe.set_progress_bar_config(disable=True)

    def graph_pool_bytes(self) -> int:
        return self.pipe.graph_pool_bytes

    def release(self) -> None:
        self.pipe.clear_caches()

    def encode(self, work: Workload) -> Any:
        return self.pipe.encode_prompt(
            list(work.prompts),
            negative_prompt=[work.negative_prompt] * work.batch,
            num_images_per_prompt=1,
            guidance=work.guided,
        )

    def stage_c(self, emb: Any, work: Workload, generator: torch.Generator) -> Any:
        return self.pipe.run_stage_c(
            emb,
            work.height,
            work.width,
            num_inference_steps=work.steps_c,
            guidance_scale=work.guidance_c,
            generator=generator,
        )

    def stage_b(self, emb: Any, effnet: Any, work: Workload, generator: torch.Generator) -> Any:
        return self.pipe.run_stage_b(
            emb, effnet, num_inference_steps=work.steps_b, guidance_scale=work.guidance_b, generator=generator
        )

    def stage_a(self, latents: Any) -> torch.Tensor:
        return self.pipe.run_stage_a(latents)


def unavailable_reason(name: str, device: torch.device, *, explicit: bool = True) -> str | None:
    """Why the benchmark row `name` cannot run on `device` here, or None when it can (as far as can be told
    up front).

    `explicit` is whether the user named it; some rows run only when asked for.
    """
    import importlib.util

    if name not in BACKENDS:
        return f"unknown backend (choose from {', '.join(BACKENDS)})"
    if name == BASELINE:
        return None
    if importlib.util.find_spec("cascade_trt.pipeline") is None:
        return "cascade_trt.pipeline (the runtime) is not in this build"
    runtime, variant = runtime_backend(name)
    if device.type == "cpu" and not explicit:
        if variant.get("compile"):
            return (
                "not run by default on the CPU: inductor compiles the UNets for minutes on a small CPU; "
                "name it in --backends to run it anyway"
            )
        if variant.get("cuda_graphs") is False:
            return (
                "not run by default on the CPU: a CPU has no CUDA graphs to leave out, so it would repeat "
                "the torch row; name it in --backends to run it anyway"
            )
    missing = _MISSING.get(runtime)
    return missing(device) if missing is not None else None


def _onnxruntime_missing(device: torch.device) -> str | None:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install 'cascade-trt[onnxruntime]')"
    if importlib.util.find_spec("cascade_trt.export") is None:
        return "cascade_trt.export (the ONNX exporter) is not in this build"
    if device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "this onnxruntime has no CUDA execution provider (install onnxruntime-gpu to run it on the GPU)"
    return None


def _tensorrt_missing(device: torch.device) -> str | None:
    import importlib.util

    if device.type != "cuda":
        return "TensorRT needs a CUDA GPU; this run is on the CPU"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed (see the README's TensorRT section)"
    return None


# What each runtime backend needs beyond the runtime itself, checked before anything is built.
_MISSING = {"onnxruntime": _onnxruntime_missing, "tensorrt": _tensorrt_missing}
