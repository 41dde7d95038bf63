"""Quantisation error of each SVD start over a bitsandbytes residual, per role, against QLoRA's.

    .venv/bin/python benchmarks/quant_errors.py [--models smollm2 minilm] [--quant nf4] [--rank 8]
        [--iters 1 2 5] [--out benchmarks/results/quant_errors.json]

For each model (the real SmolLM2-135M-Instruct and MiniLM from their offline packages, float32) and
each method (AILoRA, PiSSA, MiLoRA, on their default roles query and value), one ``ailora.apply(...,
quantize=QUANT, quant_iters=max(ITERS))``; every adapted layer's report gives its start's relative
error ||W - (deq(Q(W_res)) + s B0 A0)||_F / ||W||_F after each iteration and QLoRA's,
||W - deq(Q(W))||_F / ||W||_F. The table is, per role, the mean over layers of the ratio of the two
(below 1: the start is closer to W than QLoRA's), after 0 and each of ITERS iterations. Deterministic
(exact SVD; bitsandbytes' quantisation is deterministic): rerunning gives the same figures.
``--smoke`` runs a tiny random LLaMA instead, to check the script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ailora", "pissa", "milora")


def _load(name: str):
    if name == "smoke":
        sys.path.insert(0, str(ROOT))
        from tests.tiny_models import tiny

        return tiny("llama")
    from ailora.core.models import load_model, resolve_model_path

    return load_model(resolve_model_path(name))


def role_ratios(state, iters: list[int]) -> dict:
    """role -> {"inits", "layers", "qlora_error", "ratio_iter{k}" for k in 0 + iters}: means over layers."""
    out: dict[str, dict] = {}
    for rec in state.layers:
        for role, q in rec.quant["by_role"].items():
            row = out.setdefault(role, {"inits": rec.inits[rec.roles.index(role)], "layers": 0, "qlora_error": 0.0,
                                        **{f"ratio_iter{k}": 0.0 for k in [0, *iters]}})
            row["layers"] += 1
            row["qlora_error"] += q["qlora_error"]
            errs = q["errors_by_iteration"]
            for k in [0, *iters]:
                row[f"ratio_iter{k}"] += errs[min(k, len(errs) - 1)] / q["qlora_error"]
    for row in out.values():
        for key in list(row):
            if key.startswith(("ratio", "qlora")):
                row[key] /= row["layers"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2", "minilm"])
    ap.add_argument("--quant", default="nf4", choices=["nf4", "fp4", "int8"])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--iters", nargs="+", type=int, default=[1, 2, 5])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quant_errors.json"))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared CPU, more threads than free cores slow LAPACK's SVD "
                         "down many times over)")
    ap.add_argument("--smoke", action="store_true", help="a tiny random LLaMA instead of the real models")
    args = ap.parse_args(argv)
    import torch

    import ailora

    torch.set_num_threads(args.threads)

    models = ["smoke"] if args.smoke else args.models
    results = {}
    print("| model | method | role (start) | layers | QLoRA error | ratio, 0 iterations | "
          + " | ".join(f"ratio, {k} iterations" for k in args.iters) + " |")
    print("| --- " * (6 + len(args.iters)) + "|")
    for name in models:
        for method in METHODS:
            pm = ailora.apply(_load(name), method=method, rank=args.rank, quantize=args.quant,
                              quant_iters=max(args.iters), quant_keep=True, progress=False)
            rows = role_ratios(pm.ailora_state, args.iters)
            results[f"{name}/{method}"] = rows
            for role, row in rows.items():
                ratios = " | ".join(f"{row[f'ratio_iter{k}']:.3f}" for k in [0, *args.iters])
                print(f"| {name} | {method} | {role} ({row['inits']}) | {row['layers']} | {row['qlora_error']:.4f} | "
                      f"{ratios} |", flush=True)
    meta = {"quant": args.quant, "rank": args.rank, "iters": args.iters, "solver": "exact", "results": results}
    if not args.smoke:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
