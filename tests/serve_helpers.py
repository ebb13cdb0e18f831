"""A Ray Serve instance for a test module: local Ray on loopback, bounded CPUs and object store, one free port.

The Ray tests import this; it needs the `serve` extra (part of `dev`).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

from cascade_trt.serve.config import ServeConfig

STEPS = {"prior_num_inference_steps": 2, "num_inference_steps": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_service(*apps: tuple[str, ServeConfig]) -> Iterator[str]:
    """Start Ray and Serve, deploy each (route, config) as its own application; yield the base URL."""
    import ray
    from ray import serve

    from cascade_trt.serve.app import build

    ray.init(
        num_cpus=2,
        object_store_memory=96 * 1024**2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for route, config in apps:
            serve.run(build(config), name=route.strip("/") or "cascade", route_prefix=route)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def post(
    url: str, body: Any = None, *, key: str | None = None, raw: bytes | None = None, timeout: float = 120
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) of a POST to /v1/images/generations."""
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"{url}/v1/images/generations", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read()), dict(exc.headers)


def get(url: str, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())


def _json(data: bytes) -> dict[str, Any]:
    """An error body as JSON; Ray's proxy answers some errors in plain text, kept whole for the assertion."""
    try:
        return json.loads(data)
    except ValueError:
        return {"text": data.decode(errors="replace")}


def png_pixels(b64: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return np.asarray(image, dtype=np.int16)
