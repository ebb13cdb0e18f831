"""Build every backend's driver over one set of models.

The models are built once, in the precision policy's dtypes, on the device: the real architectures with
random weights (`random_components`) or real checkpoints (`load_components`). The diffusers baseline and
the runtime's `torch` rows share those modules, so they time the very same weights. Two exceptions give the
baseline its own copy of a stage: diffusers' prior pipeline casts the text embeddings to the text encoder's
dtype before the prior, so its text encoder must share the prior's dtype (the whole prior pipeline in one
dtype, as diffusers' documentation loads it; the policy differs there on a GPU: bf16 Stage C, fp16 text
encoder), and `--baseline-precision` can ask for diffusers in another precision than the runtime (fp32, its
default dtype, against the runtime's bf16 on a CPU with native bf16).

`onnxruntime` runs graphs exported from diffusers-format checkpoints: the given ones, or a random-weight copy of
the preset written by `cascade_trt.tiny.make_pipelines` into the work directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cascade_trt.backends import get_backend
from cascade_trt.benchmarks import BASELINE, runtime_backend
from cascade_trt.benchmarks.drivers import CascadeDriver, DiffusersDriver, Driver
from cascade_trt.checkpoints import CheckpointPair
from cascade_trt.components import CascadeComponents
from cascade_trt.configs import CascadeConfig, get_preset
from cascade_trt.precision import PrecisionPolicy
from cascade_trt.stages import PIPELINE_STAGES

if TYPE_CHECKING:
    from cascade_trt.benchmarks.suite import SuiteConfig


@dataclass
class Built:
    drivers: dict[str, Driver] = field(default_factory=dict)
    precision: dict[str, dict[str, str]] = field(default_factory=dict)  # backend -> stage -> fp32/fp16/bf16
    skipped: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: str = "random"
    config: CascadeConfig | None = None


def build_models(
    checkpoints: CheckpointPair | None,
    config: CascadeConfig,
    *,
    dtypes: dict[str, torch.dtype],
    device: torch.device,
    seed: int,
    stages: tuple[str, ...] = PIPELINE_STAGES,
) -> CascadeComponents:
    """The checkpoints' modules, or (without checkpoints) `config`'s architectures with random weights."""
    if checkpoints is None:
        from cascade_trt.random_weights import random_components

        return random_components(config, stages=stages, dtypes=dtypes, device=device, seed=seed)
    from cascade_trt.components import load_components

    return load_components(checkpoints, stages=stages, dtypes=dtypes, device=device)


def build_drivers(
    cfg: SuiteConfig,
    names: list[str],
    *,
    device: torch.device,
    workdir: str | Path,
    progress: Callable[[str], None],
) -> Built:
    """A driver per backend name; a backend whose construction fails is skipped with the error as reason."""
    checkpoints = cfg.checkpoints
    config = checkpoints.config() if checkpoints is not None else get_preset(cfg.preset)
    policy = PrecisionPolicy.resolve(config, cfg.precision, device=device)
    progress(f"building {config.name} models ({'random weights' if checkpoints is None else 'checkpoints'})")
    parts = build_models(checkpoints, config, dtypes=policy.dtypes(), device=device, seed=cfg.seed)
    built = Built(checkpoints="random" if checkpoints is None else "pretrained", config=config)
    for name in names:
        try:
            driver, precision = _build_one(name, cfg, config, parts, policy, device, Path(workdir), progress)
        except Exception as exc:  # an unbuildable backend is a result to report, not a crash of the suite
            progress(f"skip {name}: {type(exc).__name__}: {exc}")
            built.skipped.append(
                {"backend": name, "reason": f"build failed: {type(exc).__name__}: {exc}"[:500]}
            )
            continue
        built.drivers[name] = driver
        built.precision[name] = {s: precision[s] for s in PIPELINE_STAGES}
    return built


def _build_one(
    name: str,
    cfg: SuiteConfig,
    config: CascadeConfig,
    parts: CascadeComponents,
    policy: PrecisionPolicy,
    device: torch.device,
    workdir: Path,
    progress: Callable[[str], None],
) -> tuple[Driver, PrecisionPolicy]:
    if name == BASELINE:
        return _diffusers(cfg, config, parts, policy, device)
    from cascade_trt.pipeline import CascadePipeline

    backend, variant = runtime_backend(name)
    policy = PrecisionPolicy.resolve(config, cfg.precision, device=device, target=backend)
    if variant.get("compile") and hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
        # A row labelled compiled must be compiled: past the recompile limit, fail rather than run eagerly
        # (the failure is recorded for that shape and the other backends go on). torch >= 2.6.
        torch._dynamo.config.fail_on_recompile_limit_hit = True
    given = {"onnx_dir": cfg.onnx_dir, "engine_dir": cfg.engine_dir, **variant}
    if backend == "onnxruntime" and cfg.onnx_dir is None:  # it runs graphs: export the benchmarked models
        given["onnx_dir"] = export_onnx(parts.checkpoints, config, policy, workdir, progress, seed=cfg.seed)
    takes = get_backend(backend).option_fields()
    pipe = CascadePipeline.from_components(
        parts,
        backend=backend,
        device=device,
        precision=dict(policy.stages),
        cuda_graphs=variant.get("cuda_graphs", True),
        **{key: value for key, value in given.items() if key in takes},
    )
    return CascadeDriver(name, pipe), policy


def _diffusers(
    cfg: SuiteConfig,
    config: CascadeConfig,
    parts: CascadeComponents,
    policy: PrecisionPolicy,
    device: torch.device,
) -> tuple[Driver, PrecisionPolicy]:
    """diffusers over the shared modules, with its own copy of each stage it runs in another dtype: those
    `--baseline-precision` sets apart, and the text encoder, which runs in the prior's dtype (module
    docstring)."""
    base = policy
    if cfg.baseline_precision is not None:
        base = PrecisionPolicy.resolve(config, cfg.baseline_precision, device=device, target="torch")
    baseline = PrecisionPolicy({**base.stages, "text_encoder": base["stage_c"]})
    own = tuple(s for s in PIPELINE_STAGES if baseline[s] != policy[s])
    if own:
        dtypes = {s: baseline.dtype(s) for s in own}
        copies = build_models(
            parts.checkpoints, config, dtypes=dtypes, device=device, seed=cfg.seed, stages=own
        )
        parts = dataclasses.replace(parts, **{s: getattr(copies, s) for s in own})
    return DiffusersDriver(parts), baseline


def export_onnx(
    checkpoints: CheckpointPair | None,
    config: CascadeConfig,
    policy: PrecisionPolicy,
    workdir: Path,
    progress: Callable[[str], None],
    *,
    seed: int,
) -> Path:
    """ONNX graphs of the benchmarked models, exported into `workdir` from the checkpoints, or (for random
    weights) from a diffusers-format copy of the preset written with the same seed."""
    from cascade_trt.export import export_pipeline

    if checkpoints is None:
        from cascade_trt.tiny import make_pipelines

        progress(f"writing random {config.name} checkpoints for export")
        root = make_pipelines(workdir / "checkpoints", config, seed=seed, overwrite=True)
        checkpoints = CheckpointPair(root / "prior", root / "decoder")
    progress("exporting ONNX graphs")
    out = workdir / "onnx"
    with _quiet(QUIET_LOGGERS):
        export_pipeline(
            checkpoints, out, precision=dict(policy.stages), stages=PIPELINE_STAGES, progress=False
        )
    return out


# The exporter's optimiser logs every rewrite at INFO: thousands of lines that would bury the benchmark's own.
QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
