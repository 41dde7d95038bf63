#!/usr/bin/env bash
# The README's analysis pictures (the AILoRA paper's Figures 1, 3, 4, 7, 8 and a spectrum), from a
# finished `ailora sweep --preset baselines` directory (full fine-tuning and the LoRA family on MiniLM).
#   bash scripts/figures.sh SWEEP_DIR [OUT_DIR]      (default OUT_DIR: docs/figures)
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP=${1:?usage: scripts/figures.sh SWEEP_DIR [OUT_DIR]}
OUT=${2:-docs/figures}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
A=.venv/bin/ailora
BASE=$($PY -c "from ailora.core.models import minilm_dir; print(minilm_dir())")
TASK=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['tasks'][0])" "$SWEEP/sweep.json")
# The run of each method at its selected learning rate, seed 0.
run() { $PY -c "
import json, sys
from ailora.experiments.sweep import summarize
row = summarize(sys.argv[1])['tasks'][sys.argv[2]]['methods'][sys.argv[3]]
print(sys.argv[1] + '/' + sorted(row['runs'])[0])
" "$SWEEP" "$TASK" "$1"; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
FULL=$(run full)/adapter
METHODS=(lora pissa milora ailora)
ADAPTERS=(); MERGED=(); RUNS=()
for m in "${METHODS[@]}"; do
  ADAPTERS+=("$(run "$m")/adapter"); RUNS+=("$(run "$m")")
  $A merge --base "$BASE" --kind seq-cls --adapter "$(run "$m")/adapter" --out "$WORK/$m" >/dev/null
  MERGED+=("$WORK/$m")
done
# Held-out text for the forgetting measure: the task's test sentences.
$PY -c "
from ailora.tasks import load_task
d = load_task('$TASK', max_samples={'test': 256})
open('$WORK/heldout.txt', 'w').write('\n'.join(e['text'].replace('\n', ' ') for e in d.test) + '\n')"
$A analyze norms --base "$BASE" --finetuned "$FULL" --labels full-FT --out "$OUT"
$A analyze tsne --base "$BASE" --finetuned "$FULL" "${MERGED[@]}" --labels full-FT "${METHODS[@]}" --out "$OUT"
$A analyze spectrum --model "$BASE" --rank 8 --out "$OUT"
$A analyze similarity --base "$BASE" --finetuned "$FULL" --adapter "${ADAPTERS[@]}" --labels "${METHODS[@]}" --out "$OUT"
$A analyze forgetting --base "$BASE" --finetuned "$FULL" "${MERGED[@]}" --labels full-FT "${METHODS[@]}" \
  --text "$WORK/heldout.txt" --out "$OUT"
$A analyze curves --runs "${RUNS[@]}" "$(run full)" --out "$OUT"
ls "$OUT"
