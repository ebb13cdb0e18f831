"""Prompts to embeddings: text through the tokenizer and the text encoder, images through the feature extractor
and the image encoder, each stage run by a `StageRuntime` like any other.

`encode_prompt` is diffusers' `encode_prompt` of the prior and decoder pipelines (the two are the same): the
text encoder's `hidden_states[-1]` and pooled projection for the prompts and, under guidance, for the negative
prompts (the empty string where none is given), each repeated per image; precomputed embeddings given instead
are used as they are (cast to the text encoder's dtype) and repeated the same way, and the text encoder does not
run for them. `encode_images` is diffusers' `encode_image`: one CLIP image embedding per image, side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cascade_trt.arguments import check_tensor
from cascade_trt.errors import ConfigError
from cascade_trt.runtime import StageRuntime
from cascade_trt.stages import SIZE_UNIT

log = logging.getLogger(__name__)


@dataclass
class PromptEmbeddings:
    """Text embeddings for a call, already repeated per image: (B*n, 77, D) and (B*n, 1, P).

    The negative halves are None without guidance. `clip_text` is None where only the pooled embeddings are
    used (the decoder).
    """

    clip_text: torch.Tensor | None
    clip_text_pooled: torch.Tensor
    negative_clip_text: torch.Tensor | None = None
    negative_clip_text_pooled: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.clip_text_pooled.shape[0]

    def conditioning(self, names: tuple[str, ...], guided: bool, stage: str) -> dict[str, torch.Tensor]:
        """The named embeddings at the model's batch: [conditional; unconditional] under guidance (diffusers'
        order), the conditional half alone without."""
        if not guided:
            return {name: getattr(self, name) for name in names}
        if any(getattr(self, f"negative_{name}") is None for name in names):
            raise ConfigError(
                f"{stage} guides but the embeddings have no negative half: call encode_prompt(..., guidance=True) "
                "or pass negative_prompt_embeds and negative_prompt_embeds_pooled",
                argument="negative_prompt_embeds",
            )
        return {name: torch.cat([getattr(self, name), getattr(self, f"negative_{name}")]) for name in names}


Encode = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]
EMBEDDINGS = (
    "prompt_embeds",
    "prompt_embeds_pooled",
    "negative_prompt_embeds",
    "negative_prompt_embeds_pooled",
)


def given_embeddings(*values: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """diffusers' four precomputed-embedding arguments, by name (what `encode_prompt` and the checks take)."""
    return dict(zip(EMBEDDINGS, values, strict=True))


def text_encoder(runtime: StageRuntime, tokenizer: Any) -> Encode:
    """Texts -> (clip_text, clip_text_pooled), one text-encoder call for the batch of texts."""

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = tokenize(tokenizer, texts)
        out = runtime.run_once("text_encoder", len(texts), SIZE_UNIT, SIZE_UNIT, ids, mask)
        return out["clip_text"], out["clip_text_pooled"]

    return encode


def tokenize(tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded to the tokenizer's 77; longer texts are truncated with diffusers'
    warning."""
    max_length = tokenizer.model_max_length
    inputs = tokenizer(
        texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    untruncated = tokenizer(texts, padding="longest", return_tensors="pt").input_ids
    if untruncated.shape[-1] >= inputs.input_ids.shape[-1] and not torch.equal(inputs.input_ids, untruncated):
        removed = tokenizer.batch_decode(untruncated[:, max_length - 1 : -1])
        log.warning(
            "The following part of your input was truncated because CLIP can only handle sequences up to "
            "%d tokens: %s",
            max_length,
            removed,
        )
    return inputs.input_ids, inputs.attention_mask


def encode_prompt(
    encode: Encode,
    prompts: list[str] | None,
    negatives: list[str] | None,
    num_images_per_prompt: int,
    guidance: bool,
    *,
    dtype: torch.dtype,
    prompt_embeds: torch.Tensor | None = None,
    prompt_embeds_pooled: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds_pooled: torch.Tensor | None = None,
) -> PromptEmbeddings:
    """The embeddings of a call (see the module docstring); `prompts` may be None when `prompt_embeds` are
    given, `negatives` when the negative embeddings are or without guidance.

    Prompts and negatives are encoded as two batches, as diffusers encodes them: one batch of both would round
    the pooled projection differently (a GEMM of another height), 1e-7 apart but no longer bit-identical.
    """

    def repeat(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).repeat_interleave(num_images_per_prompt, 0)

    if prompt_embeds is None:
        assert prompts is not None
        clip_text, pooled = encode(prompts)
        pooled = (
            pooled if prompt_embeds_pooled is None else prompt_embeds_pooled
        )  # diffusers keeps a given one
    else:
        clip_text, pooled = prompt_embeds, prompt_embeds_pooled
    emb = PromptEmbeddings(repeat(clip_text), repeat(pooled))
    if guidance:
        if negative_prompt_embeds is None:
            assert negatives is not None
            negative, negative_pooled = encode(negatives)
        else:
            negative, negative_pooled = negative_prompt_embeds, negative_prompt_embeds_pooled
        emb.negative_clip_text, emb.negative_clip_text_pooled = repeat(negative), repeat(negative_pooled)
    return emb


def check_prompt_embeds(
    spec_shapes: dict[str, tuple[int, ...]],
    prompt_embeds: torch.Tensor | None,
    prompt_embeds_pooled: torch.Tensor | None,
    negative_prompt_embeds: torch.Tensor | None,
    negative_prompt_embeds_pooled: torch.Tensor | None,
) -> int | None:
    """Precomputed embeddings against the text encoder's output shapes (`spec_shapes`: clip_text (1, 77, D)
    and clip_text_pooled (1, 1, P)); each given one needs its pooled twin, as diffusers requires. Returns the
    prompts' batch when `prompt_embeds` are given."""
    text, pooled = spec_shapes["clip_text"][1:], spec_shapes["clip_text_pooled"][1:]
    pairs = (
        ("", prompt_embeds, prompt_embeds_pooled),
        ("negative_", negative_prompt_embeds, negative_prompt_embeds_pooled),
    )
    batch = None  # the negative embeddings have the prompt embeddings' shape, as diffusers requires
    for kind, embeds, pooled_embeds in pairs:
        if embeds is None:
            continue
        if pooled_embeds is None:
            raise ConfigError(
                f"{kind}prompt_embeds are given without {kind}prompt_embeds_pooled: pass both, from the same "
                "text encoder",
                argument=f"{kind}prompt_embeds_pooled",
            )
        check_tensor(f"{kind}prompt_embeds", embeds, (batch, *text))
        batch = embeds.shape[0]
        check_tensor(f"{kind}prompt_embeds_pooled", pooled_embeds, (batch, *pooled))
    return None if prompt_embeds is None else prompt_embeds.shape[0]


def encode_images(runtime: StageRuntime, feature_extractor: Any, images: list[Any]) -> torch.Tensor:
    """(1, N, C) image embeddings: each image through the feature extractor and the image encoder on its own
    (batch 1, as diffusers runs them, so the values are its own), then side by side."""
    embeds = []
    for image in images:
        pixels = feature_extractor(image, return_tensors="pt").pixel_values  # (1, 3, S, S)
        embeds.append(runtime.run_once("image_encoder", 1, SIZE_UNIT, SIZE_UNIT, pixels)["clip_img"])
    return torch.cat(embeds, dim=1)
