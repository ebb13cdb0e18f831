"""The latency suite (`cascade-trt bench`); see README.md here. Light to import: the CLI reads these names.

A row of the results is the diffusers baseline, a runtime backend of `cascade_trt.backends`, or a variant: a
runtime backend run with options of its own (`torch-compile` is the torch backend with `compile=True`,
`torch-no-graphs` the torch backend with its loops uncaptured, `cuda_graphs=False`).
"""

from __future__ import annotations

from typing import Any

from cascade_trt.backends import BACKENDS as RUNTIME_BACKENDS

BASELINE = "diffusers"
# variant -> (runtime backend, the `CascadePipeline.from_components` keywords that make it that variant)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "torch-no-graphs": ("torch", {"cuda_graphs": False}),
    "torch-compile": ("torch", {"compile": True}),
}
# Every name --backends takes: the baseline, then each runtime backend followed by its variants.
BACKENDS: tuple[str, ...] = (
    BASELINE,
    *(
        name
        for backend in RUNTIME_BACKENDS
        for name in (backend, *(v for v, (base, _) in VARIANTS.items() if base == backend))
    ),
)


def runtime_backend(name: str) -> tuple[str, dict[str, Any]]:
    """The runtime backend a row runs, and the options its variant sets (none for a plain backend)."""
    return VARIANTS.get(name, (name, {}))
