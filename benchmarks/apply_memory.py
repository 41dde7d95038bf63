"""Peak memory of ``ailora.apply`` against the model's own size.

    .venv/bin/python benchmarks/apply_memory.py [--model smollm2|llama-2048x8|PATH] [--dtype bfloat16]
        [--solver fast] [--rank 16]

Each case runs in a fresh child process: a first apply on a tiny model (what apply loads lazily, such
as LAPACK's code pages and thread pools, is a fixed cost of the process), then it loads (or builds,
seeded) the model and measures the resident memory apply adds at its peak: the kernel's high-water
mark is reset just before apply (``/proc/self/clear_refs``), so the peak of loading the model does
not hide apply's. Memory that apply frees but the C allocator keeps counts in that peak. The target
(issue 22): at most the model plus one layer's decomposition workspace, so no full copy of the
model and no float32 copy of a bf16 model. Printed beside it: the model's bytes, and the float32
bytes of its largest adapted weight (one layer's residual in float32; the decompositions batch
same-shape blocks up to ``ailora.core.decompose.MAX_BATCH_ELEMENTS`` float32 entries, 256 MB).
Resident memory depends on what the process holds, not on the CPU's load. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SMOLLM2 = os.path.expanduser("~/.cache/ailora/smollm2-135m-instruct")
# Built in code, seeded: name -> (hidden, layers, intermediate, heads, vocab)
BUILT = {"llama-2048x8": (2048, 8, 5504, 16, 32000), "llama-1024x4": (1024, 4, 2752, 8, 1000)}


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _model(name: str, dtype):
    import torch
    import transformers

    from ailora.core.models import load_model

    if name not in BUILT:
        return load_model(SMOLLM2 if name == "smollm2" else name, dtype=str(dtype).removeprefix("torch."))
    hidden, layers, inter, heads, vocab = BUILT[name]
    config = transformers.LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                                      num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype)  # filled one tensor at a time: no float32 model at any point
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02 if p.dim() > 1 else torch.ones(p.shape))
    return model


def _tiny_llama(dtype: str):
    import torch
    import transformers

    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=100)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(getattr(torch, dtype))


def measure(name: str, dtype: str, solver: str, rank: int) -> dict:
    """Run in the child: the model's bytes, and the resident memory apply adds at its peak."""
    import gc

    import torch

    import ailora
    from ailora.core.models import load_model  # noqa: F401  (imported before the baseline, as apply's code)
    from ailora.core.roles import find_targets, weight_of

    # A first apply on a tiny model loads what apply loads lazily (LAPACK's code pages, PEFT's layer
    # classes, thread pools): fixed costs of the process, not memory apply holds for this model.
    tiny = _tiny_llama(dtype)
    ailora.apply(tiny, method="ailora", rank=2, solver=solver, progress=False)
    del tiny
    model = _model(name, getattr(torch, dtype))
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    largest = max(weight_of(model.get_submodule(t.name)).numel() for t in find_targets(model, ["query", "value"]))
    gc.collect()
    before = _kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark (VmHWM) to the current resident size
    peft_model = ailora.apply(model, method="ailora", rank=rank, solver=solver, progress=False)
    peak = _kib("VmHWM")
    kept = sorted({r.residual_dtype for r in peft_model.ailora_state.layers})
    return {"model": name, "dtype": dtype, "model_bytes": model_bytes, "layer_float32_bytes": 4 * largest,
            "added_peak_bytes": (peak - before) * 1024, "residual_dtypes": kept,
            "passed": peft_model.ailora_state.check["passed"]}


def run_child(name: str, dtype: str, solver: str, rank: int) -> dict:
    """``measure`` in a fresh process (its own high-water mark, nothing held from another case)."""
    out = subprocess.run([sys.executable, __file__, "--child", "--model", name, "--dtype", dtype, "--solver", solver,
                          "--rank", str(rank)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"apply_memory child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="smollm2, llama-2048x8, llama-1024x4 or a model directory")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--solver", default="fast")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    names = args.model or ["smollm2", "llama-2048x8"]
    if args.child:
        print(json.dumps(measure(names[0], args.dtype, args.solver, args.rank)))
        return 0
    print(f"ailora.apply (AILoRA, query and value, rank {args.rank}, {args.solver} solver), {args.dtype}")
    print("| model | model (MiB) | largest adapted weight in float32 (MiB) | apply's added peak (MiB) | "
          "added / model | residuals kept | check |")
    print("|---|---:|---:|---:|---:|---|---|")
    for name in names:
        r = run_child(name, args.dtype, args.solver, args.rank)
        mib = 2**20
        print(f"| {name} | {r['model_bytes'] / mib:.0f} | {r['layer_float32_bytes'] / mib:.0f} | "
              f"{r['added_peak_bytes'] / mib:.0f} | {r['added_peak_bytes'] / r['model_bytes']:.2f} | "
              f"{', '.join(r['residual_dtypes'])} | {'passed' if r['passed'] else 'FAILED'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
