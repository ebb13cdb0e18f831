"""Backends by name. Each is a module with a `create_runner(spec, *, dtype, device, **options) -> StageRunner`.

Modules load lazily, so naming a backend never imports another's library (onnxruntime, tensorrt). Options a
factory does not use it ignores; the pipeline passes:

    module       the stage's wrapper module (`cascade_trt.modules`), for backends that run PyTorch modules
    artifact_dir the directory of exported ONNX models (`onnx_dir`) or built engines (`engine_dir`)
    providers    ONNX Runtime execution providers
    compile      torch.compile the modules
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch

from cascade_trt.backends.base import Bindings, StageRunner
from cascade_trt.errors import BackendUnavailableError, ConfigError
from cascade_trt.stages import StageSpec

BACKENDS: dict[str, str] = {
    "torch": "cascade_trt.backends.torch_backend",
    "onnxruntime": "cascade_trt.backends.onnxruntime_backend",
    "tensorrt": "cascade_trt.backends.tensorrt_backend",
}
# Backends that run the PyTorch modules (so the pipeline must load weights); the others run artifacts from disk.
RUNS_MODULES = frozenset({"torch"})

__all__ = ["BACKENDS", "RUNS_MODULES", "Bindings", "StageRunner", "backend_module", "create_runner"]


def backend_module(name: str) -> ModuleType:
    """The module implementing backend `name`; ConfigError for an unknown name."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    try:
        return importlib.import_module(BACKENDS[name])
    except ModuleNotFoundError as exc:
        if exc.name == BACKENDS[name]:
            raise BackendUnavailableError(
                f"the {name} backend is not part of this build of cascade_trt ({BACKENDS[name]} is missing)"
            ) from exc
        raise


def create_runner(
    backend: str, spec: StageSpec, *, dtype: torch.dtype, device: torch.device | str, **options: Any
) -> StageRunner:
    """A runner for one stage on the named backend."""
    return backend_module(backend).create_runner(spec, dtype=dtype, device=device, **options)
