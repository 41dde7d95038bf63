"""The training run: setup, train, evaluate, save, as a plain loop on Hugging Face Accelerate.

``accelerate launch --multi_gpu --num_processes N $(which ailora) train ...`` runs the same code
on several processes: DDP through Accelerate, every process with its own shard of each epoch's
batches (see ``ailora.train.data``). On CPUs: ``ACCELERATE_USE_CPU=true torchrun --nproc_per_node N
$(which ailora) train ...`` (gloo). Checkpoints gather the trainable weights from the unwrapped
model. ``train.fsdp=true`` shards the model with PyTorch's FSDP2 instead of DDP
(``ailora.train.sharding``): checkpoints then hold the trainable tensors and the optimizer state
whole, and the saved adapter is the same plain LoRA. DeepSpeed is not handled.

Several processes, one set of starting factors: every process loads the model and runs the
method's preparation; ``ailora.core.apply`` splits the SVDs between the processes and broadcasts
each owner's factors (``ailora.core.decompose``), so every process already holds the same factors
and residuals. ``_sync_from_main`` then compares every process's hash of its parameters, buffers
and recorded starting factors, and broadcasts process 0's tensors only where they differ (a method
that does not go through apply, GPU kernels that are not bit-reproducible). Each process's hash of
its prepared model goes to ``init_hashes.json``.

Resume is exact: a checkpoint holds the trainable weights, optimizer, scheduler, every
process's RNG states, the step and the position inside the epoch; an epoch's batch order is a
function of (seed, epoch); so a resumed run replays exactly what the interrupted one would have
done next.

Progtuning (``progressive.stages`` > 1, ``ailora.train.progressive``): before each optimizer step
the loop enters the step's stage (freezing the parts below it and cutting the backward pass at
the lowest active block) and counts the step's updated parameters and seconds under that stage;
the stage follows from (epoch, step), and the per-stage counters and the pilot's scores are in
the checkpoint, so a resumed run continues the schedule where it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, gather_object, set_seed
from tqdm.auto import tqdm

from ailora import interrupts
from ailora.core.decompose import quiet_progress
from ailora.core.initialised import initialised_record
from ailora.core.models import ResolvedModel
from ailora.core.optim import param_groups
from ailora.errors import AiloraError, TrainingFailedError
from ailora.methods import Prepared, get_method
from ailora.tasks import load_task
from ailora.tasks.metrics import get_metric, is_better
from ailora.train import progressive, record, sharding
from ailora.train.checks import check_run
from ailora.train.config import RunConfig
from ailora.train.context import LoopState, TrainContext, train_batch
from ailora.train.data import train_batches
from ailora.train.evaluate import Evaluation, evaluate
from ailora.train.kinds import encode_splits, load_for_task, resolve_model, task_kind
from ailora.train.results import record_failure, recorded_config, run_results
from ailora.train.runrecord import read_complete, write_epochs, write_record
from ailora.train.stages import count_step, enter_stage, progtuning_schedule
from ailora.train.trackers import Trackers

LOG_EVERY = 10  # optimizer steps between progress-bar / tracker loss updates and results["train_log"] means (each syncs)
PREDICTIONS = "predictions"
LOSS_SUMS = ("loss_sum", "loss_count", "log_sum", "log_count")  # LoopState fields each process keeps for itself  # RUN_DIR/predictions/<split>-step<N>.jsonl: input, reference, prediction


def train(cfg: RunConfig) -> dict:
    """Run ``cfg`` and return its results (also in RUN_DIR/results.json)."""
    check_run(cfg)
    t_start = time.perf_counter()
    # Progtuning's frozen parts get no gradient: DDP must look for unused parameters.
    ddp = [DistributedDataParallelKwargs(find_unused_parameters=True)] if cfg.progressive.enabled else []
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision, kwargs_handlers=ddp)
    _check_fsdp(cfg, acc)
    run_dir = Path(cfg.run_dir)
    resuming = _on_main_then_share(acc, lambda: record.prepare_run_dir(
        run_dir, cfg.resume, cfg.overwrite, cfg.identity()))
    if cfg.resume and (run_dir / record.RESULTS).is_file():
        return read_complete(run_dir).to_json()  # already complete: nothing to do
    trackers = Trackers()  # the main process's; started there, a failure to start shared with every process
    _on_main_then_share(acc, lambda: trackers.start(cfg, run_dir, resuming, early=True))
    try:
        results = _run(acc, cfg, run_dir, resuming, trackers, t_start)
    except BaseException as exc:  # an interruption leaves a resumable run: not marked failed
        trackers.finish(failed=isinstance(exc, Exception))
        raise
    trackers.finish()
    return results


def _run(acc: Accelerator, cfg: RunConfig, run_dir: Path, resuming: bool, trackers: Trackers,
         t_start: float) -> dict:
    """Set up, train, test and save: the run after its directory and trackers are ready."""
    ctx, state = _setup(acc, cfg, run_dir, resuming, trackers)
    ctx.t_start = t_start
    if cfg.train.eval_before and state.before is None:
        _eval_before(ctx, state)
    try:
        finished = _fit(ctx, state)
    except TrainingFailedError as exc:
        record_failure(ctx, state, exc)
        raise
    if not finished:
        return {"status": "interrupted", "step": state.step, "run_dir": str(run_dir)}
    return _finish(ctx, state, state.wall_seconds + time.perf_counter() - t_start, resuming)


def _setup(acc: Accelerator, cfg: RunConfig, run_dir: Path, resuming: bool,
           trackers: Trackers) -> tuple[TrainContext, LoopState]:
    """Task, tokenizer, model, method, optimizer and schedule; the loop state (restored when resuming)."""
    set_seed(cfg.train.seed)
    caps = {"train": cfg.task.max_train_samples, "validation": cfg.task.max_eval_samples,
            "test": cfg.task.max_eval_samples}
    data = load_task(cfg.task.name, cfg.task.data_dir, max_samples={k: v for k, v in caps.items() if v})
    kind = task_kind(cfg, data)
    resolved = resolve_model(cfg, kind)  # a model kind that does not fit fails before the weights load
    with quiet_progress(not (acc.is_main_process and cfg.train.progress)):
        prepared = _prepare(cfg, resolved, kind)
    hashes = _sync_from_main(acc, prepared)
    if cfg.train.fsdp:  # before the optimizer: its groups are built on the sharded parameters
        sharding.shard_model(prepared.model)
    splits = encode_splits(kind, data, resolved)
    set_seed(cfg.train.seed, device_specific=True)  # dropout differs per process, not per run

    optimizer = torch.optim.AdamW(_param_groups(cfg, prepared))
    batches_per_epoch = len(train_batches([0] * len(splits["train"]), cfg.train.batch_size, 0, 0,
                                          acc.process_index, acc.num_processes))
    total_steps = math.ceil(batches_per_epoch / cfg.train.grad_accum) * cfg.train.epochs
    scheduler = linear_schedule(optimizer, math.ceil(cfg.train.warmup_ratio * total_steps), total_steps)
    if cfg.train.fsdp:  # sharded already: Accelerate would wrap it in DDP on CPUs
        model, optimizer = prepared.model, acc.prepare(optimizer)
    else:
        model, optimizer = acc.prepare(prepared.model, optimizer)
    trainable = trainable_parameters(acc.unwrap_model(model))

    state = LoopState()
    if resuming:
        state = _restore(acc, run_dir / record.CHECKPOINTS / "last.pt", trainable, model, optimizer, scheduler)
    elif acc.is_main_process:
        record.write_json(run_dir / record.CONFIG, recorded_config(cfg))
        record.write_json(run_dir / "init_hashes.json", hashes)
    _on_main_then_share(acc, lambda: trackers.start(cfg, run_dir, resuming, early=False, step=state.step))
    ctx = TrainContext(acc, cfg, run_dir, model, optimizer, scheduler, trainable, splits, data.spec,
                       resolved.tokenizer, trackers, prepared=prepared, data=data,
                       hashes=hashes, total_steps=total_steps, task=kind, resolved=resolved)
    ctx.schedule = progtuning_schedule(ctx, state)
    return ctx, state


def _check_fsdp(cfg: RunConfig, acc: Accelerator) -> None:
    """``train.fsdp`` needs several processes, and neither Progtuning (its stages cut the backward pass
    differently per step) nor mixed precision (FSDP2's own policy is not wired) beside it."""
    if not cfg.train.fsdp:
        return
    if acc.num_processes < 2:
        raise AiloraError("train.fsdp=true needs several processes: launch with torchrun --nproc_per_node N "
                          "(ACCELERATE_USE_CPU=true on CPUs)")
    if cfg.progressive.enabled or cfg.train.mixed_precision != "no":
        raise AiloraError("train.fsdp=true does not combine with Progtuning (progressive.stages > 1) or "
                          "train.mixed_precision; turn them off, or train with DDP")


def _prepare(cfg: RunConfig, resolved: ResolvedModel, kind) -> Prepared:
    """The method's preparation of the task's model; from a directory of ``ailora init --residual-out``
    the method starts from the stored factors and residual weights instead (no decomposition)."""
    method, model_path = get_method(cfg.method.name), resolved.path
    initialised = initialised_record(model_path) is not None
    if initialised and method.start_from is None:
        raise AiloraError(f"{model_path} holds residual weights from ailora init --residual-out; method "
                          f"{method.name} cannot start from it (a LoRA-family method can): train from the original model")
    model = load_for_task(cfg, resolved, kind)
    if initialised:
        return method.start_from(model, cfg.method, cfg.train.seed, model_path)
    return method.prepare(model, cfg.method, cfg.train.seed)


def _param_groups(cfg: RunConfig, prepared: Prepared) -> list[dict]:
    """The LoRA family's groups come from its state; a baseline names its head and its own group
    (``Prepared.groups``)."""
    t = cfg.train
    return param_groups(prepared.model, t.lr, value_lr_ratio=prepared.value_lr_ratio,
                        weight_decay=t.weight_decay, head_lr=t.head_lr, loraplus_ratio=prepared.loraplus_ratio,
                        **prepared.groups)


def _fit(ctx: TrainContext, state: LoopState) -> bool:
    """Train to the last epoch, validating at the end of each (and every N steps when asked);
    False when stopped early by ``train.stop_after_steps`` (after a checkpoint)."""
    cfg, acc = ctx.cfg, ctx.acc
    bar = tqdm(total=ctx.total_steps, initial=state.step, desc=f"train {cfg.method.name}", unit="step",
               disable=not (acc.is_main_process and cfg.train.progress), dynamic_ncols=True)
    while state.epoch < cfg.train.epochs:
        t_epoch = time.perf_counter() - state.epoch_seconds
        batches = train_batches(ctx.train_lengths, cfg.train.batch_size, cfg.train.seed, state.epoch,
                                acc.process_index, acc.num_processes, cfg.train.group_by_length)
        groups = [batches[i:i + cfg.train.grad_accum] for i in range(0, len(batches), cfg.train.grad_accum)]
        ctx.model.train()
        for group in groups[state.group:]:
            signals = _train_step(ctx, state, group, bar)
            if signals or (cfg.train.stop_after_steps and state.step >= cfg.train.stop_after_steps):
                state.epoch_seconds = time.perf_counter() - t_epoch
                _save(ctx, state, "last")
                bar.close()
                if signals:  # Ctrl-C or SIGTERM during the step: stopped after it, resumable from here
                    interrupts.raise_held(signals[0])
                return False
        _end_epoch(ctx, state, time.perf_counter() - t_epoch)
    bar.close()
    ctx.schedule.close()  # the method's whole trainable set again, for saving and counting
    return True


def _train_step(ctx: TrainContext, state: LoopState, group: list[list[int]], bar) -> list[int]:
    """One optimizer step (in its Progtuning stage when on), counted, logged, validated and saved as asked.
    Returns the signals (SIGINT, SIGTERM) that arrived during the step and were held until it ended, so
    that the caller checkpoints a whole step before stopping. In one process only: several processes
    would each stop at their own step and never meet in the checkpoint's collectives, so there a
    signal stops at once and the last periodic checkpoint stays."""
    t = ctx.cfg.train
    if ctx.cfg.progressive.enabled:
        enter_stage(ctx, state, progressive.stage_of(state.epoch, state.step, ctx.schedule.stages, t.epochs,
                                                      ctx.total_steps, ctx.cfg.progressive.boundary))
    with interrupts.held_until_done(enabled=ctx.acc.num_processes == 1) as signals:
        t_step = time.perf_counter()
        loss = optimizer_step(ctx, group)
        count_step(state, time.perf_counter() - t_step)
        state.loss_sum = state.loss_sum + loss  # a tensor: no device sync per step
        state.loss_count += len(group)
        state.log_sum = state.log_sum + loss
        state.log_count += len(group)
        state.step += 1
        state.group += 1
    _note_finite(ctx, loss, state.step)
    bar.update(1)
    if state.step % LOG_EVERY == 0:
        _log_step(ctx, bar, state, loss)
        _close_log_interval(state)
    if t.eval_every_steps and state.step % t.eval_every_steps == 0:
        _validate(ctx, state)
        _save(ctx, state, "last")
    elif t.save_every_steps and state.step % t.save_every_steps == 0:
        _save(ctx, state, "last")
    return signals


def _finish(ctx: TrainContext, state: LoopState, seconds: float, resumed: bool) -> dict:
    """Test the selected weights on the test split(s), save them, write the record."""
    acc, run_dir = ctx.acc, ctx.run_dir
    if ctx.cfg.train.select == "best" and state.best is not None:
        best = record.load_checkpoint(run_dir / record.CHECKPOINTS / "best.pt")
        _load_trainable(ctx.trainable, best["trainable"])
    if ctx.task.calibrates:  # what test scoring uses (QA's null threshold), chosen on validation for these weights
        _eval(ctx, "validation", state.step)
    test = {name: _eval(ctx, name, state.step) for name in ctx.splits if name.startswith("test")}
    results = None
    with sharding.unsharded_trainable(acc.unwrap_model(ctx.model), acc.is_main_process) as whole:
        if acc.is_main_process:
            prepared = dataclasses.replace(ctx.prepared, model=whole)
            adapter = get_method(ctx.cfg.method.name).save(prepared, run_dir / record.ADAPTER)
            results = write_record(run_dir, run_results(ctx, state, test, adapter, seconds, resumed))
            (run_dir / record.FAILED).unlink(missing_ok=True)  # an earlier failed attempt, now superseded
    for split, metrics in test.items():
        ctx.trackers.log({f"{split}/{k}": v for k, v in metrics.items()}, state.step)
    ctx.trackers.log_adapter(run_dir / record.ADAPTER)
    acc.wait_for_everyone()
    return broadcast_object_list([results])[0] if acc.num_processes > 1 else results


# Setup helpers.


def _on_main_then_share(acc: Accelerator, fn):
    """Run ``fn`` on the main process and hand its result (or its AiloraError) to every process."""
    out = [None, None]
    if acc.is_main_process:
        try:
            out = [fn(), None]
        except AiloraError as exc:
            out = [None, str(exc)]
    if acc.num_processes > 1:
        out = broadcast_object_list(out)
    if out[1] is not None:
        raise AiloraError(out[1])
    return out[0]


def _sync_from_main(acc: Accelerator, prepared: Prepared) -> list[str]:
    """Make every process's prepared tensors identical to process 0's; return each process's hash.

    What must be identical: all parameters and buffers (adapter factors, SVD residuals, the random
    head) and the method's other synced tensors (the LoRA family's recorded starting factors). The
    hashes are compared first: after ``ailora.apply`` (which shares its factors itself) they agree
    and nothing is sent; otherwise process 0's tensors are broadcast and the hashes taken again."""
    tensors = dict(prepared.model.named_parameters())
    tensors.update({f"buffer:{k}": b for k, b in prepared.model.named_buffers()})
    tensors.update(prepared.synced)
    digest = record.tensor_hash(tensors)
    if acc.num_processes == 1:
        return [digest]
    hashes = gather_object([digest])
    if len(set(hashes)) > 1:
        with torch.no_grad():
            for name in sorted(tensors):
                t = tensors[name]
                buf = t.detach().to(acc.device).contiguous()
                torch.distributed.broadcast(buf, src=0)
                t.copy_(buf)
        hashes = gather_object([record.tensor_hash(tensors)])
    return hashes


def trainable_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(trainable: dict, tensors: dict) -> None:
    missing = set(trainable) ^ set(tensors)
    if missing:
        raise AiloraError(f"checkpoint does not match the model's trainable weights ({sorted(missing)[0]}...)")
    for name, p in trainable.items():
        sharding.copy_full(p, tensors[name])


def linear_schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# One optimizer step, evaluation, checkpoints.


def optimizer_step(ctx: TrainContext, group: list[list[int]]) -> torch.Tensor:
    """Forward and backward over the group's micro-batches, clip, step; the summed loss (detached)."""
    acc, model = ctx.acc, ctx.model
    total = torch.zeros((), device=acc.device)
    for i, idx in enumerate(group):
        batch = train_batch(ctx, idx)
        last = i == len(group) - 1
        with acc.no_sync(model) if not last else contextlib.nullcontext():
            loss = model(**batch).loss
            acc.backward(loss / len(group))
        total += loss.detach().float()
    if ctx.cfg.train.max_grad_norm > 0:
        acc.clip_grad_norm_(list(ctx.trainable.values()), ctx.cfg.train.max_grad_norm)
    ctx.optimizer.step()
    if not acc.optimizer_step_was_skipped:
        ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return total


def _eval(ctx: TrainContext, split: str, step: int) -> dict[str, float]:
    """Scores on ``split``; its predictions go to RUN_DIR/predictions/<split>-step<step>.jsonl. Test
    splits use what the last validation chose (``ctx.calibration``: QA's null threshold)."""
    examples, items = ctx.data.splits()[split], ctx.splits[split]
    result: Evaluation = evaluate(ctx.acc, ctx.model, items, ctx.task, ctx.resolved, ctx.cfg.train.eval_batch_size,
                                  examples, None if split == "validation" else ctx.calibration)
    if split == "validation":
        ctx.calibration = result.calibration
    if ctx.acc.is_main_process:
        rows = ctx.task.rows(examples, items, result.predictions, ctx.resolved)
        record.write_jsonl(ctx.run_dir / PREDICTIONS / f"{split}-step{step}.jsonl", rows)
    return result.metrics


def _eval_before(ctx: TrainContext, state: LoopState) -> None:
    """``train.eval_before``: the untrained model on every evaluation split, recorded as step 0."""
    state.before = {name: _eval(ctx, name, 0) for name in ctx.splits if name != "train"}
    state.evals.append({"step": 0, "epoch": 0, "validation": state.before["validation"]})
    ctx.trackers.log({f"validation/{k}": v for k, v in state.before["validation"].items()}, 0)


def _validate(ctx: TrainContext, state: LoopState) -> dict[str, float]:
    metrics = _eval(ctx, "validation", state.step)
    main = ctx.spec.main_metric
    state.evals.append({"step": state.step, "epoch": state.epoch + 1, "validation": metrics})
    ctx.trackers.log({f"validation/{k}": v for k, v in metrics.items()}, state.step)
    best = state.best["value"] if state.best else None
    if is_better(metrics[main], best, get_metric(main).higher_is_better):
        state.best = {"step": state.step, "epoch": state.epoch + 1, "metric": main, "value": metrics[main]}
        _save(ctx, state, "best")
    return metrics


def _end_epoch(ctx: TrainContext, state: LoopState, seconds_so_far: float) -> None:
    acc = ctx.acc
    _check_finite(ctx)
    sums = torch.tensor([float(state.loss_sum), float(state.loss_count)], device=acc.device, dtype=torch.float64)
    sums = acc.reduce(sums, reduction="sum") if acc.num_processes > 1 else sums
    _close_log_interval(state)
    t0 = time.perf_counter()
    # A validation at this very step (train.eval_every_steps) already scored these weights.
    same = state.evals and state.evals[-1]["step"] == state.step and state.evals[-1]["epoch"] == state.epoch + 1
    metrics = state.evals[-1]["validation"] if same else _validate(ctx, state)
    seconds = seconds_so_far + time.perf_counter() - t0
    state.history.append({"epoch": state.epoch + 1, "step": state.step, "train_loss": (sums[0] / sums[1]).item(),
                          "validation": metrics, "seconds": round(seconds, 3)})
    ctx.trackers.log({"train/epoch_loss": state.history[-1]["train_loss"]}, state.step)
    state.epoch, state.group, state.loss_sum, state.loss_count, state.epoch_seconds = state.epoch + 1, 0, 0.0, 0, 0.0
    if acc.is_main_process:
        write_epochs(ctx.run_dir, state.history)
    _save(ctx, state, "last")


def _close_log_interval(state: LoopState) -> None:
    """Record the mean training loss of the logging interval that ends at this step (intervals of
    LOG_EVERY steps, cut at epoch ends), for loss curves against steps."""
    if state.log_count:
        state.train_log.append({"step": state.step, "train_loss": float(state.log_sum) / state.log_count})
    state.log_sum, state.log_count = 0.0, 0


def _log_step(ctx: TrainContext, bar, state: LoopState, loss: torch.Tensor) -> None:
    _check_finite(ctx)
    value = loss.item()
    lr = ctx.optimizer.param_groups[0]["lr"]
    bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", epoch=state.epoch + 1)
    ctx.trackers.log({"train/loss": value, "train/lr": lr}, state.step)


def _save(ctx: TrainContext, state: LoopState, which: str) -> None:
    """Write checkpoints/{which}.pt atomically (main process); every process's RNG state goes in."""
    _check_finite(ctx)
    weights = {n: sharding.full(p.detach()).cpu().clone() for n, p in ctx.trainable.items()}
    bad = next((n for n, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:  # a finite loss, then an update that overflowed: never checkpoint it
        raise TrainingFailedError(f"weight {bad} is not finite after optimizer step {state.step}; lower train.lr "
                                  "(the last good checkpoint is kept)", state.step)
    rngs = gather_object([record.rng_state()]) if ctx.acc.num_processes > 1 else [record.rng_state()]
    # The loss sums are each process's own (its share of the batches): every process's goes in.
    mine = {k: float(getattr(state, k)) if k.endswith("sum") else getattr(state, k) for k in LOSS_SUMS}
    sums = gather_object([mine]) if ctx.acc.num_processes > 1 else [mine]
    sharded = sharding.is_sharded(ctx.model)
    optimizer = sharding.optimizer_state(ctx.optimizer) if sharded else ctx.optimizer.state_dict()
    if ctx.acc.is_main_process:
        loop = {**state.__dict__, "loss_sum": float(state.loss_sum), "log_sum": float(state.log_sum),
                "wall_seconds": state.wall_seconds + time.perf_counter() - ctx.t_start}
        record.save_checkpoint(ctx.run_dir / record.CHECKPOINTS / f"{which}.pt", {
            "trainable": weights,
            "optimizer": optimizer, "scheduler": ctx.scheduler.state_dict(),
            "rng": rngs, "loop": loop, "num_processes": ctx.acc.num_processes, "fsdp": sharded,
            "loss_sums": sums,
        })
    ctx.acc.wait_for_everyone()


def _note_finite(ctx: TrainContext, loss: torch.Tensor, step: int) -> None:
    """Remember the first step whose loss was not finite, on the device: no sync per step; the next
    log, epoch end or checkpoint checks it (``_check_finite``), before anything is written."""
    first = ctx.nonfinite if ctx.nonfinite is not None else torch.zeros((), dtype=torch.long, device=loss.device)
    ctx.nonfinite = torch.where((first == 0) & ~torch.isfinite(loss), torch.full_like(first, step), first)


def _check_finite(ctx: TrainContext) -> None:
    """A TrainingFailedError naming the first step (of any process) whose loss was not finite."""
    if ctx.nonfinite is None:
        return
    firsts = ctx.nonfinite.reshape(1)
    firsts = ctx.acc.gather(firsts) if ctx.acc.num_processes > 1 else firsts
    bad = [s for s in firsts.tolist() if s > 0]
    if bad:
        raise TrainingFailedError(f"the training loss is not finite (NaN or inf) at optimizer step {min(bad)}; lower "
                                  "train.lr or clip gradients (train.max_grad_norm); the last good checkpoint is kept",
                                  min(bad))


def _restore(acc: Accelerator, path: Path, trainable, model, optimizer, scheduler) -> LoopState:
    ckpt = record.load_checkpoint(path)
    if ckpt["num_processes"] != acc.num_processes:
        raise AiloraError(f"checkpoint {path} was written by {ckpt['num_processes']} processes; "
                          f"resume with the same number (now {acc.num_processes})")
    sharded = sharding.is_sharded(model)
    if ckpt.get("fsdp", False) != sharded:
        raise AiloraError(f"checkpoint {path} was written {'with' if ckpt.get('fsdp') else 'without'} train.fsdp; "
                          "resume with the same setting")
    _load_trainable(trainable, ckpt["trainable"])
    if sharded:
        sharding.load_optimizer_state(optimizer, ckpt["optimizer"])
    else:
        optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    record.set_rng_state(ckpt["rng"][acc.process_index])
    own = ckpt["loss_sums"][acc.process_index] if "loss_sums" in ckpt else {}
    return LoopState(**{**ckpt["loop"], **own})


