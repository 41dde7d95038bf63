"""What a run writes when it ends: ``results.json`` of a complete run, ``failed.json`` of a failed
one, and the config as both record it."""

from __future__ import annotations

import time

import torch

from ailora.errors import TrainingFailedError
from ailora.train import record
from ailora.train.config import RunConfig
from ailora.train.context import LoopState, TrainContext


def record_failure(ctx: TrainContext, state: LoopState, exc: TrainingFailedError) -> None:
    """RUN_DIR/failed.json: the run as failed (never complete), with the error and its step."""
    if ctx.acc.is_main_process:
        last = ctx.run_dir / record.CHECKPOINTS / "last.pt"
        record.write_json(ctx.run_dir / record.FAILED, {
            "status": "failed", "error": str(exc), "step": exc.step, "config": recorded_config(ctx.cfg),
            "last_checkpoint": str(last.relative_to(ctx.run_dir)) if last.is_file() else None,
            "wall_seconds": round(state.wall_seconds + time.perf_counter() - ctx.t_start, 3),
            "versions": record.package_versions(), "git": record.git_revision()})
    if ctx.writer is not None:
        ctx.writer.close()


def recorded_config(cfg: RunConfig) -> dict:
    """The config as the run records it: how this process was started (resume, overwrite) and where
    it was told to stop (stop_after_steps, an interruption) left out, so that a resumed or restarted
    run's record equals an uninterrupted one's."""
    data = cfg.to_dict()
    data["train"]["stop_after_steps"] = None
    return {**data, "resume": False, "overwrite": False}


def run_results(ctx: TrainContext, state: LoopState, test: dict, adapter: dict, seconds: float, resumed: bool) -> dict:
    cfg, spec, acc, hashes = ctx.cfg, ctx.spec, ctx.acc, ctx.hashes
    return {
        "status": "complete",
        "config": recorded_config(cfg),
        "task": {"name": spec.name, "kind": spec.kind, "metrics": list(spec.metrics),
                 "main_metric": spec.main_metric, "sizes": ctx.data.sizes(),
                 "label_names": list(ctx.data.label_names) if ctx.data.label_names is not None else None},
        "epochs": state.history,
        "evaluations": state.evals,
        "train_log": state.train_log,
        "best": state.best,
        "selected": cfg.train.select if state.best is not None else "last",
        "validation": state.history[-1]["validation"] if state.history else {},
        "before": state.before,
        "test": test.get("test", {}),
        "extra_test": {k: v for k, v in test.items() if k != "test"},
        "steps": state.step,
        "seed": cfg.train.seed,
        "parameters": record.parameter_counts(acc.unwrap_model(ctx.model)),
        "method": ctx.prepared.metadata(cfg.method.name),
        "adapter": {"dir": record.ADAPTER, **{k: v for k, v in adapter.items() if k != "targets"}},
        "wall_seconds": round(seconds, 3),
        "updated_parameters": sum(s["updated_parameters"] for s in state.stages),  # summed over optimizer steps
        "train_seconds": round(sum(s["seconds"] for s in state.stages), 3),  # inside optimizer steps only
        "progressive": progressive_record(ctx, state) if ctx.cfg.progressive.enabled else None,
        "resumed": bool(resumed),
        "peak_memory": record.peak_memory(),
        "distributed": {"num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
                        "mixed_precision": acc.mixed_precision, "init_hashes": hashes,
                        "init_identical": len(set(hashes)) == 1,
                        # float sums (SVDs, matmuls) run in another order with another count: results are
                        # bit-identical across runs only at the same counts (docs/faults.md)
                        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()},
        "versions": record.package_versions(),
        "git": record.git_revision(),
    }


def progressive_record(ctx: TrainContext, state: LoopState) -> dict:
    p = ctx.cfg.progressive
    return {**ctx.schedule.describe(), "boundary": p.boundary, "reset_optimizer": p.reset_optimizer,
            "order_by": p.order, "pilot": state.pilot,
            "per_stage": [{**s, "seconds": round(s["seconds"], 3)} for s in state.stages]}
