"""ONNX passes for TensorRT, checked on CPU: each rewritten graph still runs in ONNX Runtime and matches a
reference computed in fp32 (within the tolerance of the graph's precision)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from cascade_trt.engines.passes import (
    align_conv_transpose,
    apply_passes,
    cast_around_resize,
    passes_for,
    tensor_types,
    to_fp32,
)

OPSET = 20
BF16_TOL = 2**-7  # bf16 keeps 8 significant bits: one rounding is at most 2^-8 relative, two at most ~2^-7
FP16_TOL = 2**-9


def _model(nodes, inputs, outputs, inits=(), opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9  # what ONNX Runtime 1.18+ reads
    onnx.checker.check_model(model)
    return model


def _count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(node.op_type == op_type for node in model.graph.node)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _bf16_resize_model() -> onnx.ModelProto:
    """fp32 in -> Cast bf16 -> Resize (linear, x2) in bf16 -> Cast fp32 out: a strongly typed bf16 upsample."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3, "H2", "W2"])
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("Cast", ["x"], ["x_bf16"], to=TensorProto.BFLOAT16),
        helper.make_node("Resize", ["x_bf16", "", "scales"], ["up"], mode="linear", name="up"),
        helper.make_node("Cast", ["up"], ["y"], to=TensorProto.FLOAT),
    ]
    return _model(nodes, [x], [y], [scales])


def test_bf16_resize_refused_by_ort_then_runs_after_casts_and_matches_fp32() -> None:
    model = _bf16_resize_model()
    # ONNX Runtime's CPU provider has no bf16 Resize either: the failure the pass fixes.
    with pytest.raises(
        Exception, match=r"Could not find an implementation for Resize\(\d+\) node with name 'up'"
    ):
        _session(model)
    fixed = cast_around_resize(model)
    types = tensor_types(fixed)
    resize = next(n for n in fixed.graph.node if n.op_type == "Resize")
    assert types[resize.input[0]] == TensorProto.FLOAT and types[resize.output[0]] == TensorProto.FLOAT
    assert types["up"] == TensorProto.BFLOAT16  # the rest of the graph still sees bf16
    assert _count(fixed, "Cast") == _count(model, "Cast") + 2
    assert _count(model, "Cast") == 2, "the input model must not be modified"

    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    (got,) = _session(fixed).run(None, {"x": x})
    want = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear")
    assert got.shape == (2, 3, 10, 14)
    err = np.abs(got - want.numpy()).max() / np.abs(want.numpy()).max()
    assert err <= BF16_TOL, err
    assert err > 0, "bf16 rounding must show: the data really went through bf16"


def test_resize_pass_leaves_other_precisions_alone() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 2, 8, 8])
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    model = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"])], [x], [y], [scales])
    assert _count(cast_around_resize(model), "Cast") == 0
    assert _count(cast_around_resize(model, dtypes=(TensorProto.FLOAT16,)), "Cast") == 2


def _conv_transpose_model(
    act: int, kernel: np.ndarray, bias: np.ndarray, kernel_type: int, opset: int = OPSET
) -> onnx.ModelProto:
    """x (fp32) -> Cast(act) -> ConvTranspose(kernel stored as kernel_type) -> Cast fp32."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3, "H2", "W2"])
    np_type = helper.tensor_dtype_to_np_dtype(kernel_type)
    inits = [
        numpy_helper.from_array(kernel.astype(np_type), "w"),
        numpy_helper.from_array(bias.astype(np_type), "b"),
    ]
    nodes = [
        helper.make_node("Cast", ["x"], ["xa"], to=act),
        helper.make_node(
            "ConvTranspose",
            ["xa", "w", "b"],
            ["ya"],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            kernel_shape=[4, 4],
            name="up",
        ),
        helper.make_node("Cast", ["ya"], ["y"], to=TensorProto.FLOAT),
    ]
    return _model(nodes, [x], [y], inits, opset)


def test_conv_transpose_kernel_aligned_to_fp16_activation_runs_and_matches_fp32() -> None:
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((4, 3, 4, 4)).astype(np.float32) * 0.2
    bias = rng.standard_normal(3).astype(np.float32)
    model = _conv_transpose_model(TensorProto.FLOAT16, kernel, bias, TensorProto.FLOAT)
    # An fp16 activation with an fp32 kernel is invalid, as in a strongly typed TensorRT network.
    with pytest.raises(
        Exception,
        match=r"Optype \(ConvTranspose\) bound to different types \(tensor\(float16\) and tensor\(float\)",
    ):
        _session(model)
    fixed = align_conv_transpose(model)
    types = tensor_types(fixed)
    conv = next(n for n in fixed.graph.node if n.op_type == "ConvTranspose")
    assert {types[name] for name in conv.input} == {TensorProto.FLOAT16}
    assert len(fixed.graph.initializer) == 2, "a kernel used once is converted in place, not duplicated"

    x = rng.standard_normal((2, 4, 6, 5)).astype(np.float32)
    (got,) = _session(fixed).run(None, {"x": x})
    want = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(kernel), torch.from_numpy(bias), stride=2, padding=1
    ).numpy()
    assert got.shape == want.shape == (2, 3, 12, 10)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 4 * FP16_TOL, err


def test_conv_transpose_bf16_alignment_and_fp32_reference() -> None:
    """bf16 activation, fp32 kernel: aligned to bf16 (ONNX Runtime's CPU provider has no bf16 ConvTranspose, so
    the numbers are checked through `to_fp32`, which keeps the bf16-rounded weights)."""
    rng = np.random.default_rng(2)
    kernel = rng.standard_normal((4, 3, 4, 4)).astype(np.float32) * 0.2
    bias = rng.standard_normal(3).astype(np.float32)
    # Opset 22 is where ONNX lists bf16 for ConvTranspose.
    model = _conv_transpose_model(TensorProto.BFLOAT16, kernel, bias, TensorProto.FLOAT, opset=22)
    fixed = align_conv_transpose(model)
    onnx.checker.check_model(fixed, full_check=True)
    conv = next(n for n in fixed.graph.node if n.op_type == "ConvTranspose")
    types = tensor_types(fixed)
    assert {types[name] for name in conv.input} == {TensorProto.BFLOAT16}

    x = rng.standard_normal((1, 4, 5, 6)).astype(np.float32)
    (got,) = _session(to_fp32(fixed)).run(None, {"x": x})
    want = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(kernel), torch.from_numpy(bias), stride=2, padding=1
    ).numpy()
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 4 * BF16_TOL, err
    assert err > 1e-6, "the bf16 rounding of the kernel must survive to_fp32"


def test_external_kernel_gets_a_cast_and_weights_stay_on_disk(tmp_path) -> None:
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((4, 3, 4, 4)).astype(np.float32)
    model = _conv_transpose_model(TensorProto.FLOAT16, kernel, np.zeros(3, np.float32), TensorProto.FLOAT)
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    lazy = onnx.load(path, load_external_data=False)  # how the builder reads a multi-GB graph
    fixed = align_conv_transpose(lazy)
    casts = [n for n in fixed.graph.node if n.op_type == "Cast" and n.input[0] == "w"]
    assert len(casts) == 1 and casts[0].attribute[0].i == TensorProto.FLOAT16
    # Saved beside the original, the rewritten graph still finds the weights and runs.
    out = tmp_path / "fixed.onnx"
    onnx.save(fixed, out)
    x = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    want = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(kernel), stride=2, padding=1
    )
    assert np.abs(got - want.numpy()).max() / np.abs(want.numpy()).max() <= 4 * FP16_TOL


def test_the_passes_of_a_precision_fix_what_that_precision_breaks() -> None:
    model = _bf16_resize_model()
    fixed = apply_passes(model, passes_for("bf16"))
    resize = next(n for n in fixed.graph.node if n.op_type == "Resize")
    assert tensor_types(fixed)[resize.input[0]] == TensorProto.FLOAT  # the bf16 Resize now runs in fp32
    _session(fixed)  # and ONNX Runtime, which refused the original, takes it
    assert apply_passes(model, passes_for("fp32")) is model  # an fp32 graph needs nothing


def test_to_fp32_keeps_the_graphs_low_precision_rounding() -> None:
    """sin(bf16(r * 10000)), as diffusers' timestep embedding computes it in bf16: the rounding must survive."""
    r = helper.make_tensor_value_info("r", TensorProto.FLOAT, [64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])
    import ml_dtypes

    scale = numpy_helper.from_array(np.array(10000.0, np.float32).astype(ml_dtypes.bfloat16), "scale")
    nodes = [
        helper.make_node("Cast", ["r"], ["r_bf16"], to=TensorProto.BFLOAT16),
        helper.make_node("Mul", ["r_bf16", "scale"], ["angle"]),
        helper.make_node("Cast", ["angle"], ["angle_fp32"], to=TensorProto.FLOAT),
        helper.make_node("Sin", ["angle_fp32"], ["y"]),
    ]
    model = _model(nodes, [r], [y], [scale], opset=22)
    x = np.random.default_rng(4).uniform(0, 1, 64).astype(np.float32)
    r_bf16 = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    scale_bf16 = np.float32(ml_dtypes.bfloat16(10000.0))  # 9984: the constant itself is stored in bf16
    rounded = np.sin((r_bf16 * scale_bf16).astype(ml_dtypes.bfloat16).astype(np.float32))
    exact = np.sin(x * scale_bf16)  # no rounding at all, not even of the input
    (kept,) = _session(to_fp32(model)).run(None, {"r": x})
    (plain,) = _session(to_fp32(model, keep_rounding=False)).run(None, {"r": x})
    np.testing.assert_allclose(kept, rounded, atol=1e-5)
    np.testing.assert_allclose(plain, exact, atol=1e-3)
    assert np.abs(kept - plain).max() > 0.5, "bf16 rounding of a large angle changes sin by order 1"
