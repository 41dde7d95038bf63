"""What a run records when it ends: the ``RunRecord`` of a complete run (``results.json``), the
``FailedRecord`` of a failed one (``failed.json``), and the config as both record it."""

from __future__ import annotations

import time

import torch

from ailora.errors import TrainingFailedError
from ailora.train import record
from ailora.train.config import RunConfig
from ailora.train.context import LoopState, TrainContext
from ailora.train.runrecord import (
    Best,
    EpochEntry,
    Evaluation,
    FailedRecord,
    Parameters,
    RunRecord,
    StepEntry,
    TaskInfo,
    write_record,
)


def record_failure(ctx: TrainContext, state: LoopState, exc: TrainingFailedError) -> None:
    """RUN_DIR/failed.json: the run as failed (never complete), with the error and its step."""
    if ctx.acc.is_main_process:
        last = ctx.run_dir / record.CHECKPOINTS / "last.pt"
        write_record(ctx.run_dir, FailedRecord(
            error=str(exc), step=exc.step, config=recorded_config(ctx.cfg),
            last_checkpoint=str(last.relative_to(ctx.run_dir)) if last.is_file() else None,
            wall_seconds=round(state.wall_seconds + time.perf_counter() - ctx.t_start, 3),
            versions=record.package_versions(), git=record.git_revision()))


def recorded_config(cfg: RunConfig) -> dict:
    """The config as the run records it: how this process was started (resume, overwrite) and where
    it was told to stop (stop_after_steps, an interruption) left out, so that a resumed or restarted
    run's record equals an uninterrupted one's. The trackers as ``train.report_to`` resolved them
    (``train.tensorboard`` true or false to match; ``["none"]`` for none), so that the record says where
    the run logged however the config spelt it."""
    data = cfg.to_dict()
    data["train"]["stop_after_steps"] = None
    trackers = list(cfg.train.trackers)
    data["train"].update(tensorboard="tensorboard" in trackers, report_to=trackers or ["none"])
    return {**data, "resume": False, "overwrite": False}


def run_results(ctx: TrainContext, state: LoopState, test: dict, adapter: dict, seconds: float,
                resumed: bool) -> RunRecord:
    """The complete run's record, from the loop's state, the test scores (split -> metrics) and what
    the method saved."""
    cfg, spec, acc, hashes = ctx.cfg, ctx.spec, ctx.acc, ctx.hashes
    where = f"the record of {ctx.run_dir}"
    return RunRecord(
        config=recorded_config(cfg),
        task=TaskInfo(spec.name, spec.kind, tuple(spec.metrics), spec.main_metric, ctx.data.sizes(),
                      tuple(ctx.data.label_names) if ctx.data.label_names is not None else None),
        epochs=tuple(EpochEntry.from_json(e, f"{where}: epochs") for e in state.history),
        evaluations=tuple(Evaluation.from_json(e, f"{where}: evaluations") for e in state.evals),
        train_log=tuple(StepEntry.from_json(e, f"{where}: train_log") for e in state.train_log),
        best=Best.from_json(state.best, f"{where}: best") if state.best is not None else None,
        selected=cfg.train.select if state.best is not None else "last",
        validation=state.history[-1]["validation"] if state.history else {},
        before=state.before,
        test=test.get("test", {}),
        extra_test={k: v for k, v in test.items() if k != "test"},
        steps=state.step,
        seed=cfg.train.seed,
        parameters=Parameters(**record.parameter_counts(acc.unwrap_model(ctx.model))),
        method=ctx.prepared.metadata(cfg.method.name),
        adapter={"dir": record.ADAPTER, **{k: v for k, v in adapter.items() if k != "targets"}},
        wall_seconds=round(seconds, 3),
        updated_parameters=sum(s["updated_parameters"] for s in state.stages),  # summed over optimizer steps
        train_seconds=round(sum(s["seconds"] for s in state.stages), 3),  # inside optimizer steps only
        progressive=progressive_record(ctx, state) if ctx.cfg.progressive.enabled else None,
        resumed=bool(resumed),
        peak_memory=record.peak_memory(),
        distributed={"num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
                     "mixed_precision": acc.mixed_precision, "init_hashes": hashes,
                     "init_identical": len(set(hashes)) == 1,
                     # float sums (SVDs, matmuls) run in another order with another count: results are
                     # bit-identical across runs only at the same counts (docs/faults.md)
                     "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()},
        versions=record.package_versions(),
        git=record.git_revision(),
    )


def progressive_record(ctx: TrainContext, state: LoopState) -> dict:
    p = ctx.cfg.progressive
    return {**ctx.schedule.describe(), "boundary": p.boundary, "reset_optimizer": p.reset_optimizer,
            "order_by": p.order, "pilot": state.pilot,
            "per_stage": [{**s, "seconds": round(s["seconds"], 3)} for s in state.stages]}
