"""The `tensorrt` backend: runs engines built by `cascade-trt build` (`cascade_trt.engines.builder`).

    load_runners(specs, *, options=TensorRTOptions(engine_dir, onnx_dir), device, dtypes)
        -> dict[str, TensorRTRunner]   every stage at once, sharing one activation buffer

`engine_dtype(engine_dir, stage)` is the precision an engine was built in, for callers that take each engine as
it is (`cascade-trt check`).

How it runs, and why:

* Each engine is checked against its manifest (TensorRT version, GPU, precision, the checkpoint its weights
  come from and, given `onnx_dir`, the ONNX it was built from), its file against the manifest's record of it
  (`artifacts.verify_artifact`), and deserialized once, streamed from the file (`engines.plan_reader`) so a
  multi-GB plan is not held whole in host memory; a mismatch is an `ArtifactMismatchError` with the rebuild
  command.
* `allocate` (the base class) makes static torch tensors once per shape; `bind` creates an execution context
  for that shape (`ExecutionContextAllocationStrategy.USER_MANAGED`) and sets its input shapes
  (`set_input_shape`) and every tensor address (`set_tensor_address`) once. One context per shape because a
  captured CUDA graph holds its context's state for that shape: TensorRT's rule is one context per captured
  graph, the contexts sharing their activation memory.
* Every context of every stage points at one activation buffer (`ActivationMemory`) sized to the largest
  engine, allocated once after all engines are loaded: stages and shapes run one after another on one stream,
  so they never need scratch memory at the same time, and the buffer never moves under a captured graph.
* `execute` only enqueues `execute_async_v3` on torch's current stream: no host sync, no allocation, no
  per-call address resets, so the loop captures it in a CUDA graph like any other backend (`capturable =
  True`; the loop's warm-up runs it once before capture, as TensorRT requires). Uncaptured calls on the legacy
  default stream go to a side stream instead, where TensorRT adds no device-wide syncs.
* A shape outside the engine's profile is a `ShapeError` naming the flag to rebuild with.

Checked API names (TensorRT 10.1+ / 11 Python; 10.0 lacks the `_v2` size and the sized `set_device_memory`,
hence the 10.1 floor): `Runtime(logger)` (raises, not None, when it cannot be made), `deserialize_cuda_engine`
(None on failure), `ICudaEngine.device_memory_size_v2`, `create_execution_context` with
`ExecutionContextAllocationStrategy` (None on failure), `IExecutionContext.set_device_memory(memory, size)`,
`set_input_shape` and `set_tensor_address` (False on failure), `infer_shapes` (the names it could not infer),
`get_tensor_shape`, `execute_async_v3(stream_handle)` (False on failure). Never run against TensorRT here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cascade_trt.artifacts import engine_path, export_command, read_manifest, verify_artifact
from cascade_trt.backends.base import Bindings, StageRunner, artifact_dir
from cascade_trt.engines.availability import construct, import_tensorrt
from cascade_trt.engines.manifest import Target, check_engine, io_precision, onnx_identity, rebuild_command
from cascade_trt.engines.onnx_stage import read_onnx_stage
from cascade_trt.engines.plan_reader import deserialize_plan
from cascade_trt.engines.profiles import BuildShapes, check_profiles, check_request, profiles_from_json
from cascade_trt.errors import ArtifactMismatchError, BackendUnavailableError, CascadeError, ConfigError
from cascade_trt.precision import DTYPES, NAMES
from cascade_trt.provenance import check_exported_sources, check_source
from cascade_trt.stages import StageSpec

if TYPE_CHECKING:
    from cascade_trt.checkpoints import CheckpointPair
    from cascade_trt.components import CascadeComponents

# TensorRT DataType member names -> torch dtypes.
TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT64": torch.int64,
    "INT32": torch.int32,
    "INT8": torch.int8,
    "BOOL": torch.bool,
}
_LOGGER: Any = None


class EngineExecutionError(CascadeError, RuntimeError):
    """TensorRT refused to enqueue an engine (`execute_async_v3` returned False); its log says why."""


@dataclass(frozen=True)
class TensorRTOptions:
    """Where the engines are (required), and optionally the ONNX export they were built from: each engine is
    then checked to be built from those very graphs, and the graphs to come from the given checkpoints.
    `verify` checks every byte of each engine file against its manifest, not only its size and sampled chunks."""

    engine_dir: Path | None = None
    onnx_dir: Path | None = None
    verify: bool = False  # sha256 of every engine file; sizes and sampled chunks are always checked

    def __post_init__(self) -> None:
        needed = "the tensorrt backend runs the engines `cascade-trt build` writes"
        object.__setattr__(self, "engine_dir", artifact_dir(self.engine_dir, "engine_dir", needed))
        object.__setattr__(self, "onnx_dir", Path(self.onnx_dir) if self.onnx_dir is not None else None)


class ActivationMemory:
    """One device buffer that every execution context of a pipeline uses as its scratch memory.

    Engines `reserve` their size while they load; the buffer is allocated when the first context attaches and
    never moves or grows after that, so a CUDA graph that captured its address stays valid. Contexts attached
    to it must never run concurrently (the pipeline runs its stages one after another on one stream).
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.nbytes = 0
        self.buffer: torch.Tensor | None = None

    def reserve(self, size: int) -> None:
        """Make the buffer at least `size` bytes; only before any context is attached."""
        if size <= self.nbytes:
            return
        if self.buffer is not None:
            raise ConfigError(
                f"an engine needing {size} bytes of activation memory was loaded after contexts started using a "
                f"{self.nbytes}-byte shared buffer: load every engine before running any (`load_runners` does)"
            )
        self.nbytes = size

    def attach(self, context: Any) -> None:
        """Point `context` at the buffer (TensorRT 10.1+: address and size)."""
        if self.buffer is None:
            self.buffer = torch.empty(max(self.nbytes, 1), dtype=torch.uint8, device=self.device)
        context.set_device_memory(self.buffer.data_ptr(), self.nbytes)


class TensorRTRunner(StageRunner):
    """One stage's engine, with one execution context per bound shape."""

    capturable = True

    def __init__(
        self,
        spec: StageSpec,
        path: str | Path,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        onnx_dir: str | Path | None = None,
        memory: ActivationMemory | None = None,
        checkpoints: CheckpointPair | None = None,
        verify: bool = False,
    ) -> None:
        trt = import_tensorrt()
        device = _cuda_device(device)
        self.path = Path(path)
        self.name = self.path.name
        manifest = read_manifest(self.path)
        onnx = onnx_identity(read_onnx_stage(onnx_dir, spec.name).manifest) if onnx_dir is not None else None
        check_engine(
            manifest,
            self.path,
            target=Target.current(trt, device),
            precision=NAMES.get(dtype, str(dtype)),
            onnx=onnx,
        )
        assert manifest is not None  # check_engine refuses a missing one
        check_engine_source(manifest, self.path, checkpoints)
        verify_artifact(self.path, full=verify)
        #: the precision the engine computes in; `dtype` is that of its IO (fp32 for a weakly typed build)
        self.precision: str = manifest["precision"]
        super().__init__(spec, DTYPES[io_precision(manifest)], device)
        self.shapes = BuildShapes.from_json(manifest["shapes"])
        self.profiles = profiles_from_json(manifest["profiles"])
        self._trt = trt
        with torch.cuda.device(device):
            self._runtime = construct(trt, "Runtime", _logger(trt))
            rebuild = rebuild_command(manifest, self.path)
            self.engine = deserialize_plan(trt, self._runtime, self.path, rebuild=rebuild)
            self._check_io(trt)
            # TensorRT's enqueue on the legacy default stream adds device-wide syncs: uncaptured calls made
            # there run on this stream instead (captured steps already run on a side stream).
            self._stream = torch.cuda.Stream(device)
        # A runner made alone owns its buffer; `load_runners` passes one for all stages. Never a process-wide
        # one: growing it after another pipeline captured CUDA graphs would free memory those graphs use.
        self.memory = memory or ActivationMemory(device)
        self.memory.reserve(int(self.engine.device_memory_size_v2))  # the largest over the engine's profiles

    @property
    def compute_dtype(self) -> torch.dtype:
        return DTYPES[self.precision]  # not `dtype` for a weakly typed build, whose IO stays fp32

    def check_shape(self, batch: int, height: int, width: int, *, image_prompts: int = 1) -> None:
        extents = dict(image_prompts=image_prompts, engine=self.name)
        check_request(self.spec, self.shapes, batch, height, width, **extents)
        check_profiles(self.spec, self.profiles, batch, height, width, **extents)

    def bind(self, bindings: Bindings) -> Any:
        """A new execution context for this shape, its input shapes and tensor addresses set once.

        One context per shape, not one per engine re-pointed between shapes: a CUDA graph captures the context's
        internal state for its shape, so two captured shapes must never share a context (TensorRT's guide: one
        context per captured graph, all sharing the activation memory). The context is `bindings.state`.
        """
        tensors = {**bindings.inputs, **bindings.outputs}
        self._check_tensors(tensors)
        with torch.cuda.device(self.device):
            context = self.engine.create_execution_context(
                self._trt.ExecutionContextAllocationStrategy.USER_MANAGED
            )
        if context is None:
            raise BackendUnavailableError(
                f"TensorRT could not create an execution context for {self.path} (its log above says why; "
                "out of host memory, typically)"
            )
        self.memory.attach(context)
        for name, t in bindings.inputs.items():
            if not context.set_input_shape(name, tuple(t.shape)):
                raise ArtifactMismatchError(f"{self.name}: TensorRT refused shape {list(t.shape)} for {name}")
        for name, t in tensors.items():
            if not context.set_tensor_address(name, t.data_ptr()):
                raise ArtifactMismatchError(f"{self.name}: TensorRT refused the address of {name}")
        self._check_output_shapes(context, bindings.outputs)
        return context

    def execute(self, bindings: Bindings) -> None:
        context = bindings.state
        current = torch.cuda.current_stream(self.device)
        if current.cuda_stream != 0:
            ok = context.execute_async_v3(current.cuda_stream)
        else:  # the legacy default stream: enqueue on ours, ordered after and before the caller's work
            self._stream.wait_stream(current)
            ok = context.execute_async_v3(self._stream.cuda_stream)
            current.wait_stream(self._stream)
        if not ok:
            raise EngineExecutionError(
                f"{self.name}: TensorRT refused to enqueue it (execute_async_v3 returned False; its log says why)"
            )

    def _check_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            if not t.is_contiguous() or t.device != self.device:
                raise ArtifactMismatchError(
                    f"{self.name}: {name} must be a contiguous tensor on {self.device}"
                )

    def _check_output_shapes(self, context: Any, outputs: Mapping[str, torch.Tensor]) -> None:
        """Every input shape is known to the context, and it gives each output the shape of its static tensor."""
        missing = context.infer_shapes()
        if missing:
            raise ArtifactMismatchError(f"{self.name}: TensorRT could not infer shapes from inputs {missing}")
        for name, t in outputs.items():
            have = tuple(context.get_tensor_shape(name))
            if have != tuple(t.shape):
                raise ArtifactMismatchError(
                    f"{self.name}: engine gives {name} of shape {list(have)}, the stage spec says {list(t.shape)}: "
                    "the engine was built from another graph; rebuild it"
                )

    def _check_io(self, trt: Any) -> None:
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names != {t.name for t in self.spec.tensors}:
            raise ArtifactMismatchError(
                f"{self.name} has tensors {sorted(names)}, {self.spec.name} needs "
                f"{sorted(t.name for t in self.spec.tensors)}: rebuild it from this export"
            )
        for t in self.spec.tensors:
            have = TORCH_DTYPES.get(self.engine.get_tensor_dtype(t.name).name)
            want = self.tensor_dtype(t.dtype)
            is_input = self.engine.get_tensor_mode(t.name) == trt.TensorIOMode.INPUT
            if have != want or is_input != (t in self.spec.inputs):
                raise ArtifactMismatchError(
                    f"{self.name}: {t.name} is {'an input' if is_input else 'an output'} of dtype {have} in the "
                    f"engine, the spec wants {want}: rebuild it with the precision you run"
                )


def check_engine_source(manifest: dict[str, Any], engine: Path, checkpoints: CheckpointPair | None) -> None:
    """ArtifactMismatchError when the engine's weights come from another checkpoint than `checkpoints` (its
    manifest's `source`, copied from the export at build time), naming the export and build that redo it."""
    onnx_dir = manifest.get("onnx_dir", "ONNX_DIR")
    check_source(
        manifest.get("source"),
        checkpoints,
        manifest["stage"],
        artifact=f"{engine} was built",
        remedy=(
            f"re-export it from this checkpoint with {export_command(onnx_dir, manifest['stage'])}, then rebuild "
            f"it: `{rebuild_command(manifest, engine)}`"
        ),
    )


def _cuda_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"the tensorrt backend runs on an NVIDIA GPU, asked device={str(device)!r}"
            + ("" if torch.cuda.is_available() else " and torch sees no CUDA device")
            + ": use device='cuda', or the torch/onnxruntime backend on CPU"
        )
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def _logger(trt: Any) -> Any:
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def load_runners(
    specs: Mapping[str, StageSpec],
    *,
    options: TensorRTOptions,
    device: torch.device | str,
    dtypes: Mapping[str, torch.dtype],
    components: CascadeComponents | None = None,
) -> dict[str, TensorRTRunner]:
    """A runner per stage over `engine_dir/<stage>.plan`, all sharing one activation buffer; each engine must
    have been built in `dtypes[stage]` (`engine_dtype` reads what it was built in) and, when the components
    come from checkpoints, from their weights (with or without `onnx_dir`)."""
    import_tensorrt()  # the install hint comes first, whatever else is wrong
    assert options.engine_dir is not None  # the options refuse None
    checkpoints = components.checkpoints if components else None
    if options.onnx_dir is not None:
        check_exported_sources(options.onnx_dir, specs, checkpoints)
    memory = ActivationMemory(_cuda_device(device))
    return {
        name: TensorRTRunner(
            spec,
            engine_path(options.engine_dir, name),
            dtype=dtypes[name],
            device=device,
            onnx_dir=options.onnx_dir,
            memory=memory,
            checkpoints=checkpoints,
            verify=options.verify,
        )
        for name, spec in specs.items()
    }


def engine_dtype(engine_dir: str | Path, stage: str) -> torch.dtype:
    """The precision the engine of `stage` was built in; ArtifactMismatchError with the build command when it
    is missing or incomplete."""
    path = engine_path(engine_dir, stage)
    manifest = read_manifest(path)
    check_engine(manifest, path)
    assert manifest is not None  # check_engine refuses a missing one
    return DTYPES[manifest["precision"]]
