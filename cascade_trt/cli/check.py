"""`cascade-trt check --onnx DIR [--engines DIR]`: every byte of the ONNX models (and engines) against their
manifests, then, with engines, TensorRT against ONNX Runtime, per stage and shape."""

from __future__ import annotations

import argparse

from cascade_trt.cli.argtypes import seed
from cascade_trt.stages import STAGE_NAMES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="verify exported ONNX models (and TensorRT engines) against their manifests, and compare the "
        "engines with ONNX Runtime on random inputs (that part needs TensorRT and an NVIDIA GPU)",
        description="First checks every file of each ONNX model and engine against its manifest (size and sha256 "
        "of every byte; the runtime checks only sizes and sampled chunks unless --verify). Then, with --engines, "
        "runs each engine through the tensorrt backend and the exported graph (made fp32) through ONNX Runtime "
        "at the minimum, optimum and maximum of the engine's profile, and reports the relative error per output "
        "against a tolerance per precision (fp32 1e-2, fp16 2e-2, bf16 6e-2). Exit status 1 when any output is "
        "off or not finite, 2 when a file is not the one its manifest describes.",
    )
    p.add_argument("--onnx", required=True, metavar="DIR", help="directory of `cascade-trt export`")
    p.add_argument(
        "--engines",
        metavar="DIR",
        help="directory of `cascade-trt build` (none: verify the ONNX models only)",
    )
    p.add_argument("--stages", nargs="+", choices=STAGE_NAMES, metavar="STAGE", help="stages to check")
    p.add_argument("--device", default="cuda", help="CUDA device (default: cuda)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random inputs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cascade_trt.artifacts import engine_path, read_manifest, verify_artifact
    from cascade_trt.engines.manifest import check_engine
    from cascade_trt.engines.onnx_stage import select_exported

    if args.engines is not None:
        from cascade_trt.engines.availability import import_tensorrt

        import_tensorrt()  # the comparison needs it: its install hint comes before anything else
    exported = select_exported(args.onnx, args.stages)
    stages = [s.name for s in exported]
    paths = [s.path for s in exported]
    if args.engines is not None:
        engines = [engine_path(args.engines, stage) for stage in stages]
        for engine in engines:
            check_engine(read_manifest(engine), engine)  # a missing one is said with its build command
        paths += engines
    for path in paths:
        records = verify_artifact(path, full=True)["files"].values()
        files = ", ".join(f"{r['name']} ({r['bytes'] / 1e6:,.1f} MB)" for r in records)
        print(f"{path}: every byte as its manifest says: {files}")
    if args.engines is None:
        return 0
    from cascade_trt.engines.check import check_engines

    results = check_engines(args.onnx, args.engines, stages=stages, device=args.device, seed=args.seed)
    for r in results:
        print(r.line())
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} outputs within tolerance")
    return 1 if failed else 0
