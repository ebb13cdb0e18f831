"""ONNX export of every Stable Cascade stage, and its verification in ONNX Runtime.

    from cascade_trt.checkpoints import CheckpointPair
    from cascade_trt.export import export_pipeline
    paths = export_pipeline(CheckpointPair.resolve("path/to/prior", "path/to/decoder"), "onnx/", precision="fp32")

`export_stage` exports one wrapper module (`cascade_trt.modules`); `cascade_trt.export.verify` runs the
result in ONNX Runtime against the PyTorch module. torch, onnx and onnxruntime load only when these run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["export_pipeline", "export_stage"]

if TYPE_CHECKING:
    from cascade_trt.export.onnx_export import export_stage
    from cascade_trt.export.pipeline import export_pipeline

_LAZY = {"export_pipeline": "cascade_trt.export.pipeline", "export_stage": "cascade_trt.export.onnx_export"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cascade_trt.export' has no attribute {name!r}")
