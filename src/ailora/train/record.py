"""The run directory: atomic writes, checkpoints, and the environment a result came from.

Layout of RUN_DIR::

    config.json            the full RunConfig
    metrics.jsonl          one object per epoch: {"epoch", "step", "train_loss", "validation": {...}, "seconds"}
    results.json           everything (config, per-epoch metrics, test, params, time, memory, versions)
    failed.json            instead, when training failed (a non-finite loss): the error and its step
    adapter/               what the method saved (LoRA family: ailora.save, loads on the original base)
    checkpoints/last.pt    trainable weights, optimizer, scheduler, RNG states, step (for --resume)
    checkpoints/best.pt    the same at the best validation score
    tb/                    TensorBoard events (train.report_to: ailora.train.trackers)
    trackers.json          each W&B / MLflow run id, so that --resume logs to the same tracker run
    init_hashes.json       one hash per process of the prepared model (identical when synced)

metrics.jsonl, results.json and failed.json hold the ``EpochEntry``, ``RunRecord`` and
``FailedRecord`` types of ``ailora.train.runrecord``, which alone writes and reads them.

Every file is written through ``ailora.core.files.atomic_file`` (a temporary sibling, fsync,
``os.replace``), so an interruption leaves the previous version, never half a file.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ailora.core.files import (
    atomic_file,
    clear_dir,
    read_json,
    refuse_aliased_output,
    remove_stale_in,
    require_writable,
    write_text,
)
from ailora.errors import AiloraError
from ailora.train.config import RunConfig

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
FAILED = "failed.json"  # a run stopped by a failure (a non-finite loss): {"status": "failed", "error", "step", ...}
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
RUN_INPUTS = ("model.name", "task.name", "task.data_dir")  # config keys that name what a run reads
PACKAGES = ("ailora", "torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "numpy")


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON, atomically; paths, tensors and numpy scalars become plain values."""
    write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, default=_jsonable) + "\n" for r in records))


def _jsonable(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor | np.generic):
        return obj.tolist()
    return str(obj)


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, identity: dict) -> bool:
    """Check what ``run_dir`` holds against the request; returns True when a checkpoint is resumed.

    Refuses a directory that already holds a run unless resuming (the same config) or overwriting.
    """
    run_dir = require_writable(run_dir, "run directory")
    # --overwrite deletes run_dir: never the working directory, a model, a task file or its data
    refuse_aliased_output(run_dir, [(k, identity.get(k)) for k in RUN_INPUTS], "run directory")
    if run_dir.exists() and not run_dir.is_dir():
        raise AiloraError(f"run directory {run_dir} is a file; choose another path")
    if (run_dir / CONFIG).is_file():  # a run's directory (never a stranger's): what a killed save left
        for d in (run_dir, run_dir / CHECKPOINTS):
            remove_stale_in(d)
    held = run_dir.exists() and any(run_dir.iterdir())
    if overwrite and held:
        clear_dir(run_dir)
        held = False
    if not held:
        if resume:
            raise AiloraError(f"nothing to resume: {run_dir} holds no run")
        return False
    if not resume:
        raise AiloraError(f"run directory {run_dir} already holds a run; pass --resume to continue it "
                          "or --overwrite to replace it")
    if not (run_dir / CONFIG).is_file():
        raise AiloraError(f"cannot resume: {run_dir} has no {CONFIG}")
    try:
        held = read_json(run_dir / CONFIG)
        if not isinstance(held, dict):
            raise AiloraError(f"it holds a JSON {type(held).__name__}, not an object")
        saved = RunConfig.from_dict(held | {"resume": True, "overwrite": False})
    except AiloraError as exc:
        raise AiloraError(f"cannot resume: {run_dir / CONFIG} is unreadable ({exc})") from None
    diff = sorted(k for k in set(identity) | set(saved.identity()) if identity.get(k) != saved.identity().get(k))
    if diff:
        raise AiloraError(f"cannot resume {run_dir}: the config differs in {', '.join(diff)}")
    return (run_dir / CHECKPOINTS / "last.pt").is_file()


# Checkpoints.


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    np_state = np.random.get_state()
    state["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` into ``atomic_file``'s temporary file, which then replaces ``path``."""
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


CHECKPOINT_KEYS = ("trainable", "optimizer", "scheduler", "rng", "loop", "num_processes")


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``, or a one-line error naming it (empty, truncated, foreign, or
    another structure) that says what is still intact. PyTorch's own message is not repeated: it
    advises ``weights_only=False``, which would run whatever a foreign file holds."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(ckpt, dict) and all(k in ckpt for k in CHECKPOINT_KEYS)
    except Exception:  # a truncated, empty or foreign file; torch raises several types for them
        ok = False
    if not ok:
        what = "it is empty" if path.is_file() and path.stat().st_size == 0 else "it is not a checkpoint ailora wrote"
        fix = "copy checkpoints/best.pt over it (where there is one) to resume from the best step, or " \
            if path.name == "last.pt" else ""
        raise AiloraError(f"checkpoint {path} is broken ({what}); the run's other files (config, the other "
                          f"checkpoint, {ADAPTER}/ where written) are intact: {fix}start again with --overwrite")
    return ckpt


# The environment.


def package_versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> dict:
    """Commit and dirtiness of the ailora source tree (None outside a git checkout); read-only."""
    where = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return {"revision": None, "dirty": None}
        status = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                                cwd=where, capture_output=True, text=True, timeout=10)
        return {"revision": rev.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}


def peak_memory() -> dict:
    """Peak resident memory of this process (MiB) and, on a GPU, peak allocated device memory."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"cpu_max_rss_mib": round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)}
    if torch.cuda.is_available():
        out["gpu_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def parameter_counts(model: torch.nn.Module) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_percent": round(100 * trainable / total, 4)}


def tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, shapes, dtypes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
