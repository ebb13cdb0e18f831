"""Build one TensorRT engine per stage, in-process, from the exported ONNX graphs.

    from cascade_trt.engines.builder import BuildOptions, build_engines
    build_engines("onnx/", "engines/", precision="auto", options=BuildOptions(shapes))

Precision lives in the graph. TensorRT 11 builds strongly typed networks only (its FP16/BF16 builder flags are
gone), and TensorRT 10 builds them when asked (`NetworkDefinitionCreationFlag.STRONGLY_TYPED`), so the exported
graph must already be in the precision the policy chose; it is then fixed for TensorRT by `engines.passes`
(Casts around bf16 Resize, ConvTranspose kernels in the activation dtype). `BuildOptions(strongly_typed=False)`
is TensorRT 10's other way: an fp32 graph, with the FP16 or BF16 builder flag letting TensorRT choose per layer.

Everything before `import tensorrt` (stage selection, precision policy, graph checks, profiles) is plain code;
`_build_plan` is the only function that talks to TensorRT. Before it runs, `check_plans` holds every graph, as
the passes leave it, against TensorRT's published ONNX operator support (`op_support`), so a graph the parser
would refuse fails in seconds with the nodes named, not minutes into a build. A build writes the engine to a
temporary file, renames it into place, and writes its manifest last, so a failed or killed build never leaves
an engine that looks valid. A rebuild whose content key matches the manifest on disk is skipped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cascade_trt.artifacts import (
    artifact_problem,
    atomic_path,
    engine_path,
    export_command,
    file_record,
    manifest_path,
    read_manifest,
    write_json,
)
from cascade_trt.engines.availability import construct, import_tensorrt, tensorrt_major
from cascade_trt.engines.manifest import Target, cache_key, engine_manifest, onnx_identity, weights_source
from cascade_trt.engines.onnx_stage import OnnxStage, policy_config, select_exported
from cascade_trt.engines.op_support import check_graph
from cascade_trt.engines.passes import apply_passes, passes_for
from cascade_trt.engines.profiles import BuildShapes, profiles_to_json
from cascade_trt.errors import ArtifactMismatchError, CascadeError, ConfigError
from cascade_trt.precision import PrecisionPolicy

log = logging.getLogger(__name__)


class EngineBuildError(CascadeError, RuntimeError):
    """TensorRT refused to parse or build a graph; the message carries TensorRT's own errors."""


@dataclass(frozen=True)
class BuildOptions:
    """How to build. None means TensorRT's default (Polygraphy's convention)."""

    shapes: BuildShapes
    strongly_typed: bool = True
    workspace_gib: float | None = None
    optimization_level: int | None = None  # builder_optimization_level, 0-5 (TensorRT's default is 3)
    timing_cache: Path | None = None  # read before and written after each build; does not change results

    def flags(self) -> dict[str, Any]:
        """The options that decide an engine's content (part of its cache key and manifest)."""
        return {
            "strongly_typed": self.strongly_typed,
            "workspace_gib": self.workspace_gib,
            "optimization_level": self.optimization_level,
        }


@dataclass(frozen=True)
class StagePlan:
    """One stage's build, decided before TensorRT is touched."""

    stage: OnnxStage
    precision: str
    passes: tuple[str, ...]
    profiles: dict[str, Any]


def plan_builds(
    onnx_dir: str | Path,
    *,
    precision: str | dict[str, str] = "auto",
    stages: list[str] | tuple[str, ...] | None = None,
    options: BuildOptions,
) -> list[StagePlan]:
    """Select stages, resolve the precision policy and check each graph against it (no TensorRT needed)."""
    exported = select_exported(onnx_dir, stages)
    policy = PrecisionPolicy.resolve(policy_config(exported), precision, device="cuda", target="tensorrt")
    plans = []
    for stage in exported:
        want = policy[stage.name]
        check_graph_precision(stage, want, strongly_typed=options.strongly_typed)
        passes = passes_for(stage.precision) if options.strongly_typed else ()
        plans.append(StagePlan(stage, want, passes, profiles_to_json(options.shapes.profiles(stage.spec))))
    return plans


def prepared_graph(plan: StagePlan) -> Any:
    """The graph TensorRT parses for `plan`: the exported one, without its weights, rewritten by the plan's
    passes. Weights stay on disk: the parser resolves them from the export directory."""
    import onnx

    return apply_passes(onnx.load(str(plan.stage.path), load_external_data=False), plan.passes)


def check_plans(plans: list[StagePlan], *, tensorrt: str | tuple[int, int]) -> None:
    """ArtifactMismatchError, naming the nodes, for a graph TensorRT `tensorrt`'s ONNX parser would refuse."""
    for plan in plans:
        check_graph(plan.stage.path, prepared_graph(plan), tensorrt=tensorrt)


def check_graph_precision(stage: OnnxStage, precision: str, *, strongly_typed: bool) -> None:
    """The exported graph must carry the precision asked (strongly typed), or be fp32 (weakly typed)."""
    have = stage.precision
    if strongly_typed and have != precision:
        raise ArtifactMismatchError(
            f"{stage.path.name} is an {have} graph but {precision} was asked for {stage.name}: TensorRT builds "
            f"strongly typed networks, so the precision comes from the graph. Re-export it with "
            f"{export_command(stage.path.parent, stage.name, precision)} (on a GPU: --device cuda), or build "
            f"with --precision {have}"
            + (" (or --weakly-typed on TensorRT 10 with an fp32 graph)" if have == "fp32" else "")
        )
    if not strongly_typed and have != "fp32":
        raise ArtifactMismatchError(
            f"--weakly-typed builds an fp32 graph with TensorRT 10's {precision.upper()} flag, but "
            f"{stage.path.name} is {have}: export it in fp32, or drop --weakly-typed"
        )


def build_engines(
    onnx_dir: str | Path,
    out_dir: str | Path,
    *,
    precision: str | dict[str, str] = "auto",
    stages: list[str] | tuple[str, ...] | None = None,
    options: BuildOptions,
    force: bool = False,
    device: Any = None,
) -> dict[str, Path]:
    """Build `out_dir/<stage>.plan` + `<stage>.json` for each stage; returns {stage: engine path}."""
    trt = import_tensorrt()  # first: without TensorRT nothing below can help
    plans = plan_builds(onnx_dir, precision=precision, stages=stages, options=options)
    _check_typing_supported(trt, options)
    check_plans(plans, tensorrt=trt.__version__)
    target = Target.current(trt, device)
    built = {}
    # TensorRT builds on the current CUDA device: make it the one the manifests name.
    with torch.cuda.device(device if device is not None else torch.cuda.current_device()):
        for i, plan in enumerate(plans, 1):
            log.info("[%d/%d] %s", i, len(plans), plan.stage.name)
            built[plan.stage.name] = build_engine(
                plan, out_dir, trt=trt, target=target, options=options, onnx_dir=onnx_dir, force=force
            )
    return built


def build_engine(
    plan: StagePlan,
    out_dir: str | Path,
    *,
    trt: Any,
    target: Target,
    options: BuildOptions,
    onnx_dir: str | Path,
    force: bool = False,
) -> Path:
    """Build one stage (or keep the engine on disk when its content key matches)."""
    out = engine_path(out_dir, plan.stage.name)
    onnx = onnx_identity(plan.stage.manifest)
    key = cache_key(
        stage=plan.stage.name,
        precision=plan.precision,
        onnx=onnx,
        profiles=plan.profiles,
        flags=options.flags(),
        passes=plan.passes,
        target=target,
    )
    source = weights_source(plan.stage.manifest)
    existing = read_manifest(out)
    # The source too: an engine built before manifests named it is rebuilt once, so the runtime can check it;
    # and the engine file itself must be intact.
    if (
        not force
        and existing is not None
        and (existing.get("cache_key"), existing.get("source")) == (key, source)
        and not artifact_problem(out, existing)
    ):
        log.info("  %s is up to date (content key %s)", out, key[:12])
        return out
    start = time.monotonic()
    engine = _build_plan(trt, plan, options, log_step=_stepper(plan.stage.name, start))
    seconds = round(time.monotonic() - start, 1)
    manifest = engine_manifest(
        stage=plan.stage.name,
        precision=plan.precision,
        onnx=onnx,
        shapes=options.shapes,
        profiles=plan.profiles,
        flags=options.flags(),
        passes=plan.passes,
        target=target,
        onnx_dir=str(onnx_dir),
        source=source,
        build_seconds=seconds,
    )
    write_engine(out, engine, manifest)
    log.info("  %s: %.1f MB in %.1f s", out, out.stat().st_size / 2**20, seconds)
    return out


def write_engine(path: str | Path, engine: Any, manifest: dict[str, Any]) -> None:
    """Write a serialized engine (bytes or TensorRT's IHostMemory) and then its manifest, atomically; the
    manifest records the engine file (`files`), which the runtime checks it against.

    The old manifest goes before the new engine takes its name and the new manifest comes last: at no instant
    does a manifest sit beside an engine it does not describe.
    """
    path = Path(path)
    json.dumps(manifest)  # refuse an unserializable manifest before anything on disk changes
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(memoryview(engine))
        manifest = {**manifest, "files": {"engine": file_record(tmp, name=path.name)}}
        manifest_path(path).unlink(missing_ok=True)
    write_json(manifest_path(path), manifest)


def _check_typing_supported(trt: Any, options: BuildOptions) -> None:
    if not options.strongly_typed and tensorrt_major(trt.__version__) >= 11:
        raise ConfigError(
            f"TensorRT {trt.__version__} builds strongly typed networks only (weak typing and its FP16/BF16 flags "
            "were removed in 11): drop --weakly-typed and export the graph in the precision you want"
        )


def _stepper(stage: str, start: float) -> Callable[[str], None]:
    def step(what: str) -> None:
        log.info("  %s: %s (%.1f s)", stage, what, time.monotonic() - start)

    return step


def _build_plan(trt: Any, plan: StagePlan, options: BuildOptions, *, log_step: Callable[[str], None]) -> Any:
    """Parse, configure and build with TensorRT; returns the serialized engine (IHostMemory)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = construct(trt, "Builder", logger)
    log_step(f"parsing {plan.stage.path.name} ({', '.join(plan.passes) or 'no passes'})")
    network, parser = _parse(trt, builder, logger, plan, strongly_typed=options.strongly_typed)
    config = _builder_config(trt, builder, plan, options)
    log_step(f"building {plan.precision} engine")
    engine = builder.build_serialized_network(network, config)
    del parser  # it owns the weights the network points at: only now may it go
    _require(
        engine,
        f"building {plan.stage.name}",
        "with too little memory, lower --max-size/--max-batch or set --workspace-gib",
    )
    if options.timing_cache is not None:
        _save_timing_cache(config, options.timing_cache)
    return engine


def _require(result: Any, what: str, fix: str) -> Any:
    """`result`, or EngineBuildError when TensorRT answered None or False (it logs the reason itself).

    Identity, not truth: some TensorRT objects define `__bool__` (an optimization profile is "invalid" until
    its shapes are set)."""
    if result is None or result is False:
        raise EngineBuildError(f"TensorRT failed {what} (its log above says why): {fix}")
    return result


def _parse(trt: Any, builder: Any, logger: Any, plan: StagePlan, *, strongly_typed: bool) -> tuple[Any, Any]:
    """The network of the rewritten graph, and the parser that must outlive it."""
    flags = 0
    if strongly_typed and tensorrt_major(trt.__version__) < 11:  # always on (and the flag deprecated) in 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = _require(
        builder.create_network(flags),
        f"creating the network of {plan.stage.name} (creation flags {flags:#x})",
        "out of host memory, or flags this TensorRT does not take: on TensorRT 10 try --weakly-typed with an fp32 "
        "export",
    )
    parser = construct(trt, "OnnxParser", network, logger)
    # Parsed from memory with `path` set to the original file, so the external data resolves from there.
    if not parser.parse(prepared_graph(plan).SerializeToString(), str(plan.stage.path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {plan.stage.path}: {errors}")
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if inputs != set(plan.profiles):
        raise EngineBuildError(
            f"{plan.stage.path.name} has inputs {sorted(inputs)} but its manifest lists {sorted(plan.profiles)}: "
            "the graph and its manifest disagree; re-export the stage"
        )
    return network, parser


def _builder_config(trt: Any, builder: Any, plan: StagePlan, options: BuildOptions) -> Any:
    config = _require(builder.create_builder_config(), "creating a builder config", "out of host memory?")
    if options.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * 2**30))
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    if not options.strongly_typed and plan.precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16 if plan.precision == "fp16" else trt.BuilderFlag.BF16)
    if config.add_optimization_profile(_profile(builder, plan)) < 0:  # its index, or -1
        raise EngineBuildError(
            f"TensorRT refused the optimization profile of {plan.stage.name}: {plan.profiles}"
        )
    if options.timing_cache is not None:
        data = options.timing_cache.read_bytes() if options.timing_cache.is_file() else b""
        cache = _require(
            config.create_timing_cache(data),
            f"reading the timing cache {options.timing_cache}",
            "delete it (it is only a cache) or pick another with --timing-cache",
        )
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            raise EngineBuildError(
                f"the timing cache {options.timing_cache} does not fit this TensorRT/GPU: delete it or pick another"
            )
    return config


def _profile(builder: Any, plan: StagePlan) -> Any:
    """The optimization profile of `plan`, every input's min/opt/max set."""
    profile = _require(
        builder.create_optimization_profile(), "creating an optimization profile", "out of memory?"
    )
    for name, p in plan.profiles.items():
        try:  # TensorRT raises (rather than returns False) on inconsistent min/opt/max
            profile.set_shape(name, tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
        except RuntimeError as exc:
            raise EngineBuildError(
                f"{plan.stage.name}: TensorRT refused the profile of {name} {p}: {exc}"
            ) from exc
    if not profile:  # `IOptimizationProfile.__bool__` is TensorRT's own validity check
        raise EngineBuildError(
            f"TensorRT found the optimization profile of {plan.stage.name} invalid: {plan.profiles}"
        )
    return profile


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = _require(
        config.get_timing_cache(), "reading back the timing cache", f"build without --timing-cache {path}"
    )
    with atomic_path(path) as tmp:
        tmp.write_bytes(memoryview(cache.serialize()))
