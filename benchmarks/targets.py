"""The GPU targets cascade_trt is built to meet, and how a results document measures against them.

At 1024x1024, with diffusers eager as the baseline (bf16 Stage C and fp16 elsewhere, as diffusers documents):

* end to end at least 3x faster than diffusers (`speedup_vs_baseline`, same run, same shape);
* loop overhead under 2 % of a step, in both loops (`loop_overhead`: 1 - bare model forward / loop step);
* end to end within 1.6x of the compute floor (`floor_fraction` at least 1 / 1.6: the FLOPs at the measured
  bf16 matrix peak, see `costs`).

Each verdict names the record it read, so a table of them can sit in any report. A CPU run has no floor (no
matrix peak is measured) and its loop overhead is noise-level (`report`), so there the verdicts show the
arithmetic on CPU figures, not results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SIDE = 1024
SPEEDUP = 3.0
OVERHEAD = 0.02
FLOOR_RATIO = 1.6


@dataclass(frozen=True)
class Verdict:
    target: str
    backend: str
    batch: int
    measured: str  # the value, formatted, or why there is none
    met: bool | None  # None: not measured in this document


def verdicts(doc: dict[str, Any]) -> list[Verdict]:
    """One verdict per target per runtime record at 1024x1024, in record order."""
    out = []
    for r in doc["records"]:
        if r["backend"] == doc["baseline"] or (r["height"], r["width"]) != (SIDE, SIDE):
            continue
        out += [_speedup(r), _overhead(r), _floor(r)]
    return out


def _speedup(r: dict[str, Any]) -> Verdict:
    target = f"end to end ≥ {SPEEDUP:g}× diffusers eager"
    ratio = r.get("speedup_vs_baseline", {}).get("end_to_end")
    if ratio is None:
        return Verdict(target, r["backend"], r["batch"], "no diffusers record at this shape", None)
    return Verdict(target, r["backend"], r["batch"], f"{ratio:.2f}×", ratio >= SPEEDUP)


def _overhead(r: dict[str, Any]) -> Verdict:
    target = f"loop overhead < {OVERHEAD:.0%} of a step"
    overhead = r.get("loop_overhead")
    if not overhead:
        return Verdict(target, r["backend"], r["batch"], "no bare-forward timing", None)
    measured = ", ".join(f"{s.removeprefix('stage_').upper()} {v:+.1%}" for s, v in overhead.items())
    return Verdict(target, r["backend"], r["batch"], measured, max(overhead.values()) < OVERHEAD)


def _floor(r: dict[str, Any]) -> Verdict:
    target = f"end to end within {FLOOR_RATIO:g}× the compute floor"
    fraction = r.get("floor_fraction", {}).get("end_to_end")
    if not fraction:
        return Verdict(target, r["backend"], r["batch"], "no floor (GPU runs of full or lite only)", None)
    return Verdict(
        target, r["backend"], r["batch"], f"{1 / fraction:.2f}× the floor", fraction >= 1 / FLOOR_RATIO
    )


def table(doc: dict[str, Any]) -> list[str]:
    """Markdown rows: target, backend, batch, measured value, verdict. Empty without a 1024x1024 record."""
    found = verdicts(doc)
    if not found:
        return []
    rows = ["| target | backend | batch | measured | verdict |", "|---|---|---|---|---|"]
    for v in found:
        verdict = "not measured" if v.met is None else ("met" if v.met else "**missed**")
        rows.append(f"| {v.target} | `{v.backend}` | {v.batch} | {v.measured} | {verdict} |")
    return rows
