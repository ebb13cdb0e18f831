"""The backends, by name: the one registry the pipeline, the CLI and the benchmarks read.

Each backend is a module that owns a frozen options dataclass and one entry point,

    load_runners(specs, *, options, device, dtypes, components=None) -> dict[str, StageRunner]

a runner per stage (`cascade_trt.backends.base` is the runner contract). `backend_options` turns keyword values
(the pipeline's `onnx_dir=`, `compile=`...) into a backend's options, and `get_backend(name).load_runners(...)`
calls the backend's own with them. Backend modules load on first use, so naming a backend never imports
another's library (onnxruntime, tensorrt); this module imports no torch either, so the CLI lists the names
cheaply.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from cascade_trt.errors import BackendUnavailableError, ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cascade_trt.backends.base import StageRunner
    from cascade_trt.stages import StageSpec


@dataclass(frozen=True)
class Backend:
    """One backend: where its code lives, its options class, and what it runs."""

    name: str
    module_name: str
    options_name: str  # the options dataclass, in the module
    runs_modules: bool  # True: runs the PyTorch modules (the weights are loaded); False: runs files from disk
    summary: str  # one line, for help texts

    def module(self) -> ModuleType:
        try:
            return importlib.import_module(self.module_name)
        except ModuleNotFoundError as exc:
            if exc.name == self.module_name:
                raise BackendUnavailableError(
                    f"the {self.name} backend is not part of this build of cascade_trt ({self.module_name} is missing)"
                ) from exc
            raise

    @property
    def options_class(self) -> type:
        return getattr(self.module(), self.options_name)

    def option_fields(self) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(self.options_class)}

    def load_runners(
        self, specs: Mapping[str, StageSpec], *, options: Any, **rest: Any
    ) -> dict[str, StageRunner]:
        """The module's `load_runners(specs, *, options, device, dtypes, components=None)`, once `options` are
        known to be this backend's (`backend_options` makes them)."""
        if not isinstance(options, self.options_class):
            raise ConfigError(
                f"the {self.name} backend takes {self.options_name}, got {type(options).__name__}: "
                f"make them with backend_options({self.name!r}, ...)"
            )
        return self.module().load_runners(specs, options=options, **rest)


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            "torch",
            "cascade_trt.backends.torch_backend",
            "TorchOptions",
            runs_modules=True,
            summary="the PyTorch modules, eager or torch.compile'd",
        ),
        Backend(
            "onnxruntime",
            "cascade_trt.backends.onnxruntime_backend",
            "OnnxRuntimeOptions",
            runs_modules=False,
            summary="the exported ONNX graphs (--onnx-dir) in ONNX Runtime",
        ),
        Backend(
            "tensorrt",
            "cascade_trt.backends.tensorrt_backend",
            "TensorRTOptions",
            runs_modules=False,
            summary="TensorRT engines built by `cascade-trt build` (--engine-dir)",
        ),
    )
}

__all__ = ["BACKENDS", "Backend", "backend_options", "get_backend"]


def get_backend(name: str) -> Backend:
    """The backend called `name`; ConfigError naming the choices for any other name."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def backend_options(name: str, **values: Any) -> Any:
    """The options of backend `name`, from keyword values that may include other backends' options.

    An option of other backends only, given a value other than its default, is ignored with a warning (it
    would otherwise vanish silently); a name that is no backend's option is a ConfigError naming what `name`
    takes. The options class checks its own values (a required directory, say).
    """
    backend = get_backend(name)
    own = backend.option_fields()
    for key, value in values.items():
        if key in own:
            continue
        users = [b for b in BACKENDS.values() if b.name != name and key in _fields_or_none(b)]
        if not users:
            raise ConfigError(
                f"{key!r} is not an option of the {name} backend, which takes {', '.join(own) or 'none'}"
            )
        if value != _fields_or_none(users[0])[key].default:
            names = " and ".join(b.name for b in users)
            warnings.warn(
                f"{key} is used by the {names} backend{'s' if len(users) > 1 else ''} only; "
                f"backend={name!r} ignores it",
                UserWarning,
                stacklevel=3,  # the caller of from_pretrained / from_components
            )
    return backend.options_class(**{key: value for key, value in values.items() if key in own})


def _fields_or_none(backend: Backend) -> dict[str, dataclasses.Field]:
    """A backend's option fields; none for a backend this build does not ship."""
    try:
        return backend.option_fields()
    except BackendUnavailableError:
        return {}
