"""Model configurations of the Stable Cascade components, as frozen dataclasses with named presets.

`full` and `lite` are the released hub configs (stabilityai/stable-cascade-prior and stabilityai/stable-cascade,
subfolders `prior`/`prior_lite` and `decoder`/`decoder_lite`); `tiny` keeps every structural feature (attention
in both stages, repeat mappers, effnet and pixel mappers, CLIP image conditioning) at a size that runs in
milliseconds on a CPU, for tests.

A `CascadeConfig` can also be built from a checkpoint's config.json files without loading weights
(`CascadeConfig.from_diffusers`, which `CheckpointPair.config` feeds), so export, engines and the runtime describe a
real checkpoint the same way they describe a preset. One built from a prior alone has no Stage B or A, one built
from a decoder alone no Stage C (those parts are None): what the prior and decoder pipelines load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cascade_trt.errors import ConfigError

CTA = ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock")
CT = ("SDCascadeResBlock", "SDCascadeTimestepBlock")


@dataclass(frozen=True)
class UNetConfig:
    """Keyword arguments of diffusers' `StableCascadeUNet`, Stage C (prior) or Stage B (decoder)."""

    in_channels: int
    out_channels: int
    patch_size: int
    conditioning_dim: int
    block_out_channels: tuple[int, ...]
    num_attention_heads: tuple[int, ...]
    down_num_layers_per_block: tuple[int, ...]
    up_num_layers_per_block: tuple[int, ...]
    down_blocks_repeat_mappers: tuple[int, ...]
    up_blocks_repeat_mappers: tuple[int, ...]
    block_types_per_layer: tuple[tuple[str, ...], ...]
    timestep_conditioning_type: tuple[str, ...]
    clip_text_in_channels: int | None = None
    clip_text_pooled_in_channels: int = 1280
    clip_image_in_channels: int | None = None
    effnet_in_channels: int | None = None
    pixel_mapper_in_channels: int | None = None
    switch_level: tuple[bool, ...] | None = None
    clip_seq: int = 4
    timestep_ratio_embedding_dim: int = 64
    kernel_size: int = 3
    self_attn: bool = True
    dropout: tuple[float, ...] = (0.0, 0.0)

    def to_diffusers(self) -> dict[str, Any]:
        """Arguments for `StableCascadeUNet(**kwargs)` (lists, as diffusers stores them in config.json)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> UNetConfig:
        """Build from a diffusers config.json dict, ignoring keys this project does not need."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in config:
                continue
            value = config[f.name]
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            elif f.name == "dropout" and isinstance(value, float):
                value = (value,) * len(config["block_out_channels"])
            kwargs[f.name] = value
        return cls(**kwargs)


@dataclass(frozen=True)
class TextEncoderConfig:
    """transformers' `CLIPTextConfig` for `CLIPTextModelWithProjection`."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    projection_dim: int
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    hidden_act: str = "gelu"
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 1


@dataclass(frozen=True)
class ImageEncoderConfig:
    """transformers' `CLIPVisionConfig` for `CLIPVisionModelWithProjection`."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    projection_dim: int
    image_size: int = 224
    patch_size: int = 14
    hidden_act: str = "quick_gelu"


@dataclass(frozen=True)
class VQGANConfig:
    """Keyword arguments of diffusers' `PaellaVQModel` (Stage A)."""

    levels: int = 2
    bottleneck_blocks: int = 12
    embed_dim: int = 384
    latent_channels: int = 4
    num_vq_embeddings: int = 8192
    scale_factor: float = 0.3764
    up_down_scale_factor: int = 2
    in_channels: int = 3
    out_channels: int = 3

    def to_diffusers(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CascadeConfig:
    """Everything that fixes the architecture (and so the shapes) of one Stable Cascade, or of one side of it
    (the parts a prior or a decoder alone does not have are None)."""

    name: str
    text_encoder: TextEncoderConfig
    stage_c: UNetConfig | None = None
    stage_b: UNetConfig | None = None
    stage_a: VQGANConfig | None = None
    image_encoder: ImageEncoderConfig | None = None
    # Pipeline constants (diffusers' `resolution_multiple` of the prior, `latent_dim_scale` of the decoder).
    resolution_multiple: float = 42.67
    latent_dim_scale: float = 10.67

    @property
    def text_seq_len(self) -> int:
        return self.text_encoder.max_position_embeddings

    @classmethod
    def from_diffusers(
        cls,
        name: str,
        *,
        text_encoder: dict[str, Any],
        stage_c: dict[str, Any] | None = None,
        stage_b: dict[str, Any] | None = None,
        stage_a: dict[str, Any] | None = None,
        image_encoder: dict[str, Any] | None = None,
        prior_index: dict[str, Any] | None = None,
        decoder_index: dict[str, Any] | None = None,
    ) -> CascadeConfig:
        """Build from the components' config.json dicts (transformers' CLIP configs may nest theirs under
        `text_config` / `vision_config`) and the pipelines' model_index.json dicts, ignoring keys this project
        does not need; a part not given is None. `cascade_trt.checkpoints.CheckpointPair.config` reads them
        from disk."""
        prior_index, decoder_index = prior_index or {}, decoder_index or {}
        ie = image_encoder.get("vision_config", image_encoder) if image_encoder is not None else None
        return cls(
            name=name,
            text_encoder=TextEncoderConfig(
                **_pick(TextEncoderConfig, text_encoder.get("text_config", text_encoder))
            ),
            stage_c=UNetConfig.from_diffusers(stage_c) if stage_c is not None else None,
            stage_b=UNetConfig.from_diffusers(stage_b) if stage_b is not None else None,
            stage_a=VQGANConfig(**_pick(VQGANConfig, stage_a)) if stage_a is not None else None,
            image_encoder=ImageEncoderConfig(**_pick(ImageEncoderConfig, ie)) if ie is not None else None,
            resolution_multiple=float(prior_index.get("resolution_multiple", cls.resolution_multiple)),
            latent_dim_scale=float(decoder_index.get("latent_dim_scale", cls.latent_dim_scale)),
        )


def _pick(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in config.items() if k in names}


# --- presets ---------------------------------------------------------------------------------------------

_TEXT_BIGG = TextEncoderConfig(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    projection_dim=1280,
)
_IMAGE_VIT_L14 = ImageEncoderConfig(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, projection_dim=768
)


def _prior(width: int, heads: int, down: tuple[int, int], cond: int) -> UNetConfig:
    return UNetConfig(
        in_channels=16,
        out_channels=16,
        patch_size=1,
        conditioning_dim=cond,
        block_out_channels=(width, width),
        num_attention_heads=(heads, heads),
        down_num_layers_per_block=down,
        up_num_layers_per_block=down[::-1],
        down_blocks_repeat_mappers=(1, 1),
        up_blocks_repeat_mappers=(1, 1),
        block_types_per_layer=(CTA, CTA),
        timestep_conditioning_type=("sca", "crp"),
        clip_text_in_channels=1280,
        clip_text_pooled_in_channels=1280,
        clip_image_in_channels=768,
        switch_level=(False,),
        dropout=(0.1, 0.1),
    )


def _decoder(widths, heads, down, up_mappers) -> UNetConfig:
    return UNetConfig(
        in_channels=4,
        out_channels=4,
        patch_size=2,
        conditioning_dim=1280,
        block_out_channels=widths,
        num_attention_heads=heads,
        down_num_layers_per_block=down,
        up_num_layers_per_block=down[::-1],
        down_blocks_repeat_mappers=(1, 1, 1, 1),
        up_blocks_repeat_mappers=up_mappers,
        block_types_per_layer=(CT, CT, CTA, CTA),
        timestep_conditioning_type=("sca",),
        clip_text_pooled_in_channels=1280,
        effnet_in_channels=16,
        pixel_mapper_in_channels=3,
        dropout=(0.0, 0.0, 0.1, 0.1),
    )


FULL = CascadeConfig(
    name="full",
    text_encoder=_TEXT_BIGG,
    stage_c=_prior(2048, 32, (8, 24), 2048),
    stage_b=_decoder((320, 640, 1280, 1280), (0, 0, 20, 20), (2, 6, 28, 6), (3, 3, 2, 2)),
    stage_a=VQGANConfig(),
    image_encoder=_IMAGE_VIT_L14,
)

LITE = CascadeConfig(
    name="lite",
    text_encoder=_TEXT_BIGG,
    stage_c=_prior(1536, 24, (4, 12), 1536),
    stage_b=_decoder((320, 576, 1152, 1152), (0, 9, 18, 18), (2, 4, 14, 4), (2, 2, 2, 2)),
    stage_a=VQGANConfig(),
    image_encoder=_IMAGE_VIT_L14,
)

# Tiny: every structural feature of the real models, widths of 8 to 32. The text width (32) feeds both
# UNets, as 1280 does in the real ones; sides stay multiples of 128 px so the shape arithmetic is the real one.
TINY = CascadeConfig(
    name="tiny",
    text_encoder=TextEncoderConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
        vocab_size=1000,
        bos_token_id=998,
        eos_token_id=999,
        pad_token_id=999,
    ),
    stage_c=dataclasses.replace(
        _prior(32, 2, (1, 1), 32),
        clip_text_in_channels=32,
        clip_text_pooled_in_channels=32,
        clip_image_in_channels=24,
        dropout=(0.0, 0.0),
    ),
    stage_b=dataclasses.replace(
        _decoder((8, 16, 32, 32), (0, 2, 2, 2), (1, 1, 1, 1), (2, 1, 1, 1)),
        conditioning_dim=32,
        clip_text_pooled_in_channels=32,
        dropout=(0.0, 0.0, 0.0, 0.0),
    ),
    # A random denoiser does not denoise: Stage B's latents end around ±600, and at the release scale factor
    # (0.3764) Stage A's output would clamp almost every pixel to 0 or 1, making image comparisons vacuous.
    # 0.002 brings Stage A's input to unit scale (~40% of pixels strictly inside (0, 1)); weights are unchanged.
    stage_a=VQGANConfig(bottleneck_blocks=1, embed_dim=16, num_vq_embeddings=64, scale_factor=0.002),
    image_encoder=ImageEncoderConfig(
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=24,
        image_size=32,
        patch_size=8,
    ),
)

PRESETS: dict[str, CascadeConfig] = {"full": FULL, "lite": LITE, "tiny": TINY}


def get_preset(name: str) -> CascadeConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None
