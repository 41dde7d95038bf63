"""Step time of ailora's training loop against a minimal PEFT + PyTorch loop, and AILoRA against LoRA.

Same model (MiniLM + a 2-class head), same batches of movie-sentiment (batch 16, max 128 tokens),
adapters on query and value at rank 8. Three variants, measured in interleaved rounds so that
drifts of the machine hit all of them alike; the table gives each one's median step time:

* hand: ``peft.get_peft_model`` + ``torch.optim.AdamW`` + a plain for-loop (tokenizer.pad, forward,
  backward, clip, step, schedule, zero_grad);
* ours-lora / ours-ailora: ``ailora.core.apply`` + ``ailora.param_groups`` + Accelerate + the loop's own
  step function (``ailora.train.loop.optimizer_step``: collate, forward, backward, clip, step).

    python benchmarks/train_overhead.py [--rounds 5] [--steps 10] [--batch-size 16]

A second part (``--padding``, on by default; ``--no-padding`` skips it) measures what length grouping
(``train.group_by_length``) buys at the demo's scale: one epoch of 2,000 movie-sentiment sentences,
max 64 tokens, batch 32, AILoRA rank 8, once in random batches and once length-grouped (the same
examples, the orders of ``ailora.train.data.train_batches``), the two interleaved in rounds. It
reports the padding fraction, the epoch's step time, and the achieved multiply-add rate of the
training steps (forward + backward + AdamW, multiply-adds counted by ``torch.utils.flop_counter`` per
batch shape) against a plain float32 matmul's rate measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import peft
import torch
import transformers
from accelerate import Accelerator

import ailora
from ailora.core.models import load_model, minilm_dir
from ailora.tasks import get_task, load_task
from ailora.train.config import RunConfig
from ailora.train.context import TrainContext
from ailora.train.data import encode_classification, padding_fraction, train_batches
from ailora.train.kinds import Classification
from ailora.train.loop import linear_schedule, optimizer_step, trainable_parameters


def hand_variant(path, tokenizer, examples, batch_size):
    """The reference: what one writes by hand with PEFT and PyTorch."""
    torch.manual_seed(0)
    model = load_model(path, kind="seq-cls", num_labels=2)
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                                       modules_to_save=["classifier"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model.train()
    texts, labels = [e["text"] for e in examples], [e["label"] for e in examples]

    def step(i):
        lo = (i * batch_size) % (len(texts) - batch_size)
        enc = tokenizer(texts[lo:lo + batch_size], truncation=True, max_length=128, padding=True, return_tensors="pt")
        loss = model(**enc, labels=torch.tensor(labels[lo:lo + batch_size])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    return step


def ours_context(method, path, tokenizer, items, batch_size, acc) -> TrainContext:
    """The training loop's context for ``method`` on MiniLM (+ a 2-class head) over ``items``."""
    torch.manual_seed(0)
    cfg = RunConfig.from_dict({"task": {"name": "movie-sentiment"}, "run_dir": "unused",
                               "method": {"name": method, "rank": 8}, "train": {"batch_size": batch_size}})
    model = ailora.apply(load_model(path, kind="seq-cls", num_labels=2), method=method, rank=8, progress=False)
    opt = torch.optim.AdamW(ailora.param_groups(model, lr=1e-4))
    sched = linear_schedule(opt, 0, 10**9)
    model, opt = acc.prepare(model, opt)
    spec = get_task("movie-sentiment")
    ctx = TrainContext(acc, cfg, None, model, opt, sched, trainable_parameters(acc.unwrap_model(model)),
                       {"train": items}, spec, tokenizer, None, task=Classification(spec, 128, ("neg", "pos")))
    model.train()
    return ctx


def ours_variant(method, path, tokenizer, examples, batch_size, acc):
    items = encode_classification(tokenizer, examples, 128, regression=False)
    ctx = ours_context(method, path, tokenizer, items, batch_size, acc)

    def step(i):
        lo = (i * batch_size) % (len(items) - batch_size)
        optimizer_step(ctx, [list(range(lo, lo + batch_size))])

    return step


def timed(step, start: int, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(start, start + n):
        step(i)
    return (time.perf_counter() - t0) / n


def matmul_rate(size: int = 1024, repeats: int = 20) -> float:
    """Multiply-adds per second of a plain float32 (size x size) @ (size x size) on this machine, best of 3."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, (time.perf_counter() - t0) / repeats)
    return size**3 / best


def step_macs(ctx, idx: list[int], cache: dict) -> float:
    """Multiply-adds of one training step's forward and backward on this batch, counted once per shape."""
    from torch.utils.flop_counter import FlopCounterMode

    from ailora.train.context import train_batch

    batch = train_batch(ctx, idx)
    shape = tuple(batch["input_ids"].shape)
    if shape not in cache:
        counter = FlopCounterMode(display=False)
        with counter:
            ctx.model(**batch).loss.backward()
        ctx.optimizer.zero_grad(set_to_none=True)
        cache[shape] = counter.get_total_flops() / 2
    return cache[shape]


def padding_part(path, tokenizer, rounds: int) -> None:
    examples = load_task("movie-sentiment", max_samples={"train": 2000}).train
    items = encode_classification(tokenizer, examples, 64, regression=False)
    lengths = [len(e.input_ids) for e in items]
    acc = Accelerator()
    ctxs, batches, macs = {}, {}, {}
    for name, group in (("random batches", False), ("length-grouped", True)):
        ctxs[name] = ours_context("ailora", path, tokenizer, items, 32, acc)
        batches[name] = train_batches(lengths, 32, 0, 0, 0, 1, group=group)
        cache: dict = {}
        macs[name] = sum(step_macs(ctxs[name], b, cache) for b in batches[name])
    seconds = dict.fromkeys(ctxs, 0.0)
    per_round = -(-len(batches["random batches"]) // rounds)
    for r in range(rounds):
        order = list(ctxs) if r % 2 == 0 else list(reversed(ctxs))
        for name in order:
            part = batches[name][r * per_round:(r + 1) * per_round]
            t0 = time.perf_counter()
            for idx in part:
                optimizer_step(ctxs[name], [idx])
            seconds[name] += time.perf_counter() - t0
    peak = matmul_rate()
    print(f"\nOne epoch, MiniLM + AILoRA r8, 2,000 movie-sentiment sentences, max 64 tokens, batch 32 "
          f"({len(batches['random batches'])} steps, {rounds} interleaved rounds); plain 1024^3 matmul: "
          f"{peak / 1e9:.1f} G multiply-adds/s")
    print(f"{'batches':<16}{'padding':>9}{'s/epoch':>9}{'s/step':>9}{'G MAC/s':>9}{'of matmul':>10}")
    for name in ctxs:
        rate = macs[name] / seconds[name]
        print(f"{name:<16}{padding_fraction(batches[name], lengths):>9.1%}{seconds[name]:>9.2f}"
              f"{seconds[name] / len(batches[name]):>9.4f}{rate / 1e9:>9.1f}{rate / peak:>10.1%}")
    print(f"epoch time, random / grouped: {seconds['random batches'] / seconds['length-grouped']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--padding", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure length grouping (one epoch at the demo's scale)")
    ap.add_argument("--overhead", action=argparse.BooleanOptionalAction, default=True,
                    help="measure the loop's overhead against a hand-written loop")
    args = ap.parse_args()
    path = minilm_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    if args.overhead:
        overhead_part(path, tokenizer, args)
    if args.padding:
        padding_part(path, tokenizer, args.rounds)


def overhead_part(path, tokenizer, args) -> None:

    examples = load_task("movie-sentiment", max_samples={"train": 512}).train
    acc = Accelerator()
    variants = {
        "hand (peft + torch)": hand_variant(path, tokenizer, examples, args.batch_size),
        "ours, lora": ours_variant("lora", path, tokenizer, examples, args.batch_size, acc),
        "ours, ailora": ours_variant("ailora", path, tokenizer, examples, args.batch_size, acc),
    }
    for step in variants.values():  # warm up allocator and kernels
        timed(step, 0, 3)
    times = {name: [] for name in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(timed(variants[name], 3 + r * args.steps, args.steps))

    med = {name: statistics.median(t) for name, t in times.items()}
    hand, lora, ai = med["hand (peft + torch)"], med["ours, lora"], med["ours, ailora"]
    print(f"MiniLM, batch {args.batch_size}, max 128 tokens, q+v rank 8; {args.rounds} interleaved rounds of "
          f"{args.steps} steps; torch threads {torch.get_num_threads()}")
    print(f"{'variant':<22}{'median s/step':>14}{'min':>9}{'max':>9}")
    for name, t in times.items():
        print(f"{name:<22}{med[name]:>14.4f}{min(t):>9.4f}{max(t):>9.4f}")
    print(f"speed of ours (lora) relative to hand loop: {hand / lora:.3f}  (target >= 0.95)")
    print(f"step time ailora / lora:                    {ai / lora:.3f}  (target 1.00 +- 0.03)")


if __name__ == "__main__":
    main()
