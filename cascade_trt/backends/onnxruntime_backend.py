"""The `onnxruntime` backend: runs the exported `<stage>.onnx` graphs with IO binding to the static tensors.

Each shape is bound once (`bind`): ONNX Runtime reads the loop's input tensors and writes its output tensors in
place, by address, with no copies. CPU here; on a CUDA device the CUDA (or TensorRT) execution provider where
onnxruntime-gpu is installed. ONNX Runtime's `run` returns to the host when done, so this runner is not
capturable: on CUDA the loop runs it uncaptured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cascade_trt.artifacts import missing_onnx_message, onnx_path, read_manifest
from cascade_trt.backends.base import Bindings, StageRunner, artifact_dir
from cascade_trt.errors import ArtifactMismatchError, BackendUnavailableError, PrecisionError, ShapeError
from cascade_trt.precision import NAMES
from cascade_trt.provenance import check_exported_sources
from cascade_trt.stages import COMPUTE, StageSpec

if TYPE_CHECKING:
    from cascade_trt.components import CascadeComponents

# ONNX TensorProto element types, and ONNX Runtime's type strings, of the dtypes a stage uses.
ONNX_TYPES = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16, torch.int64: 7, torch.int32: 6}
ORT_TYPES = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(bfloat16)": torch.bfloat16,
    "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32,
}
CPU_ONLY = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    """Where the exported graphs are (required), and ONNX Runtime's execution providers (None: CPU on a CPU
    device, CUDA then CPU on a GPU)."""

    onnx_dir: Path | None = None
    providers: tuple[Any, ...] | None = None  # names, or (name, options) pairs, as ONNX Runtime takes them

    def __post_init__(self) -> None:
        needed = "the onnxruntime backend runs the graphs `cascade-trt export` writes"
        object.__setattr__(self, "onnx_dir", artifact_dir(self.onnx_dir, "onnx_dir", needed))
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))


class OnnxRuntimeRunner(StageRunner):
    """One exported stage in an `onnxruntime.InferenceSession`."""

    capturable = False  # `run_with_iobinding` synchronises with the host

    def __init__(
        self,
        spec: StageSpec,
        path: str | Path,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        providers: tuple[Any, ...] | list[Any] | None = None,
    ) -> None:
        super().__init__(spec, dtype, device)
        import onnxruntime as ort

        self.path = Path(path)
        if read_manifest(self.path) is None:
            raise ArtifactMismatchError(missing_onnx_message(self.path, spec.name))
        self.providers = _providers(ort, self.device, providers)
        options = ort.SessionOptions()
        # Four sessions (one per stage) run one after another, each with its own intra-op pool: threads left
        # spinning by one stage compete with the next stage's. Measured on 2 cores: 0.12 s vs 0.72 s a call.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        self._graph_inputs = {i.name: i for i in self.session.get_inputs()}
        self._graph_outputs = {o.name: o for o in self.session.get_outputs()}
        self._check_names()
        self._check_dtypes()

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

    def bind(self, bindings: Bindings) -> Any:
        io = self.session.io_binding()
        device_type = "cuda" if self.device.type == "cuda" else "cpu"
        device_id = self.device.index or 0
        for group, bind in ((bindings.inputs, io.bind_input), (bindings.outputs, io.bind_output)):
            for name, t in group.items():
                bind(name, device_type, device_id, ONNX_TYPES[t.dtype], list(t.shape), t.data_ptr())
        return io

    def execute(self, bindings: Bindings) -> None:
        if self.device.type == "cuda":
            # ONNX Runtime runs on its own stream: the inputs torch wrote must be complete first.
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(bindings.state)

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


def _providers(ort: Any, device: torch.device, providers: tuple[Any, ...] | list[Any] | None) -> list[Any]:
    available = ort.get_available_providers()
    if providers is not None:
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        missing = [n for n in names if n not in available]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime providers {missing} are not available (installed: {available}): "
                "install onnxruntime-gpu for CUDA/TensorRT (pip install 'cascade-trt[onnxruntime-gpu]')"
            )
        return list(providers)
    if device.type == "cpu":
        return list(CPU_ONLY)
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailableError(
            f"ONNX Runtime here has no CUDA provider ({available}): install onnxruntime-gpu "
            "(pip install 'cascade-trt[onnxruntime-gpu]') or use device='cpu'"
        )
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def _cpu_only(providers: list[Any]) -> bool:
    return all((p[0] if isinstance(p, tuple) else p) in CPU_ONLY for p in providers)


def load_runners(
    specs: Mapping[str, StageSpec],
    *,
    options: OnnxRuntimeOptions,
    device: torch.device | str,
    dtypes: Mapping[str, torch.dtype],
    components: CascadeComponents | None = None,
) -> dict[str, OnnxRuntimeRunner]:
    """A runner per stage over `onnx_dir/<stage>.onnx`. Graphs exported from other weights than the
    checkpoints the components were loaded from are refused before any session opens."""
    directory, providers = options.onnx_dir, options.providers
    assert directory is not None  # the options refuse None
    check_exported_sources(directory, specs, components.checkpoints if components else None)
    runners = {}
    for name, spec in specs.items():
        path = onnx_path(directory, name)
        runners[name] = OnnxRuntimeRunner(spec, path, dtype=dtypes[name], device=device, providers=providers)
    return runners
