"""`CascadeDecoderPipeline`: diffusers' `StableCascadeDecoderPipeline` over any backend (Stage C latents and a
prompt to images, through Stage B and Stage A).

    decoder = CascadeDecoderPipeline.from_pretrained("stabilityai/stable-cascade", torch_dtype=torch.float16)
    image = decoder(prior_output.image_embeddings, prompt=prompt, num_inference_steps=10).images[0]

`__call__` takes diffusers' arguments and returns what diffusers returns (`ImagePipelineOutput`, or the images
with `return_dict=False`); it is `encode_prompt` -> `run_stage_b` -> `run_stage_a`, each public.

Prompts are encoded with the decoder directory's own text encoder, as diffusers' decoder pipeline does. The
onnxruntime and tensorrt backends run the text encoder exported with the prior (`cascade-trt export` exports
one); loading checks that the decoder's own `text_encoder/` holds the same weights, and says how to export the
decoder's when it does not.

`num_images_per_prompt` is diffusers': each prompt gets `num_images_per_prompt` images per image embedding it
has (embeddings / prompts of them). diffusers itself only runs that with one embedding and no guidance (its
Stage B broadcasts the embedding); here every embedding is repeated for its images, which gives diffusers'
images wherever diffusers runs, and the same images as handing diffusers the repeated embeddings elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from cascade_trt.arguments import (
    check_callback,
    check_choice,
    check_count,
    check_generator,
    check_scale,
    check_tensor,
)
from cascade_trt.artifacts import engine_path, onnx_path, read_manifest
from cascade_trt.base_pipeline import BasePipeline, prompt_texts, serialised
from cascade_trt.checkpoints import CheckpointPair
from cascade_trt.errors import ShapeError
from cascade_trt.loop import StageRun
from cascade_trt.noise import Generators
from cascade_trt.outputs import IMAGE_TYPES, ImagePipelineOutput, convert_images
from cascade_trt.prompts import PromptEmbeddings, given_embeddings
from cascade_trt.provenance import check_source
from cascade_trt.stages import SIZE_UNIT, latent_sizes


@dataclass(frozen=True)
class DecoderArguments:
    """The names the decoder's arguments have in the pipeline being called (the combined pipeline's
    `decoder_guidance_scale`), so an error names what the caller passed."""

    steps: str = "num_inference_steps"
    scale: str = "guidance_scale"


class CascadeDecoderPipeline(BasePipeline):
    """Stable Cascade's decoder (Stage B and Stage A) on one backend. Safe to share between threads (calls are
    serialised)."""

    _side = "decoder"
    _stages = ("text_encoder", "stage_b", "stage_a")
    _callback_tensor_inputs: ClassVar[list[str]] = [
        "latents",
        "prompt_embeds_pooled",
        "negative_prompt_embeds",
        "image_embeddings",
    ]

    # --- stages --------------------------------------------------------------------------------------------

    @serialised
    @torch.no_grad()
    def run_stage_b(
        self,
        embeddings: PromptEmbeddings,
        effnet: torch.Tensor,
        num_inference_steps: int = 10,
        guidance_scale: float = 0.0,
        generator: Generators = None,
        *,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable[..., Any] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        image_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The decoder loop: Stage B latents (B*n, 4, Hb, Wb) from Stage C's latents, one row per image.

        `latents` start the loop instead of a draw; `callback_on_step_end` is diffusers' (this call then runs
        uncaptured), its `image_embeddings` input being `image_embeddings` (default: `effnet`).
        """
        height, width = self.size_of(effnet, "stage_c", "image_embeddings")
        batch = effnet.shape[0]
        if batch != embeddings.batch:
            raise ShapeError(
                f"image_embeddings give {batch} images but the text embeddings {embeddings.batch}: pass one "
                "pooled embedding per image",
                argument="prompt_embeds_pooled",
            )
        self._check_run(batch, height, width, num_inference_steps, guidance_scale, generator, latents)
        check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        guided = guidance_scale > 1
        conditioning = embeddings.conditioning(("clip_text_pooled",), guided, "stage_b")
        # The unconditional half of effnet is zeros, as in diffusers' decoder.
        conditioning["effnet"] = torch.cat([effnet, torch.zeros_like(effnet)]) if guided else effnet
        self._begin(guidance_scale, num_inference_steps)
        hook = self._step_hook(
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            num_inference_steps,
            {
                "prompt_embeds_pooled": conditioning["clip_text_pooled"],
                "negative_prompt_embeds": embeddings.negative_clip_text,
                "image_embeddings": effnet if image_embeddings is None else image_embeddings,
            },
        )
        run = StageRun(
            batch,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            conditioning,
            generator,
            self.runtime.schedulers["stage_b"],
            latents=latents,
            on_step=hook,
        )
        return self.runtime.denoise("stage_b", run)

    @serialised
    @torch.no_grad()
    def run_stage_a(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode Stage B latents to images (B, 3, H, W) in [0, 1] (the VQGAN scale and clamp are in the stage)."""
        height, width = self.size_of(latents, "stage_b", "latents")
        images = self.runtime.run_once("stage_a", latents.shape[0], height, width, latents)["images"]
        return self.runtime.checked("stage_a", images)

    # --- the whole decoder ---------------------------------------------------------------------------------

    @serialised
    @torch.no_grad()
    def __call__(
        self,
        image_embeddings: torch.Tensor | list[torch.Tensor],
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 10,
        guidance_scale: float = 0.0,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_pooled: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds_pooled: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        generator: Generators = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., Any] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """diffusers' `StableCascadeDecoderPipeline.__call__`, argument for argument; every check is made
        before anything runs.

        Where it is not diffusers' (each where diffusers fails): `num_images_per_prompt` above 1 with several
        embeddings or guidance (see the module docstring); guidance with `prompt_embeds` and no negative
        embeddings encodes `negative_prompt` (the empty one by default).
        """
        if isinstance(image_embeddings, list):
            image_embeddings = torch.cat(image_embeddings, dim=0)
        given = given_embeddings(
            prompt_embeds, prompt_embeds_pooled, negative_prompt_embeds, negative_prompt_embeds_pooled
        )
        per_prompt = self.check_request(
            image_embeddings,
            prompt,
            negative_prompt,
            num_images_per_prompt,
            num_inference_steps,
            guidance_scale,
            generator,
            latents=latents,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            **given,
        )
        emb = self.encode_prompt(prompt, negative_prompt, per_prompt, guidance_scale > 1, **given)
        emb.clip_text = None  # the decoder reads the pooled embeddings only; diffusers keeps no other
        if negative_prompt_embeds is None:
            emb.negative_clip_text = None
        latents = self.run_stage_b(
            emb,
            image_embeddings.repeat_interleave(num_images_per_prompt, 0),
            num_inference_steps,
            guidance_scale,
            generator,
            latents=latents,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            image_embeddings=image_embeddings,
        )
        images = (
            latents if output_type == "latent" else convert_images(self.run_stage_a(latents), output_type)
        )
        return ImagePipelineOutput(images) if return_dict else images

    # --- checks --------------------------------------------------------------------------------------------

    def check_request(
        self,
        image_embeddings: torch.Tensor,
        prompt: Any,
        negative_prompt: Any,
        num_images_per_prompt: int,
        num_inference_steps: int,
        guidance_scale: float,
        generator: Generators,
        *,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[..., Any] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        **embeds: torch.Tensor | None,
    ) -> int:
        """Every check of a decoder call that needs no model run; returns the images each prompt gets
        (diffusers' effective `num_images_per_prompt`: its own times the embeddings per prompt)."""
        check_count("num_images_per_prompt", num_images_per_prompt)
        height, width = self.size_of(image_embeddings, "stage_c", "image_embeddings")
        texts, _, prompts = prompt_texts(self._text_shapes(), prompt, negative_prompt, **embeds)
        rows = image_embeddings.shape[0]
        if rows % prompts:
            raise ShapeError(
                f"image_embeddings has {rows} rows for {prompts} prompts: pass a whole number of embeddings per "
                "prompt (the prior's image_embeddings for these prompts)",
                argument="image_embeddings",
            )
        per_prompt = num_images_per_prompt * (rows // prompts)
        if texts is not None or embeds.get("negative_prompt_embeds") is None:  # the text encoder runs
            self.runtime.runners["text_encoder"].check_shape(prompts, SIZE_UNIT, SIZE_UNIT)
        self.check_decoding(
            prompts * per_prompt,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            generator,
            latents=latents,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        return per_prompt

    def check_decoding(
        self,
        images: int,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        generator: Generators,
        *,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[..., Any] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        names: DecoderArguments = DecoderArguments(),  # noqa: B008 (frozen)
    ) -> None:
        """The checks of decoding `images` images of `height` x `width` px (the size Stage C was asked for):
        arguments, then the shapes Stage B and Stage A can take."""
        check_choice("output_type", output_type, IMAGE_TYPES)
        self._check_run(images, height, width, num_inference_steps, guidance_scale, generator, latents, names)
        check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        guided = guidance_scale > 1
        self.runtime.runners["stage_b"].check_shape(2 * images if guided else images, height, width)
        if output_type != "latent":
            self.runtime.runners["stage_a"].check_shape(images, height, width)

    def _check_run(
        self,
        batch: int,
        height: int,
        width: int,
        steps: int,
        guidance_scale: float,
        generator: Generators,
        latents: torch.Tensor | None,
        names: DecoderArguments = DecoderArguments(),  # noqa: B008 (frozen)
    ) -> None:
        check_count(names.steps, steps)
        check_scale(names.scale, guidance_scale)
        check_generator(generator, batch)
        if latents is not None:
            shape = self.runtime.runners["stage_b"].spec.tensor("sample").resolve(batch, height, width)
            check_tensor("latents", latents, shape, fix="Stage B latents for every image of the call")

    def size_of(self, latents: Any, stage: str, name: str) -> tuple[int, int]:
        """The image size (px, as asked of Stage C) that a Stage C ("stage_c") or Stage B ("stage_b") latent
        belongs to: diffusers' arithmetic inverted, linear in 128 px units (see `cascade_trt.stages`)."""
        per_unit = latent_sizes(self.config, SIZE_UNIT, SIZE_UNIT)[stage][0]
        if not isinstance(latents, torch.Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor, got {type(latents).__name__}", argument=name)
        bad = ShapeError(
            f"{name} of shape {tuple(latents.shape)} is not a {stage} latent of this cascade (its sides are "
            f"multiples of {per_unit}: images of multiples of {SIZE_UNIT} px)",
            argument=name,
        )
        if (
            latents.dim() != 4
            or latents.shape[2] % per_unit
            or latents.shape[3] % per_unit
            or 0 in latents.shape
        ):
            raise bad
        height, width = latents.shape[2] // per_unit * SIZE_UNIT, latents.shape[3] // per_unit * SIZE_UNIT
        if latent_sizes(self.config, height, width)[stage] != tuple(latents.shape[2:]):
            raise bad
        return height, width

    @classmethod
    def _check_artifacts(cls, checkpoints: CheckpointPair, backend: str, options: Any) -> None:
        """The exported text encoder is the prior's: refuse it when the decoder's own differs (the generic
        provenance check would too, with a less specific remedy)."""
        onnx_dir = getattr(options, "onnx_dir", None)
        engine_dir = getattr(options, "engine_dir", None)
        if onnx_dir is None and engine_dir is not None:  # an engine records the export it was built from
            onnx_dir = (read_manifest(engine_path(engine_dir, "text_encoder")) or {}).get("onnx_dir")
        if onnx_dir is not None:
            check_own_text_encoder(Path(onnx_dir), checkpoints)


def check_own_text_encoder(onnx_dir: Path, checkpoints: CheckpointPair) -> None:
    """ArtifactMismatchError when `onnx_dir/text_encoder.onnx` was exported from another text encoder than the
    decoder's own `text_encoder/` (by provenance fingerprint), saying how to export the decoder's."""
    own = checkpoints.location("text_encoder")
    check_source(
        (read_manifest(onnx_path(onnx_dir, "text_encoder")) or {}).get("source"),
        checkpoints,
        "text_encoder",
        artifact=f"the decoder's own text encoder ({own.path}) differs: {onnx_dir}/text_encoder.onnx was exported",
        remedy="diffusers' decoder pipeline encodes prompts with its own, so export the decoder side on its own "
        f"and load it from there, `cascade-trt export --decoder {own.root} --out DIR`, then onnx_dir=DIR",
    )
