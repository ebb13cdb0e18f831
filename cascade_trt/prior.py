"""`CascadePriorPipeline`: diffusers' `StableCascadePriorPipeline` over any backend (text and image prompts to
Stage C latents).

    prior = CascadePriorPipeline.from_pretrained("stabilityai/stable-cascade-prior", torch_dtype=torch.bfloat16)
    prior_output = prior(prompt, height=1024, width=1024, guidance_scale=4.0, num_inference_steps=20)
    # prior_output.image_embeddings goes to CascadeDecoderPipeline

`__call__` takes diffusers' arguments and returns diffusers' output (`CascadePriorPipelineOutput`, or its tuple
with `return_dict=False`); it is `encode_prompt` -> `encode_image` -> `run_stage_c`, each public. Image prompts
(`images=`, or their `image_embeds=`) run the CLIP image encoder as a stage of the backend, loaded on first use;
without them Stage C is conditioned on zeros, as in diffusers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cascade_trt.arguments import (
    check_callback,
    check_choice,
    check_count,
    check_generator,
    check_scale,
    check_tensor,
    image_list,
    variation_prompt,
)
from cascade_trt.base_pipeline import BasePipeline, prompt_texts, serialised
from cascade_trt.errors import ConfigError
from cascade_trt.loop import StageRun
from cascade_trt.noise import Generators
from cascade_trt.outputs import CascadePriorPipelineOutput
from cascade_trt.prompts import PromptEmbeddings, encode_images, given_embeddings
from cascade_trt.stages import SIZE_UNIT, check_size

PRIOR_OUTPUT_TYPES = ("pt", "np")


@dataclass(frozen=True)
class PriorArguments:
    """The names the prior's arguments have in the pipeline being called (the combined pipeline prefixes
    them), so an error names what the caller passed."""

    steps: str = "num_inference_steps"
    scale: str = "guidance_scale"
    callback_prefix: str = ""


class CascadePriorPipeline(BasePipeline):
    """Stable Cascade's prior (Stage C) on one backend. Safe to share between threads (calls are serialised)."""

    _side = "prior"
    _stages = ("text_encoder", "stage_c")
    _later = ("image_encoder",)
    _callback_tensor_inputs: ClassVar[list[str]] = [
        "latents",
        "text_encoder_hidden_states",
        "negative_prompt_embeds",
    ]

    # --- stages --------------------------------------------------------------------------------------------

    @serialised
    @torch.no_grad()
    def encode_image(self, images: Any) -> torch.Tensor:
        """(1, N, C) CLIP image embeddings of N image prompts (PIL images or (3, H, W) tensors), each through
        the feature extractor and the image encoder, side by side (diffusers' `encode_image`)."""
        images = image_list(images)
        self._check_image_encoder()
        return encode_images(self.runtime, self.feature_extractor, images)

    @serialised
    @torch.no_grad()
    def run_stage_c(
        self,
        embeddings: PromptEmbeddings,
        height: int,
        width: int,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.0,
        generator: Generators = None,
        *,
        image_embeds: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable[..., Any] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> torch.Tensor:
        """The prior loop: Stage C latents ("effnet"), (B*n, 16, ceil(H/42.67), ceil(W/42.67)).

        `image_embeds` (1, N, C) condition every image on N image prompts (zeros without); `latents` start the
        loop instead of a draw; `callback_on_step_end` is diffusers' (this call then runs uncaptured). A
        callback's returned `prompt_embeds` / `negative_prompt_embeds` replace those of `embeddings` (what the
        prior returns), as in diffusers; the loop's own conditioning is set before the loop.
        """
        batch = embeddings.batch
        self._check_run(batch, height, width, num_inference_steps, guidance_scale, generator, latents)
        check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        guided = guidance_scale > 1
        conditioning = embeddings.conditioning(("clip_text_pooled", "clip_text"), guided, "stage_c")
        clip_img = self._clip_img(image_embeds, batch)
        conditioning["clip_img"] = torch.cat([clip_img, torch.zeros_like(clip_img)]) if guided else clip_img
        self._begin(guidance_scale, num_inference_steps)
        hook = self._step_hook(
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            num_inference_steps,
            {
                "text_encoder_hidden_states": conditioning["clip_text"],
                "negative_prompt_embeds": embeddings.negative_clip_text,
            },
            on_return=lambda returned: _replace_embeddings(embeddings, returned),
        )
        run = StageRun(
            batch,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            conditioning,
            generator,
            self.runtime.schedulers["stage_c"],
            image_prompts=clip_img.shape[1],
            latents=latents,
            on_step=hook,
        )
        return self.runtime.denoise("stage_c", run)

    # --- the whole prior -----------------------------------------------------------------------------------

    @serialised
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        images: Any = None,
        height: int = 1024,
        width: int = 1024,
        num_inference_steps: int = 20,
        timesteps: list[float] | None = None,
        guidance_scale: float = 4.0,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_pooled: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds_pooled: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        generator: Generators = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., Any] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """diffusers' `StableCascadePriorPipeline.__call__`, argument for argument; every check is made before
        anything runs.

        Where it is not diffusers': `timesteps` is refused (diffusers 0.42 accepts it and ignores it); an image
        variation may leave out the prompt (diffusers needs `prompt=""`, which is what None means here); a list
        of prompts with one negative string uses it for every prompt (diffusers fails).
        """
        if timesteps is not None:
            raise ConfigError(
                "timesteps: diffusers' prior pipeline accepts and ignores it (it always samples "
                "linspace(1, 0, num_inference_steps + 1)); pass num_inference_steps",
                argument="timesteps",
            )
        check_choice("output_type", output_type, PRIOR_OUTPUT_TYPES)
        prompt = variation_prompt(prompt, prompt_embeds, images is not None or image_embeds is not None)
        given = given_embeddings(
            prompt_embeds, prompt_embeds_pooled, negative_prompt_embeds, negative_prompt_embeds_pooled
        )
        self.check_request(
            prompt,
            negative_prompt,
            height,
            width,
            num_images_per_prompt,
            num_inference_steps,
            guidance_scale,
            generator,
            images=images,
            image_embeds=image_embeds,
            latents=latents,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            **given,
        )
        emb = self.encode_prompt(prompt, negative_prompt, num_images_per_prompt, guidance_scale > 1, **given)
        if images is not None:
            image_embeds = self.encode_image(images)
        effnet = self.run_stage_c(
            emb,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            generator,
            image_embeds=image_embeds,
            latents=latents,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        return _output(effnet, emb, output_type, return_dict)

    # --- checks --------------------------------------------------------------------------------------------

    def check_request(
        self,
        prompt: Any,
        negative_prompt: Any,
        height: int,
        width: int,
        num_images_per_prompt: int,
        num_inference_steps: int,
        guidance_scale: float,
        generator: Generators,
        *,
        images: Any = None,
        image_embeds: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable[..., Any] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        names: PriorArguments = PriorArguments(),  # noqa: B008 (frozen)
        **embeds: torch.Tensor | None,
    ) -> int:
        """Every check of a prior call that needs no model run: the arguments, then the shapes the text
        encoder and Stage C can take (an engine built for smaller images fails here). Returns the number of
        images (prompts x num_images_per_prompt)."""
        check_size(height, width)
        check_count(names.steps, num_inference_steps)
        check_scale(names.scale, guidance_scale)
        check_count("num_images_per_prompt", num_images_per_prompt)
        texts, _, prompts = prompt_texts(self._text_shapes(), prompt, negative_prompt, **embeds)
        count = prompts * num_images_per_prompt
        image_prompts = self._check_image_prompts(images, image_embeds)
        self._check_run(count, height, width, num_inference_steps, guidance_scale, generator, latents, names)
        check_callback(
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            self._callback_tensor_inputs,
            prefix=names.callback_prefix,
        )
        guided = guidance_scale > 1
        if texts is not None or embeds.get("negative_prompt_embeds") is None:  # the text encoder runs
            self.runtime.runners["text_encoder"].check_shape(prompts, SIZE_UNIT, SIZE_UNIT)
        self.runtime.runners["stage_c"].check_shape(
            2 * count if guided else count, height, width, image_prompts=image_prompts
        )
        return count

    def _check_run(
        self,
        batch: int,
        height: int,
        width: int,
        steps: int,
        guidance_scale: float,
        generator: Generators,
        latents: torch.Tensor | None,
        names: PriorArguments = PriorArguments(),  # noqa: B008 (frozen)
    ) -> None:
        check_size(height, width)
        check_count(names.steps, steps)
        check_scale(names.scale, guidance_scale)
        check_generator(generator, batch)
        if latents is not None:
            shape = self.runtime.runners["stage_c"].spec.tensor("sample").resolve(batch, height, width)
            check_tensor("latents", latents, shape, fix="Stage C latents for every image of the call")

    def _check_image_prompts(self, images: Any, image_embeds: torch.Tensor | None) -> int:
        """The number of image prompts (1 without: the zeros)."""
        if images is not None and image_embeds is not None:
            raise ConfigError("pass images or image_embeds, not both", argument="image_embeds")
        if images is not None:
            count = len(image_list(images))
            self._check_image_encoder()
            return count
        if image_embeds is not None:
            return self._clip_img(image_embeds, 1).shape[1]
        return 1

    def _clip_img(self, image_embeds: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Stage C's clip_img for `batch` images: the image prompts' embeddings for each, or one of zeros."""
        channels = self.runtime.runners["stage_c"].spec.tensor("clip_img").shape[2]
        if image_embeds is None:
            return torch.zeros((batch, 1, channels))
        if (
            isinstance(image_embeds, torch.Tensor) and image_embeds.dim() == 2
        ):  # (N, C), as diffusers takes it
            image_embeds = image_embeds[None]
        check_tensor("image_embeds", image_embeds, (1, None, channels), fix="one embedding per image prompt")
        return image_embeds.repeat(batch, 1, 1)

    def _check_image_encoder(self) -> None:
        missing = [
            name
            for name, present in (
                ("image_encoder/", self.config.image_encoder is not None),
                ("feature_extractor/", self.feature_extractor is not None),
            )
            if not present
        ]
        if missing:
            raise ConfigError(
                f"images need the prior's CLIP image encoder and feature extractor, and this prior has no "
                f"{' or '.join(missing)}: use a prior that ships them (stabilityai/stable-cascade-prior does), "
                "or pass image_embeds",
                argument="images",
            )


def _replace_embeddings(embeddings: PromptEmbeddings, returned: dict[str, Any]) -> None:
    """What diffusers' prior does with a callback's returned embeddings: they become the ones it returns."""
    if "prompt_embeds" in returned:
        embeddings.clip_text = returned["prompt_embeds"]
    if "negative_prompt_embeds" in returned:
        embeddings.negative_clip_text = returned["negative_prompt_embeds"]


def _output(effnet: torch.Tensor, emb: PromptEmbeddings, output_type: str, return_dict: bool) -> Any:
    """diffusers' prior output: "np" turns the latents and the (negative) hidden states into numpy arrays,
    not the pooled ones (as diffusers)."""
    fields: list[Any] = [
        effnet,
        emb.clip_text,
        emb.clip_text_pooled,
        emb.negative_clip_text,
        emb.negative_clip_text_pooled,
    ]
    if output_type == "np":
        for i in (0, 1, 3):
            fields[i] = None if fields[i] is None else fields[i].cpu().float().numpy()
    return CascadePriorPipelineOutput(*fields) if return_dict else tuple(fields)
