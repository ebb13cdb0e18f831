"""Importing TensorRT, lazily, with one clear error when it is missing.

Nothing in cascade_trt imports `tensorrt` at module level: the package, the other backends and the pure parts of
`cascade_trt.engines` (passes, profiles, manifests) work on machines without it.
"""

from __future__ import annotations

from types import ModuleType

from cascade_trt.errors import BackendUnavailableError

MIN_MAJOR = 10
INSTALL_HINT = (
    "install it with `pip install 'cascade-trt[tensorrt]'` (TensorRT and Polygraphy; the TensorRT wheels are "
    "NVIDIA's: if pip cannot fetch them, add `--extra-index-url https://pypi.nvidia.com`, NVIDIA's package "
    "index). TensorRT runs on an NVIDIA GPU with a CUDA driver; without one use the torch or onnxruntime backend"
)


def import_tensorrt() -> ModuleType:
    """The `tensorrt` module (10.x or 11.x), or BackendUnavailableError saying how to install it."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but its CUDA libraries are not
        raise BackendUnavailableError(f"TensorRT is not available ({exc}): {INSTALL_HINT}") from exc
    version = getattr(trt, "__version__", "0")
    if tensorrt_major(version) < MIN_MAJOR:
        raise BackendUnavailableError(
            f"TensorRT {version} is too old: cascade_trt needs TensorRT {MIN_MAJOR} or newer; {INSTALL_HINT}"
        )
    return trt


def tensorrt_major(version: str) -> int:
    """Major version of a TensorRT version string ("10.8.0.43" -> 10); 0 when unreadable."""
    head = str(version).split(".")[0]
    return int(head) if head.isdigit() else 0
