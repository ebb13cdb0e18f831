"""The latency suite (`cascade-trt bench`); see README.md here. Light to import: the CLI reads these names."""

BASELINE = "diffusers"
BACKENDS = ("diffusers", "torch", "torch-compile", "onnxruntime", "tensorrt")
