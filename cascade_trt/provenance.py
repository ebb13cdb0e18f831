"""Which weights an artifact was made from: fingerprints, and the check that an ONNX export fits its checkpoint.

An export records in its manifest's `source` where each stage came from (`export_source`: the checkpoint as
given, its subfolder and config.json, and a fingerprint of the weight files); the runtime compares that
fingerprint with the checkpoints it is given (`check_exported_sources`), so a graph exported from other weights
never runs under this checkpoint's name. `check_source` is that comparison for any artifact whose manifest
carries the record (engines copy their export's). `weights_hash` identifies loaded modules the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from cascade_trt.artifacts import export_command, onnx_path, read_manifest
from cascade_trt.checkpoints import CheckpointPair
from cascade_trt.errors import ArtifactMismatchError

WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CHUNKS, _CHUNK = 64, 4096


def checkpoint_fingerprint(directory: str | Path) -> str | None:
    """A short fingerprint of the weight files in a component directory, without loading them (None: none).

    File names, sizes and 64 evenly spaced 4 KiB chunks of each: a few hundred KiB read from disk, where
    `weights_hash` must load the model. Two checkpoints with different weights (another seed, a fine-tune)
    differ all through their files, so the sample tells them apart; it is an identity check, not a checksum.
    """
    files = sorted(p for p in Path(directory).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        return None
    h = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            for i in range(_CHUNKS):
                f.seek(size * i // _CHUNKS)
                h.update(f.read(_CHUNK))
    return h.hexdigest()[:16]


def weights_hash(module: torch.nn.Module) -> str:
    """A short content hash of a module's weights (names, shapes, dtypes and a strided sample of values).

    Hashing every byte of a 3.6B model costs minutes; names, shapes and 4096 evenly spaced values of each
    tensor identify a checkpoint for caching purposes in well under a second.
    """
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        flat = t.detach().reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // 4096)
            sample = flat[::step].to("cpu", torch.float32).contiguous()
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def export_source(checkpoints: CheckpointPair, stage: str) -> dict[str, Any]:
    """The `source` record of an exported stage's manifest: what `check_exported_sources` compares later."""
    location = checkpoints.location(stage)
    return {
        "checkpoint": location.name,
        "kind": location.kind,
        "subfolder": location.subfolder,
        "config": location.read_config(),
        "fingerprint": checkpoint_fingerprint(location.path),
    }


def check_exported_sources(
    onnx_dir: str | Path, stages: Iterable[str], checkpoints: CheckpointPair | None
) -> None:
    """Refuse ONNX models exported from other weights than `checkpoints`.

    Each export manifest records the fingerprint of the weight files it was traced from; a model whose
    fingerprint differs from the given checkpoint's would make images of another model under this one's name.
    Stages without a model or without a recorded fingerprint are left to the loader; without checkpoints
    (components with random weights) there is nothing to compare.
    """
    for stage in stages:
        path = onnx_path(onnx_dir, stage)
        check_source(
            (read_manifest(path) or {}).get("source"),
            checkpoints,
            stage,
            artifact=f"{path} was exported",
            remedy=f"re-export it from this checkpoint with {export_command(Path(onnx_dir), stage)}",
        )


def check_source(
    recorded: Mapping[str, Any] | None,
    checkpoints: CheckpointPair | None,
    stage: str,
    *,
    artifact: str,
    remedy: str,
) -> None:
    """ArtifactMismatchError when the `source` an artifact's manifest records (`export_source`: checkpoint,
    subfolder, fingerprint) names other weights than `checkpoints` has for `stage`. `artifact` says what was
    made ("engines/stage_c.plan was built"), `remedy` how to make it again. Nothing to compare (no
    checkpoints, no recorded fingerprint, no weight files) passes."""
    if checkpoints is None or not recorded or recorded.get("fingerprint") is None:
        return
    location = checkpoints.location(stage)
    given = checkpoint_fingerprint(location.path)
    if given is not None and given != recorded["fingerprint"]:
        raise ArtifactMismatchError(
            f"{artifact} from other weights ({recorded.get('checkpoint')}, {recorded.get('subfolder')}) than the "
            f"{location.kind} given here ({location.root}, {location.subfolder}): {remedy}, or pass the "
            "checkpoint it was made from"
        )
