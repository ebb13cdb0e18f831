"""The HTTP service end to end on Ray Serve, on 127.0.0.1 with tiny checkpoints: concurrent requests, batching
that keeps each request's images, every refusal's status and field, health and readiness, the API key, the
official `openai` client, the 504 past the timeout, and the load test against it."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from serve_helpers import STEPS, get, png_pixels, post, running_service

from cascade_trt.serve.config import ServeConfig

KEY = f"test-key-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def config(tiny_prior: Path, tiny_decoder: Path) -> ServeConfig:
    return ServeConfig(
        prior=str(tiny_prior),
        decoder=str(tiny_decoder),
        sizes=((128, 128), (256, 128)),
        max_batch=4,
        batch_wait_ms=300,  # long enough that requests sent together share a call on a busy machine
        timeout_s=120,
        cpus_per_replica=0.5,
        api_key=KEY,
    )


@pytest.fixture(scope="module")
def url(config: ServeConfig) -> Iterator[str]:
    # A second application whose timeout nothing can meet: the 504 path.
    hurried = ServeConfig(
        prior=config.prior,
        decoder=config.decoder,
        sizes=((128, 128),),
        max_batch=1,
        timeout_s=0.001,
        cpus_per_replica=0.5,
    )
    with running_service(("/", config), ("/hurried", hurried)) as base:
        yield base


@pytest.fixture(scope="module")
def pipe(config: ServeConfig):
    from cascade_trt import CascadePipeline

    pipe = CascadePipeline.from_pretrained(config.prior, config.decoder, backend="torch", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def request(seed: int, **fields) -> dict:
    return {"prompt": f"a lighthouse {seed}", "size": "128x128", "seed": seed, **STEPS, **fields}


def test_health_and_ready_need_no_key(url: str) -> None:
    assert get(url, "/health") == (200, {"status": "ok"})
    status, body = get(url, "/ready")
    assert status == 200 and body["ready"] is True and body["replicas"] == 1
    assert body["sizes"] == ["128x128", "256x128"] and body["max_batch"] == 4


def test_requests_need_the_key(url: str) -> None:
    for key in (None, "wrong-key"):
        status, body, headers = post(url, request(0), key=key)
        assert status == 401 and "Authorization: Bearer" in body["error"]["message"]
        assert headers.get("www-authenticate") == "Bearer"


def test_concurrent_requests_all_answered_with_pngs(url: str) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: post(url, request(100 + i), key=KEY), range(24)))
    assert [status for status, _, _ in answers] == [200] * 24
    for i, (_, body, _) in enumerate(answers):
        [image] = body["data"]
        assert image["seed"] == 100 + i and png_pixels(image["b64_json"]).shape == (128, 128, 3)
    assert max(body["batch_size"] for _, body, _ in answers) > 1  # requests did share calls


def test_batched_request_equals_itself_alone_and_the_pipeline(url: str, pipe) -> None:
    mine = request(7, n=2, negative_prompt="blurry")
    status, alone, _ = post(url, mine, key=KEY)
    assert status == 200 and alone["batch_size"] == 2
    others = [request(50 + i) for i in range(2)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(lambda body: post(url, body, key=KEY), [mine, *others]))
    batched = answers[0][1]
    assert batched["batch_size"] > 2, "the request did not share a call: nothing was tested"
    assert [d["seed"] for d in batched["data"]] == [7, 8]
    for i, (a, b) in enumerate(zip(alone["data"], batched["data"], strict=True)):
        assert np.abs(png_pixels(a["b64_json"]) - png_pixels(b["b64_json"])).max() <= 1
        image = pipe(
            mine["prompt"],
            negative_prompt="blurry",
            height=128,
            width=128,
            generator=torch.Generator().manual_seed(7 + i),
            **STEPS,
        ).images[0]
        assert np.abs(png_pixels(a["b64_json"]) - np.asarray(image, dtype=np.int16)).max() <= 1


BAD = [
    (request(0, colour="red"), 400, "colour", "unknown field 'colour'"),
    (request(0, n="2"), 400, "n", "valid integer"),
    (request(0, n=5), 400, "n", "1 to 4 images"),
    (request(0, size="512x512"), 400, "size", "choose one of 128x128, 256x128"),
    (request(0, size="big"), 400, "size", "not WIDTHxHEIGHT"),
    (request(0, prior_num_inference_steps=0), 400, "prior_num_inference_steps", "positive integer"),
    (request(0, num_inference_steps=500), 400, "num_inference_steps", "less than or equal to 200"),
    (request(0, prompt=["a", "b"]), 400, "prompt", "valid string"),
    (request(0, response_format="url"), 400, "response_format", "b64_json"),
    (request(-1), 400, "seed", "greater than or equal to 0"),
    ({"n": 1}, 400, "prompt", "Field required"),
]


@pytest.mark.parametrize(
    ("body", "status", "field", "message"), BAD, ids=[b[2] + "-" + b[3][:12] for b in BAD]
)
def test_bad_request_names_the_field(url: str, body: dict, status: int, field: str, message: str) -> None:
    got, answer, _ = post(url, body, key=KEY)
    assert got == status and answer["error"]["param"] == field and message in answer["error"]["message"]


@pytest.mark.parametrize(
    ("raw", "status", "field", "message"),
    [
        (b"{not json", 400, None, "not JSON"),
        (b"[1, 2]", 400, None, "JSON object"),
        (b'{"prompt": "a", "prior_guidance_scale": NaN}', 400, "prior_guidance_scale", "finite number"),
        (b'{"prompt": "' + b"a" * 70_000 + b'"}', 413, None, "larger than 65536 bytes"),
    ],
)
def test_bad_body(url: str, raw: bytes, status: int, field: str | None, message: str) -> None:
    got, answer, _ = post(url, raw=raw, key=KEY)
    assert got == status and message in answer["error"]["message"] and answer["error"]["param"] == field


def test_the_openai_client_works_against_it(url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
    answer = client.images.generate(
        model="stable-cascade",
        prompt="a lighthouse at dusk",
        n=2,
        size="256x128",
        response_format="b64_json",
        quality="standard",
        user="test",
        extra_body={"seed": 3, **STEPS},
    )
    assert [png_pixels(d.b64_json).shape for d in answer.data] == [(128, 256, 3)] * 2
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(prompt="x", size="1024x1024")
    assert exc.value.param == "size"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).images.generate(prompt="x")


def test_a_request_past_the_timeout_gets_504(url: str) -> None:
    start = time.monotonic()
    status, body, _ = post(f"{url}/hurried", request(0))
    assert status == 504 and "--timeout" in body["error"]["message"]
    assert time.monotonic() - start < 30


def test_load_test_counts_every_request(url: str, tmp_path: Path) -> None:
    from cascade_trt.benchmarks.serve import LoadConfig, markdown, run

    cfg = LoadConfig(
        url=url,
        requests=6,
        concurrency=(1, 3),
        size="128x128",
        api_key=KEY,
        prior_num_inference_steps=2,
        num_inference_steps=2,
    )
    doc = run(cfg)
    assert [r["answered"] for r in doc["records"]] == [6, 6] and not any(r["errors"] for r in doc["records"])
    assert doc["records"][0]["batch_sizes"] == {"1": 6}  # one at a time: nothing to batch with
    assert doc["service"]["max_batch"] == 4 and KEY not in str(doc)
    assert "| 3 | 6/6 |" in markdown(doc)


def test_load_test_refuses_other_hosts() -> None:
    from cascade_trt.benchmarks.serve import check_loopback
    from cascade_trt.errors import ConfigError

    with pytest.raises(ConfigError, match="not a loopback address"):
        check_loopback("http://10.1.2.3:8000")
    check_loopback("http://localhost:8000")


def test_the_key_never_reaches_the_logs(url: str) -> None:
    import ray

    post(url, request(0), key=KEY)
    post(url, request(0), key="wrong-key")
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked = [p.name for p in logs.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert list(logs.rglob("*.log")) and leaked == []
