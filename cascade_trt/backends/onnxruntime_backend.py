"""The `onnxruntime` backend: runs the exported `<stage>.onnx` graphs with IO binding to the static tensors.

Each shape is bound once (`bind`): ONNX Runtime reads the loop's input tensors and writes its output tensors in
place, by address, with no copies. CPU here; on a CUDA device the CUDA execution provider where onnxruntime-gpu
is installed.

How a step runs on CUDA, and why (written against ONNX Runtime's documented API; **never run here**: the
workplace has no GPU with onnxruntime-gpu):

* The CUDA provider gets `user_compute_stream`, a non-default stream the runners of one pipeline share (ONNX
  Runtime treats stream 0 as "none"), and every run `disable_synchronize_execution_providers=1`: `execute`
  orders that stream after torch's current one and torch's after it with events, so a step needs no host
  synchronisation. Only when the providers are the CUDA (and CPU) ones, which take the stream; with others (the
  TensorRT provider, say) `execute` synchronises torch's stream with the host first and ONNX Runtime its own
  after the run, as before.
* `capturable` stays False: a `run_with_iobinding` does host work CUDA stream capture forbids (shape nodes on
  the CPU copy back to the host, stream clean-up synchronises), and ONNX Runtime documents no capture from the
  outside. Its own CUDA graphs are the supported way: pass `("CUDAExecutionProvider", {"enable_cuda_graph":
  "1"})` in `providers` and each bound shape gets its own `gpu_graph_id` (from 1; ONNX Runtime captures a
  graph on the first runs of an id and replays it after). That needs every node on the CUDA provider, which
  ONNX Runtime checks when the session is made.
* IO binding's element types: numpy dtypes, which every supported ONNX Runtime takes (ONNX type numbers only
  from 1.20: 1.19.2 answers "Not a valid numpy type"). numpy has no bfloat16 that ONNX Runtime takes (nor
  ml_dtypes' one), so a bf16 graph needs onnxruntime 1.20 or newer, where the ONNX type number (16) is
  accepted; older versions refuse such a graph when it is loaded, with the upgrade command.

Before a session opens, the graph's files are checked against its manifest (`artifacts.verify_artifact`:
sizes and sampled chunks, every byte with `verify`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cascade_trt.artifacts import onnx_path, verify_artifact
from cascade_trt.backends.base import Bindings, StageRunner, artifact_dir
from cascade_trt.errors import (
    ArtifactMismatchError,
    BackendUnavailableError,
    ConfigError,
    PrecisionError,
    ShapeError,
)
from cascade_trt.precision import NAMES
from cascade_trt.provenance import check_exported_sources
from cascade_trt.stages import COMPUTE, StageSpec

if TYPE_CHECKING:
    from cascade_trt.components import CascadeComponents

# IO binding element types: numpy dtypes, taken by every ONNX Runtime supported; bfloat16 has none, so its ONNX
# TensorProto number, taken from ONNX Runtime 1.20 (`BF16_MIN_VERSION`).
ELEMENT_TYPES: dict[torch.dtype, Any] = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.bfloat16: 16,
}
BF16_MIN_VERSION = (1, 20)
# ONNX Runtime's type strings of the dtypes a stage uses.
ORT_TYPES = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(bfloat16)": torch.bfloat16,
    "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32,
}
CPU_ONLY = ("CPUExecutionProvider",)
CUDA = "CUDAExecutionProvider"
# Providers that run on the pipeline's stream when given it: the CUDA one, and the CPU one (synchronous).
STREAM_PROVIDERS = (CUDA, *CPU_ONLY)


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    """Where the exported graphs are (required), ONNX Runtime's execution providers (None: CPU on a CPU
    device, CUDA then CPU on a GPU), and whether to check every byte of the graphs against their manifests.
    The CUDA provider's `user_compute_stream` is the backend's to set."""

    onnx_dir: Path | None = None
    providers: tuple[Any, ...] | None = None  # names, or (name, options) pairs, as ONNX Runtime takes them
    verify: bool = False  # sha256 of every file; sizes and sampled chunks are always checked

    def __post_init__(self) -> None:
        needed = "the onnxruntime backend runs the graphs `cascade-trt export` writes"
        object.__setattr__(self, "onnx_dir", artifact_dir(self.onnx_dir, "onnx_dir", needed))
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))


@dataclass
class OrtBinding:
    """What one bound shape runs with: the IO binding over the static tensors and the run's options."""

    io: Any
    run_options: Any
    graph_id: int | None = None  # this shape's ONNX Runtime CUDA graph (`gpu_graph_id`), when it makes them


class OnnxRuntimeRunner(StageRunner):
    """One exported stage in an `onnxruntime.InferenceSession`.

    `stream` (a non-default CUDA stream) is where the session runs when its providers take one (`stream_ordered`);
    `load_runners` gives all stages of a pipeline the same one.
    """

    capturable = False  # ONNX Runtime's own CUDA graphs instead (module docstring)

    def __init__(
        self,
        spec: StageSpec,
        path: str | Path,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        providers: tuple[Any, ...] | list[Any] | None = None,
        stream: torch.cuda.Stream | None = None,
        verify: bool = False,
    ) -> None:
        super().__init__(spec, dtype, device)
        import onnxruntime as ort

        self.path = Path(path)
        verify_artifact(self.path, full=verify)  # missing, incomplete or damaged: said with the export to run
        providers = _providers(ort, self.device, providers)
        self.stream = stream if stream_ordered(self.device, providers) else None
        self.providers = with_stream(providers, self.stream.cuda_stream if self.stream is not None else None)
        self.cuda_graphs = self.stream is not None and cuda_graphs_enabled(self.providers)
        self._graph_ids = 0
        self._ort = ort
        options = ort.SessionOptions()
        # Four sessions (one per stage) run one after another, each with its own intra-op pool: threads left
        # spinning by one stage compete with the next stage's. Measured on 2 cores: 0.12 s vs 0.72 s a call.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        self._graph_inputs = {i.name: i for i in self.session.get_inputs()}
        self._graph_outputs = {o.name: o for o in self.session.get_outputs()}
        self._check_names()
        self._check_dtypes()
        check_bindable(ort.__version__, {self.tensor_dtype(t.dtype) for t in spec.tensors}, self.path.name)

    def check_shape(self, batch: int, height: int, width: int, *, image_prompts: int = 1) -> None:
        """ShapeError for a shape the graph's fixed dims cannot take (a graph exported for one size, say)."""
        for t in self.spec.inputs:
            want = t.resolve(batch, height, width, image_prompts=image_prompts)
            have = self._graph_inputs[t.name].shape
            fixed = [(axis, dim) for axis, dim in enumerate(have) if isinstance(dim, int)]
            if len(have) != len(want) or any(want[axis] != dim for axis, dim in fixed):
                prompts = f", {image_prompts} image prompts" if image_prompts != 1 else ""
                raise ShapeError(
                    f"{self.path.name} takes {t.name} of shape {list(have)}, asked {list(want)} "
                    f"(batch {batch}, {height}x{width} px{prompts}): re-export {self.spec.name} with dynamic "
                    "shapes (`cascade-trt export`) or ask for a size and batch the graph was exported for"
                )

    def bind(self, bindings: Bindings) -> OrtBinding:
        io = self.session.io_binding()
        device_type = "cuda" if self.device.type == "cuda" else "cpu"
        device_id = self.device.index or 0
        for group, bind in ((bindings.inputs, io.bind_input), (bindings.outputs, io.bind_output)):
            for name, t in group.items():
                bind(name, device_type, device_id, ELEMENT_TYPES[t.dtype], list(t.shape), t.data_ptr())
        graph_id = None
        if self.cuda_graphs:  # one graph per bound shape, numbered from 1 (ONNX Runtime reserves 0)
            self._graph_ids += 1
            graph_id = self._graph_ids
        options = run_options(self._ort, stream_ordered=self.stream is not None, graph_id=graph_id)
        return OrtBinding(io, options, graph_id)

    def execute(self, bindings: Bindings) -> None:
        state: OrtBinding = bindings.state
        if self.stream is None:
            # On CUDA, ONNX Runtime runs on a stream of its own: the inputs torch wrote must be complete.
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
            self.session.run_with_iobinding(state.io, state.run_options)
            return
        current = torch.cuda.current_stream(self.device)
        if current.cuda_stream == self.stream.cuda_stream:
            self.session.run_with_iobinding(state.io, state.run_options)
            return
        # Events, not host syncs: the session's stream waits for the inputs torch wrote, torch's for the outputs.
        self.stream.wait_stream(current)
        self.session.run_with_iobinding(state.io, state.run_options)
        current.wait_stream(self.stream)

    def _check_names(self) -> None:
        for kind, want, have in (
            ("inputs", self.spec.input_names, self._graph_inputs),
            ("outputs", self.spec.output_names, self._graph_outputs),
        ):
            if set(want) != set(have):
                raise ArtifactMismatchError(
                    f"{self.path} has {kind} {sorted(have)}, {self.spec.name} needs {sorted(want)}: "
                    "it was exported for another stage or version; re-export it"
                )

    def _check_dtypes(self) -> None:
        """The graph's float dtype decides; refuse what the providers cannot run or what was not asked."""
        for t in self.spec.tensors:
            node = self._graph_inputs.get(t.name) or self._graph_outputs[t.name]
            graph_dtype = ORT_TYPES.get(node.type)
            want = self.tensor_dtype(t.dtype)
            if graph_dtype == want:
                continue
            name = NAMES.get(graph_dtype, node.type)
            if (
                t.dtype == COMPUTE
                and graph_dtype in (torch.float16, torch.bfloat16)
                and _cpu_only(self.providers)
            ):
                raise PrecisionError(
                    f"{self.path.name} is a {name} graph, which ONNX Runtime's CPU provider cannot run (no {name} "
                    "kernels for most ops): export with --precision fp32 for CPU, or run on a CUDA device "
                    "with onnxruntime-gpu"
                )
            raise ArtifactMismatchError(
                f"{self.path.name}: {t.name} is {name} in the graph but {NAMES.get(want, want)} was asked: "
                f"pass precision={{'{self.spec.name}': '{name}'}}, or re-export with the precision you want"
            )


def stream_ordered(device: torch.device, providers: list[Any]) -> bool:
    """Whether the session can run on the pipeline's stream: a CUDA device, and only providers that take it."""
    names = [_name(p) for p in providers]
    return device.type == "cuda" and CUDA in names and all(n in STREAM_PROVIDERS for n in names)


def with_stream(providers: list[Any], stream: int | None) -> list[Any]:
    """`providers` with the CUDA provider given `user_compute_stream` (None: unchanged). The stream is the
    backend's: one set by the caller is refused, since `execute` orders work on the runner's own."""
    out = []
    for provider in providers:
        options = dict(provider[1]) if isinstance(provider, tuple) else {}
        if "user_compute_stream" in options:
            raise ConfigError(
                "the onnxruntime backend sets the CUDA provider's user_compute_stream itself (a stream shared "
                "by the pipeline's sessions): drop it from providers"
            )
        if stream is not None and _name(provider) == CUDA:
            provider = (CUDA, {**options, "user_compute_stream": str(stream)})
        out.append(provider)
    return out


def cuda_graphs_enabled(providers: list[Any]) -> bool:
    """Whether the CUDA provider was asked for ONNX Runtime's own CUDA graphs (`enable_cuda_graph`)."""
    for provider in providers:
        if _name(provider) == CUDA and isinstance(provider, tuple):
            return str(provider[1].get("enable_cuda_graph", "0")).lower() in ("1", "true")
    return False


def run_options(ort: Any, *, stream_ordered: bool, graph_id: int | None) -> Any:
    """The `RunOptions` of one bound shape: no host sync at the end of a run on the pipeline's stream, and the
    shape's CUDA graph id."""
    options = ort.RunOptions()
    if stream_ordered:
        options.add_run_config_entry("disable_synchronize_execution_providers", "1")
    if graph_id is not None:
        options.add_run_config_entry("gpu_graph_id", str(graph_id))
    return options


def check_bindable(version: str, dtypes: set[torch.dtype], name: str) -> None:
    """BackendUnavailableError when this ONNX Runtime cannot bind one of `dtypes` (bf16 before 1.20)."""
    if torch.bfloat16 in dtypes and _version(version) < BF16_MIN_VERSION:
        need = ".".join(map(str, BF16_MIN_VERSION))
        raise BackendUnavailableError(
            f"{name} has bfloat16 inputs or outputs, which ONNX Runtime {version} cannot bind (numpy has no "
            f"bfloat16 it accepts; the ONNX type number is taken from {need}): pip install "
            f"'onnxruntime-gpu>={need}' (pip install 'cascade-trt[onnxruntime-gpu]')"
        )


def _version(version: str) -> tuple[int, int]:
    parts = (version.split(".") + ["0", "0"])[:2]
    return tuple(int(p) if p.isdigit() else 0 for p in parts)  # type: ignore[return-value]


def _name(provider: Any) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def _providers(ort: Any, device: torch.device, providers: tuple[Any, ...] | list[Any] | None) -> list[Any]:
    available = ort.get_available_providers()
    if providers is not None:
        missing = [_name(p) for p in providers if _name(p) not in available]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime providers {missing} are not available (installed: {available}): "
                "install onnxruntime-gpu for CUDA/TensorRT (pip install 'cascade-trt[onnxruntime-gpu]')"
            )
        return list(providers)
    if device.type == "cpu":
        return list(CPU_ONLY)
    if CUDA not in available:
        raise BackendUnavailableError(
            f"ONNX Runtime here has no CUDA provider ({available}): install onnxruntime-gpu "
            "(pip install 'cascade-trt[onnxruntime-gpu]') or use device='cpu'"
        )
    return [(CUDA, {"device_id": str(device.index or 0)}), *CPU_ONLY]


def _cpu_only(providers: list[Any]) -> bool:
    return all(_name(p) in CPU_ONLY for p in providers)


def load_runners(
    specs: Mapping[str, StageSpec],
    *,
    options: OnnxRuntimeOptions,
    device: torch.device | str,
    dtypes: Mapping[str, torch.dtype],
    components: CascadeComponents | None = None,
) -> dict[str, OnnxRuntimeRunner]:
    """A runner per stage over `onnx_dir/<stage>.onnx`, all on one CUDA stream of their own on a GPU. Graphs
    exported from other weights than the checkpoints the components were loaded from are refused before any
    session opens."""
    directory, providers = options.onnx_dir, options.providers
    assert directory is not None  # the options refuse None
    check_exported_sources(directory, specs, components.checkpoints if components else None)
    import onnxruntime as ort

    device = torch.device(device)
    providers = _providers(ort, device, providers)  # a missing provider is said before anything else
    # Non-default: ONNX Runtime takes stream 0 for "no stream given". The stages run one after another on it.
    stream = torch.cuda.Stream(device) if stream_ordered(device, providers) else None
    return {
        name: OnnxRuntimeRunner(
            spec,
            onnx_path(directory, name),
            dtype=dtypes[name],
            device=device,
            providers=providers,
            stream=stream,
            verify=options.verify,
        )
        for name, spec in specs.items()
    }
