"""CascadePriorPipeline and CascadeDecoderPipeline against diffusers 0.42's StableCascadePriorPipeline and
StableCascadeDecoderPipeline on the tiny checkpoints, on the torch and onnxruntime backends: the two-pipeline
flow (the decoder's own `num_images_per_prompt` included), image variations, precomputed embeddings, latents and
step callbacks. torch computes what diffusers computes bit for bit; ONNX Runtime within 1e-3 (relative to the
largest value for latents, absolute for images in [0, 1]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_helpers import assert_meaningful, buffers, diffusers_pipelines

from cascade_trt import CascadeDecoderPipeline, CascadePriorPipeline
from cascade_trt.errors import ConfigError, ShapeError

BACKENDS = ["torch", "onnxruntime"]
TOLERANCE = {"torch": 0.0, "onnxruntime": 1e-3}
PROMPTS = ["a photo of a cat", "an astronaut riding a horse"]
SMALL = dict(height=128, width=256, num_inference_steps=3)  # prior calls
DECODE = dict(num_inference_steps=2, output_type="np")  # decoder calls


@pytest.fixture(scope="module")
def reference(tiny_prior: Path, tiny_decoder: Path) -> tuple[Any, Any]:
    return diffusers_pipelines(tiny_prior, tiny_decoder)


@pytest.fixture(scope="module")
def ours(tiny_prior: Path, tiny_decoder: Path, request) -> dict[str, tuple[Any, Any]]:
    """(prior, decoder) per backend, built on first use, so a torch-only selection never pays for the export."""

    class Lazy(dict):
        def __missing__(self, backend: str) -> tuple[Any, Any]:
            onnx = (
                request.getfixturevalue("tiny_onnx")("fp32")["stage_a"].parent
                if backend == "onnxruntime"
                else None
            )
            kwargs = dict(backend=backend, device="cpu", precision="fp32", onnx_dir=onnx)
            pair = (
                CascadePriorPipeline.from_pretrained(tiny_prior, **kwargs),
                CascadeDecoderPipeline.from_pretrained(tiny_decoder, **kwargs),
            )
            for pipe in pair:
                pipe.set_progress_bar_config(disable=True)
            self[backend] = pair
            return pair

    return Lazy()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _close(got: Any, want: Any, backend: str, what: str, tolerance: float | None = None) -> None:
    got, want = torch.as_tensor(np.asarray(got)), torch.as_tensor(np.asarray(want))
    assert got.shape == want.shape, f"{what}: {tuple(got.shape)} != {tuple(want.shape)}"
    scale = 1.0 if what == "images" else max(want.abs().max().item(), 1e-30)
    diff = (got.double() - want.double()).abs().max().item() / scale
    bound = TOLERANCE[backend] if tolerance is None else max(tolerance, TOLERANCE[backend])
    assert diff <= bound, f"{backend} {what}: {diff:.2e} over {bound:.0e}"


def _images(seeds: tuple[int, ...] = (0, 1)) -> list[Image.Image]:
    return [
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8))
        for seed in seeds
    ]


# --- the model card ---------------------------------------------------------------------------------------


def model_card(
    StableCascadePriorPipeline: Any,  # noqa: N803 (the class names the example imports)
    StableCascadeDecoderPipeline: Any,  # noqa: N803
    prior_id: str,
    decoder_id: str,
    out: Path,
    *,
    size: int,
    offload: bool = True,
) -> np.ndarray:
    """The model card's two-pipeline example (diffusers' Stable Cascade page, "Usage example") line for line:
    only the hub ids, the image size (CI time; the card's 1024 also gives diffusers' image, measured) and a
    seed of the global generator before the run (the card leaves it random) differ. diffusers cannot offload
    on a machine without an accelerator, so its run here leaves those two lines out."""
    prompt = "an image of a shiba inu, donning a spacesuit and helmet"
    negative_prompt = ""

    prior = StableCascadePriorPipeline.from_pretrained(prior_id, variant="bf16", torch_dtype=torch.bfloat16)
    decoder = StableCascadeDecoderPipeline.from_pretrained(
        decoder_id, variant="bf16", torch_dtype=torch.float16
    )

    torch.manual_seed(0)
    if offload:
        prior.enable_model_cpu_offload()
    prior_output = prior(
        prompt=prompt,
        height=size,
        width=size,
        negative_prompt=negative_prompt,
        guidance_scale=4.0,
        num_images_per_prompt=1,
        num_inference_steps=20,
    )

    if offload:
        decoder.enable_model_cpu_offload()
    decoder_output = decoder(
        image_embeddings=prior_output.image_embeddings.to(torch.float16),
        prompt=prompt,
        negative_prompt=negative_prompt,
        guidance_scale=0.0,
        output_type="pil",
        num_inference_steps=10,
    ).images[0]
    decoder_output.save(out)
    return np.asarray(Image.open(out))


@pytest.fixture(scope="module")
def variant_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoints with a "bf16" variant of every weight file, holding other weights (another seed):
    a loader that ignored `variant=` would make other images."""
    import shutil

    from cascade_trt.tiny import make_pipelines

    root = tmp_path_factory.mktemp("variant")
    other = make_pipelines(root / "other", seed=1)
    shutil.copytree(tiny_dir / "prior", root / "prior")
    shutil.copytree(tiny_dir / "decoder", root / "decoder")
    for path in (root / "other").rglob("*.safetensors"):
        target = root / path.relative_to(other)
        shutil.copy(path, target.with_name(target.name.replace(".safetensors", ".bf16.safetensors")))
    return root


def test_the_model_card_example_runs_with_the_names_changed_and_gives_diffusers_image(variant_dir, tmp_path):
    import diffusers

    prior, decoder = str(variant_dir / "prior"), str(variant_dir / "decoder")
    with pytest.warns(UserWarning, match="does not offload"):
        ours = model_card(
            CascadePriorPipeline, CascadeDecoderPipeline, prior, decoder, tmp_path / "a.png", size=128
        )

    class AssembledDecoder:  # diffusers 0.42 cannot from_pretrained its own decoder pipeline (PaellaVQModel)
        @staticmethod
        def from_pretrained(path: str, *, variant: str, torch_dtype: torch.dtype) -> Any:
            import shutil

            plain = tmp_path / "decoder"  # the variant's weights under the default names
            shutil.copytree(path, plain)
            for file in plain.rglob("*.bf16.safetensors"):
                file.replace(file.with_name(file.name.replace(".bf16", "")))
            return diffusers_pipelines(Path(prior), plain)[1].to(torch_dtype)

    theirs = model_card(
        diffusers.StableCascadePriorPipeline,
        AssembledDecoder,
        prior,
        decoder,
        tmp_path / "b.png",
        size=128,
        offload=False,
    )
    assert ours.shape == (128, 128, 3)
    inside = ((theirs > 0) & (theirs < 255)).mean()
    assert inside > 0.25, f"only {inside:.0%} of the pixels are not clipped: the comparison would be vacuous"
    assert np.array_equal(ours, theirs)


# --- the two-pipeline flow --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_prior_then_decoder_equals_diffusers_with_the_decoders_own_images_per_prompt(
    ours, reference, backend
):
    prior, decoder = ours[backend]
    ref_prior, ref_decoder = reference
    kwargs = dict(prompt=PROMPTS, negative_prompt=["blurry", ""], num_images_per_prompt=2, **SMALL)
    got = prior(generator=_gen(), **kwargs)
    want = ref_prior(generator=_gen(), **kwargs)
    for name in ("image_embeddings", "prompt_embeds", "prompt_embeds_pooled", "negative_prompt_embeds"):
        _close(getattr(got, name), getattr(want, name), backend, name)
    assert got.image_embeddings.shape == (4, 16, 3, 6)
    # Two embeddings per prompt: diffusers' decoder makes two images per prompt of them, guided here.
    decode = dict(prompt=PROMPTS, guidance_scale=2.0, **DECODE)
    images = decoder(got.image_embeddings, generator=_gen(1), **decode).images
    expected = ref_decoder(want.image_embeddings, generator=_gen(1), **decode).images
    assert_meaningful(expected)
    _close(images, expected, backend, "images")


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoder_num_images_per_prompt(ours, reference, backend):
    """The decoder's own `num_images_per_prompt`: where diffusers runs it (one embedding, no guidance) the
    same images; where it fails (several embeddings, guidance), the images of the repeated embeddings."""
    _, decoder = ours[backend]
    _, ref_decoder = reference
    embedding = torch.randn((1, 16, 3, 3), generator=_gen(5))
    images = decoder(embedding, prompt="a cat", num_images_per_prompt=2, generator=_gen(), **DECODE).images
    expected = ref_decoder(
        embedding, prompt="a cat", num_images_per_prompt=2, generator=_gen(), **DECODE
    ).images
    assert images.shape == (2, 128, 128, 3) and np.abs(images[0] - images[1]).max() > 1e-3
    # diffusers broadcasts one embedding row over both images, this runtime repeats it: Stage B's effnet
    # mapper then convolves a batch of 2, not 1, and rounds differently (8e-7 measured).
    _close(images, expected, backend, "images", tolerance=1e-5)

    embeddings = torch.randn((4, 16, 3, 3), generator=_gen(6))  # two per prompt
    kwargs = dict(prompt=PROMPTS, guidance_scale=2.0, generator=_gen(), **DECODE)
    images = decoder(embeddings, num_images_per_prompt=2, **kwargs).images
    with pytest.raises(RuntimeError):  # diffusers: Stage B cannot broadcast 4 embeddings over 16 rows
        ref_decoder(embeddings, num_images_per_prompt=2, **{**kwargs, "generator": _gen()})
    expected = ref_decoder(embeddings.repeat_interleave(2, 0), **{**kwargs, "generator": _gen()}).images
    assert images.shape == (8, 128, 128, 3)
    _close(images, expected, backend, "images")


@pytest.mark.parametrize("backend", BACKENDS)
def test_return_dict_false_and_np_outputs_are_diffusers(ours, reference, backend):
    prior, decoder = ours[backend]
    kwargs = dict(prompt="a cat", output_type="np", return_dict=False, **SMALL)
    got, want = prior(generator=_gen(), **kwargs), reference[0](generator=_gen(), **kwargs)
    assert isinstance(got, tuple) and len(got) == 5
    assert [type(x) for x in got] == [type(x) for x in want]  # np for the latents and hidden states only
    _close(got[0], want[0], backend, "image_embeddings")
    bare = decoder(torch.as_tensor(got[0]), prompt="a cat", generator=_gen(), return_dict=False, **DECODE)
    assert isinstance(bare, np.ndarray) and bare.shape == (1, 128, 256, 3)


@pytest.mark.parametrize("output_type", ["pt", "latent"])
def test_decoder_takes_a_list_of_embeddings_a_negative_prompt_and_every_output_type(
    ours, reference, output_type
):
    _, decoder = ours["torch"]
    parts = [torch.randn((1, 16, 3, 6), generator=_gen(seed)) for seed in (7, 8)]
    kwargs = dict(prompt=PROMPTS, negative_prompt=["blurry", ""], guidance_scale=3.0, num_inference_steps=2)
    got = decoder(parts, generator=_gen(), output_type=output_type, **kwargs).images
    want = reference[1](parts, generator=_gen(), output_type=output_type, **kwargs).images
    assert isinstance(got, torch.Tensor) and torch.equal(got, want)
    assert got.shape == ((2, 3, 128, 256) if output_type == "pt" else (2, 4, 32, 64))


# --- image variations -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("prompt", ["a dog", None])
def test_image_variations_equal_diffusers(ours, reference, backend, count, prompt):
    """Image prompts through the CLIP image encoder of the backend; without a prompt diffusers needs
    `prompt=""`, which is what None means here."""
    prior, _ = ours[backend]
    images = _images()[:count]
    got = prior(prompt=prompt, images=images, generator=_gen(), **SMALL).image_embeddings
    want = reference[0](prompt=prompt or "", images=images, generator=_gen(), **SMALL).image_embeddings
    _close(got, want, backend, "image_embeddings")
    text_only = prior(prompt=prompt or "", generator=_gen(), **SMALL).image_embeddings
    assert (got - text_only).abs().max() > 1e-3 * text_only.abs().max(), "the images changed nothing"


def test_image_embeds_are_the_encoded_images(ours, reference):
    prior, _ = ours["torch"]
    images = _images()
    embeds = prior.encode_image(images)
    assert embeds.shape == (1, 2, 24)
    got = prior(prompt=PROMPTS, image_embeds=embeds, num_images_per_prompt=2, generator=_gen(), **SMALL)
    want = reference[0](prompt=PROMPTS, images=images, num_images_per_prompt=2, generator=_gen(), **SMALL)
    assert torch.equal(got.image_embeddings, want.image_embeddings)
    assert prior.encode_image(torch.rand(3, 3, 40, 56)).shape == (1, 3, 24)  # a tensor of N images


# --- precomputed embeddings and latents -------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompt_embeddings_skip_the_text_encoder_and_equal_diffusers(ours, reference, backend):
    prior, decoder = ours[backend]
    ref_prior, ref_decoder = reference
    embeds, pooled, negative, negative_pooled = ref_prior.encode_prompt(
        device="cpu", batch_size=2, num_images_per_prompt=1, do_classifier_free_guidance=True, prompt=PROMPTS
    )
    given = dict(
        prompt_embeds=embeds,
        prompt_embeds_pooled=pooled,
        negative_prompt_embeds=negative,
        negative_prompt_embeds_pooled=negative_pooled,
    )
    calls = []
    runner = prior.runners["text_encoder"]
    execute = runner.execute
    runner.execute = lambda bindings: calls.append(1) or execute(bindings)
    try:
        got = prior(generator=_gen(), num_images_per_prompt=2, **given, **SMALL)
    finally:
        runner.execute = execute
    assert calls == [], "the text encoder ran for given embeddings"
    want = ref_prior(generator=_gen(), num_images_per_prompt=2, **given, **SMALL)
    _close(got.image_embeddings, want.image_embeddings, backend, "image_embeddings")
    # The decoder on the prior's (repeated) embeddings, as the combined pipeline feeds it.
    decode = dict(guidance_scale=2.0, **DECODE)
    embedded = {k: getattr(got, k) for k in given}
    images = decoder(got.image_embeddings, generator=_gen(1), **embedded, **decode).images
    want_embedded = {k: getattr(want, k) for k in given}
    expected = ref_decoder(want.image_embeddings, generator=_gen(1), **want_embedded, **decode).images
    _close(images, expected, backend, "images")


@pytest.mark.parametrize("backend", BACKENDS)
def test_latents_start_the_loops_and_the_generator_draws_only_the_steps(ours, reference, backend):
    prior, decoder = ours[backend]
    ref_prior, ref_decoder = reference
    start = torch.randn((2, 16, 3, 6), generator=_gen(9))
    got = prior(prompt=PROMPTS, latents=start, generator=_gen(), **SMALL).image_embeddings
    want = ref_prior(prompt=PROMPTS, latents=start, generator=_gen(), **SMALL).image_embeddings
    _close(got, want, backend, "image_embeddings")
    assert (got - prior(prompt=PROMPTS, generator=_gen(), **SMALL).image_embeddings).abs().max() > 1e-3
    start_b = torch.randn((2, 4, 32, 64), generator=_gen(10))
    images = decoder(want, prompt=PROMPTS, latents=start_b, generator=_gen(), **DECODE).images
    expected = ref_decoder(want, prompt=PROMPTS, latents=start_b, generator=_gen(), **DECODE).images
    _close(images, expected, backend, "images")


# --- step callbacks ---------------------------------------------------------------------------------------


class Recorder:
    """A `callback_on_step_end` that records every step (index, timestep, every tensor it may ask for) and,
    with `scale`, multiplies the latents at step 1."""

    def __init__(self, scale: float | None = None) -> None:
        self.steps: list[tuple[int, float, dict[str, Any]]] = []
        self.scale = scale

    def __call__(
        self, pipe: Any, step: int, timestep: torch.Tensor, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        self.steps.append(
            (step, float(timestep), {k: None if v is None else v.clone() for k, v in kwargs.items()})
        )
        if self.scale is not None and step == 1:
            return {"latents": kwargs["latents"] * self.scale}
        return {}

    def assert_equal(self, other: Recorder, backend: str) -> None:
        assert [(s, t) for s, t, _ in self.steps] == [(s, t) for s, t, _ in other.steps]
        for (step, _, mine), (_, _, theirs) in zip(self.steps, other.steps, strict=True):
            assert mine.keys() == theirs.keys()
            for name in mine:
                if theirs[name] is None:
                    assert mine[name] is None, name
                else:
                    _close(mine[name], theirs[name], backend, f"step {step} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [None, 0.5], ids=["records", "modifies"])
def test_step_callbacks_follow_diffusers_protocol(ours, reference, backend, scale):
    prior, decoder = ours[backend]
    ref_prior, ref_decoder = reference
    mine, theirs = Recorder(scale), Recorder(scale)
    prior_inputs = list(CascadePriorPipeline._callback_tensor_inputs)
    kwargs = dict(
        prompt=PROMPTS, guidance_scale=4.0, callback_on_step_end_tensor_inputs=prior_inputs, **SMALL
    )
    got = prior(generator=_gen(), callback_on_step_end=mine, **kwargs).image_embeddings
    want = ref_prior(generator=_gen(), callback_on_step_end=theirs, **kwargs).image_embeddings
    assert len(mine.steps) == 3 and set(mine.steps[0][2]) == set(prior_inputs)
    mine.assert_equal(theirs, backend)
    _close(got, want, backend, "image_embeddings")

    mine, theirs = Recorder(scale), Recorder(scale)
    decoder_inputs = list(CascadeDecoderPipeline._callback_tensor_inputs)
    kwargs = dict(
        prompt=PROMPTS, guidance_scale=2.0, callback_on_step_end_tensor_inputs=decoder_inputs, **DECODE
    )
    images = decoder(want, generator=_gen(), callback_on_step_end=mine, **kwargs).images
    expected = ref_decoder(want, generator=_gen(), callback_on_step_end=theirs, **kwargs).images
    mine.assert_equal(theirs, backend)
    _close(images, expected, backend, "images")
    if scale is not None:
        plain = decoder(want, prompt=PROMPTS, guidance_scale=2.0, generator=_gen(), **DECODE).images
        assert np.abs(plain - images).max() > 1e-3, "the returned latents changed nothing"


# --- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "argument", "match"),
    [
        (dict(timesteps=[1.0, 0.5]), ConfigError, "timesteps", "accepts and ignores it"),
        (dict(output_type="pil"), ConfigError, "output_type", "choose one of pt, np"),
        (
            dict(images=_images()[:1], image_embeds=torch.zeros(1, 1, 24)),
            ConfigError,
            "image_embeds",
            "not both",
        ),
        (dict(image_embeds=torch.zeros(1, 2, 768)), ShapeError, "image_embeds", r"expected \(1, \*, 24\)"),
        (dict(images=[np.zeros((8, 8, 3))]), ConfigError, "images", "a PIL image or a"),
        (
            dict(callback_on_step_end_tensor_inputs=["effnet"]),
            ConfigError,
            "callback_on_step_end_tensor_inputs",
            "",
        ),
        (
            dict(negative_prompt_embeds=torch.zeros(1, 77, 32)),
            ConfigError,
            "negative_prompt_embeds_pooled",
            "",
        ),
    ],
)
def test_prior_refusals_name_their_argument(ours, kwargs, error, argument, match):
    prior, _ = ours["torch"]
    before = buffers(prior)
    with pytest.raises(error, match=match) as exc:
        prior("a cat", **{**SMALL, **kwargs})
    assert exc.value.argument == argument
    assert buffers(prior) == before, "a refused call ran a stage"


def test_images_need_the_image_encoder_and_feature_extractor():
    from cascade_trt.configs import TINY
    from cascade_trt.random_weights import random_components

    parts = random_components(TINY, stages=("text_encoder", "stage_c"))  # no feature extractor
    prior = CascadePriorPipeline.from_components(parts, device="cpu", precision="fp32")
    with pytest.raises(ConfigError, match="this prior has no feature_extractor/") as exc:
        prior("a cat", images=_images()[:1], **SMALL)
    assert exc.value.argument == "images"


@pytest.mark.parametrize(
    ("embeddings", "kwargs", "argument", "match"),
    [
        (torch.zeros(1, 16, 4, 4), {}, "image_embeddings", "not a stage_c latent of this cascade"),
        (torch.zeros(3, 16, 3, 3), dict(prompt=PROMPTS), "image_embeddings", "3 rows for 2 prompts"),
        (
            torch.zeros(1, 16, 3, 3),
            dict(latents=torch.zeros(1, 4, 3, 3)),
            "latents",
            r"expected \(1, 4, 32, 32\)",
        ),
        (
            torch.zeros(1, 16, 3, 3),
            dict(output_type="jpeg"),
            "output_type",
            "choose one of pil, np, pt, latent",
        ),
    ],
)
def test_decoder_refusals_name_their_argument(ours, embeddings, kwargs, argument, match):
    _, decoder = ours["torch"]
    before = buffers(decoder)
    with pytest.raises((ConfigError, ShapeError), match=match) as exc:
        decoder(embeddings, **{"prompt": "a cat", "num_inference_steps": 2, **kwargs})
    assert exc.value.argument == argument
    assert buffers(decoder) == before, "a refused call ran a stage"


# --- the decoder's own text encoder -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_text_decoder(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny decoder with a text encoder of its own (other weights than the prior's)."""
    import shutil

    from cascade_trt.tiny import make_pipelines

    root = tmp_path_factory.mktemp("own_text")
    other = make_pipelines(root / "other", seed=1)
    decoder = root / "decoder"
    shutil.copytree(tiny_dir / "decoder", decoder)
    shutil.rmtree(decoder / "text_encoder")
    shutil.copytree(other / "decoder" / "text_encoder", decoder / "text_encoder")
    return decoder


def test_the_decoder_encodes_prompts_with_its_own_text_encoder(ours, tiny_prior, own_text_decoder):
    _, shared = ours["torch"]
    decoder = CascadeDecoderPipeline.from_pretrained(own_text_decoder, device="cpu", precision="fp32")
    decoder.set_progress_bar_config(disable=True)
    reference = diffusers_pipelines(tiny_prior, own_text_decoder)[1]
    embedding = torch.randn((1, 16, 3, 6), generator=_gen(4))
    kwargs = dict(prompt="a cat", guidance_scale=2.0, **DECODE)
    images = decoder(embedding, generator=_gen(), **kwargs).images
    assert np.array_equal(images, reference(embedding, generator=_gen(), **kwargs).images)
    assert np.abs(images - shared(embedding, generator=_gen(), **kwargs).images).max() > 1e-3


def test_an_exported_text_encoder_of_other_weights_is_refused_with_the_export_that_fixes_it(
    tiny_onnx, tiny_prior, own_text_decoder, tmp_path
):
    """The onnxruntime and tensorrt backends run the exported text encoder, the prior's: the decoder's own must
    be the same weights, or the decoder side is exported on its own (here only its text encoder, beside the
    shared Stage B and A), after which the images are diffusers' with the decoder's own text encoder."""
    import shutil

    from cascade_trt.cli import main
    from cascade_trt.errors import ArtifactMismatchError

    onnx_dir = tiny_onnx("fp32")["stage_a"].parent
    load = dict(backend="onnxruntime", device="cpu", precision="fp32")
    with pytest.raises(
        ArtifactMismatchError,
        match="the decoder's own text encoder .* differs: .*`cascade-trt export --decoder",
    ):
        CascadeDecoderPipeline.from_pretrained(own_text_decoder, onnx_dir=onnx_dir, **load)
    for path in onnx_dir.iterdir():
        if path.name.startswith(("stage_b", "stage_a")):
            shutil.copy(path, tmp_path / path.name)
    argv = ["export", "--decoder", str(own_text_decoder), "--stages", "text_encoder", "--out", str(tmp_path)]
    assert main([*argv, "--no-progress"]) == 0
    decoder = CascadeDecoderPipeline.from_pretrained(own_text_decoder, onnx_dir=tmp_path, **load)
    decoder.set_progress_bar_config(disable=True)
    reference = diffusers_pipelines(tiny_prior, own_text_decoder)[1]
    embedding = torch.randn((1, 16, 3, 6), generator=_gen(4))
    kwargs = dict(prompt="a cat", guidance_scale=2.0, **DECODE)
    images = decoder(embedding, generator=_gen(), **kwargs).images
    _close(images, reference(embedding, generator=_gen(), **kwargs).images, "onnxruntime", "images")


def test_to_moves_the_torch_backend_and_refuses_a_dtype(tiny_prior, ours):
    prior = CascadePriorPipeline.from_pretrained(tiny_prior, device="cpu", precision="fp32")
    prior.set_progress_bar_config(disable=True)
    before = prior("a cat", generator=_gen(), **SMALL).image_embeddings
    assert prior.to("cpu") is prior and prior.device == torch.device("cpu")
    assert torch.equal(prior("a cat", generator=_gen(), **SMALL).image_embeddings, before)
    with pytest.raises(ConfigError, match="the precision is chosen when loading") as exc:
        prior.to(torch.float16)
    assert exc.value.argument == "device"
    runner = ours["onnxruntime"][0].runners["stage_c"]  # a session is made for its device
    with pytest.raises(ConfigError, match="was loaded on cpu and cannot move to cuda: pass device='cuda'"):
        runner.to(torch.device("cuda"))
