"""Files on disk: every file the project writes, written atomically; and artifacts (ONNX models, engines), with
their manifests and the check of their files against them.

Writes. Whatever a user gets (images, reports, checkpoints, ONNX models, engines, manifests) is written under a
temporary name in the same directory, fsynced, and renamed onto its final name (`atomic_path` for one file,
`staging_dir` for files that move into place together), so a failure or a kill leaves the previous file intact
and nothing half-written under a final name. Temporary names carry their writer's host and pid: the next write
of the same target removes what a killed writer left (`remove_stale_temporaries`), never what a live one is
using. An OSError that means "cannot write there" (disk full, no permission) becomes an `OutputError` naming the
file. Output paths are checked before any work (`check_output_dir`, `check_output_file`).

Artifacts. Every ONNX model and engine has a JSON manifest beside it, written last: a model without its manifest
is incomplete by definition. The manifest records each of the artifact's files (`file_record`: size, sampled
digest, sha256), and `verify_artifact` checks them before the artifact is trusted: sizes and sampled chunks by
default (a few hundred KiB read, whatever the size), every byte with `full=True`.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cascade_trt.errors import ArtifactCorruptError, ArtifactMismatchError, ConfigError, OutputError

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
# `sample_digest`: evenly spaced chunks from the first byte to the last.
SAMPLES, SAMPLE_BYTES = 64, 4096
# OSErrors that mean a file cannot be written where asked, and what to do about each.
_WRITE_REMEDIES = {
    errno.ENOSPC: "free space on that disk, or write elsewhere",
    errno.EDQUOT: "free space within your disk quota, or write elsewhere",
    errno.EACCES: "write where you have permission",
    errno.EPERM: "write where you have permission",
    errno.EROFS: "that filesystem is read-only: write elsewhere",
    errno.EFBIG: "the file is too large for that filesystem: write elsewhere",
}


# --- where artifacts live ----------------------------------------------------------------------------------


def onnx_path(directory: str | Path, stage: str) -> Path:
    return Path(directory) / f"{stage}.onnx"


def engine_path(directory: str | Path, stage: str) -> Path:
    return Path(directory) / f"{stage}.plan"


def manifest_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.stem + ".json")


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


# --- atomic writes -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; when the block succeeds, fsync it and rename it onto `target`.

    When the block fails, the temporary file goes and `target` keeps what it held (or stays absent).
    """
    target = Path(target)
    with write_errors(target):
        tmp = _temporary(target, directory=False)
        try:
            yield tmp
            sync(tmp)
            os.replace(tmp, target)
            sync(target.parent)  # the rename itself survives a power cut only once its directory is synced
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staging_dir(target: str | Path) -> Iterator[Path]:
    """A temporary directory next to `target`, for files that move into place together, removed when the block
    ends whatever happens. The block writes there, `sync_tree`s it, and renames what it made into place; wrap
    it in `write_errors`, naming what the user asked for."""
    staging = _temporary(Path(target), directory=True)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def sync(path: str | Path) -> None:
    """fsync one file or directory (a directory's fsync makes the renames into it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: str | Path) -> None:
    """fsync every file and directory under `root`, before it (or what is in it) is renamed into place."""
    for directory, _, files in os.walk(root):
        for name in files:
            sync(Path(directory) / name)
        sync(directory)


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove the temporaries of `target` whose writer is dead (a killed export, build or write); returns them.

    A temporary is named `.<target>.<host>-<pid>.<random>.tmp`. One from this host whose process is gone is
    stale; one whose process still runs (a concurrent export, say), this process's own, or one from another
    host (a shared filesystem: its pid means nothing here) is left alone. A reused pid only keeps a stale
    temporary a little longer, never removes a live one.
    """
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?P<host>[^.]+)-(?P<pid>\d+)\.[^.]+\.tmp")
    removed = []
    for path in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        match = pattern.fullmatch(path.name)
        if match is None or not _writer_is_dead(match["host"], int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        log.info("removed %s, left by a run that was killed (pid %s)", path, match["pid"])
        removed.append(path)
    return removed


def _temporary(target: Path, *, directory: bool) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    prefix = f".{target.name}.{_host()}-{os.getpid()}."
    if directory:
        return Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix, suffix=".tmp"))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=".tmp")
    os.close(fd)
    # mkstemp makes the file private (0600); give it the mode `open` would have, so a manifest is as
    # readable as the model beside it.
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


def _host() -> str:
    # Without dots: they separate the fields of a temporary's name.
    return socket.gethostname().replace(".", "_") or "localhost"


def _writer_is_dead(host: str, pid: int) -> bool:
    if host != _host() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, as another user's process
    return False


@contextlib.contextmanager
def write_errors(target: str | Path) -> Iterator[None]:
    """An OSError that means `target` cannot be written there (disk full, no permission) as an OutputError."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        remedy = _WRITE_REMEDIES.get(exc.errno)
        if remedy is None:
            raise
        raise OutputError(
            f"could not write {target} ({exc.strerror or exc}): {remedy}; nothing was left under that name"
        ) from exc


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it, then put it back
    os.umask(mask)
    return mask


# --- output paths, checked before any work -----------------------------------------------------------------


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


def check_output_file(path: str | Path, what: str) -> Path:
    """Refuse, before any work, a file path that cannot be written: a directory, one in a directory that cannot
    be made or written, or an existing read-only file (an atomic rename would replace it regardless)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a directory: pass a file name (in it, say)")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"{what}: cannot write {path}, since {path.parent} is a file")
    check_output_dir(path.parent, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what}: {path} is read-only: make it writable (chmod u+w) or pick another name")
    return path


# --- manifests and the check of an artifact's files --------------------------------------------------------


def read_manifest(artifact: str | Path) -> dict[str, Any] | None:
    """The manifest of an artifact, or None when the artifact or its manifest is missing (incomplete)."""
    artifact = Path(artifact)
    path = manifest_path(artifact)
    if not artifact.is_file() or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:  # json's decode error, or bytes that are not text
        raise ArtifactCorruptError(
            f"{path} is not a manifest (not JSON: {exc}): {rewrite_hint(artifact, {})}"
        ) from exc


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sample_digest(path: str | Path) -> str:
    """sha256 of a file's size and `SAMPLES` evenly spaced chunks, first and last included: a few hundred KiB
    read whatever the size. Files that differ all through (other weights, flipped signs, another model) differ
    here; one changed byte between the chunks does not, which is what `sha256_file` is for."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for i in range(SAMPLES):
            f.seek(max(size - SAMPLE_BYTES, 0) * i // (SAMPLES - 1))
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def file_record(path: str | Path, *, name: str | None = None) -> dict[str, Any]:
    """A manifest's record of one file (`name`: its final name, when `path` is still a temporary one)."""
    path = Path(path)
    return {
        "name": name or path.name,
        "bytes": path.stat().st_size,
        "sample": sample_digest(path),
        "sha256": sha256_file(path),
    }


def artifact_problem(artifact: str | Path, manifest: dict[str, Any], *, full: bool = False) -> str | None:
    """What is wrong with an artifact's files against its manifest's records, as one phrase (None: they match).

    Sizes and `sample_digest`s, or with `full` the sha256 of every byte (also for records that predate the
    sampled digest).
    """
    records = manifest.get("files")
    if not records:
        return f"{manifest_path(artifact)} records no files to check {Path(artifact).name} against"
    for record in records.values():
        path = Path(artifact).parent / record["name"]
        if not path.is_file():
            return f"{path} is missing (its manifest lists it)"
        size = path.stat().st_size
        if size != record["bytes"]:
            return f"{path} is {size:,} bytes where its manifest says {record['bytes']:,} (truncated, or another file)"
        if full or "sample" not in record:
            if sha256_file(path) != record["sha256"]:
                return f"{path} is not the file its manifest describes (its sha256 differs)"
        elif sample_digest(path) != record["sample"]:
            return (
                f"{path} is not the file its manifest describes (same size, but sampled chunks differ: "
                "altered or replaced after it was written)"
            )
    return None


def verify_artifact(artifact: str | Path, *, full: bool = False) -> dict[str, Any]:
    """Check an ONNX model's or engine's files against its manifest before anything trusts them; returns the
    manifest. A missing model or manifest is an `ArtifactMismatchError`, a file unlike its record an
    `ArtifactCorruptError`, each naming the file and the command that writes it again."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    if manifest is None:
        if artifact.suffix == ".onnx":  # no directory, or no complete model in it: which, and the export
            raise ArtifactMismatchError(missing_onnx_message(artifact, artifact.stem))
        raise ArtifactMismatchError(
            f"{artifact} or its manifest is missing (a build that did not finish): "
            + rewrite_hint(artifact, {})
        )
    problem = artifact_problem(artifact, manifest, full=full)
    if problem is not None:
        raise ArtifactCorruptError(f"{problem}: {rewrite_hint(artifact, manifest)}")
    return manifest


def rewrite_hint(artifact: Path, manifest: dict[str, Any]) -> str:
    """How to write `artifact` again: the build command of an engine, the export command of an ONNX model."""
    if artifact.suffix == ".plan":
        # engines build on this module, so their manifest's module is imported here, when needed
        from cascade_trt.engines.manifest import rebuild_command

        try:
            return f"rebuild it with `{rebuild_command(manifest, artifact)}`"
        except (KeyError, TypeError, ValueError):  # a manifest too damaged to say how it was built
            return f"rebuild it with `cascade-trt build --onnx ONNX_DIR --out {artifact.parent} --stages {artifact.stem}`"
    return f"re-export it with {export_command(artifact.parent, artifact.stem, manifest.get('precision'))}"


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
