"""argparse `type=` callbacks: a bad number is refused while parsing, naming its flag, before any loading."""

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
