"""The engine path on real tiny exports (Stage A and Stage B in bf16, from the exporter): the TensorRT passes
applied to the real graphs, the fp32 reference `cascade-trt check` uses against the PyTorch modules, the build
plan read from the real manifests, and the `build`/`check` commands without TensorRT."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from cascade_trt.cli import main
from cascade_trt.engines.builder import BuildOptions, plan_builds
from cascade_trt.engines.check import (
    TOLERANCES,
    check_points,
    compare_outputs,
    random_inputs,
    reference_session,
    relative_error,
)
from cascade_trt.engines.onnx_stage import read_onnx_stage
from cascade_trt.engines.passes import apply_passes, passes_for, tensor_types, to_fp32
from cascade_trt.engines.profiles import BuildShapes
from cascade_trt.errors import ShapeError
from cascade_trt.stages import STAGE_NAMES, BatchRange, SizeRange, stage_specs

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
STAGES = ("stage_a", "stage_b")
# Shapes none of the exports traced at (256x384, batch 2).
POINTS = ((1, 256, 256), (3, 128, 384))


@pytest.fixture(scope="module")
def bf16_dir(tiny_onnx) -> Path:
    return tiny_onnx("bf16")["stage_a"].parent


@pytest.fixture(scope="module")
def torch_modules(tiny_checkpoints) -> dict[str, torch.nn.Module]:
    """The same stages in bf16 in PyTorch (the torch backend's precision under the same policy)."""
    from cascade_trt.components import load_components
    from cascade_trt.modules import stage_module

    dtypes = dict.fromkeys(STAGES, torch.bfloat16)
    components = load_components(tiny_checkpoints, stages=STAGES, dtypes=dtypes)
    return {name: stage_module(components, name) for name in STAGES}


def _count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(node.op_type == op_type for node in model.graph.node)


def _torch_bf16(module: torch.nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    args = [
        torch.from_numpy(v).to(torch.bfloat16) if v.dtype == np.float32 else torch.from_numpy(v)
        for v in feeds.values()
    ]
    with torch.no_grad():
        out = module(*args)
    return (out[0] if isinstance(out, tuple | list) else out).float().numpy()


@pytest.mark.parametrize("stage", STAGES)
def test_bf16_export_after_passes_matches_pytorch_bf16_through_the_reference(
    bf16_dir: Path, torch_modules: dict, stage: str
) -> None:
    """The rewritten graph, run by ONNX Runtime through `to_fp32` (fp32 math, bf16 storage), agrees with the
    PyTorch module running natively in bf16, within the bf16 tolerance of `cascade-trt check`."""
    exported = read_onnx_stage(bf16_dir, stage)
    applied = passes_for("bf16")  # what the builder applies to a bf16 graph
    assert applied == ("align_conv_transpose", "cast_around_resize")
    fixed = apply_passes(onnx.load(str(exported.path)), applied)
    session = ort.InferenceSession(to_fp32(fixed).SerializeToString(), providers=["CPUExecutionProvider"])
    for point in POINTS:
        feeds = random_inputs(exported.spec, *point, seed=point[0])
        (got,) = session.run(None, feeds)
        error, finite = relative_error(_torch_bf16(torch_modules[stage], feeds), got)
        assert finite and error < TOLERANCES["bf16"], (stage, point, error)


def test_reference_must_keep_bf16_rounding_on_stage_b(bf16_dir: Path, torch_modules: dict) -> None:
    """Stage B's timestep embedding takes sin of `r * 10000` computed in the model's dtype: dropping the bf16
    rounding (a plain fp32 upcast) changes the function, so such a reference would fail a correct engine."""
    exported = read_onnx_stage(bf16_dir, "stage_b")
    model = onnx.load(str(exported.path))
    plain = ort.InferenceSession(
        to_fp32(model, keep_rounding=False).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feeds = random_inputs(exported.spec, 1, 256, 256, seed=1)
    error, _ = relative_error(_torch_bf16(torch_modules["stage_b"], feeds), plain.run(None, feeds)[0])
    assert error > 0.5


def test_resize_pass_on_the_real_stage_b_graph(bf16_dir: Path) -> None:
    model = onnx.load(str(read_onnx_stage(bf16_dir, "stage_b").path), load_external_data=False)
    types = tensor_types(model)
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert resizes and all(types[n.input[0]] == TensorProto.BFLOAT16 for n in resizes), "the trap is present"
    fixed = apply_passes(model, passes_for("bf16"))
    onnx.checker.check_model(fixed)
    fixed_types = tensor_types(fixed)
    for node in (n for n in fixed.graph.node if n.op_type == "Resize"):
        assert fixed_types[node.input[0]] == fixed_types[node.output[0]] == TensorProto.FLOAT
    assert _count(fixed, "Cast") == _count(model, "Cast") + 2 * len(resizes)
    for out in fixed.graph.output:
        assert fixed_types[out.name] == TensorProto.BFLOAT16, "outputs keep the graph's precision"
    for node in (n for n in fixed.graph.node if n.op_type == "ConvTranspose"):
        assert len({fixed_types[i] for i in node.input if i}) == 1


def test_reference_session_runs_the_bf16_export_on_cpu(bf16_dir: Path) -> None:
    exported = read_onnx_stage(bf16_dir, "stage_a")
    # Why the reference exists: ONNX Runtime's CPU provider refuses the bf16 graph as it is.
    with pytest.raises(Exception, match=r"Type 'tensor\(bfloat16\)' of input parameter .* is invalid"):
        ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    session = reference_session(exported.path)
    feeds = random_inputs(exported.spec, 2, 256, 128)
    (images,) = session.run(None, feeds)
    assert images.shape == (2, 3, 256, 128) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0, "Stage A's graph clamps to [0, 1]"


def test_build_plan_from_the_real_export(bf16_dir: Path, tiny_checkpoints) -> None:
    config = tiny_checkpoints.config()
    shapes = BuildShapes(SizeRange.square(256, 512, 768), BatchRange(1, 1, 2))
    plans = plan_builds(bf16_dir, precision="bf16", options=BuildOptions(shapes))
    assert [p.stage.name for p in plans] == list(STAGE_NAMES)  # every exported stage, in pipeline order
    for plan in (p for p in plans if p.stage.name in STAGES):
        spec = stage_specs(config)[plan.stage.name]
        assert plan.stage.spec == spec, "the spec read back from the export manifest is the stage description"
        assert plan.profiles["sample" if plan.stage.name == "stage_b" else "latents"]["max"][0] == (
            4 if spec.guided else 2
        )


def test_check_points_and_comparison() -> None:
    spec = stage_specs(_tiny())["stage_b"]
    shapes = BuildShapes(SizeRange.square(256, 512, 768), BatchRange(1, 2, 3))
    points = check_points(spec, shapes)
    assert points == [(1, 256, 256), (4, 512, 512), (6, 768, 768), (3, 256, 768)]
    ref = {"prediction": np.linspace(-2, 2, 100, dtype=np.float32)}
    close = compare_outputs("stage_b", "bf16", points[0], ref, {"prediction": ref["prediction"] * 1.01})
    far = compare_outputs("stage_b", "fp16", points[0], ref, {"prediction": ref["prediction"] * 1.05})
    nan = compare_outputs("stage_b", "bf16", points[0], ref, {"prediction": np.full(100, np.nan, np.float32)})
    assert close[0].ok and close[0].error == pytest.approx(0.01, rel=1e-3)
    assert close[0].tolerance == TOLERANCES["bf16"]
    assert not far[0].ok and "FAIL" in far[0].line()
    assert not nan[0].ok and not nan[0].finite and "NON-FINITE" in nan[0].line()


def _tiny():
    from cascade_trt.configs import TINY

    return TINY


# --- the commands without TensorRT ---------------------------------------------------------------------------


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_build_command_without_tensorrt(
    bf16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(["build", "--onnx", str(bf16_dir), "--out", str(tmp_path / "engines"), "--precision", "bf16"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cascade-trt build: error: TensorRT is not available" in err
    assert "pip install 'cascade-trt[tensorrt]'" in err
    assert not (tmp_path / "engines").exists()


def test_build_command_checks_its_arguments_first(bf16_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["build", "--onnx", str(bf16_dir), "--out", str(tmp_path), "--static", "1000x1024"]) == 2
    assert "height=1000 is not a positive multiple of 128 px" in capsys.readouterr().err
    # Then whether TensorRT is there, then the graphs: a mismatched graph is worth re-exporting only for a
    # build that can run.
    assert main(["build", "--onnx", str(bf16_dir), "--out", str(tmp_path), "--precision", "fp16"]) == 2
    expected = "bf16 graph but fp16 was asked" if HAS_TENSORRT else "TensorRT is not available"
    assert expected in capsys.readouterr().err


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_check_command_without_tensorrt(bf16_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["check", "--onnx", str(bf16_dir), "--engines", str(tmp_path)]) == 2
    assert "pip install 'cascade-trt[tensorrt]'" in capsys.readouterr().err


# --- on a machine with TensorRT and a GPU (skipped here) ---------------------------------------------------


@pytest.mark.tensorrt
def test_tensorrt_build_check_and_graph_capture(bf16_dir: Path, tmp_path: Path) -> None:
    from cascade_trt.backends.tensorrt_backend import TensorRTOptions, load_runners
    from cascade_trt.engines.builder import build_engines
    from cascade_trt.engines.check import check_engines

    shapes = BuildShapes(SizeRange.square(128, 256, 384), BatchRange(1, 1, 2))
    build = dict(precision="bf16", stages=list(STAGES), options=BuildOptions(shapes))
    built = build_engines(bf16_dir, tmp_path, **build)
    assert set(built) == set(STAGES) and all(p.is_file() for p in built.values())
    assert build_engines(bf16_dir, tmp_path, **build) == built  # cached
    results = check_engines(bf16_dir, tmp_path, stages=list(STAGES))
    assert results and all(r.ok for r in results), [r.line() for r in results if not r.ok]

    specs = {"stage_a": read_onnx_stage(bf16_dir, "stage_a").spec}
    options = TensorRTOptions(engine_dir=tmp_path)
    runner = load_runners(specs, options=options, device="cuda", dtypes={"stage_a": torch.bfloat16})[
        "stage_a"
    ]
    bindings = runner.allocate(1, 256, 256)
    bindings.inputs["latents"].normal_()
    runner.execute(bindings)  # once before capture, as TensorRT requires
    torch.cuda.synchronize()
    eager = bindings.outputs["images"].clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        runner.execute(bindings)
    bindings.outputs["images"].zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(bindings.outputs["images"], eager)
    with pytest.raises(
        ShapeError,
        match=r"stage_a\.plan was built for 128-384 px, asked 512x512: rebuild it with --max-size 512",
    ):
        runner.allocate(1, 512, 512)
