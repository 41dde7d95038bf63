"""Apply time and peak memory of a quantised ``ailora.apply`` against PEFT's QLoRA ``get_peft_model``.

    .venv/bin/python benchmarks/quant_apply_cost.py [--model smollm2] [--quant nf4] [--rank 8] [--smoke]

Three child processes, each loading the model and timing one step (its peak resident memory is the
child's ``ru_maxrss``, from ``os.wait4``):

- ``qlora``: the model loaded 4-bit by transformers (``BitsAndBytesConfig``), then PEFT's
  ``get_peft_model`` with LoRA on the query and value projections: QLoRA.
- ``qailora-from-4bit``: the same 4-bit model, then ``ailora.apply(method="ailora", quantize=...)``
  (every adapted weight dequantised, decomposed, its residual re-quantised; the error report).
- ``qailora-from-full``: the model loaded in float32, then ``ailora.apply(..., quantize=...)``
  (the unadapted layers quantised as QLoRA would).

Prints each step's seconds and peak memory and their ratios to QLoRA's, measured in one run on one
machine. Timings depend on the machine and on what else runs on it. ``--smoke``: a tiny random
LLaMA, to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch, transformers as T
spec, path, quant, rank = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import ailora, peft
from ailora.core.quantize import QuantSpec, bnb_config
cfg = bnb_config(QuantSpec(quant), torch.float32)
if spec == "qailora-from-full":
    model = T.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
else:
    model = T.AutoModelForCausalLM.from_pretrained(path, quantization_config=cfg, dtype=torch.float32)
t0 = time.perf_counter()
if spec == "qlora":
    peft.get_peft_model(model, peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"]))
else:
    ailora.apply(model, method="ailora", rank=rank, quantize=quant, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""

STEPS = ("qlora", "qailora-from-4bit", "qailora-from-full")


def run_child(step: str, path: str, quant: str, rank: int) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, step, path, quant, str(rank)], stdout=out,
                                stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"{step} failed (exit status {status})")
        out.seek(0)
        result = json.loads(out.read().decode().strip().splitlines()[-1])
    return {**result, "peak_rss_mib": usage.ru_maxrss / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--quant", default="nf4", choices=["nf4", "fp4", "int8"])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--smoke", action="store_true", help="a tiny random LLaMA instead of the real model")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            sys.path.insert(0, str(ROOT))
            from tests.tiny_models import save_tiny_llama

            path = str(save_tiny_llama(Path(tmp) / "tiny"))
        else:
            from ailora.core.models import resolve_model_path

            path = str(resolve_model_path(args.model))
        rows = {step: run_child(step, path, args.quant, args.rank) for step in STEPS}
    base = rows["qlora"]
    print("| step | seconds | x QLoRA | peak RSS (MiB) | x QLoRA |")
    print("| --- | --- | --- | --- | --- |")
    for step, r in rows.items():
        print(f"| {step} | {r['seconds']:.3f} | {r['seconds'] / base['seconds']:.2f} | {r['peak_rss_mib']:.0f} | "
              f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
