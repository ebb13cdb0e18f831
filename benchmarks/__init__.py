"""The latency suite (`cascade-trt bench`); see README.md here. Light to import: the CLI reads these names."""

BASELINE = "diffusers"
# Every other row of a benchmark runs `CascadePipeline`: the backend it runs, and the options that make the
# row this variant of it (each a `CascadePipeline.from_components` keyword).
RUNTIME_VARIANTS: dict[str, tuple[str, dict[str, bool]]] = {
    "torch": ("torch", {}),
    "torch-no-graphs": ("torch", {"cuda_graphs": False}),
    "torch-compile": ("torch", {"compile": True}),
    "onnxruntime": ("onnxruntime", {}),
    "tensorrt": ("tensorrt", {}),
}
BACKENDS = (BASELINE, *RUNTIME_VARIANTS)
