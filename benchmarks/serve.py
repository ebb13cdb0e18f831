"""Load test of a running image service (`cascade-trt bench-serve`, `python -m cascade_trt.benchmarks.serve`).

Sends a bounded number of requests (200 by default) at each given concurrency to a service on a loopback
address, one request per worker at a time, and records for each concurrency: throughput (images/s over the
run's wall time), latency p50/p90/p99 (monotonic clock, request sent to answer read), the batch sizes the
service used (`batch_size` of each answer) and every error, each with its status and message. An answer counts
as good only if every image in it is a PNG of the requested size. Results: JSON with the environment and the
service's settings (from its `/ready`), and a markdown table.

Only the standard library talks HTTP here, so the load test runs wherever cascade_trt does.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

from cascade_trt.benchmarks.timing import percentile
from cascade_trt.errors import ConfigError

GENERATIONS = "/v1/images/generations"


@dataclass(frozen=True)
class LoadConfig:
    url: str = "http://127.0.0.1:8000"
    requests: int = 200
    concurrency: tuple[int, ...] = (1, 4, 16)
    size: str | None = None  # None: the service's first size
    n: int = 1
    prior_num_inference_steps: int = 20
    num_inference_steps: int = 10
    timeout_s: float = 600.0
    api_key: str | None = field(default=None, repr=False)

    def body(self, index: int) -> dict[str, Any]:
        """Request `index`: its own prompt and seed, so no two requests are the same work."""
        body = {
            "prompt": f"a photograph of a lighthouse, request {index}",
            "n": self.n,
            "seed": index,
            "prior_num_inference_steps": self.prior_num_inference_steps,
            "num_inference_steps": self.num_inference_steps,
        }
        return body if self.size is None else {**body, "size": self.size}


def check_loopback(url: str) -> None:
    """ConfigError unless `url` is http(s) to a loopback address: this tool loads the machine it runs on."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if parsed.scheme not in ("http", "https") or not host:
        raise ConfigError(f"--url {url!r} is not an http:// URL, e.g. http://127.0.0.1:8000")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, parsed.port or 80)}
    except socket.gaierror as exc:
        raise ConfigError(f"--url {url!r}: cannot resolve {host} ({exc})") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ConfigError(
            f"--url {url!r} is not a loopback address: load-test a service on this machine (127.0.0.1)"
        )


def service_settings(cfg: LoadConfig) -> dict[str, Any]:
    """The service's `/ready` answer (its sizes, batching, backend); ConfigError if it is not ready."""
    try:
        with urllib.request.urlopen(cfg.url.rstrip("/") + "/ready", timeout=30) as answer:
            return json.loads(answer.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"no ready service at {cfg.url} ({exc}): start one with `cascade-trt serve`"
        ) from None


def run_load(cfg: LoadConfig, concurrency: int) -> dict[str, Any]:
    """`cfg.requests` requests, `concurrency` at a time; one record."""
    counter = iter(range(cfg.requests))
    lock = threading.Lock()
    outcomes: list[dict[str, Any]] = []

    def worker() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            outcome = _one(cfg, index)
            with lock:
                outcomes.append(outcome)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    wall = time.perf_counter() - start
    return _record(cfg, concurrency, wall, outcomes)


def _one(cfg: LoadConfig, index: int) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if cfg.api_key:
        headers["Authorization"] = f"Bearer {cfg.api_key}"
    data = json.dumps(cfg.body(index)).encode()
    request = urllib.request.Request(cfg.url.rstrip("/") + GENERATIONS, data=data, headers=headers)
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout_s) as answer:
            body = json.loads(answer.read())
        status = 200
    except urllib.error.HTTPError as exc:
        status, body = exc.code, _error_body(exc)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        status, body = None, {"error": {"message": f"{type(exc).__name__}: {exc}"}}
    seconds = time.perf_counter() - start
    outcome = {"index": index, "status": status, "seconds": seconds}
    if status == 200:
        problem = _check_images(body, cfg)
        if problem:
            return {**outcome, "error": problem}
        return {**outcome, "batch_size": body["batch_size"], "images": len(body["data"])}
    return {**outcome, "error": body.get("error", {}).get("message", str(body))}


def _error_body(exc: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        return json.loads(exc.read())
    except ValueError:
        return {"error": {"message": f"HTTP {exc.code} {exc.reason}"}}


def _check_images(body: dict[str, Any], cfg: LoadConfig) -> str | None:
    from PIL import Image

    if len(body.get("data", ())) != cfg.n:
        return f"asked {cfg.n} images, got {len(body.get('data', ()))}"
    for item in body["data"]:
        image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        if image.format != "PNG":
            return f"an image is {image.format}, not PNG"
        if cfg.size is not None and f"{image.width}x{image.height}" != cfg.size:
            return f"an image is {image.width}x{image.height}, asked {cfg.size}"
    return None


def _record(cfg: LoadConfig, concurrency: int, wall: float, outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    good = sorted((o for o in outcomes if "error" not in o), key=lambda o: o["index"])
    latencies = sorted(o["seconds"] for o in good)
    images = sum(o["images"] for o in good)
    return {
        "concurrency": concurrency,
        "requests": len(outcomes),
        "answered": len(good),
        "images": images,
        "wall_s": wall,
        "images_per_s": images / wall if wall > 0 else 0.0,
        "latency_s": {f"p{q}": percentile(latencies, q) for q in (50, 90, 99)} if latencies else None,
        "batch_sizes": {str(k): v for k, v in sorted(Counter(o["batch_size"] for o in good).items())},
        "errors": sorted(
            (
                {"index": o["index"], "status": o["status"], "message": o["error"]}
                for o in outcomes
                if "error" in o
            ),
            key=lambda e: e["index"],
        ),
    }


def run(cfg: LoadConfig, progress: Any = None) -> dict[str, Any]:
    """Every concurrency in turn against one service; the document `markdown` renders."""
    from cascade_trt.benchmarks.environment import collect, load_average

    check_loopback(cfg.url)
    settings = service_settings(cfg)
    records = []
    for concurrency in cfg.concurrency:
        if progress:
            progress(f"{cfg.requests} requests at concurrency {concurrency}")
        records.append(run_load(cfg, concurrency))
    config = {k: v for k, v in asdict(cfg).items() if k != "api_key"}
    environment = {**collect("cpu"), "load_average": load_average()}
    return {
        "kind": "serve",
        "config": config,
        "service": settings,
        "environment": environment,
        "records": records,
    }


def markdown(doc: dict[str, Any]) -> str:
    s, c, env = doc["service"], doc["config"], doc["environment"]
    lines = [
        f"# Serving load test: {s.get('backend')} on {s.get('device')}, max batch {s.get('max_batch')}, "
        f"batch wait {s.get('batch_wait_ms')} ms",
        "",
        f"{c['requests']} requests per row, n={c['n']}, size {c['size'] or s.get('sizes', ['?'])[0]}, "
        f"steps {c['prior_num_inference_steps']} + {c['num_inference_steps']}; client and service on "
        f"{env.get('cpu_model')} ({env.get('cpu_count')} CPUs), load average {env.get('load_average')}, "
        f"{env.get('date_utc')}, commit {env.get('git', {}).get('commit', '?')}.",
        "",
        "| concurrency | answered | images/s | p50 | p90 | p99 | batch sizes (answers) | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["records"]:
        lat = r["latency_s"] or {}
        ms = [f"{lat[k] * 1000:.0f} ms" if k in lat else "-" for k in ("p50", "p90", "p99")]
        sizes = ", ".join(f"{k}: {v}" for k, v in r["batch_sizes"].items()) or "-"
        cells = [str(r["concurrency"]), f"{r['answered']}/{r['requests']}", f"{r['images_per_s']:.2f}", *ms]
        lines.append("| " + " | ".join([*cells, sizes, str(len(r["errors"]))]) + " |")
    errors = [(r["concurrency"], e) for r in doc["records"] for e in r["errors"]]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- concurrency {c}, request {e['index']}: {e['status']} {e['message']}" for c, e in errors]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from cascade_trt.cli import main

    sys.exit(main(["bench-serve", *sys.argv[1:]]))
