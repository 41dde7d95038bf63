"""A run config against the registries: what ``RunConfig`` (plain data) cannot check by itself.

``ailora.train.train`` calls ``check_run`` first, and the CLI and sweeps call it before anything is
loaded or written, so a wrong name or option is a one-line error within a second.
"""

from __future__ import annotations

from ailora.errors import AiloraError
from ailora.methods import get_method
from ailora.methods.options import changed_fields
from ailora.tasks import get_task, task_from_json
from ailora.tasks.kinds import EXAMPLE_KINDS
from ailora.train.config import RunConfig
from ailora.train.trackers import check_installed


def check_run(cfg: RunConfig) -> RunConfig:
    """Raise AiloraError when the method or task is unknown, the method cannot run the options set
    (an option it does not read was refused when the config was built), or a tracker of
    ``train.report_to`` is not installed; returns ``cfg``."""
    method = get_method(cfg.method.name)
    if method.check is not None:
        method.check(cfg.method)
    if not cfg.task.name.endswith(".json"):
        get_task(cfg.task.name)
    check_installed(cfg)
    return cfg


def refuse_ignored_options(cfg: RunConfig) -> RunConfig:
    """Raise AiloraError for an option this one run would ignore: a ``generation.*`` or ``qa.*``
    option on a task of another kind, a ``progressive.*`` option with Progtuning off. (Called for
    ``ailora train``; a sweep's shared options may fit only some of its tasks, so sweeps do not.)"""
    name = cfg.task.name
    kind = (task_from_json(name) if name.endswith(".json") else get_task(name)).kind
    # Option sections that only one task kind reads: set for another kind, they would do nothing.
    for section, for_kind in ((k.section, k.name) for k in EXAMPLE_KINDS.values() if k.section):
        changed = changed_fields(getattr(cfg, section)) if kind != for_kind else []
        if changed:
            key, value = changed[0]
            raise AiloraError(f"{section}.{key}={value!r} does nothing here: it is for {for_kind} tasks, and "
                              f"task {name} is {kind}")
    changed = [(k, v) for k, v in changed_fields(cfg.progressive) if k != "stages"]
    if cfg.progressive.stages <= 1 and changed:
        key, value = changed[0]
        raise AiloraError(f"progressive.{key}={value!r} does nothing with Progtuning off: set progressive.stages "
                          "to 2 or more")
    return cfg
