"""Importing TensorRT, lazily, with one clear error when it is missing.

Nothing in cascade_trt imports `tensorrt` at module level: the package, the other backends and the pure parts of
`cascade_trt.engines` (passes, profiles, manifests) work on machines without it.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from cascade_trt.errors import BackendUnavailableError

# 10.1 added what the runtime relies on: `ICudaEngine.device_memory_size_v2` and
# `IExecutionContext.set_device_memory(memory, size)` (TensorRT 11 keeps only these).
MIN_VERSION = (10, 1)
INSTALL_HINT = (
    "install it with `pip install 'cascade-trt[tensorrt]'` (from a checkout: `pip install -e '.[tensorrt]'`; "
    "the TensorRT wheels are NVIDIA's: if pip cannot fetch them, add "
    "`--extra-index-url https://pypi.nvidia.com`, NVIDIA's package index). TensorRT runs on an NVIDIA GPU with a "
    "CUDA driver; without one use the torch or onnxruntime backend"
)


def import_tensorrt() -> ModuleType:
    """The `tensorrt` module (10.1+ or 11.x), or BackendUnavailableError saying how to install it."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but its CUDA libraries are not
        raise BackendUnavailableError(f"TensorRT is not available ({exc}): {INSTALL_HINT}") from exc
    version = getattr(trt, "__version__", "0")
    if tensorrt_version(version) < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise BackendUnavailableError(
            f"TensorRT {version} is too old: cascade_trt needs TensorRT {need} or newer; {INSTALL_HINT}"
        )
    return trt


def tensorrt_version(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string ("10.8.0.43" -> (10, 8)); (0, 0) when unreadable."""
    parts = str(version).split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return (0, 0)
    return (int(parts[0]), int(parts[1]))


def tensorrt_major(version: str) -> int:
    """Major version of a TensorRT version string ("10.8.0.43" -> 10); 0 when unreadable."""
    return tensorrt_version(version)[0]


def construct(trt: ModuleType, name: str, *args: Any) -> Any:
    """`trt.<name>(*args)` (Builder, Runtime, OnnxParser), or BackendUnavailableError when TensorRT could not
    make it: its bindings raise (pybind11's "factory function returned nullptr") rather than return None, most
    often because no CUDA device or driver is usable."""
    try:
        made = getattr(trt, name)(*args)
    except (TypeError, RuntimeError) as exc:
        raise BackendUnavailableError(
            f"TensorRT {getattr(trt, '__version__', '?')} could not create a {name} ({exc}): check that a GPU "
            "is visible and its driver loaded (`nvidia-smi`) and that this TensorRT supports that driver's CUDA"
        ) from exc
    if made is None:
        raise BackendUnavailableError(f"TensorRT could not create a {name}: its log above says why")
    return made
