"""Tokenisation, batching and per-process sharding of a task's examples.

Examples are tokenised once into lists of ids. The data order of epoch e is a permutation drawn
from ``torch.Generator().manual_seed(seed + e)``, so a resumed run sees exactly the batches the
interrupted one would have; with P processes the permutation is padded to a multiple of P by
repeating its start (as ``DistributedSampler`` does) and process p takes rows p, p + P, ..., so
every process runs the same number of steps. With ``train.group_by_length`` (the sweep presets turn it on) the
permutation is then regrouped so that each step's batch holds examples of similar length (less
padding; the regrouping is seeded too, so resuming stays exact); evaluation batches go longest
first.

Generation examples are built in ``ailora.train.generation`` (causal LM: ``prompt + target +
eos`` with labels -100 on the prompt and the padding; encoder-decoder: the target as labels), and
extractive QA windows in ``ailora.train.qa``. Training batches are right-padded; a causal LM's
generation batches are left-padded so that every prompt ends where generation starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenised example. ``labels``: token labels (generation, training); ``target``: what metrics
    compare to, a class, a number, a text, or (start, end) token positions (extractive QA, training)."""

    input_ids: list[int]
    target: object
    labels: list[int] | None = None
    token_type_ids: list[int] | None = None
    meta: dict | None = None  # an extractive-QA window's example index, offsets and [CLS] position


def encode_classification(tokenizer, examples: list[dict], max_length: int, regression: bool) -> list[Encoded]:
    out = []
    for ex in examples:
        enc = tokenizer(ex["text"], ex.get("text_pair"), truncation=True, max_length=max_length)
        label = float(ex["label"]) if regression else int(ex["label"])
        out.append(Encoded(enc["input_ids"], label, token_type_ids=enc.get("token_type_ids")))
    return out


def collate(items: list[Encoded], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example. Keys: input_ids, attention_mask, [token_type_ids], [labels]
    (token labels padded to the longest labels), or [start_positions, end_positions] (extractive QA)."""
    width = max(len(e.input_ids) for e in items)

    def pad(seq, value, to=width):
        fill = [value] * (to - len(seq))
        return fill + seq if left else seq + fill

    batch = {
        "input_ids": torch.tensor([pad(e.input_ids, pad_id) for e in items]),
        "attention_mask": torch.tensor([pad([1] * len(e.input_ids), 0) for e in items]),
    }
    if items[0].token_type_ids is not None:
        batch["token_type_ids"] = torch.tensor([pad(e.token_type_ids, 0) for e in items])
    target = items[0].target
    if items[0].labels is not None:
        to = max(len(e.labels) for e in items)
        batch["labels"] = torch.tensor([pad(e.labels, IGNORE_INDEX, to) for e in items])
    elif isinstance(target, tuple):
        batch["start_positions"] = torch.tensor([e.target[0] for e in items])
        batch["end_positions"] = torch.tensor([e.target[1] for e in items])
    elif target is not None and not isinstance(target, str):
        dtype = torch.float32 if isinstance(items[0].target, float) else torch.long
        batch["labels"] = torch.tensor([e.target for e in items], dtype=dtype)
    return batch


def eval_batch(items: list[Encoded], pad_id: int, device, left: bool = False) -> dict[str, torch.Tensor]:
    """A prediction batch on ``device``: :func:`collate` without the targets (``left``: left-padded)."""
    batch = collate(items, pad_id, left)
    for key in ("labels", "start_positions", "end_positions"):
        batch.pop(key, None)
    return {k: v.to(device) for k, v in batch.items()}


def shard(indices: list[int], batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches of ``indices``, padded so that every process gets as many."""
    total = math.ceil(len(indices) / world) * world
    indices = (indices * math.ceil(total / len(indices)))[:total]
    mine = indices[rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The training order of epoch ``epoch`` (0-based): the same on every process and every resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1000003 * epoch)).tolist()


def length_of(item: Encoded) -> int:
    """What a batch is padded by: the input's tokens, or an encoder-decoder's target if longer."""
    return max(len(item.input_ids), len(item.labels or ()))


def group_by_length(order: list[int], lengths: list[int], chunk: int, seed: int, epoch: int) -> list[int]:
    """``order`` regrouped so that each run of ``chunk`` indices (one optimizer step's forward pass
    over all processes) holds examples of similar length, as Hugging Face's ``group_by_length``:
    mega-batches of 50 chunks are sorted by length (longest first; ties keep ``order``), cut into
    chunks, and the full chunks are shuffled (seeded by ``seed`` and ``epoch``). A last, partial
    chunk stays last, so that every process's batch k comes from the same chunk."""
    mega = chunk * 50
    grouped = []
    for start in range(0, len(order), mega):
        grouped.extend(sorted(order[start:start + mega], key=lambda i: -lengths[i]))
    chunks = [grouped[i:i + chunk] for i in range(0, len(grouped), chunk)]
    full = len(grouped) // chunk
    g = torch.Generator().manual_seed(seed + 1000003 * epoch + 7919)
    perm = torch.randperm(full, generator=g).tolist()
    return [i for c in [chunks[p] for p in perm] + chunks[full:] for i in c]


def train_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, rank: int, world: int,
                  group: bool = False) -> list[list[int]]:
    """This process's training batches of epoch ``epoch``; ``lengths`` has one entry per example.
    ``group``: batches of similar length (less padding; see :func:`group_by_length`)."""
    order = epoch_order(len(lengths), seed, epoch)
    if group:
        order = group_by_length(order, lengths, batch_size * world, seed, epoch)
    return shard(order, batch_size, rank, world)


def eval_batches(lengths: list[int], batch_size: int, rank: int, world: int) -> list[list[int]]:
    """Every index over all processes, equal batch counts per process (padding repeats an example:
    duplicates are dropped when predictions are gathered). Longest first, so batches hold examples
    of similar length; callers put predictions back in index order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return shard(order, batch_size, rank, world)


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """The share of padded positions in ``batches`` (each padded to its longest example)."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded if padded else 0.0
