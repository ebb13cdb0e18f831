"""What the fault tests share: a small generation on the tiny checkpoints, and the one-line error check."""

from __future__ import annotations

import pytest

from cascade_trt.cli import main

GENERATE = ["generate", "a lighthouse", "--device", "cpu", "--precision", "fp32", "--no-progress"]
SMALL = ["--height", "128", "--width", "128", "--prior-steps", "2", "--decoder-steps", "2", "--seed", "0"]


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The command's error line; fails unless it exits 2 with exactly one line and no traceback."""
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err
