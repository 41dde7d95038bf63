"""Reading checkpoints and adapters, and writing results without leaving partial files.

Weights are read through safetensors only (never pickle); transformers models are built with
``trust_remote_code=False``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ailora.errors import AiloraError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def model_dir(path: str | os.PathLike) -> Path:
    """Check that `path` is a model directory: config.json plus model.safetensors (or its shard index)."""
    p = Path(path)
    if not p.is_dir():
        raise AiloraError(f"model directory {p} does not exist")
    if not (p / "config.json").is_file():
        raise AiloraError(f"model directory {p} has no config.json")
    if not ((p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file()):
        raise AiloraError(f"model directory {p} has no model.safetensors (only safetensors weights are read)")
    return p


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(file)
    except (SafetensorError, OSError) as exc:
        raise AiloraError(
            f"cannot read {file}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a model directory's model.safetensors (or its shards), on CPU."""
    p = model_dir(path)
    if (p / "model.safetensors").is_file():
        return _load_safetensors(p / "model.safetensors")
    try:
        index = json.loads((p / "model.safetensors.index.json").read_text())
    except json.JSONDecodeError as exc:
        raise AiloraError(f"{p / 'model.safetensors.index.json'} is not valid JSON: {exc}") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index.get("weight_map", {}).values())):
        if not (p / shard).is_file():
            raise AiloraError(f"shard {p / shard} named in model.safetensors.index.json is missing")
        state.update(_load_safetensors(p / shard))
    return state


def model_class(path: str | os.PathLike, architecture: str | None = None):
    """The transformers class named by `architecture` or by config.json's ``architectures[0]``."""
    import transformers

    p = model_dir(path)
    try:
        config = json.loads((p / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise AiloraError(f"{p / 'config.json'} is not valid JSON: {exc}") from None
    name = architecture or (config.get("architectures") or [None])[0]
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise AiloraError(
            f"{p}: architecture {name!r} is not a transformers model class (check 'architectures')"
        )
    return cls


def load_model(path: str | os.PathLike, architecture: str | None = None, info: bool = False):
    """A float32 transformers model in eval mode; with ``info=True`` also the loading report dict."""
    cls = model_class(path, architecture)
    try:
        model, loading = cls.from_pretrained(
            str(model_dir(path)), use_safetensors=True, dtype=torch.float32, output_loading_info=True
        )
    except (OSError, ValueError) as exc:
        raise AiloraError(f"{path}: cannot load as {cls.__name__}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return (model, loading) if info else model


def read_adapter(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """A PEFT LoRA adapter directory: (adapter_config.json as a dict, adapter_model.safetensors)."""
    p = Path(path)
    if not p.is_dir():
        raise AiloraError(f"adapter directory {p} does not exist")
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (p / name).is_file():
            raise AiloraError(f"adapter directory {p} has no {name}")
    try:
        config = json.loads((p / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise AiloraError(f"{p / ADAPTER_CONFIG} is not valid JSON: {exc}") from None
    return config, _load_safetensors(p / ADAPTER_WEIGHTS)


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write `obj` as indented JSON, atomically (a temporary file renamed into place)."""
    path = Path(path)

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")

    _write_atomic(path, write)
    return path


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib Figure as PNG, atomically."""
    path = Path(path)
    _write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    return path


@contextmanager
def staged_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `out` to fill; it replaces `out` only if the block succeeds.

    An existing non-empty `out` is an AiloraError unless `overwrite`.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise AiloraError(f"output {out} already exists and is not empty (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
