"""Stage descriptions: shape arithmetic against diffusers' formulas, profiles, names."""

from __future__ import annotations

import math

import pytest

from cascade_trt.configs import FULL, LITE, PRESETS, TINY
from cascade_trt.errors import ConfigError, ShapeError
from cascade_trt.stages import (
    BatchRange,
    SizeRange,
    TensorSpec,
    check_size,
    latent_sizes,
    select_stages,
    stage_specs,
)


@pytest.mark.parametrize("config", list(PRESETS.values()), ids=list(PRESETS))
def test_symbolic_shapes_match_diffusers_arithmetic(config):
    """For every 128-multiple side up to 4096 px, the spec's linear tokens equal diffusers' own formulas."""
    specs = stage_specs(config)
    for side in range(128, 4096 + 1, 128):
        hc = math.ceil(side / 42.67)
        hb = int(hc * 10.67)
        shapes_c = specs["stage_c"].shapes(2, side, side + 128)
        shapes_b = specs["stage_b"].shapes(1, side, side + 128)
        shapes_a = specs["stage_a"].shapes(1, side, side + 128)
        wc = math.ceil((side + 128) / 42.67)
        assert shapes_c["sample"] == (2, config.stage_c.in_channels, hc, wc)
        assert shapes_b["sample"][2] == hb and shapes_b["effnet"][2:] == (hc, wc)
        assert shapes_a["images"][2:] == (side, side + 128)
        assert latent_sizes(config, side, side)["stage_b"] == (hb, hb)


def test_full_1024_shapes_are_the_documented_ones():
    specs = stage_specs(FULL)
    assert specs["stage_c"].shapes(2, 1024, 1024)["sample"] == (2, 16, 24, 24)
    assert specs["stage_c"].shapes(2, 1024, 1024)["clip_text"] == (2, 77, 1280)
    assert specs["stage_b"].shapes(1, 1024, 1024)["sample"] == (1, 4, 256, 256)
    assert specs["stage_a"].shapes(1, 1024, 1024)["images"] == (1, 3, 1024, 1024)
    assert specs["text_encoder"].shapes(2, 1024, 1024)["clip_text_pooled"] == (2, 1, 1280)
    assert specs["image_encoder"].shapes(1, 1024, 1024)["clip_img"] == (1, 1, 768)


def test_names_flow_between_stages():
    """Outputs feed inputs by name: text encoder -> Stage C / B, image encoder -> Stage C."""
    specs = stage_specs(LITE)
    te_out = set(specs["text_encoder"].output_names)
    assert te_out <= set(specs["stage_c"].input_names)
    assert "clip_text_pooled" in specs["stage_b"].input_names
    assert specs["image_encoder"].output_names == ("clip_img",)
    assert specs["stage_b"].tensor("effnet").shape[1] == specs["stage_c"].tensor("prediction").shape[1]


@pytest.mark.parametrize("bad", [0, 100, 1000, 1025, -128])
def test_sizes_must_be_multiples_of_128(bad):
    with pytest.raises(ShapeError, match=rf"height={bad} is not a positive multiple of 128 px"):
        check_size(bad, 1024)


def test_profile_doubles_guided_batch_and_spans_sizes():
    spec = stage_specs(FULL)["stage_c"]
    prof = spec.profile(SizeRange.square(512, 1024, 1536), BatchRange(1, 1, 4), guidance=True)
    assert prof["sample"].min == (1, 16, 12, 12)
    assert prof["sample"].opt == (2, 16, 24, 24)
    assert prof["sample"].max == (8, 16, 36, 36)
    assert prof["timestep_ratio"].max == (8,)
    unguided = stage_specs(FULL)["stage_a"].profile(SizeRange.static(768, 1280), BatchRange(1, 2, 4))
    assert unguided["latents"].min == (1, 4, 192, 320) and unguided["latents"].max == (4, 4, 192, 320)
    assert prof["sample"].contains((4, 16, 24, 30)) and not prof["sample"].contains((9, 16, 24, 24))


def test_bad_ranges_are_refused():
    with pytest.raises(ShapeError, match="size range must satisfy min <= opt <= max on each side"):
        SizeRange.square(1024, 512, 1536)
    with pytest.raises(ShapeError, match="batch range must satisfy 1 <= min <= opt <= max"):
        BatchRange(2, 1, 4)


def test_dynamic_axes_name_the_symbols():
    spec = stage_specs(TINY)["stage_b"]
    assert spec.tensor("sample").dynamic_axes == {0: "batch", 2: "32h", 3: "32w"}
    assert spec.tensor("effnet").dynamic_axes == {0: "batch", 2: "3h", 3: "3w"}
    assert stage_specs(TINY)["text_encoder"].tensor("input_ids").dynamic_axes == {0: "batch"}


def test_shape_tokens_are_parsed_once_and_bad_ones_refused_when_described():
    sample = stage_specs(TINY)["stage_b"].tensor("sample")
    assert [(a.kind, a.factor) for a in sample.axes] == [("batch", 1), ("fixed", 4), ("h", 32), ("w", 32)]
    assert sample.resolve(3, 256, 384) == (3, 4, 64, 96)
    specs = stage_specs(TINY)
    assert [name for name, spec in specs.items() if spec.spatial] == ["stage_c", "stage_b", "stage_a"]
    with pytest.raises(ConfigError, match="bad shape token '3q': use an int, 'B', 'N', or '<k>h' / '<k>w'"):
        TensorSpec("x", ("B", "3q"))


def test_select_stages_errors():
    with pytest.raises(
        ConfigError, match=r"unknown stage\(s\) stage_d: choose from text_encoder, image_encoder"
    ):
        select_stages(TINY, ["stage_d"])
    no_image = TINY.__class__(**{**TINY.__dict__, "image_encoder": None})
    with pytest.raises(
        ConfigError, match=r"tiny has no image_encoder \(the prior checkpoint has no image encoder\)"
    ):
        select_stages(no_image, ["image_encoder"])
    assert list(select_stages(TINY, None)) == [
        "text_encoder",
        "image_encoder",
        "stage_c",
        "stage_b",
        "stage_a",
    ]
