#!/usr/bin/env bash
# The GPU check of issue 22: one short script for one CUDA machine (under 8 minutes on one H100), no network.
#
#   bash benchmarks/gpu_check.sh            # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --dry-run  # on a CPU: tiny shapes, checks that the script runs (a test runs it)
#
# Needs PyTorch with CUDA, transformers, PEFT, Accelerate and this repository (pip install --no-index
# the wheels carried along, or PYTHONPATH=src); HF_HUB_OFFLINE is set, nothing is downloaded.
#  1. The test tiers that need no CPU-only assumption (tier 1 invariants, tier 2 agreement with PEFT, the
#     scale tests), on the GPU machine's own packages.
#  2. benchmarks/gpu_check.py: exactness and save/reload in bf16 on the GPU, apply (exact, fast) against
#     PEFT pissa / pissa_niter_4 on 7B-shaped layers and SmolLM2, a training step against a hand-written
#     PEFT loop. Its tables go to gpu_check.md beside the log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${GPU_CHECK_OUT:-gpu_check_out}
mkdir -p "$OUT"
DRY=""
TESTS=(tests/test_core.py tests/test_check.py tests/test_svd.py tests/test_reference.py tests/test_streaming.py
       tests/test_scale.py)
if [ "${1:-}" = "--dry-run" ]; then
  DRY="--dry-run"
  TESTS=(tests/test_scale.py -k "auto_keeps or float32_model")  # a few seconds: the dry run checks the wiring
fi
echo "== 1. tests (${TESTS[*]})"
"$PY" -m pytest -q -x -m "not slow and not multiprocess" -p no:cacheprovider "${TESTS[@]}"
echo "== 2. device checks and timings"
"$PY" benchmarks/gpu_check.py $DRY --out "$OUT/adapters" | tee "$OUT/gpu_check.md"
