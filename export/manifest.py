"""The JSON manifest written beside every exported ONNX model.

It says what the model is (stage, IO names, symbolic shapes, dtypes, opset, precision), where it came from
(source checkpoint and config, a weights hash) and what made it (tool versions), plus each file's size, sampled
digest and sha256 (`artifacts.file_record`), so a consumer can check an artifact against what it is about to ask
of it, and its files against what was written (`artifacts.verify_artifact`).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cascade_trt.artifacts import MANIFEST_VERSION, file_record, tool_versions
from cascade_trt.export.inputs import tensor_dtype
from cascade_trt.precision import NAMES
from cascade_trt.provenance import weights_hash
from cascade_trt.stages import StageSpec, TensorSpec

TOOLS = ("torch", "onnx", "onnxscript", "onnx-ir", "onnxruntime", "diffusers", "transformers", "cascade-trt")
REQUIRED_FIELDS = (
    "manifest_version",
    "stage",
    "inputs",
    "outputs",
    "opset",
    "precision",
    "weights_hash",
    "source",
    "tools",
    "files",
)


def build_manifest(
    spec: StageSpec,
    onnx_file: Path,
    *,
    module: nn.Module,
    dtype: torch.dtype,
    opset: int | None,
    traced_at: dict[str, int],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a model file already written at `onnx_file` (its final name, possibly in staging)."""
    data_file = onnx_file.with_name(onnx_file.name + ".data")
    files: dict[str, Any] = {"onnx": file_record(onnx_file)}
    if data_file.exists():
        files["external_data"] = file_record(data_file)
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "kind": "onnx",
        "stage": spec.name,
        "inputs": [_tensor_record(t, dtype) for t in spec.inputs],
        "outputs": [_tensor_record(t, dtype) for t in spec.outputs],
        "opset": opset,
        "precision": NAMES[dtype],
        "weights_hash": weights_hash(_component(module)),
        "source": {},
        "traced_at": traced_at,
        "tools": tool_versions(*TOOLS),
        "files": files,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest.update(extra or {})
    return manifest


def _component(module: nn.Module) -> nn.Module:
    # Stage wrappers hold exactly one component: hash that, so the manifest's hash equals
    # `weights_hash(components.<stage>)` for whoever loads the checkpoint without the wrapper.
    children = list(module.children())
    return children[0] if len(children) == 1 else module


def _tensor_record(tensor: TensorSpec, compute: torch.dtype) -> dict[str, Any]:
    dtype = tensor_dtype(tensor, compute)
    return {
        "name": tensor.name,
        "shape": list(tensor.shape),
        "dtype": str(dtype).removeprefix("torch."),
        "dynamic_axes": {str(axis): name for axis, name in tensor.dynamic_axes.items()},
    }
