"""`cascade-trt bench`: per-stage and end-to-end latency of every backend against diffusers, in one run.

    cascade-trt bench --preset tiny --backends diffusers torch onnxruntime --sizes 256 512 --out results/
    cascade-trt bench --compare results/a.json results/b.json

Writes DIR/results.json (records with the environment), DIR/results.md (tables) and DIR/results.png
(per-stage breakdown by backend; needs matplotlib, the `bench` extra). The JSON and markdown are rewritten
after every measured shape, so a run cut short keeps what it finished. See benchmarks/README.md for what each
figure means.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from cascade_trt.benchmarks import BACKENDS
from cascade_trt.cli.argtypes import (
    AUTO_PRECISION_HELP,
    add_checkpoint_args,
    add_steps_argument,
    checkpoint_pair,
    non_negative_int,
    positive_int,
    seed,
)
from cascade_trt.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time every stage of every backend against diffusers in the same run; JSON, markdown and a chart",
        description="Benchmarks the text encoder, both denoising loops (and their per-step time), Stage A and "
        "end to end, for each backend, at each size and batch, with the diffusers pipelines as the baseline. "
        "Models are the preset's real architectures with random weights, or checkpoints (--prior/--decoder).",
    )
    p.add_argument(
        "--preset", default="tiny", choices=("tiny", "lite", "full"), help="architecture (random weights)"
    )
    p.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        choices=BACKENDS,
        help=f"any of {' '.join(BACKENDS)} (default: every one that can run here; a backend named here that "
        "cannot run, or fails, makes the exit status 1)",
    )
    p.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        metavar="SIZE",
        help="image sides: 1024 or 1024x768 (px); default 256 for tiny, 1024 otherwise",
    )
    p.add_argument(
        "--batch", nargs="+", type=positive_int, default=[1], metavar="N", help="images per call (default 1)"
    )
    add_steps_argument(p)
    p.add_argument(
        "--guidance",
        nargs=2,
        type=float,
        default=[4.0, 0.0],
        metavar=("STAGE_C", "STAGE_B"),
        help="default 4 0",
    )
    p.add_argument(
        "--warmup", type=non_negative_int, default=1, help="untimed calls per backend and shape (default 1)"
    )
    p.add_argument(
        "--repeats", type=positive_int, default=5, help="timed calls per backend and shape (default 5)"
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument(
        "--precision",
        default="auto",
        help="auto, fp32, fp16 or bf16, or per stage: stage_c=bf16,stage_b=fp16 (default auto). "
        + AUTO_PRECISION_HELP,
    )
    p.add_argument(
        "--baseline-precision",
        metavar="PRECISION",
        help="diffusers' own precision, in the same forms (default: --precision's); e.g. fp32, what "
        "diffusers runs without a torch_dtype, against the runtime's auto",
    )
    add_checkpoint_args(p, required=False, instead=", with --decoder (default: random weights of --preset)")
    p.add_argument(
        "--onnx-dir", help="ONNX graphs for onnxruntime (default: exported into a temporary directory)"
    )
    p.add_argument("--engine-dir", help="TensorRT engines for tensorrt (built with `cascade-trt build`)")
    p.add_argument(
        "--seed", type=seed, default=0, help="seed of the random weights and of the sampling noise"
    )
    p.add_argument(
        "--out", metavar="DIR", help="directory for results.json, results.md, results.png (required to run)"
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="print two results (results.json files, or the --out directories holding them) side by side; "
        "no benchmark runs",
    )
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    """`1024` -> (1024, 1024); `1024x768` -> (1024, 768) (height x width)."""
    parts = text.lower().split("x")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2):
        raise ConfigError(f"--sizes: {text!r} is not a size; write 1024 or 1024x768 (height x width, px)")
    return (sides[0], sides[-1])


def parse_precision(text: str) -> str | dict[str, str]:
    """`auto` / `fp16` as is; `stage_c=bf16,stage_b=fp16` as a per-stage dict (other stages: auto)."""
    if "=" not in text:
        return text
    out = {}
    for item in text.split(","):
        stage, sep, value = item.partition("=")
        if not sep or not stage.strip() or not value.strip():
            raise ConfigError(f"--precision: {item!r} is not STAGE=PRECISION (e.g. stage_c=bf16)")
        out[stage.strip()] = value.strip()
    return out


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args)
    if not args.out:
        raise ConfigError("--out DIR is required to run the benchmark (or use --compare A B)")
    from cascade_trt.artifacts import check_output_dir

    check_output_dir(args.out, "--out")
    if args.repeats < 3:
        print(
            f"cascade-trt bench: --repeats {args.repeats}: one noisy call decides each median, and the p10-p90 "
            "cells are no spread; use 5 or more for figures to keep",
            file=sys.stderr,
        )
    import torch

    from cascade_trt.benchmarks import report, schema
    from cascade_trt.benchmarks.suite import SuiteConfig, run_suite
    from cascade_trt.stages import check_size

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    default_size = "256" if args.preset == "tiny" and args.prior is None else "1024"
    sizes = tuple(parse_size(s) for s in (args.sizes or [default_size]))
    for h, w in sizes:
        check_size(h, w)
    cfg = SuiteConfig(
        preset=args.preset,
        backends=tuple(args.backends) if args.backends else None,
        sizes=sizes,
        batches=tuple(args.batch),
        steps_c=args.steps[0],
        steps_b=args.steps[1],
        guidance_c=args.guidance[0],
        guidance_b=args.guidance[1],
        warmup=args.warmup,
        repeats=args.repeats,
        device=device,
        precision=parse_precision(args.precision),
        baseline_precision=parse_precision(args.baseline_precision) if args.baseline_precision else None,
        checkpoints=checkpoint_pair(args),
        onnx_dir=args.onnx_dir,
        engine_dir=args.engine_dir,
        seed=args.seed,
    )
    chart = report.can_plot()
    if not chart:
        no_chart = f"cascade-trt bench: matplotlib is not installed ({report.CHART_INSTALL}): no chart"
        print(f"{no_chart}, JSON and markdown only", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="cascade-bench-") as workdir:
        doc = run_suite(
            cfg,
            workdir=workdir,
            progress=lambda m: print(m, file=sys.stderr),
            on_shape=lambda partial: report.write_all(partial, args.out, chart=False),
        )
    paths = report.write_all(doc, args.out)
    schema.check(doc)  # after writing, so a document that fails the check can still be inspected
    print(report.markdown(doc))
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    if not chart:
        print(f"cascade-trt bench: for the chart, {report.CHART_INSTALL} and run again", file=sys.stderr)
    missing = missing_backends(doc, requested=cfg.backends)
    if missing:
        print(
            f"cascade-trt bench: no result from {', '.join(missing)} (the reasons are under Skipped)",
            file=sys.stderr,
        )
        return 1
    return 0


def missing_backends(doc: dict, requested: tuple[str, ...] | None) -> list[str]:
    """What should have results and has none: each backend named with --backends that lacks a result at some
    measured shape (or at all); with no --backends, "any backend" when nothing at all was measured."""
    if requested is None:
        return [] if doc["records"] else ["any backend"]
    measured: dict[str, set[tuple[int, int, int]]] = {}
    for r in doc["records"]:
        measured.setdefault(r["backend"], set()).add((r["height"], r["width"], r["batch"]))
    shapes = set().union(*measured.values())
    return [name for name in dict.fromkeys(requested) if not shapes or measured.get(name) != shapes]


def _compare(args: argparse.Namespace) -> int:
    from cascade_trt.artifacts import check_output_dir, write_text
    from cascade_trt.benchmarks import report, schema

    docs, paths = [], []
    for given in args.compare:
        path = Path(given)
        if path.is_dir():
            path = path / "results.json"
        if not path.is_file():
            raise ConfigError(
                f"--compare: {path} does not exist (pass two results.json files or --out directories)"
            )
        try:
            doc = report.read_json(path)
        except ValueError as exc:  # json's decode error
            raise ConfigError(
                f"--compare: {path} is not a results.json written by cascade-trt bench ({exc})"
            ) from exc
        schema.check(doc)
        docs.append(doc)
        paths.append(path)
    names = tuple(f"{p.parent.name}/{p.name}" for p in paths)
    text = report.compare(docs[0], docs[1], names=names)
    if args.out:
        write_text(check_output_dir(args.out, "--out") / "compare.md", text)
    print(text)
    return 0
