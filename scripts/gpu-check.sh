#!/usr/bin/env bash
# The whole GPU run of cascade_trt in one prepared command, within a time budget.
#
#   scripts/gpu-check.sh OUT_DIR [--smoke] [--budget-s N]
#   scripts/gpu-check.sh --fetch-wheels
#
# Whoever first has an NVIDIA H100/H200 runs this before anything else, commits OUT_DIR/bench (and
# OUT_DIR/compile, if it ran) under benchmarks/results/gpu-full/, and fixes what it finds. On the device
# machine of this project's workplace (the `run` tool; no internet there, the wheels travel with the tree):
#
#   command: bash scripts/gpu-check.sh "$OUT"
#   carry:   [".whl"]      timeout_s: 560
#
# after filling the ignored .whl/ folder where there is network (`scripts/gpu-check.sh --fetch-wheels`):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl \
#       diffusers==0.42.1 importlib_metadata==8.9.0 setuptools==80.10.2 wheel==0.48.0 packaging==26.4
#
# (7.5 MB, pure Python.) The device image has torch 2.11 + CUDA 13, transformers, onnx, onnxruntime (CPU),
# pytest and matplotlib. Of what the run needs it lacks diffusers (whose declared importlib_metadata comes
# along; zipp, its only need, is there); setuptools, wheel and packaging build cascade_trt itself offline.
#
# Steps, each cut at what is left of the budget (default 480 s, so the run ends within 8 minutes), each
# writing its results as it goes so a run cut short keeps them:
#   1. the machine: GPU, driver, torch and CUDA versions;
#   2. installs from .whl what is missing (pip --no-index), then this tree's cascade_trt without dependencies,
#      editable as scripts/setup.sh does (export/, engines/ and benchmarks/ map into the package);
#   3. the gpu- and tensorrt-marked tests;
#   4. the full-preset benchmark at 1024x1024, batch 1 and 4, 20+10 steps: diffusers eager (bf16 Stage C, fp16
#      elsewhere, as diffusers documents) against the torch backend with CUDA graphs and without;
#   5. torch-compile against diffusers at batch 1, when at least COMPILE_MIN_S of the budget is left
#      (Inductor compiles each UNet for minutes);
#   6. each target (>= 3x diffusers eager end to end at 1024x1024, loop overhead < 2 % of a step, within 1.6x
#      of the compute floor) with the measured value beside it.
# OUT_DIR gets log.txt (all of the above), bench/results.{json,md,png} and compile/results.{json,md,png}.
# The budget, estimated for one H100/H200 (nothing has run on one yet): install ~20 s, tests ~60 s, the
# benchmark ~150 s (random-weight models built on the GPU in under a minute; about 227 TFLOP an image, so a
# few seconds per eager call at batch 4; 1 warm-up call that captures the graphs and 5 timed calls per backend
# and batch); what is left goes to torch-compile.
#
# --smoke runs the same steps on the CPU with the tiny preset and 2+2 steps in well under 3 minutes,
# installing only what is missing; tests/test_gpu_check.py runs it so that this script cannot rot. Exit
# status: 0 when every step succeeded, 1 when one failed or was cut (the log says which), 2 for bad arguments.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
WHEELS=(diffusers==0.42.1 importlib_metadata==8.9.0 setuptools==80.10.2 wheel==0.48.0 packaging==26.4)

usage() { echo "usage: scripts/gpu-check.sh OUT_DIR [--smoke] [--budget-s N] | --fetch-wheels" >&2; exit 2; }

if [ "${1:-}" = --fetch-wheels ]; then
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl "${WHEELS[@]}"
fi
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || usage
OUT=$1
shift
SMOKE=0
BUDGET=
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) SMOKE=1 ;;
        --budget-s) [ $# -ge 2 ] && [[ $2 =~ ^[0-9]+$ ]] || usage; BUDGET=$2; shift ;;
        *) usage ;;
    esac
    shift
done

# The smoke run is fp32: bf16 (what auto picks on a CPU with native bf16) pays off at real model sizes, while
# the tiny architecture is all per-operation overhead, which bf16 only adds to.
if [ $SMOKE = 1 ]; then
    DEVICE=cpu PRESET=tiny PRECISION=fp32 BATCHES="1 2" STEPS="2 2" REPEATS=2 TESTS_S=100
    BUDGET=${BUDGET:-170}
else
    DEVICE=cuda PRESET=full PRECISION=auto BATCHES="1 4" STEPS="20 10" REPEATS=5 TESTS_S=150
    BUDGET=${BUDGET:-480}
fi
COMPILE_MIN_S=200
RESERVE_S=15  # kept back at every step for the summary
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
CLI=("$PY" -c 'import sys; from cascade_trt.cli import main; sys.exit(main(sys.argv[1:]))')
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PYTHONUNBUFFERED=1

mkdir -p "$OUT" || exit 2
exec > >(tee -a "$OUT/log.txt") 2>&1
TEE=$!
trap 'exec >&- 2>&-; wait $TEE' EXIT  # the log is complete when the script returns
START=$SECONDS
FAILED=()

left() { echo $((BUDGET - (SECONDS - START))); }

# step NAME CAP_S COMMAND...: COMMAND (a program) under `timeout` at CAP_S or what is left of the budget,
# whichever is less; a failure is recorded and the next step runs.
step() {
    local name=$1 cap=$2 limit rc
    shift 2
    limit=$(($(left) - RESERVE_S))
    [ "$limit" -gt "$cap" ] && limit=$cap
    if [ "$limit" -lt 10 ]; then
        echo "== $name: skipped, $(left) s of the ${BUDGET} s budget left"
        FAILED+=("$name (no time left)")
        return
    fi
    echo "== $name (at most ${limit} s)"
    timeout --kill-after=5 "$limit" "$@"
    rc=$?
    if [ $rc = 124 ] || [ $rc = 137 ]; then
        echo "== $name: cut at ${limit} s to stay within the budget"
    fi
    [ $rc = 0 ] || FAILED+=("$name (exit status $rc)")
    echo "== $name: exit status $rc, $(left) s of the budget left"
}

machine() {
    timeout 60 "$PY" - "$DEVICE" <<'PY' || return 1
import platform, sys

import torch

print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"{p.multi_processor_count} SMs")
elif sys.argv[1] == "cuda":
    sys.exit("no CUDA GPU visible to torch: run with --smoke on a CPU")
else:
    print("no CUDA GPU visible to torch (a smoke run, on the CPU)")
PY
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    else
        echo "nvidia-smi: not on this machine"
    fi
}

install() {
    local wanted=()
    "$PY" -c "import diffusers" 2>/dev/null || wanted+=("${WHEELS[@]:0:2}")
    if [ ${#wanted[@]} -gt 0 ]; then
        ls .whl/*.whl >/dev/null 2>&1 || {
            echo "diffusers is missing and .whl/ has no wheels: run scripts/gpu-check.sh --fetch-wheels"
            echo "where there is network, and carry .whl with the tree"
            return 1
        }
        "$PY" -m pip install -q --no-index --find-links .whl --no-deps "${wanted[@]}" || return 1
    fi
    # This tree's cascade_trt, editable, unless it is installed so already. Editable, not a copy: run from
    # the repository root, the cascade_trt/ folder here shadows a copy, and the copy's mapped subpackages.
    local here find='import importlib.util as u; print(u.find_spec("cascade_trt.engines").origin)'
    here=$("$PY" -c "$find" 2>/dev/null)
    if [ "$here" != "$ROOT/engines/__init__.py" ]; then
        "$PY" -m pip install -q --no-index --find-links .whl --no-deps -e "$ROOT" || return 1
    fi
    "$PY" - <<'PY'
import cascade_trt
import diffusers

print(f"diffusers {diffusers.__version__}, cascade_trt {cascade_trt.__version__}")
PY
}

bench_args() {  # OUT_SUBDIR BACKENDS BATCHES REPEATS: the benchmark command, into BENCH
    BENCH=("${CLI[@]}" bench --preset $PRESET --backends $2 --sizes 1024 --batch $3 --steps $STEPS --warmup 1
        --repeats "$4" --device $DEVICE --precision $PRECISION --out "$OUT/$1")
}

KIND=$([ $SMOKE = 1 ] && echo "smoke run, CPU, tiny preset" || echo "GPU run, full preset")
echo "== gpu-check: $KIND, budget ${BUDGET} s"
echo "== machine"
machine || exit 1  # no GPU where one was promised: nothing below would mean anything
echo "== install"
install || FAILED+=("install")
step "gpu tests" $TESTS_S "$PY" -m pytest -q -p no:cacheprovider -m "gpu or tensorrt" tests
bench_args bench "diffusers torch torch-no-graphs" "$BATCHES" $REPEATS
step benchmark 100000 "${BENCH[@]}"
if [ "$(left)" -ge $COMPILE_MIN_S ]; then
    bench_args compile "diffusers torch-compile" 1 3
    step torch-compile 100000 "${BENCH[@]}"
else
    echo "== torch-compile: skipped, $(left) s of the budget left and it needs ${COMPILE_MIN_S} s"
fi

echo "== targets"
for part in bench compile; do
    if [ -f "$OUT/$part/results.md" ]; then
        echo "-- $part (from $OUT/$part/results.md)"
        awk '/^## /{p=/^## Targets/} p' "$OUT/$part/results.md"
    fi
done
echo "== gpu-check: done in $((SECONDS - START)) s of a ${BUDGET} s budget; results and log in $OUT"
if [ -n "${FAILED[*]}" ]; then
    printf '== failed: %s\n' "${FAILED[@]}"
    exit 1
fi
