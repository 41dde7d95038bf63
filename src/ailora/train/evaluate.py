"""Evaluation on one split: predictions from every process, gathered, scored by the task's metrics.

Classification predicts the arg-max class, regression the single logit, and a causal LM its
greedy continuation of the (left-padded) prompt, decoded and stripped.
"""

from __future__ import annotations

import torch
from accelerate.utils import gather_object

from ailora.tasks.metrics import compute_metrics
from ailora.train.data import Encoded, collate, eval_batches


@torch.no_grad()
def predict(accelerator, model, items: list[Encoded], kind: str, tokenizer, batch_size: int,
            max_new_tokens: int) -> list:
    """One prediction per item, in order, whatever the number of processes."""
    was_training = model.training
    model.eval()
    batches = eval_batches(len(items), batch_size, accelerator.process_index, accelerator.num_processes)
    mine = []
    for idx in batches:
        batch = collate([items[i] for i in idx], tokenizer.pad_token_id, left=kind == "generation")
        batch.pop("labels", None)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        if kind == "generation":
            values = _generate(accelerator.unwrap_model(model), batch, tokenizer, max_new_tokens)
        else:
            logits = model(**batch).logits.float()
            values = logits[:, 0].tolist() if kind == "regression" else logits.argmax(-1).tolist()
        mine.extend(zip(idx, values))
    model.train(was_training)
    gathered = gather_object(mine) if accelerator.num_processes > 1 else mine
    by_index = dict(gathered)
    return [by_index[i] for i in range(len(items))]


def _generate(model, batch: dict, tokenizer, max_new_tokens: int) -> list[str]:
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    new = out[:, batch["input_ids"].shape[1]:]
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def evaluate(accelerator, model, items: list[Encoded], spec, tokenizer, batch_size: int,
             max_new_tokens: int) -> dict[str, float]:
    """``{metric: value}`` for every metric of the task."""
    preds = predict(accelerator, model, items, spec.kind, tokenizer, batch_size, max_new_tokens)
    return compute_metrics(spec.metrics, preds, [e.target for e in items])

