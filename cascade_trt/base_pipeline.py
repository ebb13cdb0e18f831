"""What the prior and decoder pipelines share: loading over any backend, the lock, the text encoder, device moves,
progress bars and diffusers' step-callback protocol.

A pipeline is a `StageRuntime` (runners, static buffers, graphs, lock: `cascade_trt.runtime`), a tokenizer and a
configuration. Every public method that touches the runtime holds the pipeline's lock (`serialised`), so one
pipeline may be shared by threads: each call returns what it returns alone, calls run one after another.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from cascade_trt.arguments import check_count, prompt_lists
from cascade_trt.backends import backend_options, get_backend
from cascade_trt.backends.base import StageRunner
from cascade_trt.checkpoints import CheckpointPair
from cascade_trt.components import CascadeComponents, load_components
from cascade_trt.configs import CascadeConfig
from cascade_trt.cuda_graphs import device_lock
from cascade_trt.devices import check_device
from cascade_trt.errors import ConfigError
from cascade_trt.loop import OnStep
from cascade_trt.precision import PrecisionPolicy, precision_argument
from cascade_trt.prompts import (
    PromptEmbeddings,
    check_prompt_embeds,
    encode_prompt,
    given_embeddings,
    text_encoder,
)
from cascade_trt.runtime import LoadLater, StageRuntime, load_runners
from cascade_trt.scheduler import SchedulerConfig, timesteps
from cascade_trt.stages import SIZE_UNIT

_Method = TypeVar("_Method", bound=Callable[..., Any])


def serialised(method: _Method) -> _Method:
    """Run `method` holding the pipeline's lock. Re-entrant, so a call holds it across its stages: another
    thread's call cannot start between them, and a stage's outputs are copied out before the lock is let go.
    On a CUDA device it holds the device's lock too (`cuda_graphs.device_lock`: no other pipeline's call on that
    GPU may run while this one captures a graph), always second, so two pipelines never wait on each other in
    opposite orders; the device is read under the pipeline's lock, which `to` holds while it moves."""

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock, device_lock(self.device):
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


class BasePipeline:
    """A prior or decoder pipeline over one `StageRuntime`. Build with `from_pretrained` or `from_components`."""

    _side: ClassVar[str]  # "prior" or "decoder": the checkpoint it loads
    _stages: ClassVar[tuple[str, ...]]  # loaded with the pipeline
    _later: ClassVar[tuple[str, ...]] = ()  # loaded on first use
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents"]

    def __init__(
        self, runtime: StageRuntime, tokenizer: Any, config: CascadeConfig, *, feature_extractor: Any = None
    ) -> None:
        self.runtime, self.tokenizer, self.config = runtime, tokenizer, config
        self.feature_extractor = feature_extractor
        self._lock = runtime.lock
        self._guidance_scale: float = 1.0
        self._num_timesteps = 0

    # --- construction --------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        backend: str = "torch",
        device: str | torch.device | None = None,
        precision: str | dict[str, str] = "auto",
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        cuda_graphs: bool = True,
        subfolder: str | None = None,
        **backend_kwargs: Any,
    ) -> Any:
        """Load from a diffusers-format pipeline directory or hub id, on any backend.

        `device` None is cuda where there is one; `torch_dtype` (diffusers' spelling: one dtype for every
        stage) may stand for `precision`; `variant` picks weight files as in diffusers ("bf16"). The torch
        backend loads the weights, each stage straight into its dtype; onnxruntime and tensorrt load only the
        tokenizer and configs and run `onnx_dir` / `engine_dir`, refusing graphs exported from other weights.
        `subfolder` is the UNet's ("prior_lite", "decoder_lite" for the lite models).

        `backend_kwargs` are the backend's own options, each checked by its options class (a name no backend
        takes is a ConfigError; another backend's option is ignored with a warning): torch `compile`;
        onnxruntime `onnx_dir` (required), `providers`, `verify`; tensorrt `engine_dir` (required), `onnx_dir`,
        `verify` (`cascade_trt.backends`).
        """
        options = backend_options(backend, **backend_kwargs)
        device = check_device(device)
        side = {cls._side: pretrained_model_name_or_path, f"{cls._side}_subfolder": subfolder or cls._side}
        checkpoints = CheckpointPair.resolve(**side)
        cls._check_artifacts(checkpoints, backend, options)
        components, policy = load_parts(
            checkpoints,
            cls._stages,
            backend=backend,
            device=device,
            precision=precision_argument(precision, torch_dtype),
            variant=variant,
        )
        runners = load_runners(
            components, cls._stages, backend=backend, options=options, device=device, policy=policy
        )
        later = stage_loader(components, backend, options, policy, variant)
        return cls.assemble(
            components, runners, device, checkpoints.schedulers(), cuda_graphs, load_later=later
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
    ) -> Any:
        """Build on already-loaded (or random-weight) components; the torch backend casts the modules in place
        to the policy's dtypes, the others use only the tokenizer and config. `backend_kwargs` as in
        `from_pretrained`."""
        # Here, not deeper: an ignored option's warning points at the caller's line.
        options = backend_options(backend, **backend_kwargs)
        device, policy = setup_components(components, backend, device, precision)
        runners = load_runners(
            components, cls._stages, backend=backend, options=options, device=device, policy=policy
        )
        later = stage_loader(components, backend, options, policy, None)
        return cls.assemble(components, runners, device, schedulers, cuda_graphs, load_later=later)

    @classmethod
    def assemble(
        cls,
        components: CascadeComponents,
        runners: Mapping[str, StageRunner],
        device: torch.device,
        schedulers: Mapping[str, SchedulerConfig] | None,
        cuda_graphs: bool,
        *,
        lock: Any = None,
        load_later: LoadLater | None = None,
    ) -> Any:
        """The pipeline over `runners` (those of its `_stages`; others are ignored)."""
        runtime = StageRuntime(
            {stage: runners[stage] for stage in cls._stages},
            device=device,
            schedulers=schedulers,
            cuda_graphs=cuda_graphs,
            lock=lock,
            load_later=load_later,
        )
        return cls(
            runtime, components.tokenizer, components.config, feature_extractor=components.feature_extractor
        )

    @classmethod
    def _check_artifacts(cls, checkpoints: CheckpointPair, backend: str, options: Any) -> None:
        """Checks of the files a backend runs against the checkpoint, before anything loads (none here)."""

    # --- the machinery, shared ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def runners(self) -> dict[str, StageRunner]:
        return self.runtime.runners

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the call running (diffusers' property, for step callbacks)."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        """The number of steps of the call running (diffusers' property, for step callbacks)."""
        return self._num_timesteps

    @serialised
    def clear_caches(self) -> None:
        """Release every shape's static buffers and captured graphs; the next call allocates again."""
        self.runtime.clear()

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm options for the progress bars (`disable=True` turns them off), as in diffusers."""
        self.runtime.progress = dict(kwargs)

    @serialised
    def to(self, device: str | torch.device) -> Any:
        """Run on `device` from now on (the torch backend's modules move; ONNX Runtime sessions and TensorRT
        engines are loaded for one device: pass it to `from_pretrained`). Returns the pipeline, as diffusers'."""
        if isinstance(device, torch.dtype):
            raise ConfigError(
                f"to({device}): the precision is chosen when loading: pass torch_dtype= or precision= to "
                "from_pretrained",
                argument="device",
            )
        self.runtime.to(check_device(device))
        return self

    def enable_model_cpu_offload(
        self, gpu_id: int | None = None, device: str | torch.device | None = None
    ) -> None:
        """Accepted so diffusers code runs; offloads nothing. cascade_trt keeps every stage resident on the
        pipeline's device: static buffers, CUDA graphs and engines need fixed addresses. Choose the device with
        `from_pretrained(device=...)` (cuda by default where there is one); a lite model or bf16/fp16 uses
        less memory."""
        warnings.warn(
            f"enable_model_cpu_offload: cascade_trt does not offload; every stage stays on {self.device} "
            "(static buffers, CUDA graphs and engines need fixed addresses)",
            UserWarning,
            stacklevel=2,
        )

    # --- text ----------------------------------------------------------------------------------------------

    @serialised
    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        guidance: bool = True,
        *,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_pooled: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds_pooled: torch.Tensor | None = None,
    ) -> PromptEmbeddings:
        """The text embeddings of a call, repeated per image (see `cascade_trt.prompts`): the text encoder runs
        once for the prompts and, with `guidance`, once for the negative prompts, unless their embeddings are
        given. Prompts over the tokenizer's 77 tokens are truncated with a warning, as diffusers does."""
        check_count("num_images_per_prompt", num_images_per_prompt)
        given = given_embeddings(
            prompt_embeds, prompt_embeds_pooled, negative_prompt_embeds, negative_prompt_embeds_pooled
        )
        prompts, negatives, _ = prompt_texts(self._text_shapes(), prompt, negative_prompt, **given)
        return encode_prompt(
            text_encoder(self.runtime, self.tokenizer),
            prompts,
            negatives,
            num_images_per_prompt,
            guidance,
            dtype=self.runtime.runners["text_encoder"].dtype,
            **given,
        )

    def _text_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.runtime.runners["text_encoder"].spec.shapes(1, SIZE_UNIT, SIZE_UNIT)

    # --- steps ---------------------------------------------------------------------------------------------

    def _begin(self, guidance_scale: float, num_steps: int) -> None:
        """What diffusers' properties report during a call (`guidance_scale`, `num_timesteps`)."""
        self._guidance_scale, self._num_timesteps = float(guidance_scale), num_steps

    def _step_hook(
        self,
        callback: Callable[..., Any] | None,
        tensor_inputs: Sequence[str],
        num_steps: int,
        tensors: Mapping[str, torch.Tensor | None],
        on_return: Callable[[dict[str, Any]], None] | None = None,
    ) -> OnStep | None:
        """diffusers' `callback_on_step_end(pipe, step, timestep, callback_kwargs)` as the loop's step hook:
        `callback_kwargs` holds the asked tensors (the step's latents, `tensors` for the rest); a returned
        `latents` replaces the loop's, other returned tensors go to `on_return`."""
        if callback is None:
            return None
        steps = timesteps(num_steps, device=self.device)[:-1]

        def on_step(index: int, latents: torch.Tensor) -> torch.Tensor | None:
            kwargs = {name: latents if name == "latents" else tensors.get(name) for name in tensor_inputs}
            returned = dict(callback(self, index, steps[index], kwargs) or {})
            if on_return is not None:
                on_return(returned)
            return returned.get("latents")

        return on_step


def setup_components(
    components: CascadeComponents,
    backend: str,
    device: str | torch.device | None,
    precision: str | dict[str, str],
) -> tuple[torch.device, PrecisionPolicy]:
    """What building on given components resolves first, for any pipeline (checked before anything loads):
    the device and the precision policy."""
    if components.tokenizer is None:
        raise ConfigError("components have no tokenizer: load them with the text_encoder stage")
    device = check_device(device)
    return device, PrecisionPolicy.resolve(components.config, precision, device=device, target=backend)


def load_parts(
    checkpoints: CheckpointPair,
    stages: Sequence[str],
    *,
    backend: str,
    device: torch.device,
    precision: str | dict[str, str],
    variant: str | None,
) -> tuple[CascadeComponents, PrecisionPolicy]:
    """The precision policy for the checkpoints, and the components a backend needs: the tokenizer and feature
    extractor always, the modules of `stages` where the backend runs modules (torch), each in its dtype."""
    policy = PrecisionPolicy.resolve(checkpoints.config(), precision, device=device, target=backend)
    modules = tuple(stages) if get_backend(backend).runs_modules else ()  # else the tokenizer alone
    components = load_components(
        checkpoints, stages=modules, dtypes=policy.dtypes(), device=device, variant=variant
    )
    return components, policy


def stage_loader(
    components: CascadeComponents, backend: str, options: Any, policy: PrecisionPolicy, variant: str | None
) -> Callable[[str, torch.device], StageRunner]:
    """Loads a stage on first use (the image encoder): its module first where the backend runs modules and
    the components do not hold it yet."""

    def load(stage: str, device: torch.device) -> StageRunner:
        parts = components
        if get_backend(backend).runs_modules and getattr(components, stage) is None:
            if components.checkpoints is None or not components.checkpoints.has(stage):
                raise ConfigError(f"the components have no {stage}")
            parts = load_components(
                components.checkpoints,
                stages=(stage,),
                dtypes=policy.dtypes(),
                device=device,
                variant=variant,
            )
        return load_runners(parts, (stage,), backend=backend, options=options, device=device, policy=policy)[
            stage
        ]

    return load


def prompt_texts(
    text_shapes: Mapping[str, tuple[int, ...]],
    prompt: Any,
    negative_prompt: Any,
    *,
    prompt_embeds: torch.Tensor | None = None,
    prompt_embeds_pooled: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds_pooled: torch.Tensor | None = None,
) -> tuple[list[str] | None, list[str], int]:
    """The prompts to encode (None where their embeddings are given), one negative prompt per prompt, and the
    number of prompts; checked as diffusers checks them (and the embeddings against `text_shapes`, the text
    encoder's outputs)."""
    embedded = check_prompt_embeds(
        text_shapes,
        prompt_embeds,
        prompt_embeds_pooled,
        negative_prompt_embeds,
        negative_prompt_embeds_pooled,
    )
    if embedded is not None and prompt is not None:
        raise ConfigError("pass prompt or prompt_embeds, not both", argument="prompt_embeds")
    if negative_prompt_embeds is not None and negative_prompt is not None:
        raise ConfigError(
            "pass negative_prompt or negative_prompt_embeds, not both", argument="negative_prompt_embeds"
        )
    if embedded is None and prompt is None:
        raise ConfigError("pass a prompt (or prompt_embeds)", argument="prompt")
    prompts, negatives = prompt_lists(prompt if embedded is None else [""] * embedded, negative_prompt)
    return (prompts if embedded is None else None), negatives, len(prompts)
