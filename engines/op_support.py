"""Whether TensorRT's ONNX parser takes a graph, checked without TensorRT.

`tensorrt_onnx_ops.json` beside this module restates the onnx-tensorrt operator matrix (which operators the
parser takes, and the element types of each), the opset range of each published matrix, the TensorRT release
that added each operator newer than 10.0, and the restrictions a graph can be checked for: inputs that must be
build-time constants, attribute values, outputs the parser leaves out. `problems(model, tensorrt=...)` walks
a graph and lists every node TensorRT of that version would refuse, with the reason; `check_graph` raises on
them.

Element types are checked on the inputs and outputs whose type the operator leaves open (ONNX's type
constraints with more than one type: `Resize`'s data, not its int64 `sizes`), which is what the matrix's type
column describes. Types come from ONNX shape inference, which needs no weights, so a multi-GB graph loaded
with `load_external_data=False` is checked in seconds. What cannot be inferred is not guessed at.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, defs

from cascade_trt.engines.availability import MIN_VERSION, tensorrt_version
from cascade_trt.engines.passes import tensor_types
from cascade_trt.errors import ArtifactMismatchError

DATA = Path(__file__).with_name("tensorrt_onnx_ops.json")
_FLOAT8 = ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ")
# The matrix's type names as ONNX element types (newer ONNX types only where this onnx has them).
MATRIX_TYPES: dict[str, tuple[int, ...]] = {
    "FP32": (TensorProto.FLOAT,),
    "FP16": (TensorProto.FLOAT16,),
    "BF16": (TensorProto.BFLOAT16,),
    "INT32": (TensorProto.INT32,),
    "INT64": (TensorProto.INT64,),
    "INT8": (TensorProto.INT8,),
    "UINT8": (TensorProto.UINT8,),
    "BOOL": (TensorProto.BOOL,),
    "FP8": tuple(getattr(TensorProto, n) for n in _FLOAT8 if hasattr(TensorProto, n)),
    "FP4": tuple(getattr(TensorProto, n) for n in ("FLOAT4E2M1",) if hasattr(TensorProto, n)),
    "INT4": tuple(getattr(TensorProto, n) for n in ("INT4",) if hasattr(TensorProto, n)),
}
TYPE_NAMES = {t: name for name, types in MATRIX_TYPES.items() for t in types}
DEFAULT_DOMAINS = ("", "ai.onnx")
VARIADIC = defs.OpSchema.FormalParameterOption.Variadic


@dataclass(frozen=True)
class Problem:
    """One thing TensorRT's parser would refuse: the node (or "(model)"), its operator and why."""

    node: str
    op: str
    reason: str

    def line(self) -> str:
        return f"{self.op} {self.node!r}: {self.reason}"


@dataclass(frozen=True)
class Support:
    """The data file, read once."""

    types: dict[str, frozenset[int]]  # operator -> element types it takes
    unsupported: frozenset[str]
    since: dict[str, tuple[int, int]]  # operator -> first TensorRT release with it
    opsets: tuple[tuple[tuple[int, int], int, int], ...]  # (release, lowest, highest opset), oldest first
    constant_inputs: dict[str, tuple[str, ...]]
    attributes: dict[str, dict[str, tuple[Any, ...]]]
    outputs: dict[str, int]
    source: dict[str, str]

    def opset_range(self, version: tuple[int, int]) -> tuple[int, int]:
        """The opsets of the newest published matrix not newer than `version` (the oldest for older ones)."""
        known = [(lo, hi) for release, lo, hi in self.opsets if release <= version]
        return known[-1] if known else self.opsets[0][1:]


@functools.cache
def load_support(path: Path = DATA) -> Support:
    data = json.loads(path.read_text())

    def types(names: list[str]) -> frozenset[int]:
        return frozenset(itertools.chain.from_iterable(MATRIX_TYPES[n] for n in names))

    restricted = {op: entry["types"] for op, entry in data["project"].items() if "types" in entry}
    return Support(
        types={op: types(restricted.get(op, names)) for op, names in data["operators"].items()},
        unsupported=frozenset(data["unsupported"]),
        since={op: tensorrt_version(v) for op, v in data["since"].items()},
        opsets=tuple(sorted((tensorrt_version(v), lo, hi) for v, (lo, hi) in data["opsets"].items())),
        constant_inputs={op: tuple(names) for op, names in data["constant_inputs"].items()},
        attributes={op: {a: tuple(v) for a, v in attrs.items()} for op, attrs in data["attributes"].items()},
        outputs=dict(data["outputs"]),
        source=dict(data["source"]),
    )


def problems(model: onnx.ModelProto, *, tensorrt: str | tuple[int, int] = MIN_VERSION) -> list[Problem]:
    """Everything in `model` that TensorRT `tensorrt` ("10.8.0.43" or (10, 8)) would refuse to parse."""
    support = load_support()
    version = _version(tensorrt)
    out, opset = _opset_problems(model, support, version)
    types = tensor_types(model)
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    constants.update(n.output[0] for n in graph.node if n.op_type == "Constant")
    functions = {(f.domain, f.name) for f in model.functions}
    for node in graph.node:
        if node.domain in DEFAULT_DOMAINS:
            reasons = _node_reasons(node, support, version, opset, types, constants)
        elif (node.domain, node.op_type) in functions:
            reasons = []  # a model-local function: the parser inlines it (TensorRT 9.0 on)
        else:
            reasons = [f"custom domain {node.domain!r}: needs a TensorRT plugin"]
        out += [Problem(node.name, node.op_type, r) for r in reasons]
    return out


def check_graph(
    path: str | Path, model: onnx.ModelProto, *, tensorrt: str | tuple[int, int] = MIN_VERSION
) -> None:
    """ArtifactMismatchError listing what TensorRT `tensorrt` would refuse in `model` (read from `path`)."""
    found = problems(model, tensorrt=tensorrt)
    if not found:
        return
    more = f"; and {len(found) - 5} more" if len(found) > 5 else ""
    raise ArtifactMismatchError(
        f"{Path(path).name}: TensorRT {_release(_version(tensorrt))}'s ONNX parser would refuse "
        f"{len(found)} node(s): {'; '.join(p.line() for p in found[:5])}{more}. Where a newer TensorRT takes "
        f"them, upgrade; otherwise the export must avoid them (an --opset the parser takes, or a fix in "
        f"cascade_trt's exporter or ONNX passes)"
    )


def _version(tensorrt: str | tuple[int, int]) -> tuple[int, int]:
    return tensorrt_version(tensorrt) if isinstance(tensorrt, str) else (tensorrt[0], tensorrt[1])


def _release(version: tuple[int, int]) -> str:
    return ".".join(map(str, version))


def _opset_problems(
    model: onnx.ModelProto, support: Support, version: tuple[int, int]
) -> tuple[list[Problem], int]:
    lo, hi = support.opset_range(version)
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)
    if lo <= opset <= hi:
        return [], opset
    reason = f"opset {opset}; TensorRT {_release(version)} takes opsets {lo} to {hi}"
    return [Problem("(model)", "opset", reason)], opset


def _node_reasons(
    node: onnx.NodeProto,
    support: Support,
    version: tuple[int, int],
    opset: int,
    types: dict[str, int],
    constants: set[str],
) -> list[str]:
    op = node.op_type
    if op in support.unsupported or op not in support.types:
        listed = "listed as unsupported" if op in support.unsupported else "not in the operator matrix"
        return [f"{listed} ({support.source['repository']})"]
    since = support.since.get(op, (0, 0))
    if since > version:
        return [f"parsed from TensorRT {_release(since)} on"]
    try:
        schema = defs.get_schema(op, opset, "")
    except defs.SchemaError:
        return [f"not an ONNX operator at opset {opset}"]
    return _type_reasons(node, schema, support.types[op], types) + _restriction_reasons(
        node, schema, support, constants
    )


def _type_reasons(
    node: onnx.NodeProto, schema: defs.OpSchema, allowed: frozenset[int], types: dict[str, int]
) -> list[str]:
    """Each open-typed input or output whose inferred element type TensorRT does not take in this operator."""
    open_types = {c.type_param_str for c in schema.type_constraints if len(c.allowed_type_strs) > 1}
    reasons = []
    for formal, actual in (*_bind(schema.inputs, node.input), *_bind(schema.outputs, node.output)):
        have = types.get(actual)
        if formal.type_str in open_types and have is not None and have not in allowed:
            name = TYPE_NAMES.get(have, TensorProto.DataType.Name(have))
            takes = ", ".join(sorted({TYPE_NAMES.get(t, str(t)) for t in allowed}))
            reasons.append(f"{formal.name} ({actual!r}) is {name}; TensorRT takes {takes} here")
    return reasons


def _restriction_reasons(
    node: onnx.NodeProto, schema: defs.OpSchema, support: Support, constants: set[str]
) -> list[str]:
    """Inputs that must be constants, attribute values, and outputs the parser leaves out."""
    op, reasons = node.op_type, []
    names = [p.name for p in schema.inputs]
    for name in support.constant_inputs.get(op, ()):
        k = names.index(name) if name in names else len(node.input)
        if k < len(node.input) and node.input[k] and node.input[k] not in constants:
            reasons.append(f"input {name} must be a constant (an initializer)")
    for attr in node.attribute:
        allowed = support.attributes.get(op, {}).get(attr.name)
        value = onnx.helper.get_attribute_value(attr)
        value = value.decode() if isinstance(value, bytes) else value
        if allowed is not None and value not in allowed:
            reasons.append(f"{attr.name}={value!r}; TensorRT takes {', '.join(map(str, allowed))}")
    most = support.outputs.get(op)
    if most is not None and sum(bool(o) for o in node.output) > most:
        reasons.append(f"only its first {most} output(s) are parsed, the graph uses more")
    return reasons


def _bind(formals: list[Any], actuals: Any) -> list[tuple[Any, str]]:
    """(formal parameter, tensor name) for each given tensor; a variadic last parameter takes the rest."""
    pairs = []
    for k, name in enumerate(actuals):
        if not name:
            continue
        formal = formals[min(k, len(formals) - 1)] if formals else None
        if formal is not None and (k < len(formals) or formal.option == VARIADIC):
            pairs.append((formal, name))
    return pairs
