"""Exported ONNX files that are not what their manifests describe, each made so on disk: another checkpoint's
model copied over ours, flipped weights, a truncated model, a truncated or deleted external data file, a config
edited since the export.

Each must be refused when the files are loaded (one line naming the file and the command that writes it again),
never run into a wrong image. Stage C is exported here with its weights in external data (`.onnx.data`, as the
full models have them), beside the session's tiny fp32 export of the other stages.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fault_helpers import GENERATE, SMALL, one_line_error

from cascade_trt import CascadePipeline
from cascade_trt.artifacts import SAMPLE_BYTES, SAMPLES, onnx_path, verify_artifact
from cascade_trt.cli import main
from cascade_trt.configs import TINY
from cascade_trt.errors import ArtifactCorruptError
from cascade_trt.export import export_pipeline, export_stage
from cascade_trt.modules import stage_module
from cascade_trt.random_weights import random_components
from cascade_trt.stages import stage_specs

REEXPORT = (
    "re-export it with `cascade-trt export --prior P --decoder D --out {} --stages stage_c --precision fp32`"
)


@pytest.fixture(scope="module")
def exported(tiny_onnx, tiny_checkpoints, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every tiny stage in fp32, Stage C with its weights in `stage_c.onnx.data`. Copy before damaging."""
    import cascade_trt.export.onnx_export as onnx_export

    out = Path(
        shutil.copytree(tiny_onnx("fp32")["stage_c"].parent, tmp_path_factory.mktemp("faults") / "onnx")
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)  # every weight to external data
        export_pipeline(tiny_checkpoints, out, stages=["stage_c"], progress=False, force=True)
    assert (out / "stage_c.onnx.data").is_file()
    return out


@pytest.fixture
def onnx_dir(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "onnx"))


def generate(tiny_prior: Path, tiny_decoder: Path, onnx_dir: Path, out: Path, *extra: str) -> list[str]:
    pipelines = ["--prior", str(tiny_prior), "--decoder", str(tiny_decoder)]
    backend = ["--backend", "onnxruntime", "--onnx-dir", str(onnx_dir)]
    return [*GENERATE, *pipelines, *backend, *SMALL, *extra, "--out", str(out)]


def test_the_undamaged_export_generates(tiny_prior, tiny_decoder, onnx_dir: Path, tmp_path: Path) -> None:
    """What every test below damages runs as it is, also with --verify (so what they see is the damage)."""
    out = tmp_path / "x.png"
    assert main(generate(tiny_prior, tiny_decoder, onnx_dir, out, "--verify")) == 0
    assert out.is_file()


def test_another_checkpoints_model_copied_over_ours_is_refused(
    tiny_prior, tiny_decoder, onnx_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The same architecture with other weights, both files copied over ours, our manifest kept."""
    import cascade_trt.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    other = random_components(TINY, stages=("stage_c",), seed=1)
    other_path = export_stage(
        stage_module(other, "stage_c"),
        stage_specs(TINY)["stage_c"],
        tmp_path / "other" / "stage_c.onnx",
        dtype=torch.float32,
    )
    for name in ("stage_c.onnx", "stage_c.onnx.data"):
        shutil.copy(other_path.with_name(name), onnx_dir / name)
    err = one_line_error(generate(tiny_prior, tiny_decoder, onnx_dir, tmp_path / "x.png"), capsys)
    assert f"{onnx_dir / 'stage_c.onnx'}" in err and "is not the file its manifest describes" in err
    assert REEXPORT.format(onnx_dir) in err
    assert not (tmp_path / "x.png").exists()


def flip_signs(model: Path) -> int:
    """Negate every float32 weight in the model's external data file, in place (same size); returns how many."""
    graph = onnx.load(str(model), load_external_data=False).graph
    flipped = 0
    with open(model.with_name(model.name + ".data"), "r+b") as data:
        for tensor in graph.initializer:
            where = {entry.key: entry.value for entry in tensor.external_data}
            if tensor.data_type != onnx.TensorProto.FLOAT or "offset" not in where:
                continue
            offset, length = int(where["offset"]), int(where["length"])
            data.seek(offset)
            values = np.frombuffer(data.read(length), np.float32)
            data.seek(offset)
            data.write((-values).tobytes())
            flipped += values.size
    return flipped


def test_weights_altered_in_place_are_refused(
    tiny_prior, tiny_decoder, onnx_dir: Path, tmp_path: Path, capsys
):
    assert flip_signs(onnx_dir / "stage_c.onnx") > 10_000
    err = one_line_error(generate(tiny_prior, tiny_decoder, onnx_dir, tmp_path / "x.png"), capsys)
    data = onnx_dir / "stage_c.onnx.data"
    assert f"{data} is not the file its manifest describes (same size, but sampled chunks differ" in err
    assert REEXPORT.format(onnx_dir) in err
    # What the error says to do, done: the export writes the stage again instead of keeping it as current.
    assert main(["export", "--prior", str(tiny_prior), "--decoder", str(tiny_decoder), "--out", str(onnx_dir),
                 "--stages", "stage_c", "--precision", "fp32"]) == 0  # fmt: skip
    verify_artifact(onnx_dir / "stage_c.onnx", full=True)


def test_one_byte_between_the_samples_needs_verify(tiny_checkpoints, onnx_dir: Path, capsys) -> None:
    """The default check reads sizes and sampled chunks, so one changed byte between them passes it; `verify`
    (and `cascade-trt check`) hash every byte."""
    data = onnx_dir / "stage_c.onnx.data"
    size = data.stat().st_size
    step = (size - SAMPLE_BYTES) / (SAMPLES - 1)
    assert step > SAMPLE_BYTES, "the data file must be larger than its samples"
    between = int(step // 2) + SAMPLE_BYTES // 2  # after the first chunk ends, before the second begins
    with open(data, "r+b") as f:
        f.seek(between)
        byte = f.read(1)
        f.seek(between)
        f.write(bytes([byte[0] ^ 0xFF]))
    verify_artifact(onnx_dir / "stage_c.onnx")  # passes: the sample cannot see it
    with pytest.raises(
        ArtifactCorruptError, match=r"stage_c.onnx.data is not the file .* \(its sha256 differs\)"
    ):
        CascadePipeline.from_pretrained(
            tiny_checkpoints.prior, tiny_checkpoints.decoder, backend="onnxruntime", onnx_dir=onnx_dir,
            device="cpu", precision="fp32", verify=True,
        )  # fmt: skip
    err = one_line_error(["check", "--onnx", str(onnx_dir)], capsys)
    assert f"{data} is not the file its manifest describes (its sha256 differs)" in err


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            "truncate stage_c.onnx",
            "stage_c.onnx is {cut:,} bytes where its manifest says {size:,} (truncated",
        ),
        ("truncate stage_c.onnx.data", "stage_c.onnx.data is {cut:,} bytes where its manifest says {size:,}"),
        ("delete stage_c.onnx.data", "stage_c.onnx.data is missing (its manifest lists it)"),
    ],
)
def test_truncated_or_missing_files_are_refused(
    tiny_prior, tiny_decoder, onnx_dir: Path, tmp_path: Path, damage: str, expected: str, capsys
) -> None:
    action, name = damage.split()
    path = onnx_dir / name
    size = path.stat().st_size
    if action == "truncate":
        os.truncate(path, size // 2)
    else:
        path.unlink()
    err = one_line_error(generate(tiny_prior, tiny_decoder, onnx_dir, tmp_path / "x.png"), capsys)
    assert expected.format(cut=size // 2, size=size) in err and REEXPORT.format(onnx_dir) in err


def test_a_config_edited_since_the_export_is_named_as_the_cause(
    tiny_dir: Path, onnx_dir: Path, tmp_path: Path, capsys
) -> None:
    """Not "re-export with dynamic shapes" (the shape check's advice): the config no longer fits the export."""
    checkpoint = Path(shutil.copytree(tiny_dir, tmp_path / "ckpt"))
    config = checkpoint / "prior" / "prior" / "config.json"
    values = json.loads(config.read_text())
    values["in_channels"] = 8
    config.write_text(json.dumps(values))
    argv = generate(checkpoint / "prior", checkpoint / "decoder", onnx_dir, tmp_path / "x.png")
    err = one_line_error(argv, capsys)
    assert f"{config} differs from the config " in err
    assert "stage_c.onnx was exported with (in_channels: 16 -> 8)" in err
    assert "dynamic shapes" not in err


def test_check_verifies_every_byte_of_a_sound_export(onnx_dir: Path, capsys) -> None:
    assert main(["check", "--onnx", str(onnx_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    models = sorted(onnx_dir.glob("*.onnx"))
    assert len(lines) == len(models) == 5
    (stage_c,) = [line for line in lines if line.startswith(f"{onnx_path(onnx_dir, 'stage_c')}: ")]
    assert "every byte as its manifest says: " in stage_c
    assert "stage_c.onnx (" in stage_c and "stage_c.onnx.data (" in stage_c
