"""Half-precision residuals on a bfloat16 model: what ``residual_dtype`` keeps, its memory, its outputs.

    .venv/bin/python benchmarks/bf16_residuals.py [--model ~/.cache/ailora/smollm2-135m-instruct] [--rank 16]
        [--solver fast]

Loads the model in bfloat16 and adapts query and value three ways: ailora's AILoRA start with
``residual_dtype="auto"`` (the output criterion of ``ailora.core.rounding``) and with ``"float32"``,
and PEFT's PiSSA (``init_lora_weights="pissa"``, which always keeps the model's dtype). For each it
prints the residuals kept in bf16, the bytes of the model's weights (adapters excluded: they are the
same size everywhere), and the largest difference of its logits on a seeded probe (2 rows of 32
tokens) from the bf16 model's, and from the same bf16 weights computed in float32 (the function the
bf16 model approximates). The first row, the bf16 model itself against float32, is the model's own
rounding: the scale the others are read on. Byte counts and differences, no timings: the figures do
not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import peft
import torch

import ailora
from ailora.core.models import load_model
from ailora.core.probe import make_probe, run_probe

DEFAULT_MODEL = os.path.expanduser("~/.cache/ailora/smollm2-135m-instruct")


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter but the LoRA factors."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n)


def peft_pissa(model: torch.nn.Module, rank: int) -> torch.nn.Module:
    cfg = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa")
    return peft.get_peft_model(model, cfg)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--solver", default="fast")
    args = p.parse_args()
    base = load_model(args.model, dtype="bfloat16")
    probe = make_probe(base, batch=2, length=32, seed=0)
    reference = run_probe(base, probe)
    exact = run_probe(copy.deepcopy(base).float(), probe)
    size = weight_bytes(base)
    rows = [("the bf16 model itself", "-", size, 0.0, (reference - exact).abs().max().item())]
    for label, build in [
        ('ailora, residual_dtype="auto"', lambda m: ailora.apply(m, method="ailora", rank=args.rank,
                                                                  solver=args.solver, progress=False)),
        ('ailora, residual_dtype="float32"', lambda m: ailora.apply(m, method="ailora", rank=args.rank,
                                                                     solver=args.solver, residual_dtype="float32",
                                                                     progress=False)),
        ("PEFT PiSSA (model dtype)", lambda m: peft_pissa(m, args.rank)),
    ]:
        model = build(copy.deepcopy(base))
        state = ailora.state_of(model)
        kept = (f"{sum(r.residual_dtype == 'bfloat16' for r in state.layers)} of {len(state.layers)}" if state
                else "all (always)")
        out = run_probe(model, probe)
        rows.append((label, kept, weight_bytes(model), (out - reference).abs().max().item(),
                     (out - exact).abs().max().item()))
        if state and state.layers[0].residual_error is not None:
            worst = max(state.layers, key=lambda r: r.residual_error / r.residual_bound)
            print(f"{label}: worst layer {worst.name}: error {worst.residual_error:.3g}, "
                  f"bound {worst.residual_bound:.3g} (ratio {worst.residual_error / worst.residual_bound:.2f})")
    print(f"\n{args.model} in bfloat16, rank {args.rank} ({args.solver} solver), query and value; weights "
          f"{size / 2**20:.1f} MiB; largest logit {reference.abs().max().item():.3g}")
    print("| model | residuals in bf16 | weights (MiB) | vs the bf16 model's weights | max logit difference from "
          "the bf16 model | from its weights in float32 |")
    print("|---|---|---:|---:|---:|---:|")
    for label, kept, nbytes, diff, diff_exact in rows:
        print(f"| {label} | {kept} | {nbytes / 2**20:.1f} | {nbytes / size:.3f}x | {diff:.3g} | {diff_exact:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
