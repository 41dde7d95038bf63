"""What the training loop carries between its steps: ``LoopState`` (what a resume needs besides
weights and optimizer, saved in every checkpoint) and ``TrainContext`` (the run's live objects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from ailora.methods import Prepared
from ailora.train import progressive
from ailora.train.config import RunConfig
from ailora.train.data import length_of


@dataclass
class LoopState:
    """Where training is: everything besides weights and optimizer that a resume needs."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch, 0-based
    group: int = 0  # optimizer steps done inside the current epoch
    loss_sum: float = 0.0  # sum of micro-batch losses in the current epoch (this process)
    loss_count: int = 0
    epoch_seconds: float = 0.0  # time spent in the current epoch before an interruption
    wall_seconds: float = 0.0  # wall time of the earlier processes of this run, to their last checkpoint
    history: list[dict] = field(default_factory=list)  # the per-epoch records (metrics.jsonl)
    evals: list[dict] = field(default_factory=list)  # every validation, per epoch or per N steps
    log_sum: float = 0.0  # sum of micro-batch losses since the last logging interval closed (this process)
    log_count: int = 0
    train_log: list[dict] = field(default_factory=list)  # {"step", "train_loss"}: mean loss per logging interval
    best: dict | None = None  # {"step", "epoch", "metric", "value"}
    stage: int = 0  # Progtuning stage of the last optimizer step, 0-based (0 when off)
    stages: list[dict] = field(default_factory=list)  # per stage: steps, updated parameters, seconds
    pilot: dict | None = None  # the grad-norm pilot's block scores (kept so a resume reuses them)
    before: dict | None = None  # train.eval_before: every evaluation split's scores at step 0


@dataclass
class TrainContext:
    acc: Accelerator
    cfg: RunConfig
    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    trainable: dict
    splits: dict
    spec: object
    tokenizer: object
    trackers: object  # ailora.train.trackers.Trackers: where the run logs
    schedule: progressive.Schedule | None = None
    prepared: Prepared | None = None
    data: object = None  # the TaskData (split sizes for the record)
    hashes: list[str] = field(default_factory=list)  # each process's hash of the prepared model
    total_steps: int = 0
    calibration: object = None  # what the last validation chose for scoring test (extractive QA: the null threshold)
    nonfinite: torch.Tensor | None = None  # first optimizer step with a non-finite loss (0: none), on the device
    t_start: float = 0.0  # perf_counter() when this process started the run
    task: object = None  # the TaskKind (ailora.train.kinds) bound to this run
    resolved: object = None  # the ResolvedModel: checkpoint path, config, model kind, tokenizer

    @property
    def train_lengths(self) -> list[int]:
        """Each training example's padded length (what ``train.group_by_length`` groups by)."""
        return [length_of(item) for item in self.splits["train"]]


def train_batch(ctx: TrainContext, idx: list[int]) -> dict[str, torch.Tensor]:
    """The training batch of examples ``idx``, as the task kind builds it, on the device."""
    items = ctx.splits["train"]
    batch = ctx.task.batch([items[j] for j in idx], ctx.tokenizer.pad_token_id)
    return {k: v.to(ctx.acc.device) for k, v in batch.items()}
