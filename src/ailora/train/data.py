"""Tokenisation, batching and per-process sharding of a task's examples.

Examples are tokenised once into lists of ids. The data order of epoch e is a permutation drawn
from ``torch.Generator().manual_seed(seed + e)``, so a resumed run sees exactly the batches the
interrupted one would have; with P processes the permutation is padded to a multiple of P by
repeating its start (as ``DistributedSampler`` does) and process p takes rows p, p + P, ..., so
every process runs the same number of steps.

Causal-LM examples are ``prompt + target + eos`` with labels -100 on the prompt and the padding:
the loss is on the answer only. Training batches are right-padded; generation batches are
left-padded so that every prompt ends where generation starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ailora.errors import AiloraError

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenised example. ``labels`` only for causal LMs; ``target`` is what metrics compare to."""

    input_ids: list[int]
    target: object
    labels: list[int] | None = None
    token_type_ids: list[int] | None = None


def encode_classification(tokenizer, examples: list[dict], max_length: int, regression: bool) -> list[Encoded]:
    out = []
    for ex in examples:
        enc = tokenizer(ex["text"], ex.get("text_pair"), truncation=True, max_length=max_length)
        label = float(ex["label"]) if regression else int(ex["label"])
        out.append(Encoded(enc["input_ids"], label, token_type_ids=enc.get("token_type_ids")))
    return out


def _prompt_ids(tokenizer, prompt: str, room: int) -> list[int]:
    ids = tokenizer(prompt)["input_ids"]
    return ids[-room:] if len(ids) > room else ids  # keep the prompt's end, next to the answer


def encode_causal(tokenizer, examples: list[dict], max_length: int, for_generation: bool,
                  max_new_tokens: int) -> list[Encoded]:
    """Prompt + target + eos with the loss on the answer (training), or the prompt alone (generation)."""
    if tokenizer.eos_token_id is None:
        raise AiloraError("the tokenizer has no eos token; a causal LM needs one to end its answers")
    out = []
    for ex in examples:
        if for_generation:
            ids = _prompt_ids(tokenizer, ex["prompt"], max(1, max_length - max_new_tokens))
            out.append(Encoded(ids, ex["target"]))
            continue
        target = tokenizer(ex["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        target = target[: max(1, max_length // 2)] if len(target) >= max_length else target
        prompt = _prompt_ids(tokenizer, ex["prompt"], max(1, max_length - len(target)))
        out.append(Encoded(prompt + target, ex["target"], labels=[IGNORE_INDEX] * len(prompt) + target))
    return out


def collate(items: list[Encoded], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example. Keys: input_ids, attention_mask, [token_type_ids], [labels]."""
    width = max(len(e.input_ids) for e in items)

    def pad(seq, value):
        fill = [value] * (width - len(seq))
        return fill + seq if left else seq + fill

    batch = {
        "input_ids": torch.tensor([pad(e.input_ids, pad_id) for e in items]),
        "attention_mask": torch.tensor([pad([1] * len(e.input_ids), 0) for e in items]),
    }
    if items[0].token_type_ids is not None:
        batch["token_type_ids"] = torch.tensor([pad(e.token_type_ids, 0) for e in items])
    if items[0].labels is not None:
        batch["labels"] = torch.tensor([pad(e.labels, IGNORE_INDEX) for e in items])
    elif not isinstance(items[0].target, str):
        dtype = torch.float32 if isinstance(items[0].target, float) else torch.long
        batch["labels"] = torch.tensor([e.target for e in items], dtype=dtype)
    return batch


def shard(indices: list[int], batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches of ``indices``, padded so that every process gets as many."""
    total = math.ceil(len(indices) / world) * world
    indices = (indices * math.ceil(total / len(indices)))[:total]
    mine = indices[rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The training order of epoch ``epoch`` (0-based): the same on every process and every resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1000003 * epoch)).tolist()


def train_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    return shard(epoch_order(n, seed, epoch), batch_size, rank, world)


def eval_batches(n: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """Every index over all processes, equal batch counts per process (padding repeats an example:
    duplicates are dropped when predictions are gathered)."""
    return shard(list(range(n)), batch_size, rank, world)
