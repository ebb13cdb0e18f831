"""The flags that say which pipeline to load, shared by every subcommand that loads one (`generate`,
`serve`), and the `CascadePipeline.from_pretrained` keywords they make."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cascade_trt.backends import BACKENDS
from cascade_trt.cli.argtypes import AUTO_PRECISION_HELP, add_checkpoint_args


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    p.add_argument(
        "--backend",
        default="torch",
        choices=list(BACKENDS),
        help="what runs the stages: " + "; ".join(f"{b.name}, {b.summary}" for b in BACKENDS.values()),
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    p.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help=AUTO_PRECISION_HELP
    )
    p.add_argument("--onnx-dir", type=Path, help="exported ONNX models (onnxruntime backend)")
    p.add_argument("--engine-dir", type=Path, help="built TensorRT engines (tensorrt backend)")
    p.add_argument("--compile", action="store_true", help="torch.compile the modules (torch backend)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="run the loops uncaptured")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check every byte of the ONNX models or engines against their manifests (sha256) before loading "
        "them, not only their sizes and sampled chunks (onnxruntime and tensorrt backends)",
    )


def pipeline_options(args: argparse.Namespace) -> dict[str, Any]:
    """`CascadePipeline.from_pretrained` keywords (all but prior and decoder) from the parsed flags."""
    return {
        "backend": args.backend,
        "device": args.device,  # None: cuda when there is one (`check_device`)
        "precision": args.precision,
        "onnx_dir": args.onnx_dir,
        "engine_dir": args.engine_dir,
        "compile": args.compile,
        "cuda_graphs": not args.no_cuda_graphs,
        "verify": args.verify,
        "prior_subfolder": args.prior_subfolder,
        "decoder_subfolder": args.decoder_subfolder,
    }
