"""Export every stage of a Stable Cascade checkpoint pair to ONNX, one stage at a time.

Memory discipline (the full 3.6B Stage C on a 24 GiB machine): each stage is loaded straight into its
export dtype (`from_pretrained(..., torch_dtype=...)`, never an fp32 copy), traced, streamed to external data,
and released before the next stage loads, so the peak is one stage's weights plus the exporter's overhead.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

from cascade_trt.artifacts import artifact_problem, check_output_dir, onnx_path, read_manifest, tool_versions
from cascade_trt.checkpoints import CheckpointPair
from cascade_trt.components import load_components
from cascade_trt.devices import check_device
from cascade_trt.export.manifest import TOOLS
from cascade_trt.export.onnx_export import export_stage
from cascade_trt.modules import stage_module
from cascade_trt.precision import PrecisionPolicy
from cascade_trt.provenance import export_source
from cascade_trt.stages import StageSpec, select_stages

log = logging.getLogger(__name__)


def export_pipeline(
    checkpoints: CheckpointPair,
    out_dir: str | Path,
    *,
    precision: str | dict[str, str] = "fp32",
    stages: list[str] | tuple[str, ...] | None = None,
    opset: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    force: bool = False,
) -> dict[str, Path]:
    """Write `out_dir/<stage>.onnx` (+ `.onnx.data` when large) and `out_dir/<stage>.json` for each stage.

    A stage whose complete model is already there, exported from the same weights and config in the same
    precision (and opset, when one is asked) by the same tools, is kept as it is unless `force`: an export
    that was interrupted resumes at the first stage it had not finished.

    `stages` defaults to every stage the checkpoints have (the image encoder only when the prior ships one).
    `precision` is "auto", one of fp32/fp16/bf16, or a per-stage dict, resolved by `PrecisionPolicy` for
    `device` ("auto" on a CPU means fp32). Returns {stage: onnx path}.
    """
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    check_device(device)
    check_output_dir(out_dir, "out_dir (--out)")
    config = checkpoints.config()
    specs = select_stages(config, stages)
    policy = PrecisionPolicy.resolve(config, precision, device=device, target="onnx")
    written: dict[str, Path] = {}
    bar = tqdm(list(specs.items()), desc="export", unit="stage", disable=not progress)
    with logging_redirect_tqdm():  # per-stage log lines print above the bar, not through it
        for name, spec in bar:
            bar.set_postfix_str(name)
            start = time.monotonic()
            metadata = {
                "source": export_source(checkpoints, name),
                "cascade": config.name,
                "export_device": str(device),
            }
            path = onnx_path(out_dir, name)
            if not force and is_current(path, spec, policy[name], opset, metadata):
                log.info("%s: %s is up to date (same weights, precision and tools), kept", name, path)
                written[name] = path
                continue
            written[name] = _export_one(checkpoints, spec, policy, path, opset, metadata, device)
            log.info(
                "%s: %s, exported to %s in %.1f s",
                name,
                policy[name],
                written[name],
                time.monotonic() - start,
            )
    return written


def is_current(
    path: Path, spec: StageSpec, precision: str, opset: int | None, metadata: dict[str, Any]
) -> bool:
    """Whether the complete model at `path` is what exporting it now would write (see `export_pipeline`): the
    same weights, precision and tools, and the spec's shapes (a graph exported before an axis became dynamic
    is made again)."""
    manifest = read_manifest(path)
    if manifest is None:
        return False
    source, wanted = manifest.get("source", {}), metadata["source"]
    return (
        manifest.get("precision") == precision
        and [t.get("shape") for t in manifest.get("inputs", [])] == [list(t.shape) for t in spec.inputs]
        and (opset is None or manifest.get("opset") == opset)
        and manifest.get("cascade") == metadata["cascade"]
        and wanted["fingerprint"] is not None
        and source.get("fingerprint") == wanted["fingerprint"]
        and source.get("config") == wanted["config"]
        and manifest.get("tools") == tool_versions(*TOOLS)
        and artifact_problem(path, manifest) is None  # a damaged model is exported again, not kept
    )


def _export_one(
    checkpoints: CheckpointPair,
    spec: StageSpec,
    policy: PrecisionPolicy,
    out_path: Path,
    opset: int | None,
    metadata: dict[str, Any],
    device: str,
) -> Path:
    """Load one stage in its export dtype, export it, and let its weights go before the next stage loads."""
    dtype = policy.dtype(spec.name)
    components = load_components(checkpoints, stages=(spec.name,), dtypes={spec.name: dtype}, device=device)
    module = stage_module(components, spec.name)
    path = export_stage(module, spec, out_path, dtype=dtype, opset=opset, metadata=metadata)
    del components, module
    gc.collect()
    return path
