"""TensorRT against ONNX Runtime, per stage, on random inputs at several shapes of each engine's profile.

The TensorRT side runs through the `tensorrt` backend's own runner (the code the pipeline uses), not a separate
harness; Polygraphy's `Comparator` would do the same job with its own runner, which is why it is not used. The
reference is ONNX Runtime on the same exported graph through `passes.to_fp32`: fp32 arithmetic, but weights
and every intermediate the graph stores in fp16/bf16 rounded to that type, as GPU kernels store them. So the
CPU provider can run graphs exported for the GPU, and the difference measured is TensorRT's own (kernel
choice, fusion, accumulation order, TF32).

The error is max |TensorRT - reference| / max |reference| per output; tolerances are per precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascade_trt.engines.profiles import BuildShapes
from cascade_trt.stages import SIZE_UNIT, StageSpec

# fp32 engines may use TF32 (TensorRT's default), which keeps 10 mantissa bits; fp16 keeps 10, bf16 keeps 7.
TOLERANCES = {"fp32": 1e-2, "fp16": 2e-2, "bf16": 6e-2}
_NUMPY = {"int64": np.int64, "int32": np.int32, "float32": np.float32}


@dataclass(frozen=True)
class Comparison:
    stage: str
    output: str
    batch: int
    height: int
    width: int
    error: float
    tolerance: float
    finite: bool

    @property
    def ok(self) -> bool:
        return self.finite and self.error <= self.tolerance

    def line(self) -> str:
        verdict = "ok" if self.ok else ("NON-FINITE" if not self.finite else "FAIL")
        return (
            f"{self.stage:13s} {self.output:17s} batch {self.batch:2d} {self.height:5d}x{self.width:<5d} "
            f"error {self.error:.2e} (tolerance {self.tolerance:.0e}) {verdict}"
        )


def relative_error(reference: np.ndarray, got: np.ndarray) -> tuple[float, bool]:
    """(max |got - reference| / max |reference|, whether `got` is all finite)."""
    reference = np.asarray(reference, np.float64)
    got = np.asarray(got, np.float64)
    if reference.shape != got.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, got {got.shape}")
    finite = bool(np.isfinite(got).all())
    scale = max(float(np.abs(reference).max(initial=0.0)), 1e-12)
    diff = np.abs(np.nan_to_num(got, nan=np.inf) - reference)
    return float(diff.max(initial=0.0)) / scale, finite


def check_points(spec: StageSpec, shapes: BuildShapes) -> list[tuple[int, int, int]]:
    """(model batch, height, width) to test: the profile's minimum, optimum and maximum, and a non-square size
    between them when the range has one. Duplicates are dropped."""
    s, scale = shapes.sizes, shapes.batch_scale(spec)
    lo, opt, hi = shapes.batches.min, shapes.batches.opt * scale, shapes.batches.max * scale
    points = [
        (lo, s.min_height, s.min_width),
        (opt, s.opt_height, s.opt_width),
        (hi, s.max_height, s.max_width),
    ]
    if s.min_height < s.max_height or s.min_width < s.max_width:
        points.append((max(lo, min(hi, 3)), s.min_height, s.max_width))
    if not spec.spatial:
        points = [(b, SIZE_UNIT, SIZE_UNIT) for b, _, _ in points]
    return list(dict.fromkeys(points))


def random_inputs(
    spec: StageSpec, batch: int, height: int, width: int, *, seed: int = 0
) -> dict[str, np.ndarray]:
    """fp32 (or the tensor's fixed dtype) inputs: Gaussian latents, timestep ratios in (0, 1), token ids < 256
    with a full attention mask."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in spec.inputs:
        shape = t.resolve(batch, height, width)
        if t.name == "timestep_ratio":
            out[t.name] = rng.uniform(0.05, 0.95, shape).astype(np.float32)
        elif t.name == "attention_mask":
            out[t.name] = np.ones(shape, _NUMPY[t.dtype])
        elif t.dtype in ("int64", "int32"):
            out[t.name] = rng.integers(0, 256, shape).astype(_NUMPY[t.dtype])
        else:
            out[t.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def reference_session(onnx_file: str | Path, providers: list[Any] | None = None) -> Any:
    """An ONNX Runtime session of the exported graph in fp32 arithmetic with its own fp16/bf16 rounding kept
    (`passes.to_fp32`), on the CPU unless `providers` says otherwise."""
    import tempfile

    import onnx
    import onnxruntime as ort

    from cascade_trt.engines.passes import tensor_types, to_fp32

    types = tensor_types(
        onnx.load(str(onnx_file), load_external_data=False)
    )  # shape inference without weights
    model = to_fp32(onnx.load(str(onnx_file)), types=types)
    providers = providers or ["CPUExecutionProvider"]
    if model.ByteSize() < 2**31 - 2**26:  # protobuf's 2 GiB limit, with a margin
        return ort.InferenceSession(model.SerializeToString(), providers=providers)
    with tempfile.TemporaryDirectory() as tmp:  # ONNX Runtime reads the weights while the session is made
        path = Path(tmp) / "reference.onnx"
        onnx.save(model, path, save_as_external_data=True, location="reference.onnx.data")
        return ort.InferenceSession(str(path), providers=providers)


def compare_outputs(
    stage: str,
    precision: str,
    point: tuple[int, int, int],
    reference: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
) -> list[Comparison]:
    out = []
    for name, ref in reference.items():
        error, finite = relative_error(ref, got[name])
        out.append(
            Comparison(stage, name, *point, error=error, tolerance=TOLERANCES[precision], finite=finite)
        )
    return out


def check_engines(
    onnx_dir: str | Path,
    engine_dir: str | Path,
    *,
    stages: list[str] | None = None,
    device: str = "cuda",
    seed: int = 0,
) -> list[Comparison]:
    """Compare every engine with ONNX Runtime at `check_points`; needs TensorRT and a CUDA GPU."""
    import torch

    from cascade_trt.backends.tensorrt_backend import TensorRTOptions, engine_dtype, load_runners
    from cascade_trt.engines.availability import import_tensorrt
    from cascade_trt.engines.onnx_stage import select_exported

    import_tensorrt()  # first: without TensorRT nothing below can help
    exported = select_exported(onnx_dir, stages)
    specs = {s.name: s.spec for s in exported}
    options = TensorRTOptions(engine_dir=engine_dir, onnx_dir=onnx_dir)
    dtypes = {name: engine_dtype(engine_dir, name) for name in specs}  # each engine as it was built
    runners = load_runners(specs, options=options, device=device, dtypes=dtypes)
    results: list[Comparison] = []
    for stage in exported:
        runner = runners[stage.name]
        session = reference_session(stage.path)
        for point in check_points(stage.spec, runner.shapes):
            feeds = random_inputs(stage.spec, *point, seed=seed)
            reference = dict(
                zip(stage.spec.output_names, session.run(list(stage.spec.output_names), feeds), strict=True)
            )
            bindings = runner.allocate(*point)
            for name, value in feeds.items():
                bindings.inputs[name].copy_(torch.from_numpy(value))
            runner.execute(bindings)
            torch.cuda.synchronize(runner.device)
            got = {n: t.float().cpu().numpy() for n, t in bindings.outputs.items()}
            # the engine's compute precision: a weakly typed build of an fp32 graph runs in fp16/bf16 inside
            results.extend(compare_outputs(stage.name, runner.precision, point, reference, got))
    return results
