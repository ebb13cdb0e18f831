"""A model replica's process killed (SIGKILL) during a load run: its requests get 503 with a retry, the rest are
answered, Ray starts a new replica, and the service answers as before. Then `cascade-trt serve` itself: it
starts, answers, and on Ctrl-C finishes the request in flight before it exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
from serve_helpers import STEPS, free_port, get, png_pixels, post, running_service

from cascade_trt.serve.config import ServeConfig

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def url(tiny_prior: Path, tiny_decoder: Path) -> Iterator[str]:
    config = ServeConfig(
        prior=str(tiny_prior), decoder=str(tiny_decoder), sizes=((128, 128),), max_batch=2, timeout_s=120
    )
    with running_service(("/", config)) as base:
        yield base


def model_replica_pids() -> list[int]:
    """This test's own model replica processes (Ray's workers are children of this process)."""
    return [
        p.pid
        for p in psutil.Process().children(recursive=True)
        if "ServeReplica:cascade:CascadeModel" in " ".join(p.cmdline())
    ]


def wait_ready(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if get(url, "/ready")[0] == 200:
            return
        time.sleep(0.5)
    pytest.fail(f"no model replica ready after {seconds} s")


def body(seed: int) -> dict:
    return {"prompt": f"a ship {seed}", "size": "128x128", "seed": seed, **STEPS}


def test_killed_replica_means_503_then_recovery(url: str) -> None:
    status, before, _ = post(url, body(0))
    assert status == 200
    [pid] = model_replica_pids()
    first_answer = threading.Event()

    def send(seed: int):
        # Slow enough (40 + 40 steps a request, two requests a call) that a loaded machine cannot finish the
        # other eleven between the first answer and the kill.
        answer = post(url, {**body(seed), "prior_num_inference_steps": 40, "num_inference_steps": 40})
        first_answer.set()
        return answer

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(send, seed) for seed in range(1, 13)]
        assert first_answer.wait(120)
        in_flight = sum(not f.done() for f in futures)
        os.kill(pid, signal.SIGKILL)  # mid-run: the replica holds the requests in flight
        assert in_flight, "every request was answered before the kill: nothing was tested"
        assert get(url, "/health") == (200, {"status": "ok"})  # the ingress lives on
        answers = [f.result() for f in futures]
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    for status, answer, headers in answers:
        if status == 503:
            assert "retry" in answer["error"]["message"] and headers.get("retry-after") == "1"
    wait_ready(url, 120)
    assert model_replica_pids() != [pid]
    status, after, _ = post(url, body(0))
    assert status == 200
    assert (
        np.abs(png_pixels(after["data"][0]["b64_json"]) - png_pixels(before["data"][0]["b64_json"])).max()
        == 0
    )


def test_cli_serves_until_ctrl_c_and_finishes_in_flight(tiny_prior: Path, tiny_decoder: Path) -> None:
    port = free_port()
    command = [sys.executable, "-c", "import sys; from cascade_trt.cli import main; sys.exit(main())", "serve", "--prior", str(tiny_prior), "--decoder",
               str(tiny_decoder), "--device", "cpu", "--sizes", "128x128", "--max-batch", "1", "--port", str(port),
               "--cpus-per-replica", "0.5", "--api-key", "cli-secret"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, not this module's
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if get(url, "/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert server.poll() is None and get(url, "/ready")[0] == 200
        with ThreadPoolExecutor(max_workers=1) as pool:
            slow = {**body(5), "prior_num_inference_steps": 200, "num_inference_steps": 200}
            in_flight = pool.submit(post, url, slow, key="cli-secret")
            time.sleep(1.0)  # the request reaches the replica
            assert not in_flight.done(), "the request ended before Ctrl-C: nothing was tested"
            server.send_signal(signal.SIGINT)
            try:
                status, answer, _ = in_flight.result()
            except OSError as exc:
                server.kill()
                pytest.fail(f"{exc}; the server said:\n{server.communicate()[0][-3000:]}")
        assert status == 200 and len(answer["data"]) == 1, (status, answer)
        output, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, output[-3000:]
    assert "serving" in output and "cli-secret" not in output
