"""Streaming init: adapters initialised on a safetensors checkpoint read tensor by tensor, never whole.

``initialise_checkpoint(DIR, OUT, options)`` (``ailora init --model DIR --residual-out OUT``):

1. Checks everything it can before any work: the options, that DIR is a safetensors checkpoint
   (headers only), that OUT is new or empty, the config (an unknown model type is refused), the
   targets and their tensors.
2. Builds the model's skeleton on the meta device (no weights) from its config, and finds the
   targets, roles and fused layouts on it exactly as ``apply`` does.
3. Decomposes with ``apply``'s plans and batches (``ailora.core.decompose``), each block's weight
   read from the checkpoint when its batch runs: the same solver calls on the same inputs as in
   memory, so the factors are bit-identical to ``apply``'s. At most one batch of block weights is
   held (the fast solver's stacks are capped at 256 MB; the exact solver takes one block at a time).
4. Writes OUT shard by shard, tensor by tensor (``ailora.core.checkpoint``), at the same time: the
   decomposition runs in a background thread (its solvers spend their time in LAPACK, outside the
   GIL) and the writer waits for a layer's factors only when it reaches that layer, so reading,
   copying and writing overlap the decomposition. Each adapted weight is replaced by its residual
   W - s B0 A0, computed as ``apply`` computes it (its dtype chosen then: the header is written last),
   then checked on a few seeded random rows against W (the per-layer half of ``apply``'s check: the
   end-to-end probe needs the whole model and is not run); every other tensor is copied through byte
   for byte, by the kernel. Same shard files and index; config, tokenizer and other small files
   copied; the starting factors, the init report and the marker written beside them
   (``ailora.core.initialised``). OUT appears whole or not at all (a temporary sibling renamed at
   the end).

Memory: one tensor (and its residual) at a time while writing, one batch while decomposing, plus the
libraries: a small fraction of a multi-GB checkpoint (``benchmarks/streaming_init.py`` measures it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ailora.core.adapters import PREFIX, RESIDUAL_FORM, has_residual, write_adapter_files
from ailora.core.apply import (
    ApplyLayout,
    ApplyOptions,
    all_finite,
    layout_for,
    lora_config,
    record_rounding,
    residual_weight,
    state_for,
)
from ailora.core.checkpoint import FLOAT_DTYPES, INDEX_FILE, Checkpoint, tensor_writer, write_shard
from ailora.core.decompose import Plan, decompose
from ailora.core.files import atomic_dir, check_empty_or_overwrite, write_json
from ailora.core.initialised import (
    INITIAL_ADAPTER,
    MARKER_FILE,
    MARKER_FORMAT,
    REPORT_FILE,
    initialised_record,
    recorded_options,
    tensor_key,
    weight_hash,
)
from ailora.core.layouts import Block
from ailora.core.models import check_kind, check_model_dir, load_config, model_class, parse_dtype
from ailora.core.probe import LAYER_PROBE_ROWS, changed_by, layer_probe, layer_tolerance
from ailora.core.quantize import STREAMED_ITERS
from ailora.core.roles import Target
from ailora.errors import AiloraError, ExactnessError

# Weight files of other formats are not copied: OUT's weights are its safetensors residuals only.
SKIPPED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")


@dataclasses.dataclass(frozen=True)
class _Job:
    """What the init resolved before any work: the checkpoint, the targets, their tensors."""

    source: Path
    checkpoint: Checkpoint
    layout: ApplyLayout
    keys: dict[str, str]  # target name -> checkpoint key of its weight
    dtype: torch.dtype  # the dtype apply's model would hold the weights in
    kind: str


def _skeleton(config, kind: str, dtype: torch.dtype, trust_remote_code: bool) -> torch.nn.Module:
    """The model of ``config`` on the meta device: its modules and shapes, no weights."""
    cls = model_class(config, kind)
    with torch.device("meta"):
        if hasattr(cls, "from_config"):  # an Auto class
            model = cls.from_config(config, trust_remote_code=trust_remote_code)
        else:
            model = cls(config)
    return model.to(dtype)


def _prepare(model_dir, out, options: ApplyOptions, kind: str, dtype: str | None, trust_remote_code: bool,
             overwrite: bool) -> _Job:
    """Every check that needs no weights; a one-line error before any work."""
    options.resolved_policy()
    if options.lora.use_dora:
        raise AiloraError("the streaming init does not start DoRA (its magnitudes are set from the whole model); "
                          "use ailora init --out, or train DoRA from the original model")
    path = check_model_dir(model_dir)
    if initialised_record(path) is not None:
        raise AiloraError(f"{path} already holds residual weights (written by ailora init --residual-out); "
                          "initialise the original checkpoint")
    checkpoint = Checkpoint.open(path)
    check_empty_or_overwrite(Path(out), overwrite)
    config = load_config(path, trust_remote_code)
    check_kind(config, kind, path)
    load_dtype = parse_dtype(dtype) or torch.float32  # as ailora.core.models.load_model
    skeleton = _skeleton(config, kind, load_dtype, trust_remote_code)
    layout = layout_for(skeleton, options)
    keys = {}
    for t in layout.targets:
        key = tensor_key(getattr(skeleton, "base_model_prefix", ""), t.name, checkpoint.where)
        if key is None:
            raise AiloraError(f"checkpoint {path} has no tensor for layer {t.name} ({t.name}.weight)")
        entry = checkpoint.where[key].entries[key]
        stored = (t.in_features, t.out_features) if t.fan_in_fan_out else (t.out_features, t.in_features)
        if entry.shape != stored or entry.dtype not in FLOAT_DTYPES.values():
            raise AiloraError(f"checkpoint tensor {key} is {entry.dtype} {list(entry.shape)}; layer {t.name} needs a "
                              f"floating-point {list(stored)} weight")
        keys[t.name] = key
    return _Job(path, checkpoint, layout, keys, load_dtype, kind)


def _weight(job: _Job, t: Target, checked: bool = False) -> torch.Tensor:
    """Target ``t``'s weight as (out, in), in the dtype ``apply``'s model would hold it: read from the checkpoint,
    and checked finite unless ``checked`` (the decomposition's read of every block already did)."""
    w = job.checkpoint.tensor(job.keys[t.name]).to(job.dtype)
    if not checked and not all_finite(w):
        raise AiloraError(f"layer {t.name} has NaN or Inf weights")
    return w.T if t.fan_in_fan_out else w


class _Stopped(Exception):
    """The writer failed or was interrupted: the decomposition thread stops at its next read."""


def _source(job: _Job, t: Target, stop: threading.Event):
    def read(blk: Block) -> torch.Tensor:
        if stop.is_set():
            raise _Stopped
        w = _weight(job, t)
        # a copy of just the block's rows, so the rest of the weight is freed at once
        return blk.take(w).clone() if blk.spans != ((0, t.out_features),) else w

    return read


@contextlib.contextmanager
def _decompose_ahead(plans: list[Plan], layout: ApplyLayout, options: ApplyOptions,
                     stop: threading.Event) -> Iterator[Callable[[Plan], None]]:
    """Run the decomposition in a background thread; yields ``wait(plan)``, which returns once that
    plan's factors are in (or raises the decomposition's error). On the way out (done, failed or
    interrupted) the thread is stopped at its next block and joined."""
    ready = {id(p): threading.Event() for p in plans}
    with ThreadPoolExecutor(1, thread_name_prefix="ailora-decompose") as pool:
        future = pool.submit(decompose, plans, layout.policy, options.lora.solver, options.seed, layout.scaling,
                             options.progress, distribute=False, done=lambda p: ready[id(p)].set())

        def wait(plan: Plan) -> None:
            while not ready[id(plan)].wait(0.05):
                if future.done():
                    future.result()  # the decomposition's error, if it failed
                    ready[id(plan)].wait()  # it finished: every plan is in

        try:
            yield wait
            future.result()
        finally:
            stop.set()


def _check_layer(w: torch.Tensor, res: torch.Tensor, t: Target, a: torch.Tensor, b: torch.Tensor, scaling: float,
                 generator) -> dict:
    """The per-layer check of ``apply`` on seeded random rows x: W x against W_res x + s B (A x)."""
    x = layer_probe(t.in_features, w.dtype, "cpu", generator).float()
    reference = x @ w.float().T
    got = x @ (res.T if t.fan_in_fan_out else res).float().T + scaling * ((x @ a.T) @ b.T)
    diff = (got - reference).abs().max().item()
    tol = layer_tolerance(w.dtype, reference)
    if not diff <= tol:  # also NaN (a comparison with NaN is False)
        raise ExactnessError(f"layer {t.name} changed its outputs {changed_by(diff, tol)} after the streaming init")
    return {"max_abs_diff": diff, "tolerance": tol}


def _write_shards(job: _Job, plans: list[Plan], out: Path, options: ApplyOptions,
                  wait: Callable[[Plan], None]) -> tuple[dict, dict, int]:
    """Every shard of the residual model, tensor by tensor, each target's once ``wait`` says its factors
    are in. Returns (per-layer checks, per-layer marker records, total bytes)."""
    by_key = {job.keys[p.target.name]: p for p in plans}
    generator = torch.Generator().manual_seed(options.seed)
    checks, layers, total = {}, {}, 0

    def target_writer(plan: Plan, shard, name: str):
        def write(f) -> str:
            wait(plan)
            t, layer = plan.target, layers[plan.target.name]
            if not plan.record.singular_values:  # a start that keeps W: copied through
                plan.record.residual_dtype = layer["residual_dtype"] = "unchanged"
                shard.copy(name, f)
                return shard.entries[name].dtype
            w, a, b = _weight(job, t, checked=True), plan.A.cpu(), plan.B.cpu()
            res, rounding = residual_weight(w, t, a, b, job.layout.scaling, options.lora.residual_dtype)
            record_rounding(plan.record, rounding)
            layer["residual_dtype"] = plan.record.residual_dtype
            checks[t.name] = _check_layer(w, res, t, a, b, job.layout.scaling, generator)
            layer["sha256"] = weight_hash(res)
            return tensor_writer(res)(f)

        return write

    # what a target's tensor may come out as: unchanged, the model's dtype, or float32
    candidates = lambda entry: tuple(dict.fromkeys((entry.dtype, FLOAT_DTYPES[job.dtype], "F32")))  # noqa: E731
    for shard in job.checkpoint.shards:
        items = []
        for name, entry in shard.entries.items():
            plan = by_key.get(name)
            if plan is None:
                items.append((name, entry.dtype, entry.shape, lambda f, s=shard, n=name: s.copy(n, f)))
                continue
            layers[plan.target.name] = {"key": name}
            items.append((name, candidates(entry), entry.shape, target_writer(plan, shard, name)))
        total += write_shard(out / shard.path.name, items, shard.metadata)
    return checks, layers, total


def _copy_files(job: _Job, out: Path, total: int) -> None:
    """config, tokenizer and other small files as they are; the index with the new total size."""
    for f in sorted(job.source.iterdir()):
        if f.is_file() and not f.name.endswith(SKIPPED_SUFFIXES) and f.name != INDEX_FILE:
            shutil.copy2(f, out / f.name)
    if job.checkpoint.index is not None:
        index = dict(job.checkpoint.index)
        index["metadata"] = {**(index.get("metadata") or {}), "total_size": total}
        write_json(out / INDEX_FILE, index)


def _check_record(checks: dict[str, dict], copied: int) -> dict:
    """``state.check`` of a streaming init: the per-layer check (a failure has raised already), every other
    tensor copied through byte for byte, and no end-to-end probe."""
    worst = max(checks, key=lambda n: checks[n]["max_abs_diff"] / checks[n]["tolerance"], default=None)
    top = checks[worst] if worst else {"max_abs_diff": 0.0, "tolerance": 0.0}
    return {"layers": {"rows": LAYER_PROBE_ROWS, "count": len(checks), "passed": True, "worst": worst, **top},
            "untouched": {"tensors": copied, "copied": "byte for byte", "passed": True}, **top, "passed": True,
            "end_to_end": "not run: the streaming init never holds the whole model"}


def _write_initial_adapter(directory: Path, layout: ApplyLayout, options: ApplyOptions, state) -> None:
    """The starting factors as PEFT's adapter files, labelled RESIDUAL_FORM when they moved weight out of W
    (they then belong on the residual base beside them, never on the original)."""
    cfg = lora_config(layout, options)
    if has_residual(state.initial):
        cfg.init_lora_weights = RESIDUAL_FORM
    sd = {}
    for name, (a0, b0) in state.initial.items():
        sd[f"{PREFIX}{name}.lora_A.weight"], sd[f"{PREFIX}{name}.lora_B.weight"] = a0.contiguous(), b0.contiguous()
    directory.mkdir()
    write_adapter_files(directory, sd, cfg, {**state.metadata(), "format": "residual-form-start",
                                             "base": "the residual model in the directory above"})


def initialise_checkpoint(model_dir, out, options: ApplyOptions, kind: str = "auto", dtype: str | None = None,
                          trust_remote_code: bool = False, overwrite: bool = False) -> dict:
    """Initialise adapters on the safetensors checkpoint in ``model_dir`` without loading it, and write
    the residual model, the starting factors, the init report and the marker to ``out`` (see the module
    docstring). Returns the report (also ``out/report.json``).

    ``dtype``: the dtype the model is initialised and trained in (default float32, as ``load_model``).
    Train from ``out`` with ``ailora.load_initialised(out)`` or ``ailora train --model out``."""
    t_start = time.perf_counter()
    if options.lora.quant_iters:  # refits need W and deq(Q) at once: ``ailora.core.quantize``
        raise AiloraError(STREAMED_ITERS)
    job = _prepare(model_dir, out, options, kind, dtype, trust_remote_code, overwrite)
    layout, stop = job.layout, threading.Event()
    plans = [Plan.empty(t, _source(job, t, stop), layout.policy, options.lora.rank, options.device or "cpu")
             for t in layout.targets]
    with atomic_dir(out, overwrite) as tmp:
        with _decompose_ahead(plans, layout, options, stop) as wait:
            checks, layers, total = _write_shards(job, plans, tmp, options, wait)
        _copy_files(job, tmp, total)
        initial = {p.target.name: (p.A.detach().cpu().clone(), p.B.detach().cpu().clone()) for p in plans}
        state = state_for(layout, options, initial, [p.record for p in plans])
        state.check = _check_record(checks, sum(len(s.entries) for s in job.checkpoint.shards) - len(checks))
        _write_initial_adapter(tmp / INITIAL_ADAPTER, layout, options, state)
        state.total_seconds = time.perf_counter() - t_start
        report = {**state.report(), "model": str(job.source),
                  "streaming": {"shards": len(job.checkpoint.shards), "checkpoint_bytes": job.checkpoint.nbytes,
                                "residual_bytes": total}}
        write_json(tmp / REPORT_FILE, report)
        write_json(tmp / MARKER_FILE, {"format": MARKER_FORMAT, "ailora_version": state.version,
                                       "source": str(job.source), "kind": job.kind,
                                       "dtype": str(job.dtype).removeprefix("torch."),
                                       "options": recorded_options(options), "layers": layers,
                                       "initial_adapter": INITIAL_ADAPTER, "report": REPORT_FILE})
    return report
