"""cascade_trt: a fast runtime for Stable Cascade.

    from cascade_trt import CascadePipeline
    pipe = CascadePipeline.from_pretrained(prior="...", decoder="...", backend="torch")
    image = pipe("a photo of a cat").images[0]

or, as diffusers' two-pipeline flow, `CascadePriorPipeline` then `CascadeDecoderPipeline`.

Importing the package is cheap and never touches a GPU: heavy modules (diffusers, onnxruntime, tensorrt) load
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "CascadePipeline",
    "CascadePriorPipeline",
    "CascadeDecoderPipeline",
    "CascadeConfig",
    "PRESETS",
    "__version__",
]

if TYPE_CHECKING:
    from cascade_trt.configs import PRESETS, CascadeConfig
    from cascade_trt.decoder import CascadeDecoderPipeline
    from cascade_trt.pipeline import CascadePipeline
    from cascade_trt.prior import CascadePriorPipeline

_LAZY = {
    "CascadePipeline": "cascade_trt.pipeline",
    "CascadePriorPipeline": "cascade_trt.prior",
    "CascadeDecoderPipeline": "cascade_trt.decoder",
    "CascadeConfig": "cascade_trt.configs",
    "PRESETS": "cascade_trt.configs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cascade_trt' has no attribute {name!r}")
