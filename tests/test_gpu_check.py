"""`scripts/gpu-check.sh --smoke`: the one prepared GPU run, run on the CPU with the tiny preset, so the
script the first GPU session depends on cannot rot. Its steps, outputs and target lines are checked, not its
timings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cascade_trt.benchmarks import schema

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check.sh"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", str(SCRIPT), str(out), "--smoke"], capture_output=True, text=True, env=env, timeout=600
    )
    return run, out


def test_smoke_run_succeeds_and_logs_every_step(smoke) -> None:
    run, out = smoke
    assert run.returncode == 0, run.stdout[-3000:]
    for line in (
        "== machine",
        "== install",
        "== gpu tests",
        "== benchmark",
        "== targets",
        "== gpu-check: done",
    ):
        assert line in run.stdout, line
    assert "torch " in run.stdout and "no CUDA GPU visible to torch" in run.stdout  # the machine is described
    # The budget left no room for Inductor: the skip says why, in numbers.
    assert "== torch-compile: skipped" in run.stdout and "it needs 200 s" in run.stdout
    assert (out / "log.txt").read_text() == run.stdout, "log.txt holds everything the run printed"


def test_smoke_benchmark_measures_graphs_against_no_graphs_and_diffusers(smoke) -> None:
    _, out = smoke
    doc = json.loads((out / "bench" / "results.json").read_text())
    assert schema.problems(doc) == [] and "incomplete" not in doc
    shapes = {(r["backend"], r["height"], r["width"], r["batch"]) for r in doc["records"]}
    assert shapes == {(b, 1024, 1024, n) for b in ("diffusers", "torch", "torch-no-graphs") for n in (1, 2)}
    assert {p.name for p in (out / "bench").iterdir()} >= {"results.json", "results.md"}


def test_smoke_prints_every_target_with_its_measured_value(smoke) -> None:
    run, _ = smoke
    targets = run.stdout.split("== targets", 1)[1]
    for backend in ("torch", "torch-no-graphs"):
        for batch in (1, 2):
            for target in ("end to end ≥ 3× diffusers eager", "loop overhead < 2% of a step"):
                assert f"| {target} | `{backend}` | {batch} |" in targets, (target, backend, batch)
    # A speed-up is a number beside its target; a CPU has no matrix peak, so no floor (and says so).
    assert re.search(
        r"\| end to end ≥ 3× diffusers eager \| `torch` \| 1 \| \d+\.\d\d× \| (met|\*\*missed\*\*) \|",
        targets,
    )
    assert "| end to end within 1.6× the compute floor | `torch` | 1 | no floor" in targets


def test_bad_arguments_are_refused_with_the_usage() -> None:
    for argv in ([], ["--smoke"], ["out", "--budget-s", "soon"], ["out", "--gpu"]):
        run = subprocess.run(["bash", str(SCRIPT), *argv], capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and "usage: scripts/gpu-check.sh OUT_DIR" in run.stderr, argv
