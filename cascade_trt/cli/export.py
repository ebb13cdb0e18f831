"""`cascade-trt export --prior P --decoder D --out DIR`: one ONNX model (and manifest) per stage.

With --prior or --decoder alone it exports that side's stages, the text encoder being that side's own (what a
`CascadeDecoderPipeline` runs when its `text_encoder/` differs from the prior's)."""

from __future__ import annotations

import argparse
import logging

from cascade_trt.cli.argtypes import add_checkpoint_args, checkpoint_pair
from cascade_trt.stages import STAGE_NAMES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export every stage to ONNX (dynamic batch/height/width), with a manifest beside each model",
        description="Writes DIR/<stage>.onnx (+ <stage>.onnx.data for large models) and DIR/<stage>.json for the "
        "text encoder, image encoder (when the prior has one), stage_c, stage_b and stage_a. Writes are atomic. "
        "With --prior or --decoder alone, that side's stages (its own text encoder included).",
    )
    add_checkpoint_args(p, required=False)
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the models into")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "bf16", "auto"],
        help="graph precision (default fp32, what ONNX Runtime's CPU provider runs); auto: per-stage policy "
        "for --device (bf16 for the full Stage C, fp16 elsewhere on cuda; fp32 on cpu)",
    )
    p.add_argument("--stages", nargs="+", metavar="STAGE", help=f"subset of: {' '.join(STAGE_NAMES)}")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to trace on")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--force",
        action="store_true",
        help="export every stage again (default: keep a stage already exported from the same weights, "
        "precision and tools, so an interrupted export resumes)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cascade_trt.errors import ConfigError
    from cascade_trt.export import export_pipeline

    checkpoints = checkpoint_pair(args, one_side=True)
    if checkpoints is None:
        raise ConfigError("nothing to export: pass --prior, --decoder, or both")
    # The ONNX optimizer logs every pass at INFO; keep the user's terminal to one line per stage.
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    paths = export_pipeline(
        checkpoints,
        args.out,
        precision=args.precision,
        stages=args.stages,
        opset=args.opset,
        device=args.device,
        progress=not args.no_progress,
        force=args.force,
    )
    for stage, path in paths.items():
        print(f"{stage}: {path}")
    return 0
