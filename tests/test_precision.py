"""The precision policy's `auto`: per stage on a GPU, per CPU capability and backend on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade_trt import precision
from cascade_trt.configs import FULL, LITE, TINY
from cascade_trt.devices import cpu_has_native_bf16
from cascade_trt.errors import PrecisionError
from cascade_trt.precision import PrecisionPolicy
from cascade_trt.stages import STAGE_NAMES


def _auto(config, device: str, target: str) -> set[str]:
    return set(PrecisionPolicy.resolve(config, "auto", device=device, target=target).stages.values())


@pytest.mark.parametrize("config", [FULL, LITE, TINY], ids=lambda c: c.name)
def test_cpu_auto_is_bf16_for_torch_only_where_the_cpu_has_native_bf16(monkeypatch, config) -> None:
    for native, torch_auto in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert _auto(config, "cpu", "torch") == {torch_auto}
        # ONNX Runtime's CPU provider has no bf16 kernels, and CPU exports are made for it: fp32 always.
        assert _auto(config, "cpu", "onnxruntime") == {"fp32"}
        assert _auto(config, "cpu", "onnx") == {"fp32"}


def test_gpu_auto_does_not_depend_on_the_cpu(monkeypatch) -> None:
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        full = PrecisionPolicy.resolve(FULL, "auto", device="cuda", target="torch")
        assert full["stage_c"] == "bf16"  # overflows in fp16
        assert {full[s] for s in STAGE_NAMES if s != "stage_c"} == {"fp16"}
        assert _auto(LITE, "cuda", "tensorrt") == {"fp16"}


def test_explicit_precision_is_kept_on_a_cpu_with_bf16(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert _auto(TINY, "cpu", "torch") == {"bf16"}
    assert set(PrecisionPolicy.resolve(TINY, "fp32", device="cpu").stages.values()) == {"fp32"}
    mixed = PrecisionPolicy.resolve(TINY, {"stage_a": "fp32"}, device="cpu", target="torch")
    assert mixed["stage_a"] == "fp32" and mixed["stage_b"] == "bf16"
    with pytest.raises(PrecisionError, match="ONNX Runtime's CPU provider"):
        PrecisionPolicy.resolve(TINY, "bf16", device="cpu", target="onnxruntime")


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the CPU flags Linux lists")
def test_native_bf16_detection_agrees_with_the_cpu_flags() -> None:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    listed = bool({"avx512_bf16", "amx_bf16"} & flags)
    assert cpu_has_native_bf16() == listed, (
        f"torch says {cpu_has_native_bf16()}, /proc/cpuinfo lists {listed}"
    )
