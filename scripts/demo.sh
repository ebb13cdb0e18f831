#!/usr/bin/env bash
# The main job, offline, on any machine (CPU is enough):
#   1. write a tiny random Stable Cascade in diffusers format (prior + decoder pipelines),
#   2. export every stage to ONNX (verified against PyTorch in the test suite),
#   3. generate the same image with the torch and onnxruntime backends and compare them,
#   4. benchmark those checkpoints against diffusers (ONNX Runtime on the graphs of step 2), with a report.
# Everything lands under OUT (default: out/demo). Real checkpoints: see README "Use it".
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/demo}
CLI=.venv/bin/cascade-trt
PY=.venv/bin/python
mkdir -p "$OUT"

$CLI make-tiny "$OUT/ckpt" --overwrite
$CLI export --prior "$OUT/ckpt/prior" --decoder "$OUT/ckpt/decoder" --out "$OUT/onnx" --precision fp32

common=(--prior "$OUT/ckpt/prior" --decoder "$OUT/ckpt/decoder" --device cpu --precision fp32
        --height 256 --width 384 --seed 0 --no-progress)
$CLI generate "a photo of a cat" "${common[@]}" --backend torch --out "$OUT/torch.png"
$CLI generate "a photo of a cat" "${common[@]}" --backend onnxruntime --onnx-dir "$OUT/onnx" --out "$OUT/onnxruntime.png"
$PY - "$OUT" <<'PY'
import sys
import numpy as np
from PIL import Image
out = sys.argv[1]
a, b = (np.asarray(Image.open(f"{out}/{n}.png"), dtype=np.int16) for n in ("torch", "onnxruntime"))
diff = int(np.abs(a - b).max())
print(f"torch vs onnxruntime: max pixel difference {diff}/255 over {a.shape}")
sys.exit(0 if diff <= 1 else 1)
PY

# The bench times the same checkpoints, and ONNX Runtime runs the graphs exported above (no second export).
# fp32, as the images above: on the tiny architecture bf16 (auto on a CPU with native bf16) only adds cost.
$CLI bench --prior "$OUT/ckpt/prior" --decoder "$OUT/ckpt/decoder" --onnx-dir "$OUT/onnx" \
    --backends diffusers torch onnxruntime --sizes 256 --steps 20 10 --warmup 1 --repeats 3 --device cpu \
    --precision fp32 --out "$OUT/bench"
echo "demo done: images, ONNX models and benchmark report under $OUT"
