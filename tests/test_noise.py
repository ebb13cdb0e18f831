"""The runtime draws its noise as diffusers' `randn_tensor` does (without importing diffusers), and its outputs
behave as diffusers' `BaseOutput`s."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascade_trt.errors import ConfigError
from cascade_trt.noise import draw_noise, randn
from cascade_trt.outputs import CascadePriorPipelineOutput, ImagePipelineOutput, convert_images, numpy_to_pil

SHAPE = (3, 4, 5, 6)


def _generators(seed: int = 0, device: str = "cpu") -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(seed + i) for i in range(SHAPE[0])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_randn_equals_diffusers_randn_tensor(dtype):
    from diffusers.utils.torch_utils import randn_tensor

    cases = {
        "one generator": lambda: torch.Generator().manual_seed(7),
        "one per row": _generators,
        "a list of one": lambda: [torch.Generator().manual_seed(7)],
    }
    for name, make in cases.items():
        ours = randn(SHAPE, make(), device="cpu", dtype=dtype)
        theirs = randn_tensor(SHAPE, generator=make(), device=torch.device("cpu"), dtype=dtype)
        assert ours.dtype == dtype and torch.equal(ours, theirs), name
    torch.manual_seed(3)
    ours = randn(SHAPE, None, device="cpu", dtype=dtype)
    torch.manual_seed(3)
    assert torch.equal(ours, randn_tensor(SHAPE, generator=None, device=torch.device("cpu"), dtype=dtype))


def test_rows_of_a_generator_list_do_not_depend_on_the_batch():
    """Per-image generators make image i the same whatever else is in the batch (why diffusers takes a list)."""
    alone = randn((1, *SHAPE[1:]), [torch.Generator().manual_seed(1)])
    together = randn(SHAPE, [torch.Generator().manual_seed(s) for s in (0, 1, 2)])
    assert torch.equal(together[1:2], alone)


@pytest.mark.gpu
def test_cpu_generators_with_a_cuda_target_draw_on_the_cpu_as_diffusers():
    from diffusers.utils.torch_utils import randn_tensor

    for make in (lambda: torch.Generator().manual_seed(7), _generators):
        ours = randn(SHAPE, make(), device="cuda", dtype=torch.float16)
        theirs = randn_tensor(SHAPE, generator=make(), device=torch.device("cuda"), dtype=torch.float16)
        assert ours.device.type == "cuda" and torch.equal(ours, theirs)
        assert torch.equal(ours.cpu(), randn(SHAPE, make(), device="cpu", dtype=torch.float16))


@pytest.mark.gpu
def test_a_cuda_generator_for_a_cpu_tensor_is_refused_as_diffusers_refuses_it():
    with pytest.raises(ConfigError, match="cannot draw a cpu tensor from a cuda generator") as exc:
        randn(SHAPE, torch.Generator("cuda"), device="cpu")
    assert exc.value.argument == "generator"


def test_draw_noise_draws_the_latents_first_then_each_step():
    latents, noise = draw_noise(SHAPE, 3, torch.Generator().manual_seed(0), torch.float32, "cpu")
    g = torch.Generator().manual_seed(0)
    expected = [torch.randn(SHAPE, generator=g) for _ in range(4)]
    assert torch.equal(latents, expected[0]) and noise.shape == (3, *SHAPE)
    assert all(torch.equal(noise[i], expected[i + 1]) for i in range(3))
    given = torch.ones(SHAPE, dtype=torch.float64)
    latents, noise = draw_noise(
        SHAPE, 3, torch.Generator().manual_seed(0), torch.float32, "cpu", latents=given
    )
    assert latents.dtype == torch.float32 and torch.equal(latents, torch.ones(SHAPE))
    assert torch.equal(noise[0], expected[0]), "with latents given, the first draw is the first step's noise"


def test_outputs_behave_as_diffusers_base_output():
    from diffusers.pipelines.stable_cascade.pipeline_stable_cascade_prior import (
        StableCascadePriorPipelineOutput,
    )

    values = [torch.zeros(1), torch.ones(1), torch.full((1,), 2.0), None, None]
    ours, theirs = CascadePriorPipelineOutput(*values), StableCascadePriorPipelineOutput(*values)
    assert list(ours) == list(theirs) and len(ours) == len(theirs) == 3
    assert ours[1] is values[1] and ours["prompt_embeds_pooled"] is values[2]
    assert ours.get("negative_prompt_embeds") is None and theirs.get("negative_prompt_embeds") is None
    assert ours.to_tuple() == theirs.to_tuple()
    with pytest.raises(KeyError):
        ours["negative_prompt_embeds"]
    images = ImagePipelineOutput(images=[1, 2])
    assert images.images == images[0] == images["images"] == [1, 2]


def test_pil_conversion_equals_diffusers():
    from diffusers.utils import numpy_to_pil as theirs

    images = torch.rand((2, 3, 8, 12), generator=torch.Generator().manual_seed(0))
    array = convert_images(images, "np")
    assert array.shape == (2, 8, 12, 3) and array.dtype == np.float32
    for a, b in zip(convert_images(images, "pil"), theirs(array), strict=True):
        assert a.size == (12, 8) and np.array_equal(np.asarray(a), np.asarray(b))
    assert numpy_to_pil(array[0, :, :, :1])[0].mode == "L"
    assert convert_images(images, "pt") is images
    with pytest.raises(ConfigError, match="output_type='jpeg'") as exc:
        convert_images(images, "jpeg")
    assert exc.value.argument == "output_type"
