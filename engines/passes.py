"""ONNX rewrites that make a low-precision graph buildable by TensorRT, and one that undoes precision for a
reference run. Each is a plain function: a `ModelProto` in, a new `ModelProto` out (the input is not modified).

* `cast_around_resize`: TensorRT has no bf16 Resize, and a strongly typed network cannot pick another type
  for it, so every bf16 Resize gets a Cast to fp32 on its data input and a Cast back on its output. Resize is
  pure data movement plus interpolation, so the fp32 detour costs bandwidth, not accuracy.
* `align_conv_transpose`: a strongly typed ConvTranspose (Stage A's upsampler) needs its kernel (and bias)
  in the activation's dtype. Kernels stored in another dtype are converted (initializers in memory) or cast
  (anything else), so the layer computes in the precision the policy chose for the activation.
* `to_fp32`: every fp16/bf16 tensor, constant and cast target becomes fp32, so ONNX Runtime's CPU provider can
  run a graph exported for the GPU. Weights keep their low-precision rounding: this is the reference
  `cascade-trt check` compares TensorRT against.

They read tensor types from ONNX shape inference, which needs no weight data: models loaded with
`load_external_data=False` are fine, except for `to_fp32`, which must convert the weights themselves.
Only the main graph is rewritten (Stable Cascade's exported graphs have no control-flow subgraphs).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LOW = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
TYPE_NAMES = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16"}


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor of the main graph (inputs, outputs, initializers, intermediates)."""
    try:
        graph = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except onnx.shape_inference.InferenceError:  # an op ONNX's type rules reject: the exporter's value_info
        graph = model.graph
    types: dict[str, int] = {}
    for info in itertools.chain(graph.input, graph.output, graph.value_info):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def cast_around_resize(
    model: onnx.ModelProto, dtypes: Iterable[int] = (TensorProto.BFLOAT16,)
) -> onnx.ModelProto:
    """Run every Resize whose data is in one of `dtypes` in fp32, with Casts in and out."""
    model = _copy(model)
    dtypes = tuple(dtypes)
    types = tensor_types(model)
    names = _Names(model)
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        low = types.get(node.input[0]) if node.op_type == "Resize" else None
        if low not in dtypes:
            nodes.append(node)
            continue
        for index in (0, 1):  # X, and roi when it is given in the same float type
            if index < len(node.input) and node.input[index] and types.get(node.input[index]) == low:
                upcast = names.new(f"{node.input[index]}_fp32")
                nodes.append(
                    helper.make_node(
                        "Cast",
                        [node.input[index]],
                        [upcast],
                        to=TensorProto.FLOAT,
                        name=names.new(f"{node.name or 'Resize'}_cast_in{index}"),
                    )
                )
                node.input[index] = upcast
        out = node.output[0]
        node.output[0] = names.new(f"{out}_fp32")
        nodes.append(node)
        nodes.append(
            helper.make_node(
                "Cast", [node.output[0]], [out], to=low, name=names.new(f"{node.name or 'Resize'}_cast_out")
            )
        )
    _replace_nodes(model, nodes)
    return model


def align_conv_transpose(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every ConvTranspose's kernel and bias the dtype of its activation."""
    model = _copy(model)
    types = tensor_types(model)
    names = _Names(model)
    inits = {init.name: init for init in model.graph.initializer}
    users = _use_counts(model)
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        want = types.get(node.input[0]) if node.op_type == "ConvTranspose" else None
        for index in (1, 2):
            if want is None or index >= len(node.input) or not node.input[index]:
                continue
            name = node.input[index]
            have = types.get(name)
            if have is None or have == want:
                continue
            init = inits.get(name)
            if init is not None and not _is_external(init):
                converted = _convert_initializer(
                    init, want, names.new(f"{name}_{TYPE_NAMES.get(want, want)}")
                )
                if (
                    users[name] == 1
                ):  # only this node reads it: convert in place, keep one copy of the weights
                    converted.name = name
                    init.CopyFrom(converted)
                else:
                    model.graph.initializer.append(converted)
                    node.input[index] = converted.name
            else:
                cast = names.new(f"{name}_{TYPE_NAMES.get(want, want)}")
                nodes.append(
                    helper.make_node("Cast", [name], [cast], to=want, name=names.new(f"{name}_align"))
                )
                node.input[index] = cast
        nodes.append(node)
    _replace_nodes(model, nodes)
    return model


def to_fp32(
    model: onnx.ModelProto, *, keep_rounding: bool = True, types: dict[str, int] | None = None
) -> onnx.ModelProto:
    """The same graph computing in fp32: weights, constants, casts and IO types of fp16/bf16 become fp32.

    With `keep_rounding` every value the original graph stores in fp16/bf16 is still rounded to that type
    (a Cast down and back up after the node that makes it): fp32 arithmetic, low-precision storage, which is
    what GPU kernels do. Without it, roundings the model relies on vanish: diffusers' timestep embedding
    computes `r * 10000` in the model's dtype before `sin`, so a bf16 Stage B sees sin of a bf16-rounded angle,
    and a pure-fp32 reference of that graph disagrees with it (and with TensorRT) by order 1.

    The model must have its weights loaded (`onnx.load(path)` loads external data by default); `types` are
    the original graph's tensor types (`tensor_types`), computed here when not given.
    """
    types = tensor_types(model) if (keep_rounding and types is None) else (types or {})
    model = _copy(model)
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type in LOW:
            if _is_external(init):
                raise ValueError(f"initializer {init.name} is external: load the model with its weights")
            graph.initializer[i].CopyFrom(_convert_initializer(init, TensorProto.FLOAT, init.name))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in LOW:
                attr.t.CopyFrom(_convert_initializer(attr.t, TensorProto.FLOAT, attr.t.name))
            elif attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i in LOW:
                attr.i = TensorProto.FLOAT
    for info in itertools.chain(graph.input, graph.output, graph.value_info):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type in LOW:
            info.type.tensor_type.elem_type = TensorProto.FLOAT
    if keep_rounding:
        _round_like(model, types)
    return model


def _round_like(model: onnx.ModelProto, types: dict[str, int]) -> None:
    """After every node output that was fp16/bf16 in the original graph, round it to that type and back."""
    names = _Names(model)
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        nodes.append(node)
        if node.op_type == "Constant":  # already holds low-precision values, converted exactly
            continue
        for k, out in enumerate(node.output):
            low = types.get(out)
            if low not in LOW:
                continue
            exact, rounded = names.new(f"{out}_exact"), names.new(f"{out}_rounded")
            node.output[k] = exact
            nodes.append(helper.make_node("Cast", [exact], [rounded], to=low, name=names.new(f"{out}_round")))
            nodes.append(
                helper.make_node("Cast", [rounded], [out], to=TensorProto.FLOAT, name=names.new(f"{out}_up"))
            )
    _replace_nodes(model, nodes)


def passes_for(precision: str) -> tuple[str, ...]:
    """Names of the passes a graph of this precision needs before TensorRT parses it, in order."""
    if precision == "bf16":
        return ("align_conv_transpose", "cast_around_resize")
    if precision == "fp16":
        return ("align_conv_transpose",)
    return ()


PASSES = {"align_conv_transpose": align_conv_transpose, "cast_around_resize": cast_around_resize}


def apply_passes(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """Apply the named passes (keys of `PASSES`) in order."""
    for name in names:
        model = PASSES[name](model)
    return model


# --- helpers -----------------------------------------------------------------------------------------------


class _Names:
    """Fresh tensor and node names that collide with nothing in the model."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.taken = {n.name for n in graph.node}
        self.taken.update(i.name for i in itertools.chain(graph.input, graph.output, graph.initializer))
        for node in graph.node:
            self.taken.update(node.input)
            self.taken.update(node.output)

    def new(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _replace_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    kept = [onnx.NodeProto() for _ in nodes]
    for dst, src in zip(kept, nodes, strict=True):
        dst.CopyFrom(src)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _use_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    for out in model.graph.output:
        counts[out.name] = counts.get(out.name, 0) + 1
    return counts


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def _convert_initializer(tensor: onnx.TensorProto, to: int, name: str) -> onnx.TensorProto:
    """`tensor`'s values in element type `to` (fp32, fp16 or bf16), rounded to nearest even."""
    values = numpy_helper.to_array(tensor).astype(np.float32)
    if to == TensorProto.BFLOAT16:
        import ml_dtypes

        return numpy_helper.from_array(values.astype(ml_dtypes.bfloat16), name)
    return numpy_helper.from_array(values.astype(helper.tensor_dtype_to_np_dtype(to)), name)
