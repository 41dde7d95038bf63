"""Tasks as data: declarative specs in one registry, loaded into fixed train/validation/test splits.

Registered here: eight tasks whose data ships in pip packages (``ailora.tasks.bundled``), GLUE's
eight tasks and SQuAD v1.1/v2.0 (``ailora.tasks.benchmarks``, hub or local official files). Users
add their own from CSV/JSONL with :func:`task_from_dict` or :func:`task_from_json`.

    >>> from ailora.tasks import load_task
    >>> data = load_task("trec", max_samples={"train": 1000})
    >>> data.train[0]  # {"text": ..., "text_pair": None, "label": <int>}
"""

from ailora.tasks import benchmarks, bundled  # noqa: F401  (importing registers the tasks)
from ailora.tasks.custom import task_from_dict, task_from_json
from ailora.tasks.kinds import label_index
from ailora.tasks.loading import load_task, subsample
from ailora.tasks.spec import (
    KINDS,
    SPLITS,
    TASKS,
    Example,
    Kind,
    Loader,
    RawSplits,
    TaskData,
    TaskSpec,
    get_task,
    register_task,
)

__all__ = [
    "KINDS",
    "SPLITS",
    "TASKS",
    "Example",
    "Kind",
    "Loader",
    "RawSplits",
    "TaskData",
    "TaskSpec",
    "get_task",
    "label_index",
    "load_task",
    "register_task",
    "subsample",
    "task_from_dict",
    "task_from_json",
]
