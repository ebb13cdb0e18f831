"""The `cascade-trt` command. Argument parsing lives only here: one module per subcommand, each with
`register(subparsers)` that adds its parser and sets `func` to a function taking the parsed arguments.
Library functions below take keyword arguments and raise typed errors; this layer turns those errors into a
one-line message and exit status 2 (with `-v`, the traceback first).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
import warnings

from cascade_trt.errors import CascadeError

SUBCOMMANDS = ("make_tiny", "export", "build", "check", "generate", "bench", "serve", "bench_serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade-trt",
        description="Stable Cascade, fast: export to ONNX, build TensorRT engines, generate, benchmark.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"cascade_trt.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cascade_trt.cli.{name}":
                continue  # subcommand not shipped in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.verbose:
        quiet_libraries(progress=not getattr(args, "no_progress", False))
    try:
        return int(args.func(args) or 0)
    except CascadeError as exc:
        if args.verbose:  # the error's causes (a library's own traceback, say) are for who asks for them
            traceback.print_exc()
        print(f"cascade-trt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cascade-trt {args.command}: interrupted", file=sys.stderr)
        return 130


def quiet_libraries(*, progress: bool = True) -> None:
    """Keep the terminal to cascade-trt's own lines: the libraries' advice (install accelerate, deprecation
    notices, unused-axis notes) repeats on every load and buries them. `-v` keeps everything.

    Set through the libraries' environment variables, read when they are first imported (the subcommands
    import them after this); `progress=False` also turns off their download and loading bars.
    """
    quiet = {
        "TRANSFORMERS_VERBOSITY": "error",
        "DIFFUSERS_VERBOSITY": "error",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "DIFFUSERS_NO_ADVISORY_WARNINGS": "1",
    }
    if not progress:
        quiet["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for name, value in quiet.items():
        os.environ.setdefault(name, value)
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for library in ("torchvision", "transformers", "diffusers", "onnxscript", "torch.onnx"):
        warnings.filterwarnings("ignore", category=UserWarning, module=library)


if __name__ == "__main__":
    sys.exit(main())
