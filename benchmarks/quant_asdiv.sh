#!/usr/bin/env bash
# A short real run on a 4-bit base: SmolLM2-135M-Instruct (offline) on asdiv, QLoRA (LoRA over nf4)
# against QAILoRA and QPiSSA (their SVD starts over an nf4 residual), and full-precision AILoRA for
# reference. The settings of benchmarks/generative_smollm2.sh, sized for minutes: 400 training
# problems, 1 epoch, 100 test problems, each run scored before its first step (train.eval_before)
# and after training. Each run's record (results.json) holds the loss curve, the scores and the
# peak memory; the table compares the loss of the first logged interval (steps 1-10, the
# earliest the record keeps) with the full-precision run's, and peak memory against it (the GPU's
# peak allocation on a GPU, else the process's peak resident memory). Figures depend on the machine; on a 2-core CPU
# a run takes several minutes.
# Usage: bash benchmarks/quant_asdiv.sh [OUT_DIR] [EXTRA OVERRIDES...]   (default runs/quant_asdiv)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/quant_asdiv}
shift || true
A=${AILORA:-.venv/bin/ailora}
COMMON="model.name=smollm2 method.rank=8 train.lr=5e-4 train.batch_size=8 train.eval_batch_size=16 train.eval_before=true
 train.progress=false train.tensorboard=false task.name=asdiv task.max_train_samples=400 task.max_eval_samples=100
 model.max_length=256 train.epochs=1"
run() {  # name, overrides...
  local name=$1; shift
  [ -f "$OUT/$name/results.json" ] || $A train $COMMON "$@" "${EXTRA[@]}" run_dir="$OUT/$name" --overwrite
}
EXTRA=("$@")
run full-ailora method.name=ailora
run qlora method.name=lora method.quantize=nf4
run qailora method.name=ailora method.quantize=nf4
run qpissa method.name=pissa method.quantize=nf4
${PYTHON:-.venv/bin/python} - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/results.json"))}
ref = runs.get("full-ailora")
def first_loss(r):  # the mean training loss of the first logging interval (steps 1-10): the curve is results["train_log"]
    return r["train_log"][0]["train_loss"] if r.get("train_log") else float("nan")
def peak(r):
    m = r.get("peak_memory") or {}
    return m.get("gpu_max_allocated_mib") or m.get("cpu_max_rss_mib") or float("nan")
print("| run | loss, steps 1-10 | vs full precision | test before | test after | peak memory (MiB) | vs full precision |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for name, r in runs.items():
    m = "numeric_match"
    print(f"| {name} | {first_loss(r):.4f} | {first_loss(r) - first_loss(ref):+.4f} | {r['before']['test'][m]:.4f} | "
          f"{r['test'][m]:.4f} | {peak(r):.0f} | {peak(r) / peak(ref):.2f}x |")
PY
