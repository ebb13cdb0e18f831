"""TensorRT's ONNX operator support, checked without TensorRT: every exported graph of the tiny preset, in
fp32, fp16 and bf16, after the passes `cascade-trt build` applies, is one TensorRT's parser takes; and the
checker catches what it is there to catch, on small graphs that carry each fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cascade_trt.cli import main
from cascade_trt.engines.builder import BuildOptions, check_plans, plan_builds, prepared_graph
from cascade_trt.engines.op_support import load_support, problems
from cascade_trt.engines.passes import passes_for
from cascade_trt.engines.profiles import BuildShapes
from cascade_trt.errors import ArtifactMismatchError
from cascade_trt.stages import STAGE_NAMES, BatchRange, SizeRange

PRECISIONS = ("fp32", "fp16", "bf16")  # bf16 is also the full Stage C's `auto`; the rest of `auto` is fp16
SHAPES = BuildShapes(SizeRange.square(128, 256, 512), BatchRange(1, 1, 2))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_exported_stage_parses_after_the_build_passes(tiny_onnx, precision: str) -> None:
    """Every stage, as `cascade-trt build` would hand it to TensorRT's parser (the builder's own plans and
    passes), uses only what TensorRT's published operator matrix supports."""
    exported = tiny_onnx(precision)
    assert sorted(exported) == sorted(STAGE_NAMES)
    plans = plan_builds(exported["stage_a"].parent, precision=precision, options=BuildOptions(SHAPES))
    assert sorted(plan.stage.name for plan in plans) == sorted(STAGE_NAMES)
    for plan in plans:
        assert plan.passes == passes_for(precision)
        model = prepared_graph(plan)
        for tensorrt in ("10.1", "10.15"):
            found = problems(model, tensorrt=tensorrt)
            assert found == [], f"{precision} {plan.stage.name} for TensorRT {tensorrt}: " + "; ".join(
                p.line() for p in found
            )


def test_the_bf16_resize_is_what_the_passes_fix(tiny_onnx) -> None:
    """Without its passes the bf16 Stage B has the Resize TensorRT's bf16 graphs cannot rely on: the check
    sees it, so it would have caught a build that skipped the pass."""
    path = tiny_onnx("bf16")["stage_b"]
    found = problems(onnx.load(str(path), load_external_data=False))
    assert found and {p.op for p in found} == {"Resize"}
    assert all("is BF16; TensorRT takes FP16, FP32 here" in p.reason for p in found)


def test_build_plans_are_checked_as_the_builder_will_parse_them(tiny_onnx, tmp_path: Path, capsys) -> None:
    bf16_dir = tiny_onnx("bf16")["stage_a"].parent
    check_plans(plan_builds(bf16_dir, precision="bf16", options=BuildOptions(SHAPES)), tensorrt="10.1")
    argv = ["build", "--onnx", str(bf16_dir), "--out", str(tmp_path / "engines"), "--precision", "bf16"]
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "stage_b: bf16 (align_conv_transpose, cast_around_resize); TensorRT 10.1+ takes every node" in out
    assert not (tmp_path / "engines").exists(), "a dry run writes nothing"


# --- the checker on graphs that carry one fault each --------------------------------------------------------


def _model(nodes, inputs, outputs, inits=(), opset: int = 20) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _io(name: str, elem: int, shape=(1, 2, 4, 4)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def _reasons(model: onnx.ModelProto, tensorrt: str = "10.1") -> list[str]:
    return [p.line() for p in problems(model, tensorrt=tensorrt)]


def test_element_types_are_checked_where_the_operator_leaves_them_open() -> None:
    # ONNX's MatMul takes int32; TensorRT's takes floats only.
    ints = _model(
        [helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")],
        [_io("a", TensorProto.INT32), _io("b", TensorProto.INT32)],
        [_io("y", TensorProto.INT32)],
    )
    assert _reasons(ints)[0].startswith("MatMul 'mm': A ('a') is INT32; TensorRT takes BF16, FP16, FP32 here")
    # Resize's int64 `sizes` is part of the operator, not a type TensorRT must list: not reported.
    sizes = numpy_helper.from_array(np.array([1, 2, 8, 8], np.int64), "sizes")
    up = _model(
        [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")],
        [_io("x", TensorProto.FLOAT)],
        [_io("y", TensorProto.FLOAT, (1, 2, 8, 8))],
        [sizes],
    )
    assert _reasons(up) == []


def test_operators_opsets_versions_and_custom_domains() -> None:
    det = _model(
        [helper.make_node("Det", ["x"], ["y"], name="d")],
        [_io("x", TensorProto.FLOAT, (2, 3, 3))],
        [_io("y", TensorProto.FLOAT, (2,))],
    )
    assert _reasons(det) == ["Det 'd': listed as unsupported (onnx/onnx-tensorrt)"]
    relu = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    newer = _model(relu, [_io("x", TensorProto.FLOAT)], [_io("y", TensorProto.FLOAT)], opset=23)
    assert _reasons(newer) == ["opset '(model)': opset 23; TensorRT 10.1 takes opsets 9 to 20"]
    assert _reasons(newer, tensorrt="10.15.1.29") == []
    norm = [helper.make_node("RMSNormalization", ["x", "s"], ["y"], name="n", axis=-1)]
    scale = numpy_helper.from_array(np.ones(4, np.float32), "s")
    rms = _model(norm, [_io("x", TensorProto.FLOAT)], [_io("y", TensorProto.FLOAT)], [scale], opset=23)
    assert "RMSNormalization 'n': parsed from TensorRT 10.15 on" in _reasons(rms, tensorrt="10.14")
    assert _reasons(rms, tensorrt="10.15") == []
    plugin = _model(
        [helper.make_node("Fancy", ["x"], ["y"], name="f", domain="my.ops")],
        [_io("x", TensorProto.FLOAT)],
        [_io("y", TensorProto.FLOAT)],
    )
    plugin.opset_import.append(helper.make_opsetid("my.ops", 1))
    assert _reasons(plugin) == ["Fancy 'f': custom domain 'my.ops': needs a TensorRT plugin"]


def test_restrictions_constant_inputs_attributes_and_outputs() -> None:
    axes = [_io("axes", TensorProto.INT64, (1,))]  # a graph input: known only at run time
    mean = _model(
        [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="m")],
        [_io("x", TensorProto.FLOAT), *axes],
        [_io("y", TensorProto.FLOAT)],
    )
    assert _reasons(mean) == ["ReduceMean 'm': input axes must be a constant (an initializer)"]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    cubic = _model(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="cubic")],
        [_io("x", TensorProto.FLOAT)],
        [_io("y", TensorProto.FLOAT)],
        [scales],
    )
    assert _reasons(cubic) == ["Resize 'up': mode='cubic'; TensorRT takes nearest, linear"]
    outs = ["y", "mean", "inv_std"]
    ln = _model(
        [helper.make_node("LayerNormalization", ["x", "g"], outs, name="ln", axis=-1)],
        [_io("x", TensorProto.FLOAT)],
        [_io(n, TensorProto.FLOAT) for n in outs],
        [numpy_helper.from_array(np.ones(4, np.float32), "g")],
    )
    assert _reasons(ln) == [
        "LayerNormalization 'ln': only its first 1 output(s) are parsed, the graph uses more"
    ]


def test_check_graph_errors_name_the_nodes_and_the_fix(tmp_path: Path) -> None:
    from cascade_trt.engines.op_support import check_graph

    det = _model(
        [helper.make_node("Det", ["x"], ["y"], name="d")],
        [_io("x", TensorProto.FLOAT, (2, 3, 3))],
        [_io("y", TensorProto.FLOAT, (2,))],
    )
    with pytest.raises(
        ArtifactMismatchError, match=r"stage_x.onnx: TensorRT 10.1's ONNX parser would refuse 1 node"
    ):
        check_graph(tmp_path / "stage_x.onnx", det, tensorrt=(10, 1))


def test_the_data_file_cites_its_source_and_knows_its_versions() -> None:
    support = load_support()
    assert support.source["repository"] == "onnx/onnx-tensorrt"
    assert "docs/operators.md" in support.source["matrix"] and "10.15" in support.source["matrix"]
    assert support.opset_range((10, 1)) == (9, 20) and support.opset_range((11, 0)) == (9, 24)
    assert not set(support.types) & support.unsupported
