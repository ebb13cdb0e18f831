"""Each stage as a module whose forward takes and returns exactly the tensors of its `StageSpec`.

Export traces these wrappers and the torch backend runs them, so an ONNX graph and the PyTorch path compute
the same function by construction: same argument order, same extra ops (the unsqueeze of the pooled
embedding, Stage A's scale and clamp).
"""

from __future__ import annotations

import torch
from torch import nn

from cascade_trt.components import CascadeComponents


class TextEncoder(nn.Module):
    """input_ids, attention_mask -> clip_text_pooled (B,1,P), clip_text (B,77,D).

    clip_text is `hidden_states[-1]`, the last layer *before* the final LayerNorm, as the prior expects.
    """

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.text_encoder(input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.text_embeds.unsqueeze(1), out.hidden_states[-1]


class ImageEncoder(nn.Module):
    """pixel_values (B,3,S,S) -> clip_img (B,1,768)."""

    def __init__(self, image_encoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(pixel_values).image_embeds.unsqueeze(1)


class StageC(nn.Module):
    """The prior: sample (B,16,Hc,Wc), timestep_ratio (B,), clip_text_pooled, clip_text, clip_img -> prediction."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep_ratio: torch.Tensor,
        clip_text_pooled: torch.Tensor,
        clip_text: torch.Tensor,
        clip_img: torch.Tensor,
    ) -> torch.Tensor:
        return self.unet(
            sample=sample,
            timestep_ratio=timestep_ratio,
            clip_text_pooled=clip_text_pooled,
            clip_text=clip_text,
            clip_img=clip_img,
            return_dict=False,
        )[0]


class StageB(nn.Module):
    """The decoder: sample (B,4,Hb,Wb), timestep_ratio, clip_text_pooled, effnet (B,16,Hc,Wc) -> prediction.

    `pixels` stays at the UNet's default (zeros), `sca`/`crp` at None, as in diffusers' decoder pipeline.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep_ratio: torch.Tensor,
        clip_text_pooled: torch.Tensor,
        effnet: torch.Tensor,
    ) -> torch.Tensor:
        return self.unet(
            sample=sample,
            timestep_ratio=timestep_ratio,
            clip_text_pooled=clip_text_pooled,
            effnet=effnet,
            return_dict=False,
        )[0]


class StageA(nn.Module):
    """The VQGAN decoder: Stage B latents (B,4,Hb,Wb) -> images (B,3,4Hb,4Wb) in [0, 1].

    Applies the latent scale factor first and clamps last, as diffusers' decoder pipeline does around
    `vqgan.decode`.
    """

    def __init__(self, vqgan: nn.Module) -> None:
        super().__init__()
        self.vqgan = vqgan
        self.scale_factor = float(vqgan.config.scale_factor)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vqgan.decode(self.scale_factor * latents, return_dict=False)[0].clamp(0, 1)


WRAPPERS = {
    "text_encoder": TextEncoder,
    "image_encoder": ImageEncoder,
    "stage_c": StageC,
    "stage_b": StageB,
    "stage_a": StageA,
}


def stage_module(components: CascadeComponents, stage: str) -> nn.Module:
    """The wrapper of one stage, around the loaded (or random) component."""
    module = getattr(components, stage)
    if module is None:
        raise ValueError(f"{stage} was not loaded: include it in `stages=` when loading the components")
    return WRAPPERS[stage](module).eval()
