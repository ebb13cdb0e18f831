"""`CascadePipeline`: a drop-in for diffusers' `StableCascadeCombinedPipeline` over any backend.

    pipe = CascadePipeline.from_pretrained(prior=P, decoder=D, backend="torch", device="cuda")
    image = pipe("a photo of a cat", generator=torch.Generator().manual_seed(0)).images[0]

It is a `CascadePriorPipeline` (`prior_pipe`) and a `CascadeDecoderPipeline` (`decoder_pipe`) composed as
diffusers composes them, with no logic of its own: `__call__` is exactly `encode_prompt` -> (`encode_image`) ->
`run_stage_c` (the prior's) -> `run_stage_b` -> `run_stage_a` (the decoder's), each public so a benchmark can
time the stages one by one. The text encoder runs once per call and feeds both stages, as in diffusers'
combined pipeline, so the decoder's own text encoder is never loaded; unlike diffusers, the negative embeddings
are computed whenever either stage guides (diffusers crashes on prior guidance off with decoder guidance on).

A pipeline may be shared by threads: its static buffers and captured graphs are per shape and not re-entrant,
so every call (and every stage method) holds the pipeline's lock, one lock for both halves, and each call
returns what it returns alone. Calls are serialised, not run in parallel: concurrency comes from batching
requests, or from replicas.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cascade_trt.arguments import variation_prompt
from cascade_trt.backends import backend_options
from cascade_trt.backends.base import StageRunner
from cascade_trt.base_pipeline import load_parts, serialised, setup_components, stage_loader
from cascade_trt.checkpoints import CheckpointPair
from cascade_trt.components import CascadeComponents
from cascade_trt.decoder import CascadeDecoderPipeline, DecoderArguments
from cascade_trt.devices import check_device
from cascade_trt.errors import ConfigError
from cascade_trt.noise import Generators
from cascade_trt.outputs import ImagePipelineOutput, convert_images
from cascade_trt.precision import PrecisionPolicy, precision_argument
from cascade_trt.prior import CascadePriorPipeline, PriorArguments
from cascade_trt.prompts import PromptEmbeddings, given_embeddings
from cascade_trt.runtime import load_runners
from cascade_trt.scheduler import SchedulerConfig
from cascade_trt.stages import PIPELINE_STAGES

__all__ = ["CascadePipeline", "PromptEmbeddings"]

# The combined pipeline's names for the prior's and decoder's arguments (diffusers').
PRIOR_ARGUMENTS = PriorArguments("prior_num_inference_steps", "prior_guidance_scale", "prior_")
DECODER_ARGUMENTS = DecoderArguments("num_inference_steps", "decoder_guidance_scale")


class CascadePipeline:
    """Stable Cascade text (and image) to image on one backend. Build with `from_pretrained` or
    `from_components`. Safe to share between threads: calls are serialised by one lock (see the module
    docstring)."""

    def __init__(self, prior_pipe: CascadePriorPipeline, decoder_pipe: CascadeDecoderPipeline) -> None:
        if prior_pipe._lock is not decoder_pipe._lock:
            raise ConfigError(
                "the prior and decoder of a CascadePipeline must share one lock (build it with assemble)"
            )
        self.prior_pipe, self.decoder_pipe = prior_pipe, decoder_pipe
        self.config = prior_pipe.config
        self._lock = prior_pipe._lock

    # --- construction --------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        prior: str | Path,
        decoder: str | Path,
        *,
        backend: str = "torch",
        device: str | torch.device | None = None,
        precision: str | dict[str, str] = "auto",
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        cuda_graphs: bool = True,
        prior_subfolder: str = "prior",
        decoder_subfolder: str = "decoder",
        **backend_kwargs: Any,
    ) -> CascadePipeline:
        """Load from diffusers-format prior and decoder pipeline directories (or hub ids).

        A backend that runs PyTorch modules (torch) loads the weights, each stage straight into its dtype; the
        others (onnxruntime, tensorrt) load only the tokenizer and configs and run the models in `onnx_dir` /
        `engine_dir`, refusing graphs exported from other weights than these checkpoints, and files that are not
        those their manifests describe (sizes and sampled chunks; with `verify`, the sha256 of every byte).
        `device` None is cuda where there is one; `torch_dtype` and `variant` are diffusers' (see
        `CascadePriorPipeline`).

        `backend_kwargs` are the backend's own options, each checked by its options class (a name no backend
        takes is a ConfigError; another backend's option is ignored with a warning): torch `compile`;
        onnxruntime `onnx_dir` (required), `providers`, `verify`; tensorrt `engine_dir` (required), `onnx_dir`,
        `verify` (`cascade_trt.backends`).
        """
        # Unknown backend, missing directory, options another backend would use: said before anything loads.
        options = backend_options(backend, **backend_kwargs)
        device = check_device(device)
        checkpoints = CheckpointPair.resolve(
            prior, decoder, prior_subfolder=prior_subfolder, decoder_subfolder=decoder_subfolder
        )
        precision = precision_argument(precision, torch_dtype)
        components, policy = load_parts(
            checkpoints, PIPELINE_STAGES, backend=backend, device=device, precision=precision, variant=variant
        )
        return cls.assemble(
            components, backend, options, device, policy, cuda_graphs, checkpoints.schedulers(), variant
        )

    @classmethod
    def from_components(
        cls,
        components: CascadeComponents,
        *,
        backend: str = "torch",
        device: str | torch.device | None = None,
        precision: str | dict[str, str] = "auto",
        cuda_graphs: bool = True,
        schedulers: Mapping[str, SchedulerConfig] | None = None,
        **backend_kwargs: Any,
    ) -> CascadePipeline:
        """Build on already-loaded (or random-weight) components.

        The torch backend casts the modules in place to the policy's dtypes (`nn.Module.to`, no copy: a 3.6B
        Stage C is never held twice); the other backends use only the tokenizer and config of `components`.
        `backend_kwargs` as in `from_pretrained`.
        """
        # Here, not deeper: an ignored option's warning points at the caller's line.
        options = backend_options(backend, **backend_kwargs)
        device, policy = setup_components(components, backend, device, precision)
        return cls.assemble(components, backend, options, device, policy, cuda_graphs, schedulers, None)

    @classmethod
    def assemble(
        cls,
        components: CascadeComponents,
        backend: str,
        options: Any,
        device: torch.device,
        policy: PrecisionPolicy,
        cuda_graphs: bool,
        schedulers: Mapping[str, SchedulerConfig] | None,
        variant: str | None,
    ) -> CascadePipeline:
        """The backend's runners for the pipeline's stages, loaded in one call (a backend that shares memory
        between runners shares it across both halves), and the prior and decoder pipelines on them, sharing
        the text encoder and one lock; the image encoder loads on first use."""
        runners = load_runners(
            components, PIPELINE_STAGES, backend=backend, options=options, device=device, policy=policy
        )
        lock = threading.RLock()
        later = stage_loader(components, backend, options, policy, variant)
        prior = CascadePriorPipeline.assemble(
            components, runners, device, schedulers, cuda_graphs, lock=lock, load_later=later
        )
        decoder = CascadeDecoderPipeline.assemble(
            components, runners, device, schedulers, cuda_graphs, lock=lock
        )
        return cls(prior, decoder)

    # --- the machinery of both halves ----------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.prior_pipe.device

    @property
    def runners(self) -> dict[str, StageRunner]:
        """Every stage's runner (the text encoder's is the prior's, which both halves use)."""
        return {**self.prior_pipe.runners, **self.decoder_pipe.runners}

    @property
    def graph_pool_bytes(self) -> int:
        """Bytes the captured CUDA graphs' memory pools reserved (see `GraphCache.pool_bytes`)."""
        return sum(pipe.runtime.graphs.pool_bytes for pipe in (self.prior_pipe, self.decoder_pipe))

    @serialised
    def clear_caches(self) -> None:
        """Release every shape's static buffers and captured graphs (a benchmark sweeping many sizes keeps
        one set per shape otherwise); the next call allocates and captures again."""
        self.prior_pipe.clear_caches()
        self.decoder_pipe.clear_caches()

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm options for the per-stage progress bars (`disable=True` turns them off), as in diffusers."""
        self.prior_pipe.set_progress_bar_config(**kwargs)
        self.decoder_pipe.set_progress_bar_config(**kwargs)

    @serialised
    def to(self, device: str | torch.device) -> CascadePipeline:
        """Both halves on `device` (see `CascadePriorPipeline.to`)."""
        self.prior_pipe.to(device)
        self.decoder_pipe.to(device)
        return self

    def enable_model_cpu_offload(
        self, gpu_id: int | None = None, device: str | torch.device | None = None
    ) -> None:
        """Accepted so diffusers code runs; offloads nothing (see `CascadePriorPipeline.enable_model_cpu_offload`)."""
        self.prior_pipe.enable_model_cpu_offload(gpu_id, device)

    # --- the stages ----------------------------------------------------------------------------------------

    def encode_prompt(self, *args: Any, **kwargs: Any) -> PromptEmbeddings:
        """The prior's `encode_prompt`: the embeddings both stages use."""
        return self.prior_pipe.encode_prompt(*args, **kwargs)

    def encode_image(self, images: Any) -> torch.Tensor:
        """The prior's `encode_image`."""
        return self.prior_pipe.encode_image(images)

    def run_stage_c(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The prior's `run_stage_c`."""
        return self.prior_pipe.run_stage_c(*args, **kwargs)

    def run_stage_b(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The decoder's `run_stage_b`."""
        return self.decoder_pipe.run_stage_b(*args, **kwargs)

    def run_stage_a(self, latents: torch.Tensor) -> torch.Tensor:
        """The decoder's `run_stage_a`."""
        return self.decoder_pipe.run_stage_a(latents)

    # --- the whole cascade ---------------------------------------------------------------------------------

    @serialised
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int = 1024,
        width: int = 1024,
        num_images_per_prompt: int = 1,
        prior_num_inference_steps: int = 20,
        prior_guidance_scale: float = 4.0,
        num_inference_steps: int = 10,
        decoder_guidance_scale: float = 0.0,
        generator: Generators = None,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        images: Any = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_pooled: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds_pooled: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        prior_callback_on_step_end: Callable[..., Any] | None = None,
        prior_callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback_on_step_end: Callable[..., Any] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Text (and image prompts) to image with diffusers' meaning for every argument; returns what diffusers
        returns (`ImagePipelineOutput`, or the images alone with `return_dict=False`). Everything is checked
        (`check_inputs`) before anything runs.

        Defaults are Stability AI's recommended 1024², 20 + 10 steps (diffusers': 512², 60 + 12). `latents`
        start the prior, as in diffusers' combined pipeline. Pass arguments after `prompt` by name: the
        positional order is this pipeline's own, not diffusers' (which puts `images` second).
        """
        prompt = variation_prompt(prompt, prompt_embeds, images is not None)
        given = given_embeddings(
            prompt_embeds, prompt_embeds_pooled, negative_prompt_embeds, negative_prompt_embeds_pooled
        )
        callbacks = dict(
            prior_callback_on_step_end=prior_callback_on_step_end,
            prior_callback_on_step_end_tensor_inputs=prior_callback_on_step_end_tensor_inputs,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        self.check_inputs(
            prompt,
            negative_prompt,
            height,
            width,
            num_images_per_prompt,
            prior_num_inference_steps,
            prior_guidance_scale,
            num_inference_steps,
            decoder_guidance_scale,
            generator,
            output_type,
            images=images,
            latents=latents,
            **given,
            **callbacks,
        )
        guidance = prior_guidance_scale > 1 or decoder_guidance_scale > 1
        emb = self.encode_prompt(prompt, negative_prompt, num_images_per_prompt, guidance, **given)
        image_embeds = self.encode_image(images) if images is not None else None
        effnet = self.run_stage_c(
            emb,
            height,
            width,
            prior_num_inference_steps,
            prior_guidance_scale,
            generator,
            image_embeds=image_embeds,
            latents=latents,
            callback_on_step_end=prior_callback_on_step_end,
            callback_on_step_end_tensor_inputs=prior_callback_on_step_end_tensor_inputs,
        )
        latents = self.run_stage_b(
            emb,
            effnet,
            num_inference_steps,
            decoder_guidance_scale,
            generator,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        images = (
            latents if output_type == "latent" else convert_images(self.run_stage_a(latents), output_type)
        )
        return ImagePipelineOutput(images) if return_dict else images

    def check_inputs(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int = 1024,
        width: int = 1024,
        num_images_per_prompt: int = 1,
        prior_num_inference_steps: int = 20,
        prior_guidance_scale: float = 4.0,
        num_inference_steps: int = 10,
        decoder_guidance_scale: float = 0.0,
        generator: Generators = None,
        output_type: str = "pil",
        *,
        images: Any = None,
        latents: torch.Tensor | None = None,
        prior_callback_on_step_end: Callable[..., Any] | None = None,
        prior_callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback_on_step_end: Callable[..., Any] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        **embeds: torch.Tensor | None,
    ) -> None:
        """Every check `__call__` makes before it runs anything, without running anything: arguments, then
        each stage's shape against what its runner can take (an engine built for smaller images fails here,
        not after Stage C has spent its time). Raises `ConfigError` or `ShapeError`, whose `argument` names
        the argument; a server calls it before it queues a request."""
        prompt = variation_prompt(prompt, embeds.get("prompt_embeds"), images is not None)
        images_count = self.prior_pipe.check_request(
            prompt,
            negative_prompt,
            height,
            width,
            num_images_per_prompt,
            prior_num_inference_steps,
            prior_guidance_scale,
            generator,
            images=images,
            latents=latents,
            callback_on_step_end=prior_callback_on_step_end,
            callback_on_step_end_tensor_inputs=prior_callback_on_step_end_tensor_inputs,
            names=PRIOR_ARGUMENTS,
            **embeds,
        )
        self.decoder_pipe.check_decoding(
            images_count,
            height,
            width,
            num_inference_steps,
            decoder_guidance_scale,
            generator,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            names=DECODER_ARGUMENTS,
        )
