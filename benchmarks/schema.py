"""The results document's schema, checked: fields present, every number a finite number, ratios consistent.

`problems(doc)` lists everything wrong (empty when the document is valid); `check(doc)` raises on the first
listing. The checks recompute what a reader would trust blindly: the summary statistics from the raw
samples, images/s from the batch and the end-to-end median, and every speed-up from the baseline record of
the same shape in the same document.
"""

from __future__ import annotations

import math
from typing import Any

from cascade_trt.benchmarks.suite import METRICS, SCHEMA
from cascade_trt.benchmarks.timing import summarize
from cascade_trt.errors import CascadeError

REL = 1e-9
STATS = ("median", "p10", "p90", "min", "mean", "n")
RECORD_FIELDS = {
    "backend": str,
    "height": int,
    "width": int,
    "batch": int,
    "steps_c": int,
    "steps_b": int,
    "guidance_c": (int, float),
    "guidance_b": (int, float),
    "precision": dict,
    "timings_s": dict,
    "samples_s": dict,
    "images_per_s": (int, float),
    "peak_memory_bytes": int,
    "call_memory_bytes": int,
    "memory_kind": str,
}
TOP_FIELDS = {
    "schema": str,
    "environment": dict,
    "config": dict,
    "clock": str,
    "baseline": str,
    "records": list,
    "skipped": list,
}


class SchemaError(CascadeError, ValueError):
    """A results document that does not follow the schema."""


def check(doc: dict[str, Any]) -> None:
    found = problems(doc)
    if found:
        raise SchemaError(f"{len(found)} problem(s) in the results document:\n  " + "\n  ".join(found))


def problems(doc: dict[str, Any]) -> list[str]:
    out = _fields(doc, TOP_FIELDS, "document")
    if out:
        return out
    if doc["schema"] != SCHEMA:
        out.append(f"schema is {doc['schema']!r}, expected {SCHEMA!r}")
    out += _non_finite(doc, "document")
    out += _environment(doc["environment"])
    if doc["environment"].get("device_type") == "cuda" and not _is_number(doc.get("matmul_peak_tflops")):
        out.append("a CUDA run must record matmul_peak_tflops")
    for s in doc["skipped"]:
        if not (isinstance(s, dict) and isinstance(s.get("backend"), str) and s.get("reason")):
            out.append(f"skipped entry without backend and reason: {s!r}")
    for i, record in enumerate(doc["records"]):
        out += _record(record, f"records[{i}]")
    out += _ratios(doc["records"], doc["baseline"])
    return out


def _fields(obj: dict[str, Any], fields: dict[str, Any], where: str) -> list[str]:
    out = []
    for name, kind in fields.items():
        if name not in obj:
            out.append(f"{where}: missing {name!r}")
        elif not isinstance(obj[name], kind) or isinstance(obj[name], bool):
            out.append(f"{where}.{name}: {type(obj[name]).__name__}, expected {kind}")
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _non_finite(obj: Any, where: str) -> list[str]:
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [f"{where}: non-finite number {obj}"]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _non_finite(v, f"{where}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _non_finite(v, f"{where}[{i}]")]
    return []


def _environment(env: dict[str, Any]) -> list[str]:
    out = _fields(
        env, {"device": str, "device_type": str, "versions": dict, "git": dict, "date_utc": str}, "env"
    )
    if not out and not isinstance(env["git"].get("commit"), str):
        out.append("environment.git.commit missing")
    if not out and "torch" not in env["versions"]:
        out.append("environment.versions lacks torch")
    return out


def _record(r: dict[str, Any], where: str) -> list[str]:
    out = _fields(r, RECORD_FIELDS, where)
    if out:
        return out
    for metric in METRICS:
        stats, samples = r["timings_s"].get(metric), r["samples_s"].get(metric)
        if not isinstance(stats, dict) or not isinstance(samples, list) or not samples:
            out.append(f"{where}: no timings or samples for {metric}")
            continue
        if not all(_is_number(s) and s > 0 for s in samples):
            out.append(f"{where}.samples_s.{metric}: every sample must be a positive finite number")
            continue
        expected = summarize(samples).to_json()
        for key in STATS:
            if not _close(stats.get(key), expected[key]):
                out.append(
                    f"{where}.timings_s.{metric}.{key} = {stats.get(key)}, samples give {expected[key]}"
                )
    if out:
        return out
    e2e = r["timings_s"]["end_to_end"]["median"]
    if not _close(r["images_per_s"], r["batch"] / e2e):
        out.append(
            f"{where}.images_per_s = {r['images_per_s']}, batch / end-to-end median = {r['batch'] / e2e}"
        )
    if r["peak_memory_bytes"] <= 0:
        out.append(f"{where}.peak_memory_bytes must be positive")
    if not 0 <= r["call_memory_bytes"] <= r["peak_memory_bytes"]:
        out.append(f"{where}.call_memory_bytes must lie between 0 and the peak")
    for loop, step, steps in (
        ("stage_c_loop", "stage_c_step", "steps_c"),
        ("stage_b_loop", "stage_b_step", "steps_b"),
    ):
        for a, b in zip(r["samples_s"][loop], r["samples_s"][step], strict=False):
            if not _close(a / r[steps], b):
                out.append(f"{where}: {step} sample {b} is not {loop} / {steps} = {a / r[steps]}")
                break
    if "forward_s" in r or "loop_overhead" in r:
        out += _forwards(r, where)
    if "floor_s" in r or "floor_fraction" in r:
        out += _floor(r, where)
    return out


def _floor(r: dict[str, Any], where: str) -> list[str]:
    """floor_fraction = floor seconds / measured median, for every metric with a floor."""
    floor, fraction = r.get("floor_s"), r.get("floor_fraction")
    if not (isinstance(floor, dict) and isinstance(fraction, dict)) or set(floor) != set(fraction):
        return [f"{where}: floor_s and floor_fraction go together, with the same metrics"]
    out = []
    for metric, seconds in floor.items():
        if metric not in r["timings_s"] or not _is_number(seconds) or seconds <= 0:
            out.append(f"{where}.floor_s.{metric}: a positive time of a measured metric expected")
        elif not _close(fraction[metric], seconds / r["timings_s"][metric]["median"]):
            out.append(f"{where}.floor_fraction.{metric} is not floor / median")
    return out


def _forwards(r: dict[str, Any], where: str) -> list[str]:
    """Bare-forward statistics match their samples; overhead = 1 - forward median / step median."""
    out = []
    samples, stats, overhead = r.get("forward_samples_s"), r.get("forward_s"), r.get("loop_overhead")
    if not (isinstance(samples, dict) and isinstance(stats, dict) and isinstance(overhead, dict)):
        return [f"{where}: forward_s, forward_samples_s and loop_overhead go together"]
    for stage, values in samples.items():
        if not values or not all(_is_number(v) and v > 0 for v in values):
            out.append(f"{where}.forward_samples_s.{stage}: positive finite numbers expected")
            continue
        expected = summarize(values).to_json()
        if any(not _close(stats.get(stage, {}).get(k), expected[k]) for k in STATS):
            out.append(f"{where}.forward_s.{stage} does not summarise its samples")
            continue
        want = 1.0 - expected["median"] / r["timings_s"][f"{stage}_step"]["median"]
        if not _close(overhead.get(stage), want):
            out.append(f"{where}.loop_overhead.{stage} = {overhead.get(stage)}, 1 - forward / step = {want}")
    return out


def _ratios(records: list[dict[str, Any]], baseline: str) -> list[str]:
    """Every record at a shape with a baseline record carries speed-ups equal to baseline / its own median."""
    out = []
    bases = {_shape(r): r for r in records if r.get("backend") == baseline}
    for r in records:
        base = bases.get(_shape(r))
        if base is None:
            continue
        ratios = r.get("speedup_vs_baseline")
        if not isinstance(ratios, dict):
            out.append(
                f"{r['backend']} {_shape(r)}: baseline measured at this shape but no speedup_vs_baseline"
            )
            continue
        for metric in METRICS:
            expected = base["timings_s"][metric]["median"] / r["timings_s"][metric]["median"]
            if not _close(ratios.get(metric), expected):
                out.append(
                    f"{r['backend']} {_shape(r)} speedup {metric} = {ratios.get(metric)}, "
                    f"baseline median / median = {expected}"
                )
    return out


def _shape(r: dict[str, Any]) -> tuple:
    return (r.get("height"), r.get("width"), r.get("batch"), r.get("steps_c"), r.get("steps_b"))


def _close(value: Any, expected: float) -> bool:
    return _is_number(value) and math.isclose(value, expected, rel_tol=REL, abs_tol=0.0)
