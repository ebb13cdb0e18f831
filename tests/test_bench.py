"""The benchmark suite: the tiny preset end to end through the CLI, its output checked against the schema.

One real run (tiny preset, 256 px, 2+2 steps, 1 warm-up, 2 repeats) is shared by the tests of this module; it
measures diffusers, the runtime's torch and onnxruntime backends, and asks for tensorrt to see it skipped.
No timing is asserted: speed is a benchmark figure, not a test.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from cascade_trt.benchmarks import costs, report, schema
from cascade_trt.benchmarks.drivers import DiffusersDriver, Workload
from cascade_trt.benchmarks.memory import PeakMemory
from cascade_trt.benchmarks.suite import METRICS, add_floor, add_ratios, choose_backends, measure
from cascade_trt.benchmarks.timing import Clock, percentile, summarize
from cascade_trt.cli import main
from cascade_trt.cli.bench import missing_backends, parse_precision
from cascade_trt.configs import FULL, LITE, TINY
from cascade_trt.errors import ConfigError

HAS_ORT_BACKEND = (
    importlib.util.find_spec("onnxruntime") is not None
    and importlib.util.find_spec("cascade_trt.backends.onnxruntime_backend") is not None
    and importlib.util.find_spec("cascade_trt.export.pipeline") is not None
)
BACKENDS = ["diffusers", "torch", "tensorrt"] + (["onnxruntime"] if HAS_ORT_BACKEND else [])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--preset", "tiny", "--backends", *BACKENDS, "--sizes", "256", "--batch", "1"]
    argv += ["--steps", "2", "2", "--warmup", "1", "--repeats", "2", "--device", "cpu", "--out", str(out)]
    argv += ["--precision", "fp32"]  # `auto` is bf16 for torch on a CPU with native bf16
    # tensorrt was asked for and cannot run on a CPU: the results are written, and the exit status says so.
    assert main(argv) == 1
    return out


@pytest.fixture(scope="module")
def doc(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_tiny_run_passes_the_schema_check(doc: dict) -> None:
    assert schema.problems(doc) == []
    env = doc["environment"]
    for key in ("load_average_start", "load_average_end"):  # Linux has them; the report shows them
        assert len(env[key]) == 3 and all(x >= 0 for x in env[key])
    measured = {r["backend"] for r in doc["records"]}
    assert {"diffusers", "torch"} <= measured
    if HAS_ORT_BACKEND:
        assert "onnxruntime" in measured
    for r in doc["records"]:
        assert set(r["timings_s"]) == set(METRICS)
        assert r["timings_s"]["end_to_end"]["n"] == 2  # warm-up excluded
        assert r["precision"] == dict.fromkeys(("text_encoder", "stage_c", "stage_b", "stage_a"), "fp32")


def test_ratios_come_from_the_same_run(doc: dict) -> None:
    base = next(r for r in doc["records"] if r["backend"] == "diffusers")
    for r in doc["records"]:
        for m in METRICS:
            expected = base["timings_s"][m]["median"] / r["timings_s"][m]["median"]
            assert r["speedup_vs_baseline"][m] == pytest.approx(expected, rel=1e-12)
        # Stage spans are consecutive slices of one call: they cannot exceed the call.
        spans = sum(r["samples_s"][m][0] for m in ("text_encoder", "stage_c_loop", "stage_b_loop", "stage_a"))
        assert spans <= r["samples_s"]["end_to_end"][0] * (1 + 1e-9)


def test_unrunnable_backend_is_skipped_with_a_reason(doc: dict) -> None:
    skipped = {s["backend"]: s["reason"] for s in doc["skipped"]}
    assert "tensorrt" in skipped and "CUDA" in skipped["tensorrt"]
    assert not any(s["backend"] in ("diffusers", "torch") for s in doc["skipped"]), doc["skipped"]


def test_environment_is_recorded_without_the_host(doc: dict, run_dir: Path) -> None:
    env = doc["environment"]
    assert env["device_type"] == "cpu" and env["cpu_count"] >= 1
    assert env["versions"]["torch"] == importlib.metadata.version("torch")
    assert env["versions"]["diffusers"]
    assert env["git"]["commit"] == "unknown" or len(env["git"]["commit"]) == 40
    text = (run_dir / "results.json").read_text()
    host = socket.gethostname()
    if len(host) > 3:
        assert host not in text
    assert str(Path.home()) not in text and str(run_dir) not in text


def test_markdown_and_chart_are_written(run_dir: Path, doc: dict) -> None:
    md = (run_dir / "results.md").read_text()
    assert "| backend | precision | text encoder | Stage C loop |" in md
    for r in doc["records"]:
        assert f"`{r['backend']}`" in md
    assert "## Skipped" in md and "`tensorrt`" in md
    assert f"load average (1 min) {doc['environment']['load_average_start'][0]:.2f} at the start" in md
    png = (run_dir / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000


def _slowed(doc: dict, factor: float) -> dict:
    """The same document with every sample `factor` times slower, its statistics recomputed."""
    out = copy.deepcopy(doc)
    for r in out["records"]:
        r["samples_s"] = {m: [v * factor for v in s] for m, s in r["samples_s"].items()}
        r["timings_s"] = {m: summarize(s).to_json() for m, s in r["samples_s"].items()}
        r["images_per_s"] = r["batch"] / r["timings_s"]["end_to_end"]["median"]
        if "forward_samples_s" in r:  # step and forward both scale: the overhead fraction stays
            r["forward_samples_s"] = {s: [v * factor for v in x] for s, x in r["forward_samples_s"].items()}
            r["forward_s"] = {s: summarize(x).to_json() for s, x in r["forward_samples_s"].items()}
    add_ratios(out["records"])
    return out


def test_compare_shows_two_files_side_by_side(run_dir: Path, doc: dict, tmp_path: Path, capsys) -> None:
    slower = _slowed(doc, 2.0)
    assert schema.problems(slower) == []
    b = report.write_json(slower, tmp_path / "b" / "results.json")
    assert main(["bench", "--compare", str(run_dir / "results.json"), str(b), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "compare.md").read_text()
    assert text == capsys.readouterr().out.rstrip("\n") + "\n"
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(doc["records"])
    assert all(row.count("(2.00)") == 5 for row in rows)  # five stage columns, each B/A = 2
    x, y = (d["records"][0]["timings_s"]["end_to_end"]["median"] for d in (doc, slower))
    assert rows[0].endswith(f"| {report.fmt_ms(x)} → {report.fmt_ms(y)} (2.00) |"), "the tables' ms format"
    # The --out directories themselves are accepted too.
    assert main(["bench", "--compare", str(run_dir), str(b.parent)]) == 0


def test_compare_refuses_what_is_not_a_results_file(run_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "results.md").write_text("| a table |\n")
    assert main(["bench", "--compare", str(run_dir), str(tmp_path / "results.md")]) == 2
    assert "is not a results.json written by cascade-trt bench" in capsys.readouterr().err
    assert main(["bench", "--compare", str(run_dir), str(tmp_path)]) == 2  # a directory without results.json
    assert "results.json does not exist" in capsys.readouterr().err


def test_exit_status_names_backends_without_results(doc: dict) -> None:
    assert "tensorrt" not in {r["backend"] for r in doc["records"]}
    assert missing_backends(doc, requested=("diffusers", "torch")) == []
    assert missing_backends(doc, requested=("diffusers", "tensorrt")) == ["tensorrt"]
    assert missing_backends(doc, requested=None) == []  # the default: whatever can run, and something did
    nothing = {**doc, "records": []}
    assert missing_backends(nothing, requested=None) == ["any backend"]
    # A backend that failed at one of two shapes is missing too.
    other_shape = [{**r, "height": 512} for r in doc["records"] if r["backend"] != "torch"]
    assert missing_backends({**doc, "records": doc["records"] + other_shape}, ("diffusers", "torch")) == [
        "torch"
    ]


def test_bad_backend_names_and_batches_are_refused_before_anything_runs(capsys) -> None:
    from cascade_trt.benchmarks.suite import SuiteConfig

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--backends", "onnx-runtime", "--out", "unused"])
    assert exit_info.value.code == 2 and "invalid choice: 'onnx-runtime'" in capsys.readouterr().err
    with pytest.raises(
        ConfigError, match=r"--batch: images per call must be positive integers, got \[1, 0\]"
    ):
        SuiteConfig(preset="tiny", batches=(1, 0))


def test_schema_check_catches_tampering(doc: dict) -> None:
    wrong_ratio = copy.deepcopy(doc)
    wrong_ratio["records"][-1]["speedup_vs_baseline"]["end_to_end"] *= 1.5
    assert any("speedup end_to_end" in p for p in schema.problems(wrong_ratio))
    non_finite = copy.deepcopy(doc)
    non_finite["records"][0]["samples_s"]["stage_a"][0] = math.nan
    assert "document.records[0].samples_s.stage_a[0]: non-finite number nan" in schema.problems(non_finite)
    missing = copy.deepcopy(doc)
    del missing["records"][0]["peak_memory_bytes"]
    assert any("peak_memory_bytes" in p for p in schema.problems(missing))
    stale_stats = copy.deepcopy(doc)
    stale_stats["records"][0]["timings_s"]["end_to_end"]["median"] *= 0.5
    with pytest.raises(
        schema.SchemaError, match=r"records\[0\]\.timings_s\.end_to_end\.median = \S+, samples give"
    ):
        schema.check(stale_stats)


def test_floor_fraction_arithmetic(doc: dict) -> None:
    """The GPU-only floor figures, computed here from the CPU records with the H100's measured peak."""
    records = copy.deepcopy(doc["records"])
    add_floor(records, "full", 790.0)
    with_floor = {**doc, "records": records}
    assert schema.problems(with_floor) == []
    r = records[0]
    shape = costs.RunShape(256, 256, 1, 2, 2, 4.0, 0.0)
    assert r["floor_s"]["end_to_end"] == pytest.approx(
        costs.floor_seconds("full", shape, 790.0)["end_to_end"]
    )
    assert r["floor_fraction"]["stage_c_loop"] == pytest.approx(
        r["floor_s"]["stage_c_loop"] / r["timings_s"]["stage_c_loop"]["median"]
    )
    r["floor_fraction"]["stage_a"] *= 2
    assert any("floor_fraction.stage_a" in p for p in schema.problems(with_floor))


def test_bad_size_is_refused_with_the_fix(capsys) -> None:
    assert main(["bench", "--preset", "tiny", "--sizes", "300", "--out", "unused"]) == 2
    assert "multiple of 128" in capsys.readouterr().err


def test_percentiles_match_numpy() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 7.0]
    stats = summarize(values)
    assert stats.median == pytest.approx(np.percentile(values, 50))
    assert stats.p10 == pytest.approx(np.percentile(values, 10))
    assert stats.p90 == pytest.approx(np.percentile(values, 90))
    assert stats.min == 1.0 and stats.n == 7
    assert percentile([2.0], 90) == 2.0


def _counted_tflop(config, stage: str) -> float:
    """TFLOP of one forward of `stage` for one model sample (one sequence for the text encoder) at 1024x1024,
    counted by torch's FLOP counter on the real architecture built on the meta device (no memory, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cascade_trt.modules import stage_module
    from cascade_trt.random_weights import random_components
    from cascade_trt.stages import stage_specs

    module = stage_module(random_components(config, stages=(stage,), device="meta"), stage)
    spec = stage_specs(config)[stage]
    fixed = {"int64": torch.int64}
    inputs = [
        torch.zeros(t.resolve(1, 1024, 1024), dtype=fixed.get(t.dtype), device="meta") for t in spec.inputs
    ]
    if stage == "text_encoder":
        # transformers reads a padding mask's values to pick its attention path, and meta tensors have none:
        # count without the mask, which changes no matrix product.
        module, inputs = module.text_encoder, inputs[:1]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops() / 1e12


@pytest.mark.parametrize("preset", ["full", "lite"])
def test_cost_table_is_what_the_flop_counter_counts(preset: str) -> None:
    """The cost table restates torch's FLOP counter on the released architectures; count again and compare
    (within the table's rounding to three figures)."""
    from cascade_trt.configs import PRESETS

    for stage, tflop in costs.FORWARD_TFLOP[preset].items():
        assert _counted_tflop(PRESETS[preset], stage) == pytest.approx(tflop, rel=5e-3, abs=5e-3), stage


def test_run_cost_scales_the_table_by_steps_guidance_batch_and_area() -> None:
    table = costs.FORWARD_TFLOP["full"]
    shape = costs.RunShape(1024, 1024, 1, 20, 10, 4.0, 0.0)
    one = costs.stage_tflop("full", shape)
    assert one == pytest.approx(
        {
            "text_encoder": 2 * table["text_encoder"],  # the prompt and the negative prompt
            "stage_c": 20 * 2 * table["stage_c"],  # 20 steps at the guided batch of 2
            "stage_b": 10 * table["stage_b"],  # 10 unguided steps
            "stage_a": table["stage_a"],
        }
    )
    quarter = costs.stage_tflop("full", costs.RunShape(512, 512, 4, 20, 10, 4.0, 0.0))
    assert quarter["stage_b"] == pytest.approx(one["stage_b"])  # 4 images of a quarter of the area
    assert quarter["text_encoder"] == pytest.approx(4 * one["text_encoder"])  # text does not scale with area
    floor = costs.floor_seconds("full", shape, 800.0)
    assert floor["end_to_end"] == pytest.approx(sum(one.values()) / 800.0)
    assert costs.stage_tflop("tiny", shape) is None
    assert costs.cost_key(FULL) == "full" and costs.cost_key(LITE) == "lite" and costs.cost_key(TINY) is None


@pytest.mark.gpu
def test_gpu_run_records_events_memory_and_floor(tmp_path: Path) -> None:
    from cascade_trt.benchmarks.suite import SuiteConfig, run_suite

    cfg = SuiteConfig(
        preset="tiny", backends=("diffusers", "torch"), steps_c=2, steps_b=2, repeats=2, device="cuda"
    )
    doc = run_suite(cfg, workdir=str(tmp_path))
    schema.check(doc)
    assert doc["clock"] == "cuda_events" and doc["matmul_peak_tflops"] > 1
    assert all(r["memory_kind"] == "cuda_max_allocated+graph_pool" for r in doc["records"])


def test_backend_choice_and_skip_reasons() -> None:
    cpu = torch.device("cpu")
    run, skipped = choose_backends(None, cpu)
    reasons = {s["backend"]: s["reason"] for s in skipped}
    assert run[0] == "diffusers" and "torch" in run
    assert "torch-compile" in reasons and "--backends" in reasons["torch-compile"]  # only when asked for
    assert "CUDA" in reasons["tensorrt"]
    # Without CUDA graphs the torch row would repeat itself on a CPU: only when asked for.
    assert "torch-no-graphs" in reasons and "--backends" in reasons["torch-no-graphs"]
    run, skipped = choose_backends(("torch-compile", "torch-no-graphs", "warp-drive"), cpu)
    assert run == ["torch-compile", "torch-no-graphs"] and skipped[0]["backend"] == "warp-drive"


def test_a_cuda_run_needs_a_warm_up_call() -> None:
    from cascade_trt.benchmarks.suite import SuiteConfig

    # The first call at a shape captures graphs (and compiles): timing it would report capture, not a call.
    with pytest.raises(
        ConfigError, match="--warmup 0 on CUDA would time graph capture .*: use --warmup 1 or more"
    ):
        SuiteConfig(preset="tiny", warmup=0, device="cuda:0")
    assert SuiteConfig(preset="tiny", warmup=0, device="cpu").warmup == 0


def test_precision_flag_takes_one_or_per_stage() -> None:
    assert parse_precision("auto") == "auto"
    assert parse_precision("stage_c=bf16, stage_b=fp16") == {"stage_c": "bf16", "stage_b": "fp16"}
    with pytest.raises(
        ConfigError, match=r"--precision: 'fp16' is not STAGE=PRECISION \(e\.g\. stage_c=bf16\)"
    ):
        parse_precision("stage_c=bf16,fp16")


def test_a_backend_with_wrong_images_is_dropped_and_recorded() -> None:
    from cascade_trt.random_weights import random_components

    parts = random_components(TINY, stages=("text_encoder", "stage_c", "stage_b", "stage_a"))

    class TwoChannels(DiffusersDriver):  # a backend that answers fast and wrong
        def stage_a(self, latents: torch.Tensor) -> torch.Tensor:
            return super().stage_a(latents)[:, :2]

    drivers = {"diffusers": DiffusersDriver(parts), "broken": TwoChannels(parts)}
    work = Workload(prompts=("a cat",), height=256, width=256, steps_c=1, steps_b=1)
    result = measure(drivers, work, Clock(), PeakMemory("cpu"), warmup=0, repeats=2)
    assert set(result.samples) == {"diffusers"} and len(result.samples["diffusers"]["end_to_end"]) == 2
    assert [f["backend"] for f in result.failed] == ["broken"]
    assert "images have shape (1, 2, 256, 256)" in result.failed[0]["reason"]


def test_checkpoints_instead_of_random_weights(tiny_prior: Path, tiny_decoder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [
        "bench",
        "--prior",
        str(tiny_prior),
        "--decoder",
        str(tiny_decoder),
        "--backends",
        "diffusers",
        "torch",
    ]
    argv += ["--sizes", "256", "--steps", "1", "1", "--warmup", "0", "--repeats", "1", "--device", "cpu"]
    assert main([*argv, "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert schema.problems(doc) == []
    assert doc["config"]["checkpoints"] == "pretrained" and doc["config"]["prior"] is True
    assert {r["backend"] for r in doc["records"]} == {"diffusers", "torch"}
    text = (out / "results.json").read_text()
    assert str(tiny_prior) not in text and str(tmp_path) not in text  # names only, never machine paths
    assert "checkpoints" in (out / "results.md").read_text().splitlines()[0]


def test_baseline_in_its_own_precision_beside_the_runtime(tmp_path: Path) -> None:
    """`--baseline-precision fp32` against a bf16 runtime: diffusers gets its own fp32 copies, in one run."""
    from cascade_trt.benchmarks.suite import SuiteConfig, run_suite

    cfg = SuiteConfig(
        preset="tiny",
        backends=("diffusers", "torch"),
        sizes=((128, 128),),
        steps_c=1,
        steps_b=1,
        warmup=0,
        repeats=1,
        precision="bf16",
        baseline_precision="fp32",
    )
    doc = run_suite(cfg, workdir=str(tmp_path))
    assert schema.problems(doc) == []
    precision = {r["backend"]: set(r["precision"].values()) for r in doc["records"]}
    assert precision == {"diffusers": {"fp32"}, "torch": {"bf16"}}
    assert doc["config"]["baseline_precision"] == "fp32"
    assert "`diffusers` | fp32" in report.markdown(doc) and "`torch` | bf16" in report.markdown(doc)


def test_a_run_cut_short_keeps_the_shapes_it_finished(tmp_path: Path) -> None:
    """Interrupted after its first of two shapes (as a timeout or Ctrl-C would), the run has left that shape's
    results on disk, marked incomplete."""
    from cascade_trt.benchmarks.suite import SuiteConfig, run_suite

    def write_then_interrupt(partial: dict) -> None:
        report.write_all(partial, tmp_path, chart=False)
        raise KeyboardInterrupt

    cfg = SuiteConfig(
        preset="tiny",
        backends=("torch",),
        sizes=((128, 128), (256, 256)),
        steps_c=1,
        steps_b=1,
        warmup=0,
        repeats=1,
        precision="fp32",
    )
    with pytest.raises(KeyboardInterrupt):
        run_suite(cfg, workdir=str(tmp_path), on_shape=write_then_interrupt)
    kept = json.loads((tmp_path / "results.json").read_text())
    assert schema.problems(kept) == []
    assert [(r["height"], r["batch"]) for r in kept["records"]] == [(128, 1)]
    assert kept["incomplete"] == "1 of 2 shapes measured"
    assert "**Incomplete**" in (tmp_path / "results.md").read_text()
    assert not (tmp_path / "results.png").exists()


def test_without_matplotlib_the_bench_writes_json_and_markdown_and_says_how_to_get_the_chart(
    tmp_path: Path,
) -> None:
    """`pip install cascade-trt` without the bench extra: no traceback after the run, tables written."""
    import subprocess
    import sys

    argv = ["bench", "--preset", "tiny", "--backends", "torch", "--sizes", "128", "--steps", "1", "1"]
    argv += [
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--out",
        str(tmp_path),
    ]
    code = (
        "import sys; sys.modules['matplotlib'] = None  # `import matplotlib` fails as if not installed\n"
        "from cascade_trt.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "pip install 'cascade-trt[bench]'" in run.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "results.md"}
    md = (tmp_path / "results.md").read_text()
    assert "`torch`" in md and "results.png" not in md


def test_negative_loop_overhead_on_a_cpu_is_explained_not_shown(doc: dict) -> None:
    cpu = copy.deepcopy(doc)
    record = next(r for r in cpu["records"] if "loop_overhead" in r)
    record["loop_overhead"]["stage_c"] = -0.05
    text = report.markdown(cpu)
    assert "| n/r |" in text and report.CPU_NEGATIVE_OVERHEAD in text
    gpu = copy.deepcopy(cpu)
    # On CUDA a captured step can beat the eager bare forward: there the negative figure is a result.
    gpu["environment"].update(device_type="cuda", driver="580.159.04")
    text = report.markdown(gpu)
    assert "-5.0%" in text and report.CPU_NEGATIVE_OVERHEAD not in text


def test_targets_read_the_1024_records(doc: dict) -> None:
    from cascade_trt.benchmarks import targets

    assert targets.verdicts(doc) == []  # the tiny run is at 256 px: no target applies
    records = [{**copy.deepcopy(r), "height": 1024, "width": 1024} for r in doc["records"]]
    torch_record = next(r for r in records if r["backend"] == "torch")
    torch_record["speedup_vs_baseline"]["end_to_end"] = 3.5
    torch_record["loop_overhead"] = {"stage_c": 0.01, "stage_b": 0.03}
    torch_record["floor_fraction"] = {"end_to_end": 0.5}
    found = targets.verdicts({**doc, "records": records})
    assert "diffusers" not in {v.backend for v in found}  # the baseline is what the others are measured by
    speed, overhead, floor = (v for v in found if v.backend == "torch")
    assert speed.measured == "3.50×" and speed.met is True
    assert overhead.measured == "C +1.0%, B +3.0%" and overhead.met is False
    assert floor.measured == "2.00× the floor" and floor.met is False
    assert "| end to end ≥ 3× diffusers eager | `torch` | 1 | 3.50× | met |" in targets.table(
        {**doc, "records": records}
    )
