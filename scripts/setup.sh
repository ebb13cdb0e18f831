#!/usr/bin/env bash
# Create .venv and install cascade_trt with its test and export tools.
#
# torch is installed first, pinned, so that the package's loose `torch>=2.4` never pulls another build:
#   * machines without an NVIDIA GPU get the CPU wheel (from the PyTorch CPU index, or a local wheel
#     that pip's find-links provides);
#   * machines with one get PyPI's default CUDA wheel.
# Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.11.0") or skip with TORCH_SPEC=none when the venv
# already has the torch you want.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ "$TORCH_SPEC" != none ] && ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        python -m pip install -q "$TORCH_SPEC"
    else
        # CPU build: a local wheel if pip's find-links has one (torch alone, no network; its dependencies
        # then come from the configured registries), else PyTorch's CPU index.
        if python -m pip install -q --no-index --no-deps "$TORCH_SPEC" 2>/dev/null; then
            python -m pip install -q "$TORCH_SPEC"
        else
            python -m pip install -q "$TORCH_SPEC" --index-url https://download.pytorch.org/whl/cpu \
                --extra-index-url https://pypi.org/simple
        fi
    fi
fi
python -m pip install -q -e ".[dev]"
python -c "import torch, cascade_trt; print(f'cascade_trt {cascade_trt.__version__}, torch {torch.__version__}')"
