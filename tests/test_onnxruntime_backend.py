"""The onnxruntime backend's IO binding and CUDA wiring, as far as a CPU can check them.

The element types are checked against the ONNX Runtime installed (CI's pinned one; the same file was run against
1.19.2, where ONNX type numbers are refused, in a scratch environment). The CUDA side (the pipeline's stream
as `user_compute_stream`, no host sync, ONNX Runtime's own CUDA graphs per shape) cannot run without
onnxruntime-gpu and a GPU: what is checked here is the pure code that decides it (provider options, run
options, which runner is stream-ordered, one graph id per bound shape), not that ONNX Runtime honours it.
"""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from cascade_trt.backends.onnxruntime_backend import (
    BF16_MIN_VERSION,
    CUDA,
    ELEMENT_TYPES,
    OnnxRuntimeRunner,
    check_bindable,
    cuda_graphs_enabled,
    run_options,
    stream_ordered,
    with_stream,
)
from cascade_trt.errors import BackendUnavailableError, ConfigError
from cascade_trt.stages import stage_specs

ONNX_TYPES = {
    torch.float32: TensorProto.FLOAT,
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
    torch.int64: TensorProto.INT64,
    torch.int32: TensorProto.INT32,
}
INSTALLED = tuple(int(p) for p in ort.__version__.split(".")[:2])


def _cast_to_float(elem: int) -> bytes:
    x = helper.make_tensor_value_info("x", elem, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model.SerializeToString()


@pytest.mark.parametrize("dtype", list(ELEMENT_TYPES), ids=str)
def test_every_bound_dtype_reaches_onnx_runtime_by_address(dtype: torch.dtype) -> None:
    """Each dtype a stage binds, bound by pointer with the backend's element type, arrives intact in this
    ONNX Runtime; where it cannot be bound (bf16 before 1.20), the backend says so before binding."""
    if dtype == torch.bfloat16 and INSTALLED < BF16_MIN_VERSION:
        with pytest.raises(BackendUnavailableError, match=r"onnxruntime-gpu>=1\.20"):
            check_bindable(ort.__version__, {dtype}, "stage_c.onnx")
        return
    check_bindable(ort.__version__, {dtype}, "stage_c.onnx")
    session = ort.InferenceSession(_cast_to_float(ONNX_TYPES[dtype]), providers=["CPUExecutionProvider"])
    x = (torch.arange(6).reshape(2, 3) - 2).to(dtype)
    y = torch.full((2, 3), float("nan"))
    io = session.io_binding()
    io.bind_input("x", "cpu", 0, ELEMENT_TYPES[dtype], list(x.shape), x.data_ptr())
    io.bind_output("y", "cpu", 0, ELEMENT_TYPES[torch.float32], list(y.shape), y.data_ptr())
    session.run_with_iobinding(io)
    assert torch.equal(y, x.float())


def test_bf16_needs_onnx_runtime_1_20_and_nothing_else_does() -> None:
    with pytest.raises(BackendUnavailableError, match=r"ONNX Runtime 1\.19\.2 cannot bind .*>=1\.20"):
        check_bindable("1.19.2", {torch.float32, torch.bfloat16}, "stage_c.onnx")
    check_bindable("1.19.2", {torch.float32, torch.float16, torch.int64}, "stage_c.onnx")
    check_bindable("1.20.0", {torch.bfloat16}, "stage_c.onnx")


def test_the_cuda_provider_gets_the_pipeline_stream_and_nothing_else_does() -> None:
    providers = [(CUDA, {"device_id": "1", "enable_cuda_graph": "1"}), "CPUExecutionProvider"]
    wired = with_stream(providers, 0x7F00)
    assert wired == [
        (CUDA, {"device_id": "1", "enable_cuda_graph": "1", "user_compute_stream": str(0x7F00)}),
        "CPUExecutionProvider",
    ]
    assert providers[0][1] == {"device_id": "1", "enable_cuda_graph": "1"}, (
        "the caller's options are not changed"
    )
    assert with_stream(providers, None) == providers  # no stream (CPU, or a provider that takes none)
    assert with_stream([CUDA], 12) == [(CUDA, {"user_compute_stream": "12"})]
    with pytest.raises(ConfigError, match="sets the CUDA provider's user_compute_stream itself"):
        with_stream([(CUDA, {"user_compute_stream": "5"})], 12)


def test_only_providers_that_take_the_stream_make_a_runner_stream_ordered() -> None:
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert stream_ordered(gpu, [(CUDA, {}), "CPUExecutionProvider"])
    assert stream_ordered(gpu, [CUDA])
    assert not stream_ordered(gpu, ["TensorrtExecutionProvider", CUDA, "CPUExecutionProvider"])
    assert not stream_ordered(gpu, ["CPUExecutionProvider"])  # nothing runs on the GPU stream
    assert not stream_ordered(cpu, [CUDA, "CPUExecutionProvider"])


def test_onnx_runtime_cuda_graphs_are_the_providers_choice() -> None:
    assert cuda_graphs_enabled([(CUDA, {"enable_cuda_graph": "1"}), "CPUExecutionProvider"])
    assert cuda_graphs_enabled([(CUDA, {"enable_cuda_graph": True})])
    assert not cuda_graphs_enabled([(CUDA, {"enable_cuda_graph": "0"})])
    assert not cuda_graphs_enabled([CUDA, "CPUExecutionProvider"])


def test_run_options_skip_the_host_sync_and_name_the_graph() -> None:
    ordered = run_options(ort, stream_ordered=True, graph_id=3)
    assert ordered.get_run_config_entry("disable_synchronize_execution_providers") == "1"
    assert ordered.get_run_config_entry("gpu_graph_id") == "3"
    plain = run_options(ort, stream_ordered=False, graph_id=None)
    for key in ("disable_synchronize_execution_providers", "gpu_graph_id"):
        with pytest.raises(RuntimeError):  # ONNX Runtime raises for an entry that was never set
            plain.get_run_config_entry(key)


def test_cpu_runner_is_synchronous_and_each_shape_gets_its_own_graph_id(tiny_onnx, tiny_checkpoints) -> None:
    path = tiny_onnx("fp32")["stage_a"]
    spec = stage_specs(tiny_checkpoints.config())["stage_a"]
    runner = OnnxRuntimeRunner(spec, path, dtype=torch.float32, device="cpu")
    assert runner.stream is None and not runner.cuda_graphs and not runner.capturable
    assert runner.providers == ["CPUExecutionProvider"]
    small = runner.allocate(1, 128, 128)
    assert small.state.graph_id is None
    # The numbering a GPU runner with `enable_cuda_graph` uses, exercised on the CPU session: one id per
    # bound shape, from 1, kept by the binding (ONNX Runtime's CPU provider ignores the entry).
    runner.cuda_graphs = True
    first, second = runner.allocate(1, 128, 256), runner.allocate(2, 128, 128)
    assert (first.state.graph_id, second.state.graph_id) == (1, 2)
    assert first.state.run_options.get_run_config_entry("gpu_graph_id") == "1"
    second.inputs["latents"].normal_(generator=torch.Generator().manual_seed(0))
    runner.execute(second)
    assert second.outputs["images"].shape == (2, 3, 128, 128)
    assert 0.0 <= float(second.outputs["images"].min()) <= float(second.outputs["images"].max()) <= 1.0
