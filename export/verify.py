"""Check an exported model: the ONNX checker, its IO against the spec, and ONNX Runtime against PyTorch.

ONNX Runtime's CPU provider has no fp16/bf16 kernels for most ops (it would insert casts or fail deep inside a
session), so `open_session` refuses a reduced-precision graph on CPU-only providers up front, with a
`PrecisionError` that says to export fp32 for CPU. The check reads the graph's own IO types, so it holds
whatever the manifest or the caller claims.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cascade_trt.errors import ArtifactMismatchError, BackendUnavailableError, PrecisionError
from cascade_trt.export.inputs import example_inputs
from cascade_trt.stages import StageSpec

CPU_ONLY = ("CPUExecutionProvider",)
# (batch, height, width, image prompts) no export traces at (batch 2, 256x384, 5 image prompts): non-square
# both ways, batch 1 and > 2, one image prompt (a text-only call) and two.
CHECK_SHAPES = ((3, 128, 256, 1), (1, 512, 384, 2))


def check_model(path: str | Path) -> None:
    """`onnx.checker` by path, which is what follows external data (and models over 2 GB)."""
    import onnx

    onnx.checker.check_model(str(path))


def graph_io(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Names, dtypes and dims (ints or dim names) of the graph's inputs and outputs; weights are not read."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def record(value: Any) -> dict[str, Any]:
        tt = value.type.tensor_type
        dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tt.shape.dim]
        return {
            "name": value.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name,
            "dims": dims,
        }

    return {
        "inputs": [record(v) for v in model.graph.input],
        "outputs": [record(v) for v in model.graph.output],
    }


def open_session(path: str | Path, *, providers: Sequence[str] = CPU_ONLY) -> Any:
    """An ONNX Runtime session; a `PrecisionError` for fp16/bf16 graphs on CPU-only providers."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailableError(
            "onnxruntime is not installed: pip install 'cascade-trt[export]'"
        ) from exc
    if all(p == "CPUExecutionProvider" for p in providers):
        io = graph_io(path)
        reduced = sorted({t["dtype"] for t in io["inputs"] + io["outputs"]} & {"float16", "bfloat16"})
        if reduced:
            raise PrecisionError(
                f"{Path(path).name} is a {'/'.join(reduced)} graph: ONNX Runtime's CPU provider has no kernels "
                "for it. Export with --precision fp32 to run on CPU, or run it with the CUDA or TensorRT provider."
            )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=list(providers))


def run_session(session: Any, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    feeds = {name: value.detach().cpu().numpy() for name, value in inputs.items()}
    return dict(zip(names, session.run(names, feeds), strict=True))


def relative_error(actual: np.ndarray | torch.Tensor, expected: np.ndarray | torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖, in float64."""
    a, b = (_float64(x) for x in (actual, expected))
    if a.shape != b.shape:
        raise ArtifactMismatchError(f"shape {tuple(a.shape)} != expected {tuple(b.shape)}")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _float64(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime vs PyTorch for one stage at one shape."""

    stage: str
    batch: int
    height: int
    width: int
    image_prompts: int
    errors: dict[str, float]  # output name -> relative error
    shapes: dict[str, tuple[int, ...]]  # output name -> shape ONNX Runtime returned


def compare_with_torch(
    session: Any,
    module: nn.Module,
    spec: StageSpec,
    *,
    batch: int,
    height: int,
    width: int,
    image_prompts: int = 1,
    seed: int = 1,
) -> Parity:
    """Run the same inputs through ONNX Runtime and the (fp32) wrapper module."""
    inputs = example_inputs(
        module,
        spec,
        batch=batch,
        height=height,
        width=width,
        dtype=torch.float32,
        image_prompts=image_prompts,
        seed=seed,
    )
    with torch.no_grad():
        expected = module(*inputs.values())
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = run_session(session, inputs)
    errors = {
        t.name: relative_error(actual[t.name], e.float()) for t, e in zip(spec.outputs, expected, strict=True)
    }
    shapes = {name: tuple(value.shape) for name, value in actual.items()}
    return Parity(spec.name, batch, height, width, image_prompts, errors, shapes)


def verify_export(
    path: str | Path,
    module: nn.Module,
    spec: StageSpec,
    *,
    shapes: Sequence[tuple[int, int, int, int]] = CHECK_SHAPES,
    tolerance: float = 1e-4,
) -> list[Parity]:
    """Checker + ONNX Runtime parity at `shapes` (batch, height, width, image prompts); raises when any check
    fails."""
    check_model(path)
    io = graph_io(path)
    names = ([t["name"] for t in io["inputs"]], [t["name"] for t in io["outputs"]])
    if names != (list(spec.input_names), list(spec.output_names)):
        raise ArtifactMismatchError(f"{path}: graph IO {names} differs from the {spec.name} spec")
    session = open_session(path)
    results = []
    for batch, height, width, prompts in shapes:
        parity = compare_with_torch(
            session, module, spec, batch=batch, height=height, width=width, image_prompts=prompts
        )
        worst = max(parity.errors.values())
        if not worst <= tolerance:  # also catches NaN
            raise ArtifactMismatchError(
                f"{spec.name} at batch {batch}, {height}x{width}, {prompts} image prompt(s): ONNX Runtime "
                f"differs from PyTorch by {worst:.2e} (tolerance {tolerance:.0e})"
            )
        results.append(parity)
    return results
