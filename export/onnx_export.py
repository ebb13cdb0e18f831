"""Trace one stage wrapper to ONNX with torch's dynamo exporter, and write it atomically with its manifest.

Dynamic dims are declared as `torch.export.Dim`s in 128 px units, with the multiples the pipeline really
produces (Stage C latent 3h, Stage B latent 32h): the exporter specializes on the shape relations it can
see, so a graph traced with unrelated dims could keep branches (Stage B's skip-connection resize) that the
pipeline never takes, or drop ones it does. torch.export refuses, rather than silently specializes, when the
model's code contradicts the declared dims, so a successful export is dynamic in exactly these dims.

The graph's IO names and dim names are the spec's (`TensorSpec.dynamic_axes`): the exporter's symbols
("3*h", "s39") are renamed so every consumer (ONNX Runtime backend, TensorRT profiles) reads the same names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cascade_trt.artifacts import manifest_path, staging_dir, sync, sync_tree, write_errors, write_json
from cascade_trt.errors import ArtifactMismatchError, ConfigError
from cascade_trt.export.inputs import example_inputs
from cascade_trt.export.manifest import build_manifest
from cascade_trt.export.patches import exact_timestep_embedding
from cascade_trt.stages import MAX_UNITS, Axis, StageSpec, TensorSpec, check_size

log = logging.getLogger(__name__)

MAX_BATCH = 256  # per model call, guidance included
MAX_IMAGE_PROMPTS = 64  # images one variation is conditioned on (Stage C's clip_img axis)
# Protobuf caps a single ONNX file at 2 GiB; weights beyond this go to one `<model>.onnx.data` file beside
# the model. The margin leaves room for the graph itself and for constants the optimizer folds.
EXTERNAL_DATA_BYTES = 1 << 30


def dynamic_shapes(spec: StageSpec) -> dict[str, dict[int, Any]]:
    """`torch.export` dynamic shapes for every input of a stage, keyed by input name."""
    from torch.export import Dim

    dims = {
        "batch": Dim("batch", min=1, max=MAX_BATCH),
        "h": Dim("h", min=1, max=MAX_UNITS),
        "w": Dim("w", min=1, max=MAX_UNITS),
        "image_prompts": Dim("image_prompts", min=1, max=MAX_IMAGE_PROMPTS),
    }

    def dim(axis: Axis) -> Any:
        return dims[axis.kind] if axis.factor == 1 else axis.factor * dims[axis.kind]

    return {
        t.name: {i: dim(axis) for i, axis in enumerate(t.axes) if axis.name is not None} for t in spec.inputs
    }


def export_stage(
    module: nn.Module,
    spec: StageSpec,
    out_path: str | Path,
    *,
    dtype: torch.dtype,
    example_size: tuple[int, int] = (256, 384),
    example_batch: int = 2,
    example_image_prompts: int = 5,
    opset: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export a stage wrapper (`cascade_trt.modules`) to `out_path`, with its manifest written last.

    `module` should already be in `dtype` (load it that way); otherwise it is cast in place, one tensor at a
    time, so the model is never held twice. `example_size` (height, width in px, multiples of 128),
    `example_batch` and `example_image_prompts` are what the exporter traces at: keep them non-square and
    un-"nice" so no accidental relation (h == w, batch == 1) is baked in; a dim traced at 1 is specialised to
    1. `metadata` is merged into the manifest (precision, source...).
    """
    out_path = Path(out_path)
    check_size(*example_size)
    for name, value in (("example_batch", example_batch), ("example_image_prompts", example_image_prompts)):
        if value < 2:
            raise ConfigError(f"{name}={value}: trace at 2 or more, or a dim of 1 gets specialized")
    module = module.to(dtype).eval()
    height, width = example_size
    inputs = example_inputs(
        module,
        spec,
        batch=example_batch,
        height=height,
        width=width,
        dtype=dtype,
        image_prompts=example_image_prompts,
    )
    device = next(module.parameters()).device
    inputs = {name: value.to(device) for name, value in inputs.items()}
    start = time.monotonic()
    program = _trace(module, spec, inputs, opset)
    name_io(program.model, spec)
    traced = {"batch": example_batch, "height": height, "width": width}
    if spec.image_prompted:
        traced["image_prompts"] = example_image_prompts
    with staged_artifact(out_path) as staging:
        staged = staging / out_path.name
        program.save(staged, external_data=_weight_bytes(module) > EXTERNAL_DATA_BYTES)
        actual_opset = program.model.opset_imports.get("", None)
        del program  # the IR only references the module's weights; drop the graph before hashing the files
        manifest = build_manifest(
            spec, staged, module=module, dtype=dtype, opset=actual_opset, traced_at=traced, extra=metadata
        )
        manifest["export_seconds"] = round(time.monotonic() - start, 1)
        write_json(manifest_path(staged), manifest)
    return out_path


def _trace(module: nn.Module, spec: StageSpec, inputs: dict[str, torch.Tensor], opset: int | None):
    with torch.no_grad(), exact_timestep_embedding(module):
        return torch.onnx.export(
            module,
            tuple(inputs.values()),
            dynamo=True,
            dynamic_shapes=dynamic_shapes(spec),
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            opset_version=opset,
            verbose=False,
        )


def _weight_bytes(module: nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def name_io(model: Any, spec: StageSpec) -> None:
    """Give the graph's inputs and outputs the spec's names, fixed sizes and dim names, in spec order.

    The exporter's symbols for the same dims ("3*h") are renamed everywhere in the graph, so intermediate
    shapes keep matching the IO. A fixed size that disagrees with the spec means the spec and the model drifted
    apart: that is an error, not something to paper over.
    """
    import onnx_ir as ir

    renames: dict[str, str] = {}
    for values, tensors in ((model.graph.inputs, spec.inputs), (model.graph.outputs, spec.outputs)):
        names = [v.name for v in values]
        if names != [t.name for t in tensors]:
            raise ArtifactMismatchError(f"{spec.name}: graph IO {names} != spec {[t.name for t in tensors]}")
        for value, tensor in zip(values, tensors, strict=True):
            value.shape = ir.Shape(_spec_dims(spec.name, tensor, value.shape, renames))
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for value in node.outputs:
            if value.shape is not None and any(str(d) in renames for d in value.shape):
                value.shape = ir.Shape(
                    [renames.get(str(d), d) if not isinstance(d, int) else d for d in value.shape]
                )


def _spec_dims(stage: str, tensor: TensorSpec, shape: Any, renames: dict[str, str]) -> list[int | str]:
    """The spec's dims for one graph value of shape `shape`; the exporter's symbol of each named dim is
    recorded in `renames`. A fixed size the graph disagrees with is an error."""
    old = list(shape) if shape is not None else [None] * len(tensor.axes)
    if len(old) != len(tensor.axes):
        raise ArtifactMismatchError(f"{stage}.{tensor.name}: rank {len(old)} != spec {tensor.shape}")
    dims: list[int | str] = []
    for i, (was, axis) in enumerate(zip(old, tensor.axes, strict=True)):
        if axis.name is None:
            if isinstance(was, int) and was != axis.factor:
                raise ArtifactMismatchError(
                    f"{stage}.{tensor.name} axis {i}: model gives {was}, spec says {axis.factor}"
                )
            dims.append(axis.factor)
            continue
        dims.append(axis.name)
        if was is not None and not isinstance(was, int):
            renames[str(was)] = axis.name
    return dims


@contextlib.contextmanager
def staged_artifact(out_path: Path) -> Iterator[Path]:
    """A temporary directory beside `out_path`; on success its model, data and manifest replace the old ones.

    Until promotion nothing under the final names changes, so an export that fails or is killed leaves any
    previous complete artifact as it was and never a partial one under the final names; the staging directory
    a killed export leaves is removed by the next export of the same stage (`artifacts.staging_dir`). Promotion
    removes the old manifest first and writes the new one last: at every instant, a model with a manifest is
    complete. Every file is fsynced before promotion, and the directory after it.
    """
    with write_errors(out_path), staging_dir(out_path) as staging:
        yield staging
        sync_tree(staging)
        _promote(staging, out_path)
        sync(out_path.parent)


def _promote(staging: Path, out_path: Path) -> None:
    manifest = manifest_path(out_path)
    data = out_path.with_name(out_path.name + ".data")
    manifest.unlink(missing_ok=True)
    if (staging / data.name).exists():
        os.replace(staging / data.name, data)
    else:
        data.unlink(missing_ok=True)  # a stale data file from an older, larger export
    os.replace(staging / out_path.name, out_path)
    os.replace(staging / manifest.name, manifest)
