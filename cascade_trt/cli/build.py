"""`cascade-trt build --onnx DIR --out ENGINE_DIR`: one TensorRT engine per exported stage."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from cascade_trt.cli.argtypes import positive_int
from cascade_trt.errors import ConfigError
from cascade_trt.stages import STAGE_NAMES, BatchRange, SizeRange

if TYPE_CHECKING:
    from cascade_trt.engines.builder import BuildOptions
    from cascade_trt.engines.profiles import BuildShapes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build TensorRT engines from exported ONNX graphs (needs TensorRT and an NVIDIA GPU)",
        description="Builds ENGINE_DIR/<stage>.plan with a manifest beside each, in-process, one optimization "
        "profile per engine derived from the stage descriptions (guided stages get twice the batch). "
        "Engines whose manifest matches (same ONNX, precision, profiles, flags, TensorRT and GPU) are kept.",
    )
    p.add_argument("--onnx", required=True, metavar="DIR", help="directory of `cascade-trt export`")
    p.add_argument("--out", required=True, metavar="ENGINE_DIR", help="where to write <stage>.plan and .json")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp16", "bf16", "fp32"),
        help="auto: bf16 for the full Stage C (it overflows in fp16), fp16 elsewhere; must match the "
        "precision the graphs were exported in (TensorRT builds strongly typed networks)",
    )
    p.add_argument("--min-size", type=int, help="smallest image side, px (multiple of 128; default 512)")
    p.add_argument("--opt-size", type=int, help="image side TensorRT tunes for, px (default 1024)")
    p.add_argument("--max-size", type=int, help="largest image side, px (default 1536)")
    p.add_argument("--static", metavar="HxW", help="one fixed image size instead of a range, e.g. 1024x1024")
    p.add_argument(
        "--max-batch", type=positive_int, default=4, help="most images per call, before guidance doubles it"
    )
    p.add_argument("--opt-batch", type=positive_int, default=1, help="images per call TensorRT tunes for")
    p.add_argument(
        "--max-image-prompts",
        type=positive_int,
        default=1,
        help="most images one image variation may be conditioned on (Stage C's clip_img axis; 1 serves text "
        "alone and single-image variations)",
    )
    p.add_argument(
        "--no-guidance", action="store_true", help="guided stages never see the doubled (cond + uncond) batch"
    )
    p.add_argument(
        "--timing-cache", type=Path, metavar="PATH", help="TensorRT timing cache to read and update"
    )
    p.add_argument(
        "--stages",
        nargs="+",
        choices=STAGE_NAMES,
        metavar="STAGE",
        help=f"stages to build (default: every exported one): {', '.join(STAGE_NAMES)}",
    )
    p.add_argument("--workspace-gib", type=float, help="builder workspace limit (default: TensorRT's)")
    p.add_argument("--optimization-level", type=int, choices=range(6), help="builder optimization level 0-5")
    p.add_argument(
        "--weakly-typed",
        action="store_true",
        help="TensorRT 10 only: build an fp32 graph with the FP16/BF16 builder flags",
    )
    p.add_argument("--force", action="store_true", help="rebuild even when the manifest matches")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check, build nothing (no TensorRT needed): each graph's precision against the policy, and the "
        "graph as the passes leave it against TensorRT's ONNX operator support (from TensorRT 10.1 on)",
    )
    p.set_defaults(func=run)


def build_shapes(args: argparse.Namespace) -> BuildShapes:
    """The `BuildShapes` the size and batch flags describe."""
    from cascade_trt.engines.profiles import BuildShapes

    ranged = [args.min_size, args.opt_size, args.max_size]
    if args.static:
        if any(v is not None for v in ranged):
            raise ConfigError(
                "--static gives one fixed size: drop --min-size/--opt-size/--max-size, or --static"
            )
        m = re.fullmatch(r"(\d+)[xX](\d+)", args.static)
        if m is None:
            raise ConfigError(f"--static {args.static!r}: write it as HxW, e.g. 1024x1024")
        sizes = SizeRange.static(int(m.group(1)), int(m.group(2)))
    else:
        lo, opt, hi = (v if v is not None else d for v, d in zip(ranged, (512, 1024, 1536), strict=True))
        sizes = SizeRange.square(lo, max(lo, min(opt, hi)) if args.opt_size is None else opt, hi)
    batches = BatchRange(1, min(args.opt_batch, args.max_batch), args.max_batch)
    prompts = (1, 1, args.max_image_prompts)
    return BuildShapes(sizes, batches, guidance=not args.no_guidance, image_prompts=prompts)


def run(args: argparse.Namespace) -> int:
    from cascade_trt.artifacts import check_output_dir
    from cascade_trt.engines.builder import BuildOptions, build_engines

    check_output_dir(args.out, "--out")  # before minutes of building, not after

    options = BuildOptions(
        shapes=build_shapes(args),
        strongly_typed=not args.weakly_typed,
        workspace_gib=args.workspace_gib,
        optimization_level=args.optimization_level,
        timing_cache=args.timing_cache,
    )
    if args.dry_run:
        return dry_run(args, options)
    built = build_engines(
        args.onnx, args.out, precision=args.precision, stages=args.stages, options=options, force=args.force
    )
    for stage, path in built.items():
        print(f"{stage}: {path}")
    return 0


def dry_run(args: argparse.Namespace, options: BuildOptions) -> int:
    """What `build` would build, checked as far as possible without TensorRT; ArtifactMismatchError if not."""
    from cascade_trt.engines.availability import MIN_VERSION
    from cascade_trt.engines.builder import check_plans, plan_builds

    plans = plan_builds(args.onnx, precision=args.precision, stages=args.stages, options=options)
    check_plans(plans, tensorrt=MIN_VERSION)
    floor = ".".join(map(str, MIN_VERSION))
    for plan in plans:
        passes = ", ".join(plan.passes) or "no passes"
        print(f"{plan.stage.name}: {plan.precision} ({passes}); TensorRT {floor}+ takes every node")
    return 0
