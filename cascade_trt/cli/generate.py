"""`cascade-trt generate "prompt" --prior P --decoder D --out image.png`: text to image on any backend."""

from __future__ import annotations

import argparse
from pathlib import Path

from cascade_trt.backends import BACKENDS
from cascade_trt.cli.argtypes import DefaultsHelpFormatter, positive_int
from cascade_trt.cli.pipeline_args import add_pipeline_arguments, pipeline_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help=f"generate images from a prompt with CascadePipeline ({', '.join(BACKENDS)})",
        description="Runs the text encoder, Stage C, Stage B and Stage A and writes PNGs. With several images, "
        "OUT gets a -<index> suffix per image.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("prompt", help="the text prompt")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="image file to write (format from the extension: .png, .jpg...)",
    )
    add_pipeline_arguments(p)
    p.add_argument("--negative-prompt", default=None, help="negative prompt (none: empty)")
    p.add_argument("--height", type=positive_int, default=1024, help="image height in px, a multiple of 128")
    p.add_argument("--width", type=positive_int, default=1024, help="image width in px, a multiple of 128")
    p.add_argument(
        "--num-images", type=positive_int, default=1, help="images for the prompt (num_images_per_prompt)"
    )
    p.add_argument(
        "--prior-steps", type=positive_int, default=20, help="Stage C steps (prior_num_inference_steps)"
    )
    p.add_argument("--prior-guidance", type=float, default=4.0, help="Stage C guidance (on above 1)")
    p.add_argument(
        "--decoder-steps", type=positive_int, default=10, help="Stage B steps (num_inference_steps)"
    )
    p.add_argument("--decoder-guidance", type=float, default=0.0, help="Stage B guidance (on above 1)")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the CPU generator, as diffusers seeds it (none: random)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from cascade_trt.pipeline import CascadePipeline
    from cascade_trt.stages import check_size

    check_size(args.height, args.width)  # before minutes of loading, not after
    pipe = CascadePipeline.from_pretrained(args.prior, args.decoder, **pipeline_options(args))
    pipe.set_progress_bar_config(disable=args.no_progress)
    generator = None if args.seed is None else torch.Generator().manual_seed(args.seed)
    images = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        num_images_per_prompt=args.num_images,
        prior_num_inference_steps=args.prior_steps,
        prior_guidance_scale=args.prior_guidance,
        num_inference_steps=args.decoder_steps,
        decoder_guidance_scale=args.decoder_guidance,
        generator=generator,
        output_type="pil",
    ).images
    for path, image in zip(output_paths(args.out, len(images)), images, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        print(path)
    return 0


def output_paths(out: Path, count: int) -> list[Path]:
    """OUT itself for one image; OUT-0.png, OUT-1.png... for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(count)]
