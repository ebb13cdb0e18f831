"""Time and peak memory of exporting the full-size Stage C and Stage B to ONNX (random weights, fp16).

Each stage runs in a fresh subprocess, so its peak resident memory (getrusage `ru_maxrss`) is that stage's
alone: build the architecture directly in the export dtype (no fp32 copy), trace, stream the weights to
external data, hash the files for the manifest. Prints one JSON record per stage and a markdown table.

    python benchmarks/export_memory.py --out /tmp/cascade-export            # full Stage C and Stage B, fp16
    python benchmarks/export_memory.py --preset lite --stages stage_c --keep

The ONNX files are deleted afterwards unless --keep (they are gigabytes).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run_stage(preset: str, stage: str, precision: str, out_dir: Path) -> dict[str, Any]:
    """Build one stage with random weights and export it; runs inside the worker subprocess."""
    import torch

    from cascade_trt.artifacts import onnx_path
    from cascade_trt.configs import get_preset
    from cascade_trt.export import export_stage
    from cascade_trt.modules import stage_module
    from cascade_trt.precision import DTYPES
    from cascade_trt.random_weights import random_components
    from cascade_trt.stages import stage_specs

    config = get_preset(preset)
    dtype = DTYPES[precision]
    start = time.monotonic()
    components = random_components(config, stages=(stage,), dtypes={stage: dtype})
    module = stage_module(components, stage)
    built = time.monotonic()
    rss_built = _peak_rss_bytes()
    params = sum(p.numel() for p in module.parameters())
    path = export_stage(module, stage_specs(config)[stage], onnx_path(out_dir, stage), dtype=dtype)
    done = time.monotonic()
    data = path.with_name(path.name + ".data")
    return {
        "preset": preset,
        "stage": stage,
        "precision": precision,
        "params": params,
        "weights_gb": round(params * torch.finfo(dtype).bits / 8 / 1e9, 2),
        "build_s": round(built - start, 1),
        "export_s": round(done - built, 1),
        "total_s": round(done - start, 1),
        "peak_rss_after_build_gb": round(rss_built / 1e9, 2),
        "peak_rss_gb": round(_peak_rss_bytes() / 1e9, 2),
        "peak_rss_gib": round(_peak_rss_bytes() / 2**30, 2),
        # CPU seconds (user + system): on a shared machine, wall time depends on the others' load; this does not.
        "cpu_s": round(_cpu_seconds(), 1),
        "onnx_bytes": path.stat().st_size,
        "data_bytes": data.stat().st_size if data.exists() else 0,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_bytes() -> int:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024


def environment() -> dict[str, Any]:
    import os

    from cascade_trt.artifacts import tool_versions

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "versions": tool_versions("torch", "onnx", "onnxscript", "onnx-ir", "diffusers", "transformers"),
        "git_commit": commit.strip(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="full", help="architecture: full (default), lite or tiny")
    p.add_argument("--stages", nargs="+", default=["stage_c", "stage_b"])
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--out", help="directory for the ONNX files (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the ONNX files")
    p.add_argument("--json", help="also write the records to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="cascade-export-"))
    if args.worker:  # one stage, in this fresh process
        record = run_stage(args.preset, args.stages[0], args.precision, out)
        print("RESULT " + json.dumps(record), flush=True)
        return 0
    records = []
    for stage in args.stages:
        cmd = [sys.executable, __file__, "--worker", "--preset", args.preset, "--stages", stage]
        cmd += ["--precision", args.precision, "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{stage}: worker failed with status {proc.returncode}")
        records.append(json.loads(lines[-1].removeprefix("RESULT ")))
        print(json.dumps(records[-1]), flush=True)
    if not args.keep:
        for stage in args.stages:
            for suffix in (".onnx", ".onnx.data", ".json"):
                (out / f"{stage}{suffix}").unlink(missing_ok=True)
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    report = {"environment": environment(), "records": records}
    if args.json:
        from cascade_trt.artifacts import write_text

        write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["environment"]))
    print(markdown(records))
    return 0


def markdown(records: list[dict[str, Any]]) -> str:
    rows = [
        "| preset | stage | precision | params | build s | export s | total s | CPU s | peak RSS GB | files GB |"
    ]
    rows.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        files = (r["onnx_bytes"] + r["data_bytes"]) / 1e9
        rows.append(
            f"| {r['preset']} | {r['stage']} | {r['precision']} | {r['params'] / 1e9:.3f}B | {r['build_s']} "
            f"| {r['export_s']} | {r['total_s']} | {r.get('cpu_s', '')} | {r['peak_rss_gb']} | {files:.2f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
