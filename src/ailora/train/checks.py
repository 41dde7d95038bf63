"""A run config against the registries: what ``RunConfig`` (plain data) cannot check by itself.

``ailora.train.train`` calls ``check_run`` first, and the CLI and sweeps call it before anything is
loaded or written, so a wrong name or option is a one-line error within a second.
"""

from __future__ import annotations

from ailora.methods import get_method, refuse_unused
from ailora.tasks import get_task
from ailora.train.config import RunConfig


def check_run(cfg: RunConfig) -> RunConfig:
    """Raise AiloraError when the method or task is unknown, or the method cannot run the options set;
    returns ``cfg``."""
    method = get_method(cfg.method.name)
    refuse_unused(cfg.method, method.name, method.options)  # an option the method does not read
    if method.check is not None:
        method.check(cfg.method)
    if not cfg.task.name.endswith(".json"):
        get_task(cfg.task.name)
    return cfg
