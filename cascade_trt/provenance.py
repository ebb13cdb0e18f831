"""Which weights an artifact was made from: fingerprints, and the check that an ONNX export fits its checkpoint.

An export records in its manifest's `source` where each stage came from (`export_source`: the checkpoint as
given, its subfolder and config.json, and a fingerprint of the weight files and config.json); the runtime
compares that fingerprint with the checkpoints it is given (`check_exported_sources`), so a graph exported from
other weights, or under another config, never runs under this checkpoint's name. `check_source` is that
comparison for any artifact whose manifest carries the record (engines copy their export's). `weights_hash`
identifies loaded modules the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from cascade_trt.artifacts import export_command, onnx_path, read_manifest, sample_digest
from cascade_trt.checkpoints import CheckpointPair, Location, read_json, weight_files
from cascade_trt.errors import ArtifactMismatchError

# Recorded beside each fingerprint: one made by an earlier scheme (weights only, before 2) is not compared.
FINGERPRINT_VERSION = 2
# config.json keys that say which library wrote the file, not what the model is.
_WRITER_KEYS = ("_diffusers_version", "transformers_version", "_name_or_path")


def checkpoint_fingerprint(directory: str | Path) -> str | None:
    """A short fingerprint of a component directory's weight files and config.json, without loading the
    weights (None: no weights).

    Each weight file's name and `sample_digest` (size and 64 evenly spaced 4 KiB chunks: a few hundred KiB read
    from disk, where `weights_hash` must load the model), and the config as it states the architecture
    (`architecture_config`). Two checkpoints with different weights (another seed, a fine-tune) differ all
    through their files, so the sample tells them apart; it is an identity check, not a checksum.
    """
    files = weight_files(directory)
    if not files:
        return None
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name}:{sample_digest(path)}".encode())
    config = Path(directory) / "config.json"
    if config.is_file():
        h.update(json.dumps(architecture_config(read_json(config)), sort_keys=True).encode())
    return h.hexdigest()[:16]


def architecture_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config.json without the keys that name the library version that wrote it: re-saving a checkpoint
    with another diffusers changes those, not the model."""
    return {key: value for key, value in config.items() if key not in _WRITER_KEYS}


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
        "fingerprint_version": FINGERPRINT_VERSION,
    }


def check_exported_sources(
    onnx_dir: str | Path, stages: Iterable[str], checkpoints: CheckpointPair | None
) -> None:
    """Refuse ONNX models exported from other weights, or under another config.json, than `checkpoints`.

    Each export manifest records the fingerprint of the weight files and config it was traced from; a model
    whose fingerprint differs from the given checkpoint's would make images of another model under this one's
    name. Where the config.json differs, that is named as the cause (an edited config disagrees with the weights
    beside it). Stages without a model or without a recorded fingerprint are left to the loader; without
    checkpoints (components with random weights) there is nothing to compare.
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
    subfolder, config, fingerprint) names other weights, or another config, than `checkpoints` has for
    `stage`. `artifact` says what was made ("engines/stage_c.plan was built"), `remedy` how to make it again.
    Where the config.json differs from the recorded one, that is named as the cause (an edited config
    disagrees with the weights beside it). Nothing to compare (no checkpoints, no recorded fingerprint, no
    weight files) passes."""
    if checkpoints is None or not recorded or recorded.get("fingerprint") is None:
        return
    if recorded.get("fingerprint_version") != FINGERPRINT_VERSION:
        raise ArtifactMismatchError(
            f"{artifact} by an earlier cascade_trt, whose fingerprint of the checkpoint did not cover "
            f"config.json: {remedy}"
        )
    location = checkpoints.location(stage)
    given = checkpoint_fingerprint(location.path)
    if given is None or given == recorded["fingerprint"]:
        return
    changed = config_changes(recorded["config"], location) if "config" in recorded else ""
    if changed:
        raise ArtifactMismatchError(
            f"{location.path / 'config.json'} differs from the config {artifact} with ({changed}): a "
            f"config.json edited since disagrees with the weights beside it (restore it), or this is another "
            f"checkpoint ({remedy})"
        )
    raise ArtifactMismatchError(
        f"{artifact} from other weights ({recorded.get('checkpoint')}, {recorded.get('subfolder')}) than the "
        f"{location.kind} given here ({location.root}, {location.subfolder}): {remedy}, or pass the checkpoint "
        "it was made from"
    )


def config_changes(recorded: dict[str, Any], location: Location, limit: int = 3) -> str:
    """The architecture keys whose value differs between a recorded config and the component's config.json,
    as "key: old -> new" (empty: none)."""
    old, new = architecture_config(recorded), architecture_config(location.read_config())
    keys = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return ", ".join(f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in keys[:limit])
