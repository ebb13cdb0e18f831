"""Typed errors. Each message says what was wrong and what to do about it.

They subclass the built-in exception a caller of a diffusers pipeline would already catch (`ValueError` for
bad arguments, `FileNotFoundError` for missing checkpoints, `ImportError` for missing libraries), so the runtime
stays a drop-in.
"""

from __future__ import annotations


class CascadeError(Exception):
    """Base class of every error cascade_trt raises on purpose.

    `argument` names the pipeline argument the error is about ("height", "num_images_per_prompt"...), where
    there is one: a caller that maps arguments to its own fields (the HTTP service) reads it rather than the
    message.
    """

    def __init__(self, message: str = "", *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument

    def __reduce__(self) -> tuple:
        # Keyword-only state survives pickling (a Ray replica's error reaching the ingress).
        return (type(self), (str(self),), self.__dict__)


class ConfigError(CascadeError, ValueError):
    """An argument or option has a value the project does not support (unknown stage, preset, backend...)."""


class CheckpointError(CascadeError, FileNotFoundError):
    """A path or hub id is not a Stable Cascade prior or decoder pipeline."""


class ShapeError(CascadeError, ValueError):
    """A height, width or batch the model, ONNX graph or engine cannot run."""


class PrecisionError(CascadeError, ValueError):
    """A precision the chosen target cannot run (fp16 on ONNX Runtime's CPU provider, say)."""


class BackendUnavailableError(CascadeError, ImportError):
    """A library a backend needs (TensorRT, onnxruntime, a CUDA device) is not installed or not present."""


class ArtifactMismatchError(CascadeError, ValueError):
    """An ONNX model or engine on disk was made for something else than what is asked of it."""


class ArtifactCorruptError(ArtifactMismatchError):
    """An ONNX model or engine on disk is not the file its manifest describes (truncated, altered, replaced)."""


class OutputError(CascadeError, OSError):
    """A file could not be written where asked (disk full, no permission); nothing was left under its name."""


class CaptureError(CascadeError, RuntimeError):
    """A denoising step could not be captured in a CUDA graph (an op that syncs with the host, say)."""


class NonFiniteOutputError(CascadeError, FloatingPointError):
    """A stage produced NaN or infinite values (fp16 overflow, typically)."""
