"""The `tensorrt` backend: runs engines built by `cascade-trt build` (`cascade_trt.engines.builder`).

Factories:

    create_runner(spec, *, dtype, device, engine_dir=None, artifact_dir=None, onnx_dir=None, memory=None)
        -> TensorRTRunner      the registry's entry point (`artifact_dir` is the pipeline's engine_dir)
    load_runners(specs, engine_dir, device, *, dtypes=None, onnx_dir=None)
        -> dict[str, TensorRTRunner]   every stage at once, sharing one activation buffer

How it runs, and why:

* Each engine is checked against its manifest (TensorRT version, GPU, precision and, given `onnx_dir`, the ONNX
  it was built from) and deserialized once; a mismatch is an `ArtifactMismatchError` with the rebuild command.
* Contexts are created with `ExecutionContextAllocationStrategy.USER_MANAGED` and all point at one activation
  buffer (`ActivationMemory`) sized to the largest engine: stages run one after another on one stream, so
  they never need their scratch memory at the same time.
* `allocate` (the base class) makes static torch tensors once per shape; `bind` sets the input shapes
  (`set_input_shape`) and every tensor address (`set_tensor_address`) once. `execute` only enqueues
  `execute_async_v3` on torch's current stream: no host sync, no allocation, no per-call address resets, so
  the loop captures it in a CUDA graph like any other backend (`capturable = True`; the loop's warm-up runs it
  once before capture, as TensorRT requires).
* A shape outside the engine's profile is a `ShapeError` naming the flag to rebuild with.

Checked API names (TensorRT 10.1+ / 11 Python): `ICudaEngine.device_memory_size_v2`, `create_execution_context`
with `ExecutionContextAllocationStrategy`, `IExecutionContext.set_device_memory(memory, size)`, `set_input_shape`,
`set_tensor_address`, `infer_shapes`, `get_tensor_shape`, `execute_async_v3(stream_handle)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cascade_trt.artifacts import engine_path, read_manifest
from cascade_trt.backends.base import Bindings, StageRunner
from cascade_trt.engines.availability import import_tensorrt
from cascade_trt.engines.manifest import Target, check_engine, onnx_identity
from cascade_trt.engines.onnx_stage import read_onnx_stage
from cascade_trt.engines.profiles import BuildShapes, check_profiles, check_request, profiles_from_json
from cascade_trt.errors import ArtifactMismatchError, BackendUnavailableError
from cascade_trt.precision import DTYPES, NAMES
from cascade_trt.stages import StageSpec

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


class ActivationMemory:
    """One device buffer that every attached context uses as its scratch memory."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.buffer: torch.Tensor | None = None
        self.contexts: list[Any] = []

    @property
    def nbytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel()

    def attach(self, context: Any, size: int) -> None:
        """Point `context` at the shared buffer, growing it (and re-pointing the others) when too small.

        Growth happens while one `load_runners` call loads its engines, before any CUDA graph can have
        captured an address in this buffer.
        """
        self.contexts.append(context)
        if size > self.nbytes:
            self.buffer = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
            for ctx in self.contexts:
                self._point(ctx)
        else:
            self._point(context)

    def _point(self, context: Any) -> None:
        assert self.buffer is not None
        if hasattr(context, "set_device_memory"):  # TensorRT 10.1+: address and size
            context.set_device_memory(self.buffer.data_ptr(), self.buffer.numel())
        else:  # TensorRT 10.0
            context.device_memory = self.buffer.data_ptr()


@dataclass
class _Bound:
    """What one `Bindings` set on the context: input shapes and tensor addresses."""

    shapes: dict[str, tuple[int, ...]]
    addresses: dict[str, int]


class TensorRTRunner(StageRunner):
    """One stage's engine with its execution context."""

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
    ) -> None:
        trt = import_tensorrt()
        device = _cuda_device(device)
        super().__init__(spec, dtype, device)
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
        self.shapes = BuildShapes.from_json(manifest["shapes"])
        self.profiles = profiles_from_json(manifest["profiles"])
        with torch.cuda.device(device):
            self._runtime = trt.Runtime(_logger(trt))
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise ArtifactMismatchError(f"TensorRT could not deserialize {self.path}: rebuild it")
            self._check_io(trt)
            self.context = self.engine.create_execution_context(
                trt.ExecutionContextAllocationStrategy.USER_MANAGED
            )
        if self.context is None:
            raise BackendUnavailableError(f"TensorRT could not create an execution context for {self.path}")
        # A runner made alone owns its buffer; `load_runners` passes one for all stages. Never a process-wide
        # one: growing it after another pipeline captured CUDA graphs would free memory those graphs use.
        (memory or ActivationMemory(device)).attach(self.context, int(self.engine.device_memory_size_v2))
        self._active: _Bound | None = None

    def check_shape(self, batch: int, height: int, width: int) -> None:
        check_request(self.spec, self.shapes, batch, height, width, engine=self.name)
        check_profiles(self.spec, self.profiles, batch, height, width, engine=self.name)

    def bind(self, bindings: Bindings) -> _Bound:
        tensors = {**bindings.inputs, **bindings.outputs}
        for name, t in tensors.items():
            if not t.is_contiguous() or t.device != self.device:
                raise ArtifactMismatchError(
                    f"{self.name}: {name} must be a contiguous tensor on {self.device}"
                )
        bound = _Bound(
            {n: tuple(t.shape) for n, t in bindings.inputs.items()},
            {n: t.data_ptr() for n, t in tensors.items()},
        )
        self._apply(bound)
        missing = self.context.infer_shapes()
        if missing:
            raise ArtifactMismatchError(f"{self.name}: TensorRT could not infer shapes from inputs {missing}")
        for name, t in bindings.outputs.items():
            have = tuple(self.context.get_tensor_shape(name))
            if have != tuple(t.shape):
                raise ArtifactMismatchError(
                    f"{self.name}: engine gives {name} of shape {list(have)}, the stage spec says {list(t.shape)}: "
                    "the engine was built from another graph; rebuild it"
                )
        return bound

    def execute(self, bindings: Bindings) -> None:
        if self._active is not bindings.state:  # another shape ran since: restore its shapes and addresses
            self._apply(bindings.state)
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed (TensorRT's log says why)")

    def _apply(self, bound: _Bound) -> None:
        for name, shape in bound.shapes.items():
            if not self.context.set_input_shape(name, shape):
                raise ArtifactMismatchError(f"{self.name}: TensorRT refused shape {list(shape)} for {name}")
        for name, address in bound.addresses.items():
            if not self.context.set_tensor_address(name, address):
                raise ArtifactMismatchError(f"{self.name}: TensorRT refused the address of {name}")
        self._active = bound

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


def create_runner(
    spec: StageSpec,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    engine_dir: str | Path | None = None,
    artifact_dir: str | Path | None = None,
    onnx_dir: str | Path | None = None,
    memory: ActivationMemory | None = None,
    **_: Any,
) -> TensorRTRunner:
    """Registry factory: runs `engine_dir/<stage>.plan` (`artifact_dir` is accepted as the same thing)."""
    import_tensorrt()  # the install hint comes first, whatever else is wrong
    directory = engine_dir if engine_dir is not None else artifact_dir
    if directory is None:
        raise ArtifactMismatchError(
            f"the tensorrt backend runs built engines: pass engine_dir for {spec.name} (`cascade-trt build`)"
        )
    return TensorRTRunner(
        spec, engine_path(directory, spec.name), dtype=dtype, device=device, onnx_dir=onnx_dir, memory=memory
    )


def load_runners(
    specs: dict[str, StageSpec],
    engine_dir: str | Path,
    device: torch.device | str,
    *,
    dtypes: dict[str, torch.dtype] | None = None,
    onnx_dir: str | Path | None = None,
) -> dict[str, TensorRTRunner]:
    """A runner per stage, sharing one activation buffer; dtypes default to each engine's own precision."""
    import_tensorrt()
    memory = ActivationMemory(_cuda_device(device))
    runners = {}
    for name, spec in specs.items():
        dtype = (dtypes or {}).get(name) or _manifest_dtype(engine_dir, name)
        runners[name] = create_runner(
            spec, dtype=dtype, device=device, engine_dir=engine_dir, onnx_dir=onnx_dir, memory=memory
        )
    return runners


def _manifest_dtype(engine_dir: str | Path, stage: str) -> torch.dtype:
    path = engine_path(engine_dir, stage)
    manifest = read_manifest(path)
    check_engine(manifest, path)  # missing or incomplete: says how to build it
    return DTYPES[manifest["precision"]]
