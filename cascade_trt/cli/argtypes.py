"""What the subcommands share in argparse: `type=` callbacks (a bad number is refused while parsing, naming
its flag, before any loading), the help formatter, and help texts that several commands print."""

from __future__ import annotations

import argparse


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


# What `--precision auto` resolves to (`PrecisionPolicy.resolve`), for every command that takes it.
AUTO_PRECISION_HELP = (
    "auto: on a GPU bf16 for the full Stage C and fp16 elsewhere; on a CPU bf16 for the torch backend where "
    "the CPU has native bf16 (AVX512-BF16 or AMX), fp32 otherwise and for onnxruntime"
)
