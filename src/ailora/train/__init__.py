"""Training: one config per run, a plain loop on Accelerate, a complete record per run directory.

    from ailora.train import RunConfig, train
    cfg = RunConfig.from_dict({"task": {"name": "movie-sentiment"}, "run_dir": "runs/a"},
                              ["method.name=ailora", "train.lr=3e-4"])
    results = train(cfg)   # also in runs/a/results.json
"""

from ailora.methods.registry import METHODS, TrainMethod, get_method, prepare_model, register_method
from ailora.train.config import RunConfig, all_help, apply_overrides, load_config
from ailora.train.loop import train

__all__ = [
    "METHODS", "RunConfig", "TrainMethod", "all_help", "apply_overrides", "get_method", "load_config",
    "prepare_model", "register_method", "train",
]
