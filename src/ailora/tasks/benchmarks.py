"""GLUE's eight tasks and SQuAD v1.1/v2.0, from a local copy in the official formats or the hub.

Protocol (GLUE and SQuAD hide their test labels): the official dev set is our test split, and
validation is a fixed seeded slice of the official train set (whole articles for SQuAD, so no
paragraph is in both). ``sizes`` give the split sizes with the official data.

Local files: ``data_dir`` is the task's folder as in the official GLUE download (``CoLA/``,
``SST-2/``, ...) or its parent; for SQuAD, the folder holding ``train-v1.1.json`` and
``dev-v1.1.json`` (``-v2.0`` for v2). GLUE's TSVs are read by column name, except CoLA's, which
have no header (source, label, original label, sentence). Without ``data_dir`` the task is read
with ``datasets.load_dataset("nyu-mll/glue", config)`` or ``"rajpurkar/squad"``/``"rajpurkar/squad_v2"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ailora.errors import AiloraError
from ailora.tasks.readers import hub_split, load_hub, read_squad, read_table, require_file
from ailora.tasks.spec import RawSplits, TaskSpec, register_task

GLUE_HUB = "nyu-mll/glue"
_COLA_COLUMNS = ("source", "label", "original_label", "sentence")


def load_glue(spec: TaskSpec, data_dir: Path | None) -> RawSplits:
    """A GLUE task's train split and dev set(s), keyed train / test / test_<name>."""
    opts = spec.options
    if data_dir is None:
        return _glue_from_hub(spec)
    folder = _glue_folder(data_dir, opts["folder"])
    columns = (*opts["tsv_text"], opts["tsv_label"])
    out: RawSplits = {}
    for split, filename in {"train": "train.tsv", **opts["tsv_files"]}.items():
        rows = read_table(
            require_file(folder / filename, f"GLUE {opts['folder']} {split} file"),
            columns,
            names=opts.get("tsv_names"),
        )
        out[split] = [
            _pair(where, [row[c] for c in opts["tsv_text"]], row[opts["tsv_label"]]) for where, row in rows
        ]
    return out


def _glue_folder(data_dir: Path, folder: str) -> Path:
    for candidate in (data_dir / folder, data_dir):
        if (candidate / "train.tsv").is_file():
            return candidate
    raise AiloraError(f"{data_dir}: no {folder}/train.tsv or train.tsv (expected the official GLUE layout)")


def _glue_from_hub(spec: TaskSpec) -> RawSplits:
    opts = spec.options
    name = f"{GLUE_HUB} {opts['config']}"
    dataset = load_hub(GLUE_HUB, opts["config"], f"the official GLUE {opts['folder']} TSV files")
    out: RawSplits = {}
    for split, hub_name in {"train": "train", **opts["hub_splits"]}.items():
        rows = hub_split(dataset, hub_name, name)
        out[split] = [
            _pair(f"{name} {hub_name} row {i}", [row[c] for c in spec.text_fields], row["label"])
            for i, row in enumerate(rows)
        ]
    return out


def _pair(where: str, texts: list[str], label: Any) -> dict[str, Any]:
    return {
        "text": texts[0],
        "text_pair": texts[1] if len(texts) > 1 else None,
        "label": label,
        "_src": where,
    }


def load_squad(spec: TaskSpec, data_dir: Path | None) -> RawSplits:
    """SQuAD train and dev questions as extractive-QA examples, grouped by article title."""
    opts = spec.options
    if data_dir is None:
        dataset = load_hub(opts["hub"], None, f"the official SQuAD files {', '.join(opts['files'].values())}")
        return {
            split: _squad_hub_rows(dataset, hub_name, opts["hub"])
            for split, hub_name in opts["hub_splits"].items()
        }
    out: RawSplits = {}
    for split, filename in opts["files"].items():
        path = require_file(data_dir / filename, f"the official SQuAD {split} file")
        out[split] = [{**example, "_src": where} for where, example in read_squad(path)]
    return out


def _squad_hub_rows(dataset: Any, split: str, name: str) -> list[dict[str, Any]]:
    return [
        {
            "id": str(row["id"]),
            "question": row["question"],
            "context": row["context"],
            "answers": {
                "text": list(row["answers"]["text"]),
                "answer_start": list(row["answers"]["answer_start"]),
            },
            "_group": row.get("title", i),
            "_src": f"{name} {split} row {i}",
        }
        for i, row in enumerate(hub_split(dataset, split, name))
    ]


def _glue(
    name: str,
    config: str,
    folder: str,
    description: str,
    *,
    text: tuple[str, ...],
    tsv_text: tuple[str, ...],
    tsv_label: str,
    label_names: tuple[str, ...] | None,
    metrics: tuple[str, ...],
    validation_size: int,
    sizes: dict[str, int],
    main_metric: str = "",
    tsv_names: tuple[str, ...] | None = None,
    dev: dict[str, tuple[str, str]] | None = None,
) -> TaskSpec:
    """A GLUE task spec; ``dev`` maps our split to (local file, hub split)."""
    dev = dev or {"test": ("dev.tsv", "validation")}
    return TaskSpec(
        name=name,
        description=f"GLUE {description}; official dev set as test",
        kind="classification" if label_names else "regression",
        metrics=metrics,
        main_metric=main_metric,
        loader=load_glue,
        text_fields=text,
        label_names=label_names,
        source=f"hub {GLUE_HUB} {config}, or data_dir with the official {folder}/ TSVs",
        validation_size=validation_size,
        sizes=sizes,
        options={
            "config": config,
            "folder": folder,
            "tsv_text": tsv_text,
            "tsv_label": tsv_label,
            "tsv_names": tsv_names,
            "tsv_files": {split: files[0] for split, files in dev.items()},
            "hub_splits": {split: files[1] for split, files in dev.items()},
        },
    )


_BINARY_ENTAIL = ("entailment", "not_entailment")

GLUE = [
    _glue("cola", "cola", "CoLA", "CoLA grammatical acceptability", text=("sentence",), tsv_text=("sentence",),
          tsv_label="label", tsv_names=_COLA_COLUMNS, label_names=("unacceptable", "acceptable"), metrics=("mcc",),
          validation_size=1000, sizes={"train": 7551, "validation": 1000, "test": 1043}),
    _glue("sst2", "sst2", "SST-2", "SST-2 movie sentence sentiment", text=("sentence",), tsv_text=("sentence",),
          tsv_label="label", label_names=("negative", "positive"), metrics=("accuracy",),
          validation_size=2000, sizes={"train": 65349, "validation": 2000, "test": 872}),
    _glue("mrpc", "mrpc", "MRPC", "MRPC paraphrase detection", text=("sentence1", "sentence2"),
          tsv_text=("#1 String", "#2 String"), tsv_label="Quality", label_names=("not_equivalent", "equivalent"),
          metrics=("f1", "accuracy"), validation_size=400, sizes={"train": 3268, "validation": 400, "test": 408}),
    _glue("qqp", "qqp", "QQP", "QQP duplicate Quora questions", text=("question1", "question2"),
          tsv_text=("question1", "question2"), tsv_label="is_duplicate", label_names=("not_duplicate", "duplicate"),
          metrics=("f1", "accuracy"), validation_size=2000, sizes={"train": 361846, "validation": 2000, "test": 40430}),
    _glue("stsb", "stsb", "STS-B", "STS-B sentence similarity, 0-5", text=("sentence1", "sentence2"),
          tsv_text=("sentence1", "sentence2"), tsv_label="score", label_names=None, metrics=("pearson", "spearman"),
          main_metric="spearman", validation_size=600, sizes={"train": 5149, "validation": 600, "test": 1500}),
    _glue("mnli", "mnli", "MNLI", "MNLI entailment, 3 classes; test = matched, test_mismatched = mismatched",
          text=("premise", "hypothesis"), tsv_text=("sentence1", "sentence2"), tsv_label="gold_label",
          label_names=("entailment", "neutral", "contradiction"), metrics=("accuracy",), validation_size=2000,
          sizes={"train": 390702, "validation": 2000, "test": 9815, "test_mismatched": 9832},
          dev={"test": ("dev_matched.tsv", "validation_matched"),
               "test_mismatched": ("dev_mismatched.tsv", "validation_mismatched")}),
    _glue("qnli", "qnli", "QNLI", "QNLI question-answer entailment", text=("question", "sentence"),
          tsv_text=("question", "sentence"), tsv_label="label", label_names=_BINARY_ENTAIL, metrics=("accuracy",),
          validation_size=2000, sizes={"train": 102743, "validation": 2000, "test": 5463}),
    _glue("rte", "rte", "RTE", "RTE textual entailment", text=("sentence1", "sentence2"),
          tsv_text=("sentence1", "sentence2"), tsv_label="label", label_names=_BINARY_ENTAIL, metrics=("accuracy",),
          validation_size=250, sizes={"train": 2240, "validation": 250, "test": 277}),
]  # fmt: skip


def _squad(name: str, version: str, hub: str, train_size: int, dev_size: int) -> TaskSpec:
    files = {"train": f"train-v{version}.json", "test": f"dev-v{version}.json"}
    return TaskSpec(
        name=name,
        description=f"SQuAD v{version} extractive QA{' with unanswerable questions' if version == '2.0' else ''}; "
        "official dev set as test, validation = whole train articles (2,000 questions with the official file, "
        "the same fraction of any other)",
        kind="extractive_qa",
        metrics=("squad_f1", "squad_em"),
        loader=load_squad,
        text_fields=("question", "context"),
        source=f"hub {hub}, or data_dir with {files['train']} and {files['test']}",
        validation_size=2000 / train_size,  # 2,000 with the official file, a file of any size works
        sizes={"train+validation": train_size, "test": dev_size},
        options={"hub": hub, "files": files, "hub_splits": {"train": "train", "test": "validation"}},
    )


SQUAD = [
    _squad("squad", "1.1", "rajpurkar/squad", 87599, 10570),
    _squad("squad-v2", "2.0", "rajpurkar/squad_v2", 130319, 11873),
]

for _spec in (*GLUE, *SQUAD):
    register_task(_spec)
