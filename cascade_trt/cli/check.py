"""`cascade-trt check --onnx DIR --engines DIR`: TensorRT against ONNX Runtime, per stage and shape."""

from __future__ import annotations

import argparse

from cascade_trt.stages import STAGE_NAMES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="compare TensorRT engines with ONNX Runtime on random inputs (needs TensorRT and an NVIDIA GPU)",
        description="Runs each engine through the tensorrt backend and the exported graph (made fp32) through "
        "ONNX Runtime at the minimum, optimum and maximum of the engine's profile, and reports the relative "
        "error per output against a tolerance per precision (fp32 1e-2, fp16 2e-2, bf16 6e-2). Exit status 1 "
        "when any output is off or not finite.",
    )
    p.add_argument("--onnx", required=True, metavar="DIR", help="directory of `cascade-trt export`")
    p.add_argument("--engines", required=True, metavar="DIR", help="directory of `cascade-trt build`")
    p.add_argument("--stages", nargs="+", choices=STAGE_NAMES, metavar="STAGE", help="stages to check")
    p.add_argument("--device", default="cuda", help="CUDA device (default: cuda)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cascade_trt.engines.check import check_engines

    results = check_engines(args.onnx, args.engines, stages=args.stages, device=args.device, seed=args.seed)
    for r in results:
        print(r.line())
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} outputs within tolerance")
    return 1 if failed else 0
