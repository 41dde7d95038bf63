"""Evaluation on one split: predictions from every process, gathered, scored by the task's metrics.

What a prediction is and how it is scored belongs to the task kind (``ailora.train.kinds``):
classification predicts the arg-max class, regression the single logit, a generative model its
decoding of the prompt (greedy or beam search, ``ailora.train.generation.generate_kwargs``; a
causal LM's prompts left-padded, an encoder-decoder's right-padded), and a span head its logits
per window, turned into answers by ``ailora.train.qa``. This module shards the items over the
processes, runs the kind's prediction batch by batch, and puts the outputs back in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import gather_object

from ailora.tasks.metrics import compute_metrics
from ailora.train.data import Encoded, eval_batches, length_of


@dataclass
class Evaluation:
    """A split's scores, one prediction per example, and what scoring chose on this split for later
    splits (``calibration``: extractive QA's null threshold with unanswerable questions, else None)."""

    metrics: dict[str, float]
    predictions: list
    calibration: Any = None


@torch.no_grad()
def predict(accelerator, net, items: list[Encoded], kind, model, batch_size: int) -> list:
    """One output of ``kind.predict`` per item, in order, whatever the number of processes.
    ``model`` is the run's ResolvedModel (tokenizer, encoder-decoder or not)."""
    was_training = net.training
    net.eval()
    batches = eval_batches([length_of(item) for item in items], batch_size, accelerator.process_index,
                           accelerator.num_processes)
    mine = []
    for idx in batches:
        mine.extend(zip(idx, kind.predict(accelerator, net, [items[i] for i in idx], model)))
    net.train(was_training)
    gathered = gather_object(mine) if accelerator.num_processes > 1 else mine
    by_index = dict(gathered)
    return [by_index[i] for i in range(len(items))]


def evaluate(accelerator, net, items: list[Encoded], kind, model, batch_size: int, examples: list[dict],
             calibration=None) -> Evaluation:
    """Every metric of the task on ``items`` (the split's ``examples`` tokenised); ``calibration``:
    what the last validation chose (None: choose it on this split)."""
    predictions = predict(accelerator, net, items, kind, model, batch_size)
    return kind.score(predictions, items, examples, calibration)


def score_targets(spec, predictions: list, items: list[Encoded]) -> Evaluation:
    """The task's metrics of one prediction per item against the items' targets (no calibration)."""
    return Evaluation(compute_metrics(spec.metrics, predictions, [e.target for e in items]), predictions)
