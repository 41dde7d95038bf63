"""Peak resident memory of the streaming init (``ailora init --residual-out``) against the checkpoint's size.

    .venv/bin/python benchmarks/streaming_init.py [--gigabytes 3] [--shards 2] [--hidden 2048] [--solver exact]

Makes a synthetic float32 LLaMA checkpoint of at least --gigabytes in --shards safetensors shards,
in a temporary directory removed afterwards (twice the size on disk while it runs: the checkpoint
and the residual model). The checkpoint is written tensor by tensor with ailora's shard writer, so
the child that makes it never holds more than one tensor either, and this process imports neither
torch nor ailora (a child's ``ru_maxrss`` on Linux includes what its parent had resident when it forked). Then ``ailora init --model CKPT --residual-out
OUT`` runs in a child process and its peak resident set (``ru_maxrss`` of that child, from ``os.wait4``)
is reported against the checkpoint's size; so is a child that only imports what the init imports
(torch, transformers, PEFT, ailora), the fixed part of that peak. The issue's target: at most 25% of
a checkpoint of at least 3 GB. Small runs to check the script: ``--gigabytes 0.2 --hidden 512 --vocab 8000``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORTS_ONLY = "import ailora.core.streaming, ailora.cli.init"


def llama_config(gigabytes: float, hidden: int, vocab: int):
    """A LLaMA of hidden size ``hidden`` with as many layers as make at least ``gigabytes`` of float32."""
    import transformers

    heads, kv = max(1, hidden // 128), max(1, hidden // 512)
    inter = hidden * 43 // 16
    per_layer = 2 * hidden * hidden + 2 * hidden * (kv * hidden // heads) + 3 * hidden * inter + 2 * hidden
    fixed = 2 * vocab * hidden + hidden
    layers = max(1, math.ceil((gigabytes * 1e9 / 4 - fixed) / per_layer))
    return transformers.LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                    num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                                    tie_word_embeddings=False)


def make_checkpoint(directory: Path, config, shards: int) -> int:
    """Write ``config``'s model with random float32 weights as ``shards`` shards of about equal size plus
    the index, one tensor at a time. Returns the bytes of tensor data."""
    import torch

    from synthetic import llama_shapes, write_random_checkpoint

    shapes = llama_shapes(config)
    total = sum(math.prod(s) * 4 for s in shapes.values())
    per_shard, groups, size = total / shards, [[]], 0
    for name, shape in shapes.items():
        if size >= per_shard * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(name)
        size += math.prod(shape) * 4
    return write_random_checkpoint(directory, config, shapes, groups, torch.float32)


def child_peak_mib(cmd: list[str]) -> tuple[float, float]:
    """(peak resident MiB, seconds) of one child process (``os.wait4``: that child's own rusage)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gigabytes", type=float, default=3.0, help="checkpoint size, at least (10^9 bytes)")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--solver", default="exact")
    p.add_argument("--tmp", default=None, help="where the temporary directory goes (needs 2x the size free)")
    p.add_argument("--make", default=None, help=argparse.SUPPRESS)  # child mode: write the checkpoint there
    args = p.parse_args()
    if args.make:
        config = llama_config(args.gigabytes, args.hidden, args.vocab)
        total = make_checkpoint(Path(args.make), config, args.shards)
        print(json.dumps({"bytes": total, "layers": config.num_hidden_layers}))
        return 0
    # This process imports neither torch nor ailora: a child's ru_maxrss counts its parent's resident
    # pages at the fork (Linux carries them through exec), so the parent stays small.
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        ckpt, out = Path(tmp) / "ckpt", Path(tmp) / "out"
        ckpt.mkdir()
        made = json.loads(subprocess.run([sys.executable, __file__, *sys.argv[1:], "--make", str(ckpt)], check=True,
                                         capture_output=True, text=True).stdout)
        total = made["bytes"]
        base_mib, _ = child_peak_mib([sys.executable, "-c", IMPORTS_ONLY])
        peak_mib, seconds = child_peak_mib([sys.executable, "-m", "ailora.cli", "init", "--model", str(ckpt),
                                            "--residual-out", str(out), "--solver", args.solver, "--quiet"])
        report = json.loads((out / "report.json").read_text())
        shards = sorted(f.name for f in out.glob("*.safetensors"))
    size_mib = total / 2**20
    print(f"checkpoint: LLaMA hidden {args.hidden}, {made['layers']} layers, float32, {len(shards)} shards, "
          f"{size_mib:.0f} MiB; ailora init --residual-out ({args.solver} solver): {seconds:.1f} s, "
          f"{len(report['layers'])} layers, per-layer check passed: {report['output_check']['passed']}")
    print("| process | peak RSS (MiB) | % of checkpoint |")
    print("|---|---:|---:|")
    print(f"| imports only | {base_mib:.0f} | {100 * base_mib / size_mib:.1f}% |")
    print(f"| streaming init | {peak_mib:.0f} | {100 * peak_mib / size_mib:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
