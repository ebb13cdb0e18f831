"""The service's parts that need no Ray: its configuration, the request schema and its limits, the worker
(validation by the pipeline's own checks, grouped calls, seeds), the cog predictor, and the CLI's answer when
Ray Serve is not installed."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cascade_trt.errors import ConfigError, ShapeError
from cascade_trt.serve.config import ServeConfig, parse_size
from cascade_trt.serve.schema import ImageRequest, RequestError, check_limits, pipeline_field
from cascade_trt.serve.worker import ImageWorker

REPO = Path(__file__).resolve().parent.parent
STEPS = {"prior_num_inference_steps": 2, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def config(tiny_prior: Path, tiny_decoder: Path) -> ServeConfig:
    return ServeConfig(
        prior=str(tiny_prior), decoder=str(tiny_decoder), sizes=((128, 128), (256, 128)), max_batch=3
    )


@pytest.fixture(scope="module")
def worker(config: ServeConfig) -> ImageWorker:
    return ImageWorker.load(config)


def pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image, dtype=np.int16)


def direct(worker: ImageWorker, prompt: str, seed: int, width: int = 128, height: int = 128) -> np.ndarray:
    """What `CascadePipeline` makes for the prompt alone, seeded as the service seeds image i."""
    image = worker.pipe(
        prompt, height=height, width=width, generator=torch.Generator().manual_seed(seed), **STEPS
    ).images[0]
    return np.asarray(image, dtype=np.int16)


def test_config_from_strings_and_secret_key() -> None:
    args = {"prior": "p", "decoder": "d", "sizes": "256x256,384x256", "max_batch": "2", "autoscale": "1 3"}
    config = ServeConfig.from_mapping({**args, "api_key": "k-secret", "cuda_graphs": "false"})
    assert config.sizes == ((256, 256), (384, 256)) and config.max_batch == 2 and config.autoscale == (1, 3)
    assert config.cuda_graphs is False and config.gpus == 0.0
    assert "k-secret" not in repr(config)
    assert parse_size("1024x768") == (1024, 768)  # OpenAI's order: width x height
    with pytest.raises(ConfigError, match="unknown argument"):
        ServeConfig.from_mapping({**args, "max_batches": 4})
    with pytest.raises(ConfigError, match="autoscale"):
        ServeConfig(prior="p", decoder="d", autoscale=(3, 1))


def test_service_limits_name_their_field(config: ServeConfig) -> None:
    with pytest.raises(RequestError, match="choose one of 128x128, 256x128") as exc:
        check_limits(ImageRequest(prompt="a", size="512x512"), config)
    assert exc.value.field == "size"
    with pytest.raises(RequestError, match="1 to 3 images") as exc:
        check_limits(ImageRequest(prompt="a", n=4), config)
    assert exc.value.field == "n"
    assert check_limits(ImageRequest(prompt="a"), config) == (128, 128)  # the first served size by default


@pytest.mark.parametrize(
    ("update", "field", "message"),
    [
        ({"prior_num_inference_steps": 0}, "prior_num_inference_steps", "positive integer"),
        ({"num_inference_steps": 0}, "num_inference_steps", "positive integer"),
    ],
)
def test_pipeline_checks_name_the_request_field(
    worker: ImageWorker, update: dict, field: str, message: str
) -> None:
    """The model replica's checks are `CascadePipeline.check_inputs` itself; its message is kept, the field
    is the request's name for the argument."""
    with pytest.raises(RequestError, match=message) as exc:
        worker.job(ImageRequest(prompt="a", **update))
    assert exc.value.field == field


def test_served_size_outside_the_pipeline_is_refused_at_load(tiny_prior: Path, tiny_decoder: Path) -> None:
    config = ServeConfig(prior=str(tiny_prior), decoder=str(tiny_decoder), sizes=((200, 128),))
    with pytest.raises(
        ConfigError, match="cannot serve 200x128 at --max-batch 4: width=200 is not a positive multiple"
    ):
        ImageWorker.load(config)


def test_one_call_per_shape_and_every_image_its_own_seed(worker: ImageWorker) -> None:
    calls: list[int] = []
    pipe_call = type(worker.pipe).__call__

    def counting(pipe, *args, **kwargs):  # the real pipeline, counted
        calls.append(len(kwargs["prompt"]))
        return pipe_call(pipe, *args, **kwargs)

    jobs = [
        worker.job(ImageRequest(prompt="a red cube", n=2, seed=10, **STEPS)),
        worker.job(ImageRequest(prompt="a blue cone", n=1, seed=3, size="256x128", **STEPS)),
        worker.job(ImageRequest(prompt="a green ball", n=1, seed=7, **STEPS)),
    ]
    type(worker.pipe).__call__ = counting
    try:
        results = worker.run(jobs)
    finally:
        type(worker.pipe).__call__ = pipe_call
    assert sorted(calls) == [1, 3]  # the two 128x128 jobs shared a call, the 256x128 one ran alone
    assert [r.batch_size for r in results] == [3, 1, 3]
    assert results[0].seeds == [10, 11] and results[1].seeds == [3]
    for result, prompt, size in zip(
        results,
        ("a red cube", "a blue cone", "a green ball"),
        ((128, 128), (256, 128), (128, 128)),
        strict=True,
    ):
        for png, seed in zip(result.images, result.seeds, strict=True):
            assert np.abs(pixels(png) - direct(worker, prompt, seed, *size)).max() <= 1


def test_a_failing_call_fails_only_its_own_jobs(worker: ImageWorker) -> None:
    good = worker.job(ImageRequest(prompt="fine", seed=1, **STEPS))
    # A job that skipped validation: the call itself raises.
    bad = dataclasses.replace(good, width=256, num_inference_steps=0)
    results = worker.run([good, bad])
    assert isinstance(results[1], ConfigError) and not isinstance(results[0], Exception)


def test_cog_predictor(config: ServeConfig, worker: ImageWorker, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("cog_predict", REPO / "deploy" / "cog" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("CASCADE_TRT_PRIOR", config.prior)
    monkeypatch.setenv("CASCADE_TRT_DECODER", config.decoder)
    monkeypatch.setenv("CASCADE_TRT_SIZES", "128x128")
    monkeypatch.setenv("CASCADE_TRT_MAX_BATCH", "2")
    predictor = module.Predictor()
    predictor.setup()
    assert predictor.worker.config.sizes == ((128, 128),) and predictor.worker.config.max_batch == 2
    paths = predictor.predict(
        prompt="a lighthouse",
        n=2,
        size="128x128",
        negative_prompt="",
        seed=42,
        prior_num_inference_steps=2,
        prior_guidance_scale=4.0,
        num_inference_steps=2,
        decoder_guidance_scale=0.0,
    )
    assert [p.name for p in paths] == ["seed-42.png", "seed-43.png"]
    for path, seed in zip(paths, (42, 43), strict=True):
        assert np.abs(pixels(path.read_bytes()) - direct(worker, "a lighthouse", seed)).max() <= 1
    with pytest.raises(RequestError, match="not served here"):
        predictor.predict(
            prompt="x",
            n=1,
            size="256x256",
            negative_prompt="",
            seed=0,
            **STEPS,
            prior_guidance_scale=4.0,
            decoder_guidance_scale=0.0,
        )


def test_serve_without_ray_exits_2_with_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cascade_trt.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the serve extra looks like
    assert main(["serve", "--prior", "p", "--decoder", "d", "--device", "cpu"]) == 2
    assert "pip install 'cascade-trt[serve]'" in capsys.readouterr().err


def test_a_pipeline_error_maps_to_a_field_by_its_argument_not_its_message() -> None:
    cases = [
        (ShapeError("width=200 is not a positive multiple of 128 px", argument="width"), "size"),
        (
            ConfigError("num_images_per_prompt must be a positive integer", argument="num_images_per_prompt"),
            "n",
        ),
        (ConfigError("got 3 generators for 2 images", argument="generator"), "seed"),
        (
            ConfigError(
                "prior_guidance_scale is named here, num_inference_steps is meant",
                argument="num_inference_steps",
            ),
            "num_inference_steps",
        ),
        (
            ShapeError("stage_a.onnx takes latents of shape [1, 4, 32, 32]"),
            "size",
        ),  # an engine's shape: no argument
    ]
    for error, field in cases:
        assert pipeline_field(error) == field, str(error)
