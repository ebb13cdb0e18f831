"""Artifacts on disk (ONNX models, engines): where they live, their manifests, and atomic writes.

Every artifact has a JSON manifest beside it, written last: a model without its manifest is incomplete by
definition, so a killed export or build never leaves something that looks valid. Files are written to a
temporary name in the same directory and renamed into place (atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cascade_trt.errors import ConfigError

MANIFEST_VERSION = 1


def onnx_path(directory: str | Path, stage: str) -> Path:
    return Path(directory) / f"{stage}.onnx"


def engine_path(directory: str | Path, stage: str) -> Path:
    return Path(directory) / f"{stage}.plan"


def manifest_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.stem + ".json")


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); give it the mode `open` would have, so a manifest is as
    # readable as the model beside it.
    tmp_path.chmod(0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_output_dir(directory: str | Path, what: str) -> Path:
    """Refuse, before any work, an output directory that cannot be made or written (nothing is created)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(
            f"{what}: {directory} is a file, not a directory: pass a directory (new or existing)"
        )
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}: cannot make {directory}, since {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: cannot write into {existing} (permission denied): pick another directory")
    return directory


def export_command(out_dir: str | Path, stage: str | None = None, precision: str | None = None) -> str:
    """The `cascade-trt export` command that (re)writes `stage` (every stage when None) into `out_dir`, for
    error messages; P and D stand for the prior and decoder the user exported from."""
    command = f"cascade-trt export --prior P --decoder D --out {out_dir}"
    if stage is not None:
        command += f" --stages {stage}"
    if precision is not None:
        command += f" --precision {precision}"
    return f"`{command}`"


def missing_onnx_message(path: str | Path, stage: str) -> str:
    """Why an exported stage cannot be used: no directory, or no complete model in it."""
    directory = Path(path).parent
    if not directory.is_dir():
        return f"the ONNX directory {directory} does not exist: export the models with {export_command(directory)}"
    return (
        f"{path} or its manifest is missing (an export that did not finish, or none): export it with "
        f"{export_command(directory, stage)}"
    )


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it, then put it back
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_manifest(artifact: str | Path) -> dict[str, Any] | None:
    """The manifest of an artifact, or None when the artifact or its manifest is missing (incomplete)."""
    artifact = Path(artifact)
    path = manifest_path(artifact)
    if not artifact.is_file() or not path.is_file():
        return None
    return json.loads(path.read_text())


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tool_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
