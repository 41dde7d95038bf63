"""Training: one config per run, a plain loop on Accelerate, a complete record per run directory.

    from ailora.train import RunConfig, train
    cfg = RunConfig.from_dict({"task": {"name": "movie-sentiment"}, "run_dir": "runs/a"},
                              ["method.name=ailora", "train.lr=3e-4"])
    results = train(cfg)   # also in runs/a/results.json

Methods come from ``ailora.methods`` (``get_method``, ``register_method``).
"""

from typing import TYPE_CHECKING

from ailora.train.config import RunConfig, all_help, apply_overrides, load_config

if TYPE_CHECKING:
    from ailora.train.checks import check_run
    from ailora.train.loop import train

__all__ = ["RunConfig", "all_help", "apply_overrides", "check_run", "load_config", "train"]

# Imported on first use (lazy imports for start-up speed): the config alone, which `ailora train --help`
# reads, needs neither torch nor transformers.
_LAZY = {"check_run": "ailora.train.checks", "train": "ailora.train.loop"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'ailora.train' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
