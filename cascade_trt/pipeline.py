"""`CascadePipeline`: a drop-in for diffusers' `StableCascadeCombinedPipeline` over any backend.

    pipe = CascadePipeline.from_pretrained(prior=P, decoder=D, backend="torch", device="cuda")
    image = pipe("a photo of a cat", generator=torch.Generator().manual_seed(0)).images[0]

`__call__` is exactly `encode_prompt` -> `run_stage_c` -> `run_stage_b` -> `run_stage_a`, each public so a
benchmark can time the stages one by one. The text encoder runs once per call and feeds both stages, as in
diffusers' combined pipeline; unlike diffusers, the negative embeddings are computed whenever either stage
guides (diffusers crashes on prior guidance off with decoder guidance on).

A pipeline may be shared by threads: its static buffers and captured graphs are per shape and not re-entrant,
so every call (and every stage method) holds the pipeline's lock, and each returns what it returns alone.
Calls are serialised, not run in parallel: concurrency comes from batching requests, or from replicas.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from cascade_trt.backends import backend_options, get_backend
from cascade_trt.backends.base import Bindings, StageRunner
from cascade_trt.checkpoints import CheckpointPair
from cascade_trt.components import CascadeComponents, load_components
from cascade_trt.configs import CascadeConfig
from cascade_trt.cuda_graphs import GraphCache
from cascade_trt.devices import check_device
from cascade_trt.errors import ConfigError, NonFiniteOutputError, ShapeError
from cascade_trt.loop import Denoiser, StageRun
from cascade_trt.precision import NAMES, PrecisionPolicy
from cascade_trt.scheduler import SchedulerConfig
from cascade_trt.stages import PIPELINE_STAGES, SIZE_UNIT, check_size, latent_sizes, stage_specs

log = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _serialised(method: _Method) -> _Method:
    """Run `method` holding the pipeline's lock. Re-entrant, so `__call__` holds it across its stages: another
    thread's call cannot start between them, and a stage's outputs are copied out before the lock is let go."""

    @functools.wraps(method)
    def locked(self: CascadePipeline, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


@dataclass
class PromptEmbeddings:
    """Text-encoder outputs for a call, already repeated per image: (B*n, 77, D) and (B*n, 1, P).

    The negative halves are None when neither stage guides.
    """

    clip_text: torch.Tensor
    clip_text_pooled: torch.Tensor
    negative_clip_text: torch.Tensor | None = None
    negative_clip_text_pooled: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.clip_text.shape[0]

    def conditioning(self, names: tuple[str, ...], guided: bool, stage: str) -> dict[str, torch.Tensor]:
        """The named embeddings at the model's batch: [conditional; unconditional] under guidance (diffusers'
        order), the conditional half alone without."""
        if not guided:
            return {name: getattr(self, name) for name in names}
        if self.negative_clip_text is None or self.negative_clip_text_pooled is None:
            raise ConfigError(
                f"{stage} guides but the embeddings have no negative half: call encode_prompt(..., guidance=True)"
            )
        return {name: torch.cat([getattr(self, name), getattr(self, f"negative_{name}")]) for name in names}


class CascadePipeline:
    """Stable Cascade text-to-image on one backend. Build with `from_pretrained` or `from_components`.

    Safe to share between threads: calls are serialised by a per-pipeline lock (see the module docstring).
    """

    def __init__(
        self,
        config: CascadeConfig,
        tokenizer: Any,
        runners: dict[str, StageRunner],
        *,
        device: torch.device | str = "cpu",
        schedulers: dict[str, SchedulerConfig] | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        missing = [s for s in PIPELINE_STAGES if s not in runners]
        if missing:
            raise ConfigError(f"CascadePipeline needs runners for {', '.join(missing)}")
        self.config, self.tokenizer, self.runners = config, tokenizer, runners
        self.device = torch.device(device)
        self.schedulers = {"stage_c": SchedulerConfig(), "stage_b": SchedulerConfig(), **(schedulers or {})}
        self.graphs = GraphCache(self.device, enabled=cuda_graphs)
        self.denoiser = Denoiser(self.graphs)
        self._bindings: dict[tuple[str, int, int, int], Bindings] = {}
        self._progress: dict[str, Any] = {}
        # Guards everything above that a call writes: bindings, loops, graphs (held by `_serialised` methods).
        self._lock = threading.RLock()

    # --- construction --------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        prior: str | Path,
        decoder: str | Path,
        *,
        backend: str = "torch",
        device: str | torch.device = "cpu",
        precision: str | dict[str, str] = "auto",
        onnx_dir: str | Path | None = None,
        engine_dir: str | Path | None = None,
        providers: list[Any] | None = None,
        compile: bool = False,  # noqa: A002 (diffusers-style option name)
        cuda_graphs: bool = True,
        verify: bool = False,
        prior_subfolder: str = "prior",
        decoder_subfolder: str = "decoder",
    ) -> CascadePipeline:
        """Load from diffusers-format prior and decoder pipeline directories (or hub ids).

        A backend that runs PyTorch modules (torch) loads the weights, each stage straight into its dtype; the
        others (onnxruntime, tensorrt) load only the tokenizer and configs and run the models in `onnx_dir` /
        `engine_dir`, refusing graphs exported from other weights than these checkpoints, and files that are not
        those their manifests describe (sizes and sampled chunks; with `verify`, the sha256 of every byte).
        """
        # Unknown backend, missing directory, options another backend would use: said before anything loads.
        options = backend_options(
            backend,
            onnx_dir=onnx_dir,
            engine_dir=engine_dir,
            providers=providers,
            compile=compile,
            verify=verify,
        )
        device = check_device(device)
        checkpoints = CheckpointPair.resolve(
            prior, decoder, prior_subfolder=prior_subfolder, decoder_subfolder=decoder_subfolder
        )
        policy = PrecisionPolicy.resolve(checkpoints.config(), precision, device=device, target=backend)
        stages = PIPELINE_STAGES if get_backend(backend).runs_modules else ()  # else the tokenizer alone
        components = load_components(checkpoints, stages=stages, dtypes=policy.dtypes(), device=device)
        return cls._assemble(
            components, backend, options, device, policy, cuda_graphs, checkpoints.schedulers()
        )

    @classmethod
    def from_components(
        cls,
        components: CascadeComponents,
        *,
        backend: str = "torch",
        device: str | torch.device = "cpu",
        precision: str | dict[str, str] = "auto",
        onnx_dir: str | Path | None = None,
        engine_dir: str | Path | None = None,
        providers: list[Any] | None = None,
        compile: bool = False,  # noqa: A002
        cuda_graphs: bool = True,
        verify: bool = False,
        schedulers: dict[str, SchedulerConfig] | None = None,
    ) -> CascadePipeline:
        """Build on already-loaded (or random-weight) components.

        The torch backend casts the modules in place to the policy's dtypes (`nn.Module.to`, no copy: a 3.6B
        Stage C is never held twice); the other backends use only the tokenizer and config of `components`.
        """
        options = backend_options(
            backend,
            onnx_dir=onnx_dir,
            engine_dir=engine_dir,
            providers=providers,
            compile=compile,
            verify=verify,
        )
        if components.tokenizer is None:
            raise ConfigError("components have no tokenizer: load them with the text_encoder stage")
        device = check_device(device)
        policy = PrecisionPolicy.resolve(components.config, precision, device=device, target=backend)
        return cls._assemble(components, backend, options, device, policy, cuda_graphs, schedulers)

    @classmethod
    def _assemble(
        cls,
        components: CascadeComponents,
        backend: str,
        options: Any,
        device: torch.device,
        policy: PrecisionPolicy,
        cuda_graphs: bool,
        schedulers: dict[str, SchedulerConfig] | None,
    ) -> CascadePipeline:
        """The backend's runners for the pipeline's stages, in the policy's dtypes, and the pipeline on them."""
        specs = stage_specs(components.config)
        runners = get_backend(backend).load_runners(
            {stage: specs[stage] for stage in PIPELINE_STAGES},
            options=options,
            device=device,
            dtypes={stage: policy.dtype(stage) for stage in PIPELINE_STAGES},
            components=components,
        )
        return cls(
            components.config,
            components.tokenizer,
            runners,
            device=device,
            schedulers=schedulers,
            cuda_graphs=cuda_graphs,
        )

    @_serialised
    def clear_caches(self) -> None:
        """Release every shape's static buffers and captured graphs (a benchmark sweeping many sizes keeps
        one set per shape otherwise); the next call allocates and captures again."""
        self.denoiser.clear()
        self.graphs.clear()
        self._bindings.clear()

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm options for the per-stage progress bars (`disable=True` turns them off), as in diffusers."""
        self._progress = dict(kwargs)

    # --- the stages ----------------------------------------------------------------------------------------

    @_serialised
    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        guidance: bool = True,
    ) -> PromptEmbeddings:
        """Run the text encoder once for the prompts (and, with `guidance`, the negative prompts).

        Prompts longer than the tokenizer's 77 tokens are truncated with a warning, as diffusers does. An
        absent negative prompt is the empty string, encoded (not zeros).
        """
        prompts, negatives = _prompt_lists(prompt, negative_prompt)
        _check_count("num_images_per_prompt", num_images_per_prompt)

        def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            out = self._run_once("text_encoder", len(texts), SIZE_UNIT, SIZE_UNIT, *self._tokenize(texts))
            n = num_images_per_prompt
            return out["clip_text"].repeat_interleave(n, 0), out["clip_text_pooled"].repeat_interleave(n, 0)

        # Prompts and negatives as two batches, as diffusers encodes them: one batch of both would round the
        # pooled projection differently (a GEMM of another height), 1e-7 apart but no longer bit-identical.
        emb = PromptEmbeddings(*encode(prompts))
        if guidance:
            emb.negative_clip_text, emb.negative_clip_text_pooled = encode(negatives)
        return emb

    @_serialised
    @torch.no_grad()
    def run_stage_c(
        self,
        embeddings: PromptEmbeddings,
        height: int,
        width: int,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """The prior loop: Stage C latents ("effnet"), (B*n, 16, ceil(H/42.67), ceil(W/42.67))."""
        check_size(height, width)
        _check_count("prior_num_inference_steps", num_inference_steps)
        _check_scale("prior_guidance_scale", guidance_scale)
        runner = self.runners["stage_c"]
        batch = embeddings.batch
        guided = guidance_scale > 1
        conditioning = embeddings.conditioning(("clip_text_pooled", "clip_text"), guided, "stage_c")
        # No image prompt: diffusers conditions both halves on zero image embeddings.
        clip_img = runner.spec.tensor("clip_img").shape[1:]  # (1, C): fixed sizes
        conditioning["clip_img"] = torch.zeros((2 * batch if guided else batch, *clip_img))
        return self._denoise(
            "stage_c", batch, (height, width), num_inference_steps, guidance_scale, conditioning, generator
        )

    @_serialised
    @torch.no_grad()
    def run_stage_b(
        self,
        embeddings: PromptEmbeddings,
        effnet: torch.Tensor,
        num_inference_steps: int = 10,
        guidance_scale: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """The decoder loop: Stage B latents (B*n, 4, Hb, Wb) from Stage C's latents."""
        _check_count("num_inference_steps", num_inference_steps)
        _check_scale("decoder_guidance_scale", guidance_scale)
        height, width = self._size_of_latents(effnet, "stage_c", "effnet")
        batch = effnet.shape[0]
        if batch != embeddings.batch:
            raise ShapeError(
                f"effnet has batch {batch} but the embeddings {embeddings.batch}: use the same call's"
            )
        guided = guidance_scale > 1
        conditioning = embeddings.conditioning(("clip_text_pooled",), guided, "stage_b")
        # The unconditional half of effnet is zeros, as in diffusers' decoder.
        conditioning["effnet"] = torch.cat([effnet, torch.zeros_like(effnet)]) if guided else effnet
        return self._denoise(
            "stage_b", batch, (height, width), num_inference_steps, guidance_scale, conditioning, generator
        )

    @_serialised
    @torch.no_grad()
    def run_stage_a(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode Stage B latents to images (B, 3, H, W) in [0, 1] (the VQGAN scale and clamp are in the stage)."""
        height, width = self._size_of_latents(latents, "stage_b", "latents")
        images = self._run_once("stage_a", latents.shape[0], height, width, latents)["images"]
        return self._checked("stage_a", images)

    # --- the whole cascade ---------------------------------------------------------------------------------

    @_serialised
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int = 1024,
        width: int = 1024,
        num_images_per_prompt: int = 1,
        prior_num_inference_steps: int = 20,
        prior_guidance_scale: float = 4.0,
        num_inference_steps: int = 10,
        decoder_guidance_scale: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> Any:
        """Text to image with diffusers' meaning for every argument; returns what diffusers returns
        (`ImagePipelineOutput`, or the images alone with `return_dict=False`).

        Defaults are Stability AI's recommended 1024², 20 + 10 steps (diffusers': 512², 60 + 12). Precomputed
        embeddings, image conditioning, initial latents and per-step callbacks are not accepted.
        """
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
        )
        guidance = prior_guidance_scale > 1 or decoder_guidance_scale > 1
        emb = self.encode_prompt(prompt, negative_prompt, num_images_per_prompt, guidance=guidance)
        effnet = self.run_stage_c(
            emb, height, width, prior_num_inference_steps, prior_guidance_scale, generator
        )
        latents = self.run_stage_b(emb, effnet, num_inference_steps, decoder_guidance_scale, generator)
        images = latents if output_type == "latent" else _convert(self.run_stage_a(latents), output_type)
        if not return_dict:
            return images
        from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

        return ImagePipelineOutput(images=images)

    def check_inputs(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int = 1024,
        width: int = 1024,
        num_images_per_prompt: int = 1,
        prior_num_inference_steps: int = 20,
        prior_guidance_scale: float = 4.0,
        num_inference_steps: int = 10,
        decoder_guidance_scale: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
    ) -> None:
        """Every check `__call__` makes before it runs anything, without running anything: arguments, then
        each stage's shape against what its runner can take (an engine built for smaller images fails here,
        not after Stage C has spent its time). Raises `ConfigError` or `ShapeError`; a server calls it before
        it queues a request."""
        if output_type not in OUTPUT_TYPES:
            raise ConfigError(f"output_type={output_type!r}: choose one of {', '.join(OUTPUT_TYPES)}")
        check_size(height, width)
        _check_count("prior_num_inference_steps", prior_num_inference_steps)
        _check_count("num_inference_steps", num_inference_steps)
        _check_scale("prior_guidance_scale", prior_guidance_scale)
        _check_scale("decoder_guidance_scale", decoder_guidance_scale)
        prompts, _ = _prompt_lists(prompt, negative_prompt)
        _check_count("num_images_per_prompt", num_images_per_prompt)
        count = len(prompts) * num_images_per_prompt
        _check_generator(generator, count)
        self._check_shapes(
            len(prompts), count, height, width, prior_guidance_scale > 1, decoder_guidance_scale > 1
        )

    # --- helpers -------------------------------------------------------------------------------------------

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer
        max_length = tok.model_max_length
        inputs = tok(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        untruncated = tok(texts, padding="longest", return_tensors="pt").input_ids
        if untruncated.shape[-1] >= inputs.input_ids.shape[-1] and not torch.equal(
            inputs.input_ids, untruncated
        ):
            removed = tok.batch_decode(untruncated[:, max_length - 1 : -1])
            log.warning(
                "The following part of your input was truncated because CLIP can only handle sequences up to "
                "%d tokens: %s",
                max_length,
                removed,
            )
        return inputs.input_ids, inputs.attention_mask

    def _run_once(
        self, stage: str, batch: int, height: int, width: int, *inputs: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One call of a single-shot stage on bindings allocated once per shape; outputs copied out."""
        runner = self.runners[stage]
        key = (stage, batch, height, width)
        bindings = self._bindings.get(key)
        if bindings is None:
            bindings = self._bindings[key] = runner.allocate(batch, height, width)
        for name, value in zip(runner.spec.input_names, inputs, strict=True):
            bindings.inputs[name].copy_(value)
        runner.execute(bindings)
        return {name: t.clone() for name, t in bindings.outputs.items()}

    def _size_of_latents(self, latents: torch.Tensor, stage: str, name: str) -> tuple[int, int]:
        """The image size a Stage C ("stage_c") or Stage B ("stage_b") latent belongs to.

        Inverts diffusers' arithmetic, which is linear in 128 px units (see `cascade_trt.stages`).
        """
        per_unit = latent_sizes(self.config, SIZE_UNIT, SIZE_UNIT)[stage][0]
        bad = ShapeError(f"{name} of shape {tuple(latents.shape)} is not a {stage} latent of this cascade")
        if latents.dim() != 4 or latents.shape[2] % per_unit or latents.shape[3] % per_unit:
            raise bad
        height, width = latents.shape[2] // per_unit * SIZE_UNIT, latents.shape[3] // per_unit * SIZE_UNIT
        if latent_sizes(self.config, height, width)[stage] != tuple(latents.shape[2:]):
            raise bad
        return height, width

    def _check_shapes(
        self, prompts: int, images: int, height: int, width: int, guided_c: bool, guided_b: bool
    ) -> None:
        batches = {
            "text_encoder": (prompts, SIZE_UNIT, SIZE_UNIT),
            "stage_c": (2 * images if guided_c else images, height, width),
            "stage_b": (2 * images if guided_b else images, height, width),
            "stage_a": (images, height, width),
        }
        for stage, (batch, h, w) in batches.items():
            self.runners[stage].check_shape(batch, h, w)

    def _denoise(
        self,
        stage: str,
        batch: int,
        size: tuple[int, int],
        steps: int,
        guidance_scale: float,
        conditioning: dict[str, torch.Tensor],
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """One denoising stage's loop with the checkpoint's scheduler settings; its latents, checked."""
        generator = _check_generator(generator, batch)
        run = StageRun(batch, *size, steps, guidance_scale, conditioning, generator, self.schedulers[stage])
        return self._checked(stage, self.denoiser(self.runners[stage], run, self._progress_bar))

    def _checked(self, stage: str, output: torch.Tensor) -> torch.Tensor:
        """One host sync per stage (never per step): refuse NaN/inf with the usual cause and fix."""
        if not bool(torch.isfinite(output).all()):
            precision = NAMES.get(self.runners[stage].dtype, str(self.runners[stage].dtype))
            raise NonFiniteOutputError(
                f"{stage} produced NaN or infinite values in {precision}. fp16 overflow is the usual cause "
                f"(the full Stage C is known to overflow): run {stage} in bf16, e.g. "
                f"precision={{'{stage}': 'bf16'}} (or fp32)"
            )
        return output

    def _progress_bar(self, steps: Iterable[int], desc: str) -> Iterable[int]:
        from tqdm.auto import tqdm

        return tqdm(steps, desc=desc, **self._progress)


def _prompt_lists(prompt: Any, negative_prompt: Any) -> tuple[list[str], list[str]]:
    """Prompts and one negative per prompt; typed errors for anything else."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
    if negative_prompt is None:
        return prompts, [""] * len(prompts)  # diffusers encodes the empty prompt, it does not use zeros
    if isinstance(negative_prompt, str):
        return prompts, [negative_prompt] * len(prompts)
    if not isinstance(negative_prompt, list) or not all(isinstance(p, str) for p in negative_prompt):
        raise ConfigError(f"negative_prompt must be a string or a list of strings, got {negative_prompt!r}")
    if len(negative_prompt) != len(prompts):
        raise ConfigError(
            f"negative_prompt has {len(negative_prompt)} entries but prompt has {len(prompts)}: pass one "
            "negative prompt per prompt, or a single string for all of them"
        )
    return prompts, negative_prompt


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_scale(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number (guidance is on above 1), got {value!r}")


def _check_generator(generator: Any, batch: int) -> Any:
    if isinstance(generator, list) and len(generator) != batch:
        raise ConfigError(
            f"got {len(generator)} generators for {batch} images: pass one generator, or one per image "
            "(prompts x num_images_per_prompt)"
        )
    return generator


def _convert(images: torch.Tensor, output_type: str) -> Any:
    """diffusers' decoder-pipeline conversion: "pt" as is, "np" NHWC float32, "pil" through numpy."""
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).cpu().float().numpy()
    if output_type == "np":
        return array
    from diffusers.utils import numpy_to_pil

    return numpy_to_pil(array)
