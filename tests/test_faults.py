"""Faults a user meets, each made to happen: damaged checkpoints, bad arguments, a full disk, killed runs.

Each must end as one line (a typed error naming the file and the remedy, exit status 2), never as a traceback,
a wrong image or a destroyed file. The ONNX files' faults are in `test_faults_artifacts.py`; concurrent calls
are in `test_concurrency.py`.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_helpers import GENERATE, SMALL, one_line_error

from cascade_trt.artifacts import atomic_path, read_manifest, remove_stale_temporaries
from cascade_trt.cli import main
from cascade_trt.engines.builder import write_engine


@pytest.fixture(autouse=True)
def _no_progress_bars():
    """What `--no-progress` does in a fresh process, where the CLI sets the libraries' environment before they
    are imported; in this one they are imported already."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_progress_bar()
    yield
    for library in (diffusers_logging, transformers_logging):
        library.enable_progress_bar()


@pytest.fixture
def checkpoint(tiny_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoints (2 MB), to damage."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "ckpt"))


def generate_argv(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    pipelines = ["--prior", str(checkpoint / "prior"), "--decoder", str(checkpoint / "decoder")]
    return [*GENERATE, *pipelines, *SMALL, *extra, "--out", str(out)]


# --- damaged checkpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    [
        "prior/prior/diffusion_pytorch_model.safetensors",
        "decoder/decoder/diffusion_pytorch_model.safetensors",
        "prior/text_encoder/model.safetensors",
    ],
)
def test_a_truncated_weight_file_is_named(checkpoint: Path, tmp_path: Path, weights: str, capsys) -> None:
    path = checkpoint / weights
    size = path.stat().st_size
    os.truncate(path, size // 2)
    err = one_line_error(generate_argv(checkpoint, tmp_path / "x.png"), capsys)
    assert f"{path} is truncated: {size // 2:,} bytes where its header says {size:,}" in err
    assert "fetch or copy it again" in err


def test_a_model_index_that_is_not_json_is_named(checkpoint: Path, tmp_path: Path, capsys) -> None:
    index = checkpoint / "decoder" / "model_index.json"
    index.write_text('{"_class_name": "StableCascadeDecoderPipeline",')  # cut off
    err = one_line_error(generate_argv(checkpoint, tmp_path / "x.png"), capsys)
    assert f"{index} is not valid JSON (" in err and "fetch or copy it again" in err


def test_a_scheduler_config_that_is_not_json_is_named(checkpoint: Path, tmp_path: Path, capsys) -> None:
    config = checkpoint / "prior" / "scheduler" / "scheduler_config.json"
    config.write_text('{"_class_name": "DDPMWuerstchenScheduler", "s": 0.0')  # cut off
    err = one_line_error(generate_argv(checkpoint, tmp_path / "x.png"), capsys)
    assert f"{config} is not valid JSON (" in err and "fetch or copy it again" in err


def test_a_config_that_disagrees_with_its_weights_is_named_as_the_cause(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    """Not diffusers' advice to pass `ignore_mismatched_sizes=True`, which would load a broken model."""
    config = checkpoint / "prior" / "prior" / "config.json"
    values = json.loads(config.read_text())
    values["in_channels"] = 8  # the weights were saved with 16
    config.write_text(json.dumps(values))
    err = one_line_error(generate_argv(checkpoint, tmp_path / "x.png", "--backend", "torch"), capsys)
    assert f"{config} disagrees with the weights in diffusion_pytorch_model.safetensors" in err
    assert "embedding.1.weight is [32, 16, 1, 1] there but [32, 8, 1, 1] by the config" in err
    assert "ignore_mismatched_sizes" not in err


# --- arguments checked before anything loads ---------------------------------------------------------------


@pytest.mark.parametrize("seed", ["18446744073709551616", "-1"])
def test_seeds_outside_64_bits_are_refused_while_parsing(
    checkpoint: Path, tmp_path: Path, seed: str, capsys
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*generate_argv(checkpoint, tmp_path / "x.png"), "--seed", seed])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --seed: must be 0 to 2**64-1 (18446744073709551615), got '{seed}'" in err
    assert "Traceback" not in err


def test_the_largest_seed_generates(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    assert main([*generate_argv(checkpoint, out), "--seed", str(2**64 - 1)]) == 0
    assert out.is_file()


def _unwritable_dir(tmp_path: Path) -> tuple[Path, str]:
    """A place no image can be written, and the error that says so: a read-only directory, or for root (who
    writes anywhere) a path under a regular file."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        return locked / "x.png", f"cannot write into {locked} (permission denied)"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return a_file / "x.png", f"cannot write {a_file / 'x.png'}, since {a_file} is a file"


def test_output_paths_are_refused_before_any_model_loads(tmp_path: Path, capsys) -> None:
    # A prior that does not exist: the error must be about --out, so --out was checked first.
    missing = ["--prior", str(tmp_path / "no-prior"), "--decoder", str(tmp_path / "no-decoder")]
    unwritable, unwritable_error = _unwritable_dir(tmp_path)
    cases = {
        tmp_path: f"--out: {tmp_path} is a directory",
        tmp_path / "image": f"--out {tmp_path / 'image'} has no extension to name the image format",
        tmp_path / "x.xyz": "PIL cannot write '.xyz' images: use .png, .jpg, .webp",
        tmp_path / "x.xbm": "PIL cannot write an RGB image as XBM",
        unwritable: unwritable_error,
    }
    for out, expected in cases.items():
        err = one_line_error([*GENERATE, *missing, "--out", str(out)], capsys)
        assert expected in err, (out, err)


def test_build_refuses_an_output_directory_it_cannot_write_before_anything_else(
    tmp_path: Path, capsys
) -> None:
    """Before TensorRT is looked for and before the ONNX directory is read: not after minutes of building."""
    a_file = tmp_path / "engines"
    a_file.write_text("x")
    err = one_line_error(["build", "--onnx", str(tmp_path / "no-onnx"), "--out", str(a_file)], capsys)
    assert f"--out: {a_file} is a file, not a directory" in err


# --- writes: a full disk, a killed writer ------------------------------------------------------------------


class _FileOnFullDisk:
    """A file opened for writing on a disk with `room[0]` bytes left, shared by every such file: a write that
    does not fit writes what fits, then raises ENOSPC, as write(2) does on a full disk."""

    def __init__(self, file: io.IOBase, room: list[int]) -> None:
        self._file, self._room = file, room

    def write(self, data):  # noqa: ANN001, ANN201 (bytes or str, as the file takes)
        if len(data) > self._room[0]:
            self._file.write(data[: self._room[0]])
            self._room[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room[0] -= len(data)
        return self._file.write(data)

    def fileno(self) -> int:
        # PIL hands a real descriptor to its C encoder, which writes past any Python-level fault: without one
        # it writes through `write`, its documented fallback.
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._file, name)

    def __enter__(self) -> _FileOnFullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, int], None]:
    """`full_disk(directory, room)`: from now on, files under `directory` opened for writing from Python share
    `room` bytes of space (files elsewhere, on other disks, are not affected)."""

    def fill(directory: Path, room: int) -> None:
        real_open, left, directory = builtins.open, [room], directory.resolve()

        def open_on_full_disk(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN202
            f = real_open(file, mode, *args, **kwargs)
            on_disk = isinstance(file, (str, os.PathLike)) and Path(file).resolve().is_relative_to(directory)
            return _FileOnFullDisk(f, left) if on_disk and any(c in mode for c in "wax+") else f

        monkeypatch.setattr(builtins, "open", open_on_full_disk)
        monkeypatch.setattr(io, "open", open_on_full_disk)  # pathlib's write_text opens through io.open

    return fill


def test_an_image_written_over_on_a_full_disk_is_kept(
    checkpoint: Path, tmp_path: Path, full_disk, capsys
) -> None:
    out = tmp_path / "x.png"
    out.write_bytes(b"the image from before")
    full_disk(tmp_path, 64)  # the PNG's first chunks fit, its pixels do not
    err = one_line_error(generate_argv(checkpoint, out), capsys)
    assert f"could not write {out} (No space left on device): free space on that disk" in err
    assert out.read_bytes() == b"the image from before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "x.png"], "no temporary file is left"


def test_make_tiny_on_a_full_disk_leaves_nothing(tmp_path: Path, full_disk, capsys) -> None:
    out = tmp_path / "new" / "ckpt"
    full_disk(tmp_path, 0)
    err = one_line_error(["make-tiny", str(out)], capsys)
    assert f"could not write {out} (No space left on device)" in err
    assert list(tmp_path.iterdir()) == [], "not even the directories it made"


KILLED_WRITER = """
import os, signal, sys
from cascade_trt.artifacts import atomic_path

with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half an engine")
    os.kill(os.getpid(), signal.SIGKILL)  # as a build killed while writing its engine
"""


def test_the_temporary_file_of_a_killed_writer_is_removed_by_the_next(tmp_path: Path) -> None:
    engine = tmp_path / "stage_a.plan"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(engine)])
    assert killed.returncode == -signal.SIGKILL
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".stage_a.plan.") and left.read_bytes() == b"half an engine"
    write_engine(engine, b"PLAN", {"cache_key": "k"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage_a.json", "stage_a.plan"]


def test_the_temporary_file_of_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with atomic_path(target) as mine:  # a name like the live writer's, but with its pid
            name = mine.name.replace(f"-{os.getpid()}.", f"-{live.pid}.")
            (tmp_path / name).write_bytes(b"being written")
            assert remove_stale_temporaries(target) == []
            mine.write_bytes(b"done")
        assert (tmp_path / name).read_bytes() == b"being written" and target.read_bytes() == b"done"
    finally:
        live.kill()
        live.wait()


KILLED_EXPORT = """
import os, signal, sys
import cascade_trt.export.onnx_export as onnx_export
from cascade_trt.checkpoints import CheckpointPair
from cascade_trt.export import export_pipeline

def killed(spec, onnx_file, **kwargs):  # the model is written in staging: the export dies before its manifest
    os.kill(os.getpid(), signal.SIGKILL)

onnx_export.build_manifest = killed
export_pipeline(CheckpointPair.resolve(sys.argv[1], sys.argv[2]), sys.argv[3], stages=["stage_a"], progress=False)
"""


def test_an_export_killed_while_writing_is_cleaned_up_by_the_next(
    tiny_checkpoints, tiny_prior: Path, tiny_decoder: Path, tmp_path: Path
) -> None:
    from cascade_trt.export import export_pipeline

    out = tmp_path / "onnx"
    argv = [
        sys.executable,
        "-c",
        textwrap.dedent(KILLED_EXPORT),
        str(tiny_prior),
        str(tiny_decoder),
        str(out),
    ]
    killed = subprocess.Popen(argv)
    assert killed.wait(timeout=300) == -signal.SIGKILL
    (staging,) = out.iterdir()
    assert staging.name.startswith(".stage_a.onnx.") and (staging / "stage_a.onnx").is_file()
    # A concurrent export of the same stage, still running: its staging directory must survive.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = out / staging.name.replace(f"-{killed.pid}.", f"-{live.pid}.")
        running.mkdir()
        export_pipeline(tiny_checkpoints, out, stages=["stage_a"], progress=False)
        assert not staging.exists(), "the killed export's staging directory is removed"
        assert running.is_dir(), "the live one's is not"
    finally:
        live.kill()
        live.wait()
    assert read_manifest(out / "stage_a.onnx") is not None
    assert sorted(p.name for p in out.iterdir()) == sorted([running.name, "stage_a.json", "stage_a.onnx"])
