"""Reports people read: the JSON document, a markdown table, a PNG of the per-stage breakdown, comparisons.

Times in the markdown are milliseconds (`fmt_ms`): median [p10-p90]. Speed-ups are the baseline's median over
the backend's median at the same shape in the same run (so a machine's load affects both sides alike). The
chart needs matplotlib (the `bench` extra); without it the JSON and markdown are written all the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cascade_trt.artifacts import atomic_path, write_text
from cascade_trt.benchmarks import targets
from cascade_trt.benchmarks.suite import METRICS

LABELS = {
    "text_encoder": "text encoder",
    "stage_c_loop": "Stage C loop",
    "stage_c_step": "C / step",
    "stage_b_loop": "Stage B loop",
    "stage_b_step": "B / step",
    "stage_a": "Stage A",
    "end_to_end": "end to end",
}
MEMORY_KINDS = {
    "rss_peak": "peak resident set of the process during a call (every backend's models are resident), "
    "and in parentheses the MiB the call added",
    "rss_peak_lifetime": "lifetime peak resident set of the process (this OS cannot reset it)",
    "cuda_max_allocated+graph_pool": "torch.cuda.max_memory_allocated during a call plus the backend's "
    "CUDA-graph pool (where captured steps keep their activations; PyTorch's allocator only), "
    "and in parentheses the MiB the call added, pool included",
}
BREAKDOWN = ("text_encoder", "stage_c_loop", "stage_b_loop", "stage_a")
CHART_INSTALL = "pip install 'cascade-trt[bench]'"
COLORS = ("#8c8c8c", "#3b75af", "#ef8636", "#519e3e")


def write_json(doc: dict[str, Any], path: str | Path) -> Path:
    """Strict JSON (NaN or infinity raise instead of writing non-JSON), atomically."""
    return write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def can_plot() -> bool:
    """Whether matplotlib is importable (it comes with the `bench` extra: `CHART_INSTALL`)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_all(
    doc: dict[str, Any], out: str | Path, stem: str = "results", *, chart: bool = True
) -> dict[str, Path]:
    """results.json, results.md and (with `chart`, where matplotlib is installed) results.png in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{stem}.png" if chart and can_plot() else None
    paths = {"json": write_json(doc, out / f"{stem}.json")}
    write_text(out / f"{stem}.md", markdown(doc, chart=png.name if png else None))
    paths["md"] = out / f"{stem}.md"
    if png is not None:
        paths["png"] = plot(doc, png)
    return paths


def fmt_ms(seconds: float) -> str:
    """Milliseconds with about three significant digits, never in exponent notation."""
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _ms(stats: dict[str, float], spread: bool = True) -> str:
    med = fmt_ms(stats["median"])
    return f"{med} [{fmt_ms(stats['p10'])}–{fmt_ms(stats['p90'])}]" if spread else med


def _precision(p: dict[str, str]) -> str:
    values = set(p.values())
    if len(values) == 1:
        return values.pop()
    return ", ".join(f"{k.removeprefix('stage_').replace('text_encoder', 'te')}:{v}" for k, v in p.items())


def architecture(doc: dict[str, Any]) -> str:
    """`tiny preset`, or the checkpoints' names for a checkpoint run."""
    cfg = doc["config"]
    if cfg.get("checkpoints") == "pretrained":
        return f"{cfg.get('architecture', 'checkpoints')} checkpoints"
    return f"{cfg['preset']} preset"


def header(doc: dict[str, Any]) -> list[str]:
    env, cfg = doc["environment"], doc["config"]
    v = env["versions"]
    versions = ", ".join(
        f"{k} {v[k]}" for k in ("torch", "diffusers", "transformers", "onnxruntime") if k in v
    )
    machine = f"{env['device']}" + (
        f", driver {env['driver']}, CUDA {v.get('torch_cuda')}"
        if env["device_type"] == "cuda"
        else f", {env['cpu_count']} cores, {env['memory_total_bytes'] / 2**30:.0f} GiB"
    )
    if env.get("load_average_start") and env.get("load_average_end"):
        machine += (
            f"; load average (1 min) {env['load_average_start'][0]:.2f} at the start, "
            f"{env['load_average_end'][0]:.2f} at the end"
        )
    dirty = " (with uncommitted changes)" if env["git"].get("dirty") else ""
    clock = "CUDA events" if doc["clock"] == "cuda_events" else "monotonic clock (perf_counter)"
    lines = [
        f"# Stable Cascade latency: {architecture(doc)}, {env['device_type'].upper()}",
        "",
        f"- **Machine**: {machine}; {env['os']} {env['machine']}, Python {env['python']}",
        f"- **Libraries**: {versions}; cascade_trt commit `{env['git']['commit'][:12]}`{dirty}",
        f"- **Date**: {env['date_utc']}; weights: {cfg['checkpoints']}",
        f"- **Sampling**: Stage C {cfg['steps_c']} steps (guidance {cfg['guidance_c']}), "
        f"Stage B {cfg['steps_b']} steps (guidance {cfg['guidance_b']})",
        f"- **Timing**: {clock}; {cfg['warmup']} warm-up call(s) excluded, {cfg['repeats']} measured calls per "
        "backend, interleaved across backends. Cells: median [p10–p90] in ms.",
    ]
    kinds = {r["memory_kind"] for r in doc["records"]}
    if kinds:
        lines.append(f"- **Memory**: {', '.join(MEMORY_KINDS.get(k, k) for k in sorted(kinds))}")
    if doc.get("matmul_peak_tflops"):
        lines.append(f"- **Measured bf16 matrix peak**: {doc['matmul_peak_tflops']:.0f} TFLOP/s")
    if doc.get("incomplete"):
        lines.append(
            f"- **Incomplete**: the run stopped early, {doc['incomplete']}; these are the shapes it finished"
        )
    return lines


def markdown(doc: dict[str, Any], chart: str | None = None) -> str:
    lines = header(doc)
    lines += ["", *summary(doc)]
    lines += _targets(doc)
    cpu = doc["environment"]["device_type"] == "cpu"
    for shape, records in _by_shape(doc["records"]).items():
        h, w, b = shape
        lines += ["", f"## {h}×{w}, batch {b}", "", *_latency_table(records), ""]
        if any("speedup_vs_baseline" in r for r in records):
            lines += [f"Speed-up over {doc['baseline']} (its median / this median, same run):", ""]
            lines += _ratio_table(records, "speedup_vs_baseline", "×")
        if any("loop_overhead" in r for r in records):
            lines += ["", "Loop overhead per step (1 − bare model forward / loop step, medians in ms):", ""]
            lines += _overhead_table(records, cpu=cpu)
            if cpu and any(v < 0 for r in records for v in r.get("loop_overhead", {}).values()):
                lines += ["", CPU_NEGATIVE_OVERHEAD]
        if any("floor_fraction" in r for r in records):
            lines += ["", "Fraction of the compute floor (floor time at the measured peak / median):", ""]
            lines += _ratio_table(records, "floor_fraction", "")
    if doc["skipped"]:
        lines += ["", "## Skipped", ""]
        for s in doc["skipped"]:
            where = f" at {s['height']}×{s['width']} batch {s['batch']}" if "height" in s else ""
            lines.append(f"- `{s['backend']}`{where}: {s['reason']}")
    if chart:
        lines += ["", f"![per-stage breakdown]({chart})"]
    return "\n".join(lines) + "\n"


def summary(doc: dict[str, Any]) -> list[str]:
    """The headline: end-to-end median and speed-up over the baseline, one row per backend, one column per shape."""
    groups = _by_shape(doc["records"])
    backends = list(dict.fromkeys(r["backend"] for r in doc["records"]))
    if not groups:
        return ["No backend produced a result."]
    cols = ["end to end, ms (speed-up)", *(f"{h}×{w} b{b}" for h, w, b in groups)]
    rows = [_row(cols), _row(["---"] * len(cols))]
    for name in backends:
        cells = [f"`{name}`"]
        for records in groups.values():
            r = next((x for x in records if x["backend"] == name), None)
            if r is None:
                cells.append("–")
                continue
            ratio = r.get("speedup_vs_baseline", {}).get("end_to_end")
            cells.append(
                fmt_ms(r["timings_s"]["end_to_end"]["median"]) + (f" ({ratio:.2f}×)" if ratio else "")
            )
        rows.append(_row(cells))
    return rows


def _by_shape(records: list[dict[str, Any]]) -> dict[tuple[int, int, int], list[dict[str, Any]]]:
    out: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault((r["height"], r["width"], r["batch"]), []).append(r)
    return out


def _latency_table(records: list[dict[str, Any]]) -> list[str]:
    cols = ["backend", "precision", *(LABELS[m] for m in METRICS), "images/s", "peak memory (+call)"]
    rows = [_row(cols), _row(["---"] * len(cols))]
    for r in records:
        cells = [f"`{r['backend']}`", _precision(r["precision"])]
        cells += [_ms(r["timings_s"][m], spread=not m.endswith("_step")) for m in METRICS]
        memory = f"{r['peak_memory_bytes'] / 2**20:.0f} MiB (+{r['call_memory_bytes'] / 2**20:.0f})"
        cells += [f"{r['images_per_s']:.3g}", memory]
        rows.append(_row(cells))
    return rows


def _ratio_table(records: list[dict[str, Any]], key: str, suffix: str) -> list[str]:
    metrics = [m for m in METRICS if not m.endswith("_step") and any(m in r.get(key, {}) for r in records)]
    rows = [_row(["backend", *(LABELS[m] for m in metrics)]), _row(["---"] * (len(metrics) + 1))]
    for r in records:
        if key in r:
            rows.append(_row([f"`{r['backend']}`", *(f"{r[key][m]:.2f}{suffix}" for m in metrics)]))
    return rows


def _targets(doc: dict[str, Any]) -> list[str]:
    rows = targets.table(doc)
    if not rows:
        return []
    lines = ["", f"## Targets at {targets.SIDE}×{targets.SIDE}", ""]
    if doc["environment"]["device_type"] != "cuda":
        lines += ["The targets are GPU figures; on this CPU run the rows only show the arithmetic.", ""]
    return lines + rows


# Shown under a CPU run's overhead table when a step measured faster than its own bare forward.
CPU_NEGATIVE_OVERHEAD = (
    "n/r: not resolved. On a CPU the loop step runs the same kernels as the bare forward, with no graph "
    "to replay, so a step measured faster than its own forward is noise: the overhead is below what these "
    "medians resolve."
)


def _overhead_table(records: list[dict[str, Any]], *, cpu: bool) -> list[str]:
    cols = ["backend"]
    for stage in ("C", "B"):
        cols += [f"{stage} step", f"{stage} forward", f"{stage} overhead"]
    rows = [_row(cols), _row(["---"] * len(cols))]
    for r in records:
        if "loop_overhead" not in r:
            continue
        cells = [f"`{r['backend']}`"]
        for stage in ("stage_c", "stage_b"):
            cells += [
                fmt_ms(r["timings_s"][f"{stage}_step"]["median"]),
                fmt_ms(r["forward_s"][stage]["median"]),
                _overhead(r["loop_overhead"][stage], cpu=cpu),
            ]
        rows.append(_row(cells))
    return rows


def _overhead(value: float, *, cpu: bool) -> str:
    # On CUDA a captured step can beat the eager bare forward, so a negative value is a result there.
    return "n/r" if cpu and value < 0 else f"{value * 100:.1f}%"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def plot(doc: dict[str, Any], path: str | Path) -> Path:
    """Stacked horizontal bars: per-stage median of each backend, one panel per (size, batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _by_shape(doc["records"])
    # Panel heights follow their number of bars, so every bar has the same thickness.
    heights = [1.0 + 0.4 * len(g) for g in groups.values()] or [1.5]
    fig, axes = plt.subplots(
        len(heights),
        1,
        figsize=(9, sum(heights) + 0.6),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for ax, ((h, w, b), records) in zip(axes[:, 0], groups.items(), strict=False):
        names = [r["backend"] for r in records]
        left = [0.0] * len(records)
        for metric, color in zip(BREAKDOWN, COLORS, strict=True):
            widths = [r["timings_s"][metric]["median"] * 1e3 for r in records]
            ax.barh(names, widths, left=left, color=color, label=LABELS[metric])
            left = [a + c for a, c in zip(left, widths, strict=True)]
        for y, r in enumerate(records):
            note = f" end to end {fmt_ms(r['timings_s']['end_to_end']['median'])} ms"
            if "speedup_vs_baseline" in r and r["backend"] != doc["baseline"]:
                note += f", speed-up {r['speedup_vs_baseline']['end_to_end']:.2f}×"
            ax.text(left[y], y, note, va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{h}×{w}, batch {b}", fontsize=10)
        ax.set_xlim(0, max(left) * 1.6 if left else 1)
    axes[-1, 0].set_xlabel(
        "median time of each stage (ms); stage medians need not add up to the end-to-end one"
    )
    handles, labels = axes[0, 0].get_legend_handles_labels()
    env = doc["environment"]
    fig.suptitle(f"{architecture(doc)} on {env['device']} ({env['device_type']})", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.legend(
        handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.955), ncols=4, fontsize=8, frameon=False
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def compare(a: dict[str, Any], b: dict[str, Any], *, names: tuple[str, str] = ("A", "B")) -> str:
    """Markdown side by side of two result documents: medians of each matching record and B / A."""
    lines = [f"# Comparison: {names[0]} vs {names[1]}", ""]
    for label, doc in zip(names, (a, b), strict=True):
        env = doc["environment"]
        lines.append(
            f"- **{label}**: {env['device']} ({env['device_type']}), commit `{env['git']['commit'][:12]}`, "
            f"{env['date_utc']}, {architecture(doc)}"
        )
    lines += [
        "",
        "Times are medians in ms; `B/A` < 1 means B is faster. Different runs: machine load differs.",
        "",
    ]
    index_b = {_key(r): r for r in b["records"]}
    cols = [
        "backend",
        "size",
        "batch",
        *(f"{LABELS[m]} A → B (B/A)" for m in METRICS if not m.endswith("_step")),
    ]
    lines += [_row(cols), _row(["---"] * len(cols))]
    unmatched = []
    for r in a["records"]:
        other = index_b.pop(_key(r), None)
        if other is None:
            unmatched.append(f"only in {names[0]}: {_describe(r)}")
            continue
        cells = [f"`{r['backend']}`", f"{r['height']}×{r['width']}", str(r["batch"])]
        for m in METRICS:
            if m.endswith("_step"):
                continue
            x, y = r["timings_s"][m]["median"], other["timings_s"][m]["median"]
            cells.append(f"{fmt_ms(x)} → {fmt_ms(y)} ({y / x:.2f})")
        lines.append(_row(cells))
    unmatched += [f"only in {names[1]}: {_describe(r)}" for r in index_b.values()]
    if unmatched:
        lines += ["", *(f"- {u}" for u in unmatched)]
    return "\n".join(lines) + "\n"


def _key(r: dict[str, Any]) -> tuple:
    return (r["backend"], r["height"], r["width"], r["batch"], r["steps_c"], r["steps_b"])


def _describe(r: dict[str, Any]) -> str:
    return f"`{r['backend']}` {r['height']}×{r['width']} batch {r['batch']} ({r['steps_c']}+{r['steps_b']} steps)"
