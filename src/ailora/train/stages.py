"""Progtuning inside the loop: the run's schedule, its grad-norm pilot, entering a step's stage and
counting the updated parameters and seconds under it (``ailora.train.progressive`` holds the
schedule itself)."""

from __future__ import annotations

import time

import torch

from ailora.train import progressive
from ailora.train.context import LoopState, TrainContext, train_batch
from ailora.train.data import train_batches


def progtuning_schedule(ctx: TrainContext, state: LoopState) -> progressive.Schedule:
    """The run's schedule (one stage when off); a fresh grad-norm run scores the blocks with a pilot first."""
    p, model = ctx.cfg.progressive, ctx.acc.unwrap_model(ctx.model)
    order = None
    if p.enabled and p.order == "grad-norm":
        if state.pilot is None:  # a resumed run keeps the scores taken at the start weights
            state.pilot = grad_norm_pilot(ctx, model, progressive.find_blocks(model))
        order = progressive.order_from_scores(state.pilot["scores"])
    schedule = progressive.Schedule(model, p.stages, p.embeddings, p.remainder, order)
    if not state.stages:
        state.stages = [schedule.stage_record(i) for i in range(schedule.stages)]
    return schedule


def grad_norm_pilot(ctx: TrainContext, model, blocks: progressive.Blocks) -> dict:
    t0, acc, t = time.perf_counter(), ctx.acc, ctx.cfg.train
    batches = train_batches(ctx.train_lengths, t.batch_size, t.seed, 0, acc.process_index,
                            acc.num_processes, t.group_by_length)[:ctx.cfg.progressive.pilot_batches]
    scores = progressive.gradient_scores(model, blocks, (train_batch(ctx, idx) for idx in batches))
    if acc.num_processes > 1:  # every process must freeze the same blocks
        scores = acc.reduce(torch.tensor(scores, device=acc.device), reduction="mean").tolist()
    return {"method": "grad-norm", "batches": len(batches), "scores": scores,
            "seconds": round(time.perf_counter() - t0, 3)}


def enter_stage(ctx: TrainContext, state: LoopState, stage: int) -> None:
    if stage != state.stage:
        if ctx.cfg.progressive.reset_optimizer:
            ctx.optimizer.state.clear()  # every Adam moment and step count starts again
        state.stage = stage
    if ctx.schedule.current != stage:  # a stage change, the first step, or the first after a resume
        ctx.schedule.enter(stage)


def count_step(state: LoopState, seconds: float) -> None:
    rec = state.stages[state.stage]
    rec["steps"] += 1
    rec["updated_parameters"] += rec["active_parameters"]
    rec["seconds"] += seconds
