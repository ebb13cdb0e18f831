"""`cascade-trt make-tiny DIR`: write a random Stable Cascade (prior + decoder pipelines) in diffusers format."""

from __future__ import annotations

import argparse

from cascade_trt.cli.argtypes import seed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-tiny",
        help="write a random Stable Cascade in diffusers format (tiny by default), for tests and demos",
        description="Writes DIR/prior and DIR/decoder as StableCascadePriorPipeline / StableCascadeDecoderPipeline "
        "directories (save_pretrained layout, offline CLIP tokenizer). Random weights.",
    )
    p.add_argument("out", metavar="DIR", help="directory to write prior/ and decoder/ into")
    p.add_argument("--preset", default="tiny", help="architecture: tiny (default, ~2 MB), lite or full")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random weights")
    p.add_argument("--overwrite", action="store_true", help="replace existing prior/ and decoder/")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cascade_trt.configs import get_preset
    from cascade_trt.tiny import make_pipelines

    out = make_pipelines(args.out, get_preset(args.preset), seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {out / 'prior'} and {out / 'decoder'}")
    return 0
