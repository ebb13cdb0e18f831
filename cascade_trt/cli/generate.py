"""`cascade-trt generate "prompt" --prior P --decoder D --out image.png`: text to image on any backend.

Every output path is checked before anything loads (a directory, no or an unknown extension, a directory that
cannot be written, a read-only file: one line, not a traceback after the whole generation), and every image is
written atomically, so a full disk leaves the image that was there before.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from cascade_trt.artifacts import atomic_path, check_output_file
from cascade_trt.backends import BACKENDS
from cascade_trt.cli.argtypes import DefaultsHelpFormatter, positive_int, seed
from cascade_trt.cli.pipeline_args import add_pipeline_arguments, pipeline_options
from cascade_trt.errors import ConfigError


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
        help="image file to write, its format from the extension (.png, .jpg, .webp...)",
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
        type=seed,
        default=None,
        help="seed of the CPU generator, as diffusers seeds it (none: random)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from cascade_trt.pipeline import CascadePipeline
    from cascade_trt.stages import check_size

    # Before minutes of loading, not after.
    check_size(args.height, args.width)
    outputs = [(path, image_format(path)) for path in output_paths(args.out, args.num_images)]
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
    for (path, fmt), image in zip(outputs, images, strict=True):
        with atomic_path(path) as tmp:
            image.save(tmp, format=fmt)
        print(path)
    return 0


def output_paths(out: Path, count: int) -> list[Path]:
    """OUT itself for one image; OUT-0.png, OUT-1.png... for several. Each checked writable (see
    `check_output_file`)."""
    check_output_file(out, "--out")  # a directory, say, before its name is taken apart
    if not out.suffix:
        raise ConfigError(f"--out {out} has no extension to name the image format: write e.g. {out}.png")
    paths = [out] if count == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]
    return [check_output_file(path, "--out") for path in paths]


def image_format(path: Path) -> str:
    """The format PIL writes for `path`'s extension; ConfigError when PIL cannot write an RGB image in it."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())  # every format PIL ships, loaded
    if fmt is None or fmt not in Image.SAVE:
        raise ConfigError(
            f"--out {path}: PIL cannot write {path.suffix!r} images: use .png, .jpg, .webp or another format "
            "PIL writes"
        )
    try:  # a format PIL writes, but maybe not for RGB (XBM is 1-bit): find out on a 1-pixel image, not after
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"--out {path}: PIL cannot write an RGB image as {fmt} ({exc}): use .png or .jpg"
        ) from exc
    return fmt
