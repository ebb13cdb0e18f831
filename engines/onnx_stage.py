"""An exported stage as the engine builder sees it: the ONNX file, its export manifest, and its `StageSpec`.

The spec is rebuilt from the export manifest (IO names, symbolic shape tokens, dtypes), so the profiles are
those of the very graph being built, with no checkpoint needed. Only `guided` (whether guidance doubles the
batch) is not in the manifest; it is a property of the stage, read from `cascade_trt.stages`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascade_trt.artifacts import onnx_path, read_manifest, verify_artifact
from cascade_trt.configs import FULL, PRESETS, CascadeConfig, UNetConfig
from cascade_trt.errors import ArtifactMismatchError, ConfigError
from cascade_trt.stages import COMPUTE, STAGE_NAMES, StageSpec, TensorSpec, stage_specs

TORCH_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
GUIDED = frozenset(name for name, spec in stage_specs(FULL).items() if spec.guided)


@dataclass(frozen=True)
class OnnxStage:
    name: str
    path: Path
    manifest: dict[str, Any]
    spec: StageSpec

    @property
    def precision(self) -> str:
        return self.manifest["precision"]


def read_onnx_stage(onnx_dir: str | Path, stage: str) -> OnnxStage:
    """The exported stage `stage` in `onnx_dir`; ArtifactMismatchError when missing or incomplete, or when its
    files are not those its manifest describes (sizes and sampled chunks: `verify_artifact`)."""
    path = onnx_path(onnx_dir, stage)
    manifest = verify_artifact(path)
    if manifest.get("stage") != stage:
        raise ArtifactMismatchError(
            f"{path}'s manifest describes {manifest.get('stage')!r}, not {stage}: re-export it"
        )
    return OnnxStage(stage, path, manifest, spec_from_manifest(manifest))


def exported_stages(onnx_dir: str | Path) -> list[str]:
    """Stages with a complete export (model and manifest) in `onnx_dir`, in pipeline order."""
    return [name for name in STAGE_NAMES if read_manifest(onnx_path(onnx_dir, name)) is not None]


def select_exported(onnx_dir: str | Path, stages: list[str] | tuple[str, ...] | None) -> list[OnnxStage]:
    """The named stages (all exported ones for None), with a clear error for unknown or missing ones."""
    unknown = [s for s in stages or () if s not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}: choose from {', '.join(STAGE_NAMES)}")
    names = list(stages) if stages else exported_stages(onnx_dir)
    if not names:
        raise ArtifactMismatchError(
            f"no exported stages in {onnx_dir}: run `cascade-trt export --out {onnx_dir}`"
        )
    return [read_onnx_stage(onnx_dir, name) for name in names]


def spec_from_manifest(manifest: dict[str, Any]) -> StageSpec:
    compute = TORCH_NAMES[manifest["precision"]]

    def tensor(record: dict[str, Any]) -> TensorSpec:
        dtype = COMPUTE if record["dtype"] == compute else record["dtype"]
        return TensorSpec(record["name"], tuple(record["shape"]), dtype)

    inputs = tuple(tensor(r) for r in manifest["inputs"])
    outputs = tuple(tensor(r) for r in manifest["outputs"])
    return StageSpec(manifest["stage"], inputs, outputs, guided=manifest["stage"] in GUIDED)


def policy_config(stages: list[OnnxStage]) -> CascadeConfig:
    """The architecture the precision policy reasons about: the preset the export names, or the full cascade
    with the exported prior's own config (so the fp16 overflow warning fires for a full-size Stage C)."""
    names = {s.manifest.get("cascade") for s in stages}
    if len(names) == 1 and (name := names.pop()) in PRESETS:
        return PRESETS[name]
    config = FULL
    for s in stages:
        unet = s.manifest.get("source", {}).get("config")
        if s.name == "stage_c" and isinstance(unet, dict) and "conditioning_dim" in unet:
            config = dataclasses.replace(
                config, name=str(s.manifest.get("cascade")), stage_c=UNetConfig.from_diffusers(unet)
            )
    return config
