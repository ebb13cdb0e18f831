"""TensorRT engines for Stable Cascade (installed as `cascade_trt.engines`), one module per job:

* `passes`: ONNX rewrites a low-precision graph needs before TensorRT parses it, and the fp32 reference pass;
* `profiles`: optimization profiles from the stage descriptions, and the "does this request fit" check;
* `manifest`: the manifest beside each engine, its content key, and mismatch messages with the rebuild command;
* `onnx_stage`: an exported stage (file, export manifest, `StageSpec`) as the builder reads it;
* `op_support`: a graph against TensorRT's published ONNX operator support (`tensorrt_onnx_ops.json`);
* `builder`: the in-process build (`build_engines`), the only TensorRT-touching code besides the backend;
* `check`: TensorRT against ONNX Runtime per stage and shape;
* `availability`: the lazy `import tensorrt` with its install hint.

Nothing here imports TensorRT at import time. The runtime side is `cascade_trt.backends.tensorrt_backend`.
"""
