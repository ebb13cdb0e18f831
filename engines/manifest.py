"""The manifest written beside every engine, its content key, and the check that it fits what is asked.

An engine is only valid for the TensorRT version and GPU architecture that built it, the exact ONNX graph it was
parsed from, its precision and its profiles. All of that is recorded in `<stage>.json` beside `<stage>.plan`,
together with the build flags, and hashed into a `cache_key`: a rebuild with the same inputs is skipped, and
the runtime loads an engine only when its manifest matches, otherwise it says what differs and how to rebuild.
The manifest also names the checkpoint the weights come from (`source`, copied from the export manifest), so
the runtime refuses an engine built from other weights than the checkpoints it is given.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cascade_trt.artifacts import MANIFEST_VERSION
from cascade_trt.engines.profiles import BuildShapes, size_flags
from cascade_trt.errors import ArtifactMismatchError

KIND = "tensorrt_engine"


@dataclass(frozen=True)
class Target:
    """Where an engine runs: TensorRT version, GPU name and compute capability ("9.0")."""

    tensorrt: str
    gpu: str
    compute_capability: str

    @classmethod
    def current(cls, trt: Any, device: Any = None) -> Target:
        """This process's TensorRT and the CUDA device `device` (torch's current one by default)."""
        import torch

        index = torch.device(device).index if device is not None else None
        index = torch.cuda.current_device() if index is None else index
        major, minor = torch.cuda.get_device_capability(index)
        return cls(trt.__version__, torch.cuda.get_device_name(index), f"{major}.{minor}")


def onnx_identity(onnx_manifest: dict[str, Any]) -> dict[str, str]:
    """The content hashes of an exported model (graph and external weights) from its export manifest."""
    files = onnx_manifest.get("files", {})
    out = {kind: record["sha256"] for kind, record in files.items() if "sha256" in record}
    if "onnx" not in out:
        raise ArtifactMismatchError(
            f"the ONNX manifest of {onnx_manifest.get('stage', '?')} has no sha256 of its model: re-export it"
        )
    return out


def cache_key(
    *,
    stage: str,
    precision: str,
    onnx: dict[str, str],
    profiles: dict[str, Any],
    flags: dict[str, Any],
    passes: list[str] | tuple[str, ...],
    target: Target,
) -> str:
    """sha256 over everything that decides an engine's content (not paths, not times)."""
    content = {
        "stage": stage,
        "precision": precision,
        "onnx": onnx,
        "profiles": profiles,
        "flags": flags,
        "passes": list(passes),
        "tensorrt": target.tensorrt,
        "compute_capability": target.compute_capability,
        "gpu": target.gpu,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def weights_source(onnx_manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Which checkpoint an engine's weights come from, as its export manifest's `source` says (the checkpoint
    as given, its kind and subfolder, and the fingerprint of its weight files and config.json with the
    fingerprint's scheme version; the architecture itself stays in the export manifest); None when the export
    has no fingerprint (random weights, or an export older than fingerprints)."""
    source = onnx_manifest.get("source") or {}
    if source.get("fingerprint") is None:
        return None
    keys = ("checkpoint", "kind", "subfolder", "fingerprint", "fingerprint_version")
    return {key: source.get(key) for key in keys}


def engine_manifest(
    *,
    stage: str,
    precision: str,
    onnx: dict[str, str],
    shapes: BuildShapes,
    profiles: dict[str, Any],
    flags: dict[str, Any],
    passes: list[str] | tuple[str, ...],
    target: Target,
    onnx_dir: str,
    source: dict[str, Any] | None = None,
    build_seconds: float | None = None,
) -> dict[str, Any]:
    """The manifest of one engine. `source` (`weights_source`) is provenance, not content: the ONNX sha256
    already decides the engine, so it stays out of the `cache_key`; the runtime compares its fingerprint with
    the checkpoints it is given, so an engine refuses other weights even without the ONNX directory."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "kind": KIND,
        "stage": stage,
        "precision": precision,
        "onnx": onnx,
        "onnx_dir": str(onnx_dir),
        "source": source,
        "shapes": shapes.to_json(),
        "profiles": profiles,
        "flags": flags,
        "passes": list(passes),
        "target": asdict(target),
        "cache_key": cache_key(
            stage=stage,
            precision=precision,
            onnx=onnx,
            profiles=profiles,
            flags=flags,
            passes=passes,
            target=target,
        ),
        "build_seconds": build_seconds,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def mismatches(
    manifest: dict[str, Any],
    *,
    target: Target | None = None,
    precision: str | None = None,
    onnx: dict[str, str] | None = None,
) -> list[str]:
    """What differs between an engine's manifest and what is asked, one sentence each (empty: it fits)."""
    out = []
    if manifest.get("kind") != KIND or manifest.get("manifest_version") != MANIFEST_VERSION:
        out.append(f"the manifest is not a version-{MANIFEST_VERSION} engine manifest")
        return out
    built = Target(**manifest["target"])
    if target is not None:
        if built.tensorrt != target.tensorrt:
            out.append(f"built with TensorRT {built.tensorrt}, this is TensorRT {target.tensorrt}")
        if built.compute_capability != target.compute_capability:
            out.append(
                f"built for {built.gpu} (compute capability {built.compute_capability}), this GPU is "
                f"{target.gpu} (compute capability {target.compute_capability})"
            )
        elif built.gpu != target.gpu:
            out.append(f"built on {built.gpu}, this GPU is {target.gpu} (same architecture, different model)")
    if precision is not None and manifest["precision"] != precision:
        out.append(f"built in {manifest['precision']}, {precision} was asked")
    if onnx is not None:
        for kind in sorted(set(onnx) | set(manifest["onnx"])):
            have, want = manifest["onnx"].get(kind), onnx.get(kind)
            if have != want:
                out.append(
                    f"built from an ONNX {kind} with sha256 {_short(have)}, the export now has {_short(want)}"
                )
    return out


def io_precision(manifest: dict[str, Any]) -> str:
    """The dtype of an engine's float inputs and outputs, which the runtime's static tensors must have.

    A strongly typed engine's IO has its build precision. A weakly typed one (`--weakly-typed`, TensorRT 10) is
    an fp32 graph that TensorRT may run in fp16/bf16 inside: its IO stays fp32, whatever its `precision`.
    """
    if manifest.get("flags", {}).get("strongly_typed") is False:
        return "fp32"
    return manifest["precision"]


def check_engine(manifest: dict[str, Any] | None, engine: str | Path, **asked: Any) -> None:
    """ArtifactMismatchError saying what differs and the command that rebuilds the engine."""
    engine = Path(engine)
    if manifest is None:
        raise ArtifactMismatchError(
            f"{engine} or its manifest {engine.with_suffix('.json').name} is missing (a build that did not finish, "
            f"or none): build it with `cascade-trt build --onnx ONNX_DIR --out {engine.parent} --stages {engine.stem}`"
        )
    problems = mismatches(manifest, **asked)
    if problems:
        raise ArtifactMismatchError(
            f"{engine} does not fit: {'; '.join(problems)}. Rebuild it: `{rebuild_command(manifest, engine)}`"
        )


def rebuild_command(manifest: dict[str, Any], engine: str | Path) -> str:
    """The `cascade-trt build` command line that rebuilds this engine with its recorded settings."""
    engine = Path(engine)
    shapes = BuildShapes.from_json(manifest["shapes"])
    flags = manifest.get("flags", {})
    parts = [
        "cascade-trt build",
        f"--onnx {shlex.quote(manifest.get('onnx_dir', 'ONNX_DIR'))}",
        f"--out {shlex.quote(str(engine.parent))}",
        f"--stages {manifest['stage']}",
        f"--precision {manifest['precision']}",
        size_flags(shapes.sizes),
        f"--max-batch {shapes.batches.max}",
    ]
    if not shapes.guidance:
        parts.append("--no-guidance")
    if flags.get("strongly_typed") is False:
        parts.append("--weakly-typed")
    return " ".join(parts)


def _short(digest: str | None) -> str:
    return "none" if digest is None else digest[:12]
