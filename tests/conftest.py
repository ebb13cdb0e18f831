"""Shared fixtures: tiny random Stable Cascade checkpoints (built once per session) and marker skipping."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from cascade_trt.checkpoints import CheckpointPair


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_gpu = torch.cuda.is_available()
    has_trt = has_gpu and importlib.util.find_spec("tensorrt") is not None
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_trt = pytest.mark.skip(reason="needs TensorRT and a CUDA GPU")
    for item in items:
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)
        elif "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with `prior/` and `decoder/` diffusers pipelines of the tiny preset."""
    from cascade_trt.tiny import make_pipelines

    return make_pipelines(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_prior(tiny_dir: Path) -> Path:
    return tiny_dir / "prior"


@pytest.fixture(scope="session")
def tiny_decoder(tiny_dir: Path) -> Path:
    return tiny_dir / "decoder"


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_prior: Path, tiny_decoder: Path) -> CheckpointPair:
    """The tiny prior and decoder as the `CheckpointPair` loaders and the exporter take."""
    from cascade_trt.checkpoints import CheckpointPair

    return CheckpointPair.resolve(tiny_prior, tiny_decoder)


@pytest.fixture(scope="session")
def tiny_onnx(
    tiny_checkpoints: CheckpointPair, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], dict[str, Path]]:
    """Every stage of the tiny checkpoints exported in one precision ("fp32", "fp16" or "bf16"), once per
    session and precision: `tiny_onnx("bf16")` is what `export_pipeline` returned ({stage: ONNX path}, one
    directory). Tests share these files: copy them before changing anything."""
    from cascade_trt.export import export_pipeline

    made: dict[str, dict[str, Path]] = {}

    def exported(precision: str) -> dict[str, Path]:
        if precision not in made:
            out = tmp_path_factory.mktemp(f"onnx_{precision}")
            made[precision] = export_pipeline(tiny_checkpoints, out, precision=precision, progress=False)
        return made[precision]

    return exported
