#!/usr/bin/env bash
# SmolLM2-135M-Instruct (offline) with AILoRA and LoRA on the two generative tasks, each run scored
# before its first step (train.eval_before) and after training, on the same examples. Sized for a
# 2-core CPU: asdiv on every training problem for 3 epochs (about 25 minutes a run), xsum on 400
# articles for 1 epoch (about 15 minutes a run). Prints a table of test scores (before -> after) with a paired
# bootstrap over the test examples of after - before, then ailora against lora after training.
# Usage: bash benchmarks/generative_smollm2.sh [OUT_DIR]   (default runs/generative)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/generative}
A=.venv/bin/ailora
COMMON="model.name=smollm2 method.rank=8 train.lr=5e-4 train.batch_size=8 train.eval_batch_size=16 train.eval_before=true train.progress=false train.tensorboard=false"
for m in ailora lora; do
  [ -f "$OUT/asdiv-$m/results.json" ] || $A train $COMMON method.name=$m task.name=asdiv \
    task.max_eval_samples=200 model.max_length=256 train.epochs=3 run_dir="$OUT/asdiv-$m" --overwrite
done
for m in ailora lora; do
  [ -f "$OUT/xsum-$m/results.json" ] || $A train $COMMON method.name=$m task.name=xsum task.max_train_samples=400 \
    task.max_eval_samples=100 model.max_length=320 train.epochs=1 run_dir="$OUT/xsum-$m" --overwrite
done
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from ailora.experiments.stats import paired_bootstrap
from ailora.tasks.metrics import get_metric
from ailora.train.runrecord import read_complete
print("| task | method | metric | test before | test after | after - before (95% CI, paired bootstrap) |")
print("| --- | --- | --- | --- | --- | --- |")
after = {}
for run in sorted(Path(sys.argv[1]).glob("*/results.json")):
    r = read_complete(run.parent)
    task, method = run.parent.name.split("-", 1)
    name = "numeric_match" if task == "asdiv" else "rougeL"
    rows = {step: [json.loads(x) for x in (run.parent / "predictions" / f"test-step{step}.jsonl").read_text().splitlines()]
            for step in (0, r.steps)}
    refs = [x["reference"] for x in rows[0]]
    boot = paired_bootstrap(get_metric(name).fn, [[x["prediction"] for x in rows[r.steps]]],
                            [[x["prediction"] for x in rows[0]]], refs, resamples=500)
    lo, hi = boot["ci"]
    print(f"| {task} | {method} | {name} | {r.before['test'][name]:.4f} | {r.test[name]:.4f} | "
          f"{boot['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}], p = {boot['p']:.3f} |")
    after[task, method] = ([x["prediction"] for x in rows[r.steps]], refs, name)
print()
print("| task | ailora - lora after training (95% CI, paired bootstrap; one seed) |")
print("| --- | --- |")
for task in sorted({t for t, _ in after}):
    if (task, "ailora") in after and (task, "lora") in after:
        (ours, refs, name), (theirs, _, _) = after[task, "ailora"], after[task, "lora"]
        boot = paired_bootstrap(get_metric(name).fn, [ours], [theirs], refs, resamples=500)
        lo, hi = boot["ci"]
        print(f"| {task} | {boot['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}], p = {boot['p']:.3f} |")
PY
