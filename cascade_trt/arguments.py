"""The checks of the pipelines' arguments, shared by the prior, decoder and combined pipelines.

Each failure is a `ConfigError` (or `ShapeError` for a tensor of the wrong shape) whose message says what was
wrong and what to pass, and whose `argument` names the argument: what the HTTP service maps to a request field.
Everything here runs before any model does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from cascade_trt.errors import ConfigError, ShapeError


def prompt_lists(prompt: Any, negative_prompt: Any) -> tuple[list[str], list[str]]:
    """The prompts, and one negative prompt per prompt (the empty string, encoded, where none is given)."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(
            f"prompt must be a string or a non-empty list of strings, got {prompt!r}", argument="prompt"
        )
    if negative_prompt is None:
        return prompts, [""] * len(prompts)  # diffusers encodes the empty prompt, it does not use zeros
    if isinstance(negative_prompt, str):
        return prompts, [negative_prompt] * len(prompts)
    if not isinstance(negative_prompt, list) or not all(isinstance(p, str) for p in negative_prompt):
        raise ConfigError(
            f"negative_prompt must be a string or a list of strings, got {negative_prompt!r}",
            argument="negative_prompt",
        )
    if len(negative_prompt) != len(prompts):
        raise ConfigError(
            f"negative_prompt has {len(negative_prompt)} entries but prompt has {len(prompts)}: pass one "
            "negative prompt per prompt, or a single string for all of them",
            argument="negative_prompt",
        )
    return prompts, negative_prompt


def variation_prompt(prompt: Any, prompt_embeds: Any, image_prompted: bool) -> Any:
    """An image variation without text has the empty prompt: diffusers must be called with `prompt=""` for
    it, and None means that here."""
    return "" if prompt is None and prompt_embeds is None and image_prompted else prompt


def check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}", argument=name)


def check_scale(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(
            f"{name} must be a finite number (guidance is on above 1), got {value!r}", argument=name
        )


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: choose one of {', '.join(choices)}", argument=name)


def check_generator(generator: Any, batch: int) -> None:
    """None, one `torch.Generator`, or one per image."""
    many = isinstance(generator, list)
    items = generator if many else [generator]
    if generator is not None and not all(isinstance(g, torch.Generator) for g in items):
        raise ConfigError(
            f"generator must be a torch.Generator or a list of them, got {generator!r}", argument="generator"
        )
    if many and len(generator) != batch:
        raise ConfigError(
            f"got {len(generator)} generators for {batch} images: pass one generator, or one per image "
            "(prompts x num_images_per_prompt)",
            argument="generator",
        )


def check_callback(
    callback: Callable[..., Any] | None,
    tensor_inputs: Sequence[str],
    allowed: Sequence[str],
    *,
    prefix: str = "",
) -> None:
    """A `callback_on_step_end` (or its `prior_` twin) and the tensors it asks for, which must be among the
    pipeline's `allowed` ones (diffusers' `_callback_tensor_inputs`)."""
    name = f"{prefix}callback_on_step_end"
    if callback is not None and not callable(callback):
        raise ConfigError(
            f"{name} must be callable as callback(pipe, step, timestep, callback_kwargs), got {callback!r}",
            argument=name,
        )
    unknown = [t for t in tensor_inputs if t not in allowed]
    if isinstance(tensor_inputs, str) or unknown:
        raise ConfigError(
            f"{name}_tensor_inputs may name {', '.join(allowed)}; got {list(tensor_inputs)!r}",
            argument=f"{name}_tensor_inputs",
        )


def check_tensor(name: str, value: Any, shape: tuple[int | None, ...], *, fix: str = "") -> None:
    """`value` is a tensor of `shape` (None: any size on that axis)."""
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor, got {type(value).__name__}", argument=name)
    want = tuple("*" if s is None else s for s in shape)
    fits = value.dim() == len(shape) and all(
        s is None or s == v for s, v in zip(shape, value.shape, strict=True)
    )
    if not fits:
        text = "(" + ", ".join(map(str, want)) + ")"
        raise ShapeError(
            f"{name} has shape {tuple(value.shape)}, expected {text}{': ' + fix if fix else ''}",
            argument=name,
        )


def image_list(images: Any) -> list[Any]:
    """Image prompts as a list of single images: PIL images or (3, H, W) tensors. diffusers takes a list; a
    single PIL image or tensor, or an (N, 3, H, W) tensor of N images, is taken here too."""
    from PIL import Image

    if isinstance(images, Image.Image) or (isinstance(images, torch.Tensor) and images.dim() == 3):
        images = [images]
    elif isinstance(images, torch.Tensor) and images.dim() == 4:
        images = list(images)
    if not isinstance(images, list | tuple) or not images:
        raise ConfigError(
            f"images must be a PIL image, a (3, H, W) or (N, 3, H, W) tensor, or a non-empty list of them, got "
            f"{type(images).__name__}",
            argument="images",
        )
    for i, image in enumerate(images):
        single = isinstance(image, Image.Image) or (isinstance(image, torch.Tensor) and image.dim() == 3)
        if not single:
            what = (
                f"a tensor of shape {tuple(image.shape)}"
                if isinstance(image, torch.Tensor)
                else type(image).__name__
            )
            raise ConfigError(
                f"images[{i}] is {what}: each image must be a PIL image or a (3, H, W) tensor",
                argument="images",
            )
    return list(images)
