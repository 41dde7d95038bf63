"""Run records built in code for the readers' tests: what ``ailora train`` writes, with chosen scores."""

from __future__ import annotations

import dataclasses

from ailora.train import runrecord as rr


def make_record(config: dict, task: rr.TaskInfo, validation: dict, test: dict, **changes) -> rr.RunRecord:
    """A complete record of ``config`` on ``task``: two epochs of 5 steps, validations at steps 5
    and 10 (half of ``validation``, then ``validation``), 2 s of wall time; ``changes`` replace fields."""
    half = {m: v / 2 for m, v in validation.items()}
    rec = rr.RunRecord(
        config=config, task=task,
        epochs=(rr.EpochEntry(1, 5, 1.0, half, 1.0), rr.EpochEntry(2, 10, 0.5, dict(validation), 1.0)),
        evaluations=(rr.Evaluation(5, 1, half), rr.Evaluation(10, 2, dict(validation))),
        train_log=(rr.StepEntry(5, 1.0), rr.StepEntry(10, 0.5)), best=None, selected="last",
        validation=dict(validation), before=None, test=dict(test), extra_test={}, steps=10,
        seed=config["train"]["seed"], parameters=rr.Parameters(1000, 10**6, 0.1),
        method={"method": config["method"]["name"]},
        adapter={"dir": "adapter"}, wall_seconds=2.0, updated_parameters=10_000, train_seconds=1.5, progressive=None,
        resumed=False, peak_memory={"cpu_max_rss_mib": 1.0}, versions={"ailora": "0"},
        distributed={"num_processes": 1, "distributed_type": "NO", "mixed_precision": "no", "init_hashes": ["x"],
                     "init_identical": True},
        git={"revision": None, "dirty": None})
    return dataclasses.replace(rec, **changes)


def make_failed(config: dict, step: int = 3) -> rr.FailedRecord:
    return rr.FailedRecord(f"the training loss is not finite (NaN or inf) at optimizer step {step}", step, config,
                           None, 1.0, {"ailora": "0"}, {"revision": None, "dirty": None})
