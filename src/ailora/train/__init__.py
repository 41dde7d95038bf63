"""Training: one config per run, a plain loop on Accelerate, a complete record per run directory.

    from ailora.train import RunConfig, train
    cfg = RunConfig.from_dict({"task": {"name": "movie-sentiment"}, "run_dir": "runs/a"},
                              ["method.name=ailora", "train.lr=3e-4"])
    results = train(cfg)   # also in runs/a/results.json

Methods come from ``ailora.methods`` (``get_method``, ``register_method``).
"""

from ailora.train.checks import check_run
from ailora.train.config import RunConfig, all_help, apply_overrides, load_config
from ailora.train.loop import train

__all__ = ["RunConfig", "all_help", "apply_overrides", "check_run", "load_config", "train"]
