"""What the subcommands' parsers share: `type=` callbacks (a bad number is refused while parsing, naming its
flag, before any loading), the help formatter, help texts that several commands print, and the checkpoint
flags with the `CheckpointPair` they give."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cascade_trt.checkpoints import CheckpointPair


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 64 bits


def seed(text: str) -> int:
    """A seed of torch's generator: 0 to 2**64-1 (torch would wrap a negative one, and overflow past 64 bits)."""
    value = _int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be 0 to 2**64-1 ({SEED_MAX}), got {text!r}")
    return value


def add_steps_argument(p: argparse.ArgumentParser) -> None:
    """`--steps STAGE_C STAGE_B`, diffusers' prior and decoder step counts (Stability AI's 20 and 10)."""
    p.add_argument(
        "--steps",
        nargs=2,
        type=positive_int,
        default=[20, 10],
        metavar=("STAGE_C", "STAGE_B"),
        help="denoising steps of Stage C and Stage B (default 20 10)",
    )


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" where there is a default worth showing (not for required flags, None or off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if (
            action.required
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
        ):
            return action.help
        return super()._get_help_string(action)


def add_checkpoint_args(p: argparse.ArgumentParser, *, required: bool = True, instead: str = "") -> None:
    """--prior, --decoder and their UNet subfolders (`instead`: what is used when they are not given)."""
    p.add_argument(
        "--prior", required=required, help=f"StableCascadePriorPipeline directory or hub id{instead}"
    )
    p.add_argument("--decoder", required=required, help="StableCascadeDecoderPipeline directory or hub id")
    p.add_argument("--prior-subfolder", default="prior", help="prior UNet subfolder (prior_lite for lite)")
    p.add_argument(
        "--decoder-subfolder", default="decoder", help="decoder UNet subfolder (decoder_lite for lite)"
    )


def checkpoint_pair(args: argparse.Namespace, *, one_side: bool = False) -> CheckpointPair | None:
    """The checkpoints the flags of `add_checkpoint_args` name, fetched and validated; None when neither
    --prior nor --decoder is given (where they are optional). `one_side`: --prior or --decoder alone is a side
    of the cascade (what `export` writes for the prior or decoder pipeline alone)."""
    from cascade_trt.checkpoints import CheckpointPair
    from cascade_trt.errors import ConfigError

    if args.prior is None and args.decoder is None:
        return None
    if not one_side and (args.prior is None or args.decoder is None):
        raise ConfigError("checkpoints need both --prior and --decoder (or neither, for random weights)")
    return CheckpointPair.resolve(
        args.prior,
        args.decoder,
        prior_subfolder=args.prior_subfolder,
        decoder_subfolder=args.decoder_subfolder,
    )


# What `--precision auto` resolves to (`PrecisionPolicy.resolve`), for every command that takes it.
AUTO_PRECISION_HELP = (
    "auto: on a GPU bf16 for the full Stage C and fp16 elsewhere; on a CPU bf16 for the torch backend where "
    "the CPU has native bf16 (AVX512-BF16 or AMX), fp32 otherwise and for onnxruntime"
)
