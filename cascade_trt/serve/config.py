"""`ServeConfig`: what one service is, as one frozen value the CLI, `serve run` args and the cog predictor build.

The pipeline options (`prior` ... `decoder_subfolder`) are `CascadePipeline.from_pretrained`'s own keywords and
are passed to it as they are (`pipeline_options`); the rest is the service's: the sizes it serves (and warms
up), batching, limits, scaling and access. Light to import: no torch, no Ray.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from cascade_trt.errors import ConfigError

API_KEY_ENV = "CASCADE_TRT_API_KEY"
MAX_BODY_BYTES = 64 * 1024  # a request is a prompt and a few numbers: anything bigger is not one


def parse_size(text: str) -> tuple[int, int]:
    """OpenAI's `"WIDTHxHEIGHT"` -> (width, height); ConfigError for anything else."""
    width, sep, height = str(text).lower().partition("x")
    if sep and width.isdigit() and height.isdigit():
        return int(width), int(height)
    raise ConfigError(f"size {text!r} is not WIDTHxHEIGHT in px, e.g. 1024x1024")


def format_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


@dataclass(frozen=True)
class ServeConfig:
    """One service: the model a replica loads, and how requests reach it.

    `sizes` are (width, height) pairs: the only sizes served, each warmed up at every batch up to `max_batch`
    when a replica starts (a pipeline keeps static buffers per shape, so an open set of sizes would grow a
    replica's memory without bound). `autoscale` = (min, max) replicas replaces `replicas`. `gpus_per_replica`
    None means 1 on a CUDA device, 0 on the CPU. The API key never appears in `repr`.
    """

    prior: str
    decoder: str
    backend: str = "torch"
    device: str = "cpu"
    precision: str = "auto"
    onnx_dir: str | None = None
    engine_dir: str | None = None
    compile: bool = False  # noqa: A003 (CascadePipeline.from_pretrained's name)
    cuda_graphs: bool = True
    verify: bool = False
    prior_subfolder: str = "prior"
    decoder_subfolder: str = "decoder"
    sizes: tuple[tuple[int, int], ...] = ((1024, 1024),)
    max_batch: int = 4
    batch_wait_ms: float = 10.0
    timeout_s: float = 300.0
    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    gpus_per_replica: float | None = None
    cpus_per_replica: float = 1.0
    max_body_bytes: int = MAX_BODY_BYTES
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ConfigError("sizes: give at least one WIDTHxHEIGHT to serve")
        object.__setattr__(self, "sizes", tuple(tuple(s) for s in self.sizes))
        for name in ("max_batch", "replicas", "max_body_bytes"):
            _positive(name, getattr(self, name), integer=True)
        for name in ("timeout_s", "cpus_per_replica"):
            _positive(name, getattr(self, name))
        if self.batch_wait_ms < 0:
            raise ConfigError(f"batch_wait_ms must be 0 or more, got {self.batch_wait_ms}")
        if self.gpus_per_replica is not None and self.gpus_per_replica < 0:
            raise ConfigError(f"gpus_per_replica must be 0 or more, got {self.gpus_per_replica}")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high and high >= 1):
                raise ConfigError(
                    f"autoscale must be MIN MAX with 0 <= MIN <= MAX and MAX >= 1, got {low} {high}"
                )
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError(f"the API key is empty: pass a non-empty key or unset {API_KEY_ENV}")

    @property
    def gpus(self) -> float:
        """GPUs Ray reserves for each model replica."""
        if self.gpus_per_replica is not None:
            return self.gpus_per_replica
        return 1.0 if self.device.startswith("cuda") else 0.0

    def pipeline_options(self) -> dict[str, Any]:
        """`CascadePipeline.from_pretrained`'s keywords."""
        names = ("backend", "device", "precision", "onnx_dir", "engine_dir", "compile", "cuda_graphs")
        names += ("verify", "prior_subfolder", "decoder_subfolder")
        return {name: getattr(self, name) for name in names}

    @classmethod
    def from_mapping(cls, args: Mapping[str, Any]) -> ServeConfig:
        """From `serve run ... key=value` arguments or a Serve config file's `args:` (strings or YAML values).

        The API key comes from `api_key` or, absent, from the environment variable CASCADE_TRT_API_KEY.
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise ConfigError(f"unknown argument(s) {', '.join(unknown)}: choose from {', '.join(known)}")
        values = {name: _coerce(name, value) for name, value in args.items()}
        values.setdefault("api_key", os.environ.get(API_KEY_ENV) or None)
        missing = [name for name in ("prior", "decoder") if name not in values]
        if missing:
            raise ConfigError(
                f"missing argument(s) {', '.join(missing)}: e.g. prior=ckpt/prior decoder=ckpt/decoder"
            )
        return cls(**values)


_INTS = ("max_batch", "replicas", "max_body_bytes")
_FLOATS = ("batch_wait_ms", "timeout_s", "gpus_per_replica", "cpus_per_replica")


def _coerce(name: str, value: Any) -> Any:
    """A `key=value` string (or YAML value) as the field's type."""
    try:
        if name == "sizes":
            items = value.replace(",", " ").split() if isinstance(value, str) else value
            return tuple(parse_size(s) if isinstance(s, str) else tuple(s) for s in items)
        if name == "autoscale":
            low, high = value.replace(",", " ").split() if isinstance(value, str) else value
            return int(low), int(high)
        if name in ("cuda_graphs", "compile", "verify") and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if name in _INTS:
            return int(value)
        if name in _FLOATS:
            return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}={value!r} is not valid: {exc}") from None
    return value


def _positive(name: str, value: Any, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ConfigError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")
