"""Example inputs for a stage, built from its `StageSpec`: what export traces with and what verification feeds.

Values are realistic enough to exercise every branch the pipeline takes: timestep ratios in (0, 1), token ids
with an end-of-text token and padding behind it (the attention mask masks the padding), Gaussian latents. Token
ids are drawn from the vocabulary minus the special tokens, wherever the tokenizer puts those (the released
CLIP puts BOS and EOS at the top of the vocabulary, diffusers' test CLIP at 0 and 2).
"""

from __future__ import annotations

import torch
from torch import nn

from cascade_trt.stages import COMPUTE, StageSpec, TensorSpec

_FIXED = {"int64": torch.int64, "int32": torch.int32, "float32": torch.float32}


def tensor_dtype(tensor: TensorSpec, compute: torch.dtype) -> torch.dtype:
    return compute if tensor.dtype == COMPUTE else _FIXED[tensor.dtype]


def example_inputs(
    module: nn.Module,
    spec: StageSpec,
    *,
    batch: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    image_prompts: int = 1,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """One tensor per spec input, in spec order, at the shapes of (batch, height, width, image prompts)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = spec.shapes(batch, height, width, image_prompts=image_prompts)
    if spec.name == "text_encoder":
        return _token_inputs(module, shapes["input_ids"], gen)
    out = {}
    for t in spec.inputs:
        if t.name == "timestep_ratio":
            value = torch.rand(shapes[t.name], generator=gen)
        else:
            value = torch.randn(shapes[t.name], generator=gen)
        out[t.name] = value.to(tensor_dtype(t, dtype))
    return out


def _token_inputs(module: nn.Module, shape: tuple[int, ...], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Prompts of different lengths: BOS, random tokens, EOS, then padding (masked out), as CLIPTokenizer pads."""
    config = module.text_encoder.config  # the wrapped CLIPTextModelWithProjection
    batch, seq = shape
    special = {config.bos_token_id, config.eos_token_id, config.pad_token_id}
    ordinary = torch.tensor([i for i in range(config.vocab_size) if i not in special])
    ids = ordinary[torch.randint(0, len(ordinary), shape, generator=gen)]
    mask = torch.zeros(shape, dtype=torch.int64)
    for i in range(batch):
        length = int(torch.randint(2, seq, (1,), generator=gen))  # tokens incl. BOS and EOS
        ids[i, 0] = config.bos_token_id
        ids[i, length - 1] = config.eos_token_id
        ids[i, length:] = config.pad_token_id
        mask[i, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}
