"""Tasks: bundled data (real package files), GLUE/SQuAD loaders on small official-format files
written here, user tasks from CSV/JSONL, and one-line errors for bad input."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

from ailora.errors import AiloraError
from ailora.tasks import TASKS, TaskSpec, benchmarks, get_task, load_task, task_from_dict, task_from_json
from ailora.tasks.metrics import compute_metrics, extract_number
from ailora.tasks.prompts import decoding_defaults, prompt_template

BUNDLED = ["movie-sentiment", "movie-score", "trec", "boolq", "sms-spam", "bbc-news", "asdiv", "xsum"]
GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]


def input_key(ex):
    return ex.get("prompt") or (ex.get("text"), ex.get("text_pair"), ex.get("question"), ex.get("context"))


@pytest.fixture(scope="module")
def bundled():
    return {name: load_task(name) for name in BUNDLED}


# Registry.


def test_registry_holds_every_task_with_a_description():
    assert set(BUNDLED + GLUE + ["squad", "squad-v2"]) <= set(TASKS)
    for spec in TASKS.values():
        assert spec.description and spec.main_metric in spec.metrics
        assert spec.kind != "classification" or spec.label_names
        assert spec.name in spec.describe() and "\n" not in spec.describe()


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(AiloraError, match=r"unknown task 'nope' \(known: ") as info:
        load_task("nope")
    assert all(name in str(info.value) for name in BUNDLED + GLUE + ["squad-v2"])


def test_spec_validation():
    base = get_task("trec")
    with pytest.raises(AiloraError, match="unknown metric 'bleu'"):
        replace(base, metrics=("accuracy", "bleu"))
    with pytest.raises(AiloraError, match="unknown kind 'ranking'"):
        replace(base, kind="ranking")
    with pytest.raises(AiloraError, match="main metric 'mcc'"):
        replace(base, main_metric="mcc")
    with pytest.raises(AiloraError, match="validation_size"):
        replace(base, validation_size=0)


# Bundled tasks on the real files.


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_split_sizes_are_the_documented_ones(bundled, name):
    data = bundled[name]
    assert data.sizes() == dict(data.spec.sizes)
    assert all(n > 0 for n in data.sizes().values())


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_splits_are_disjoint_and_deduplicated(bundled, name):
    keys = {split: [input_key(ex) for ex in examples] for split, examples in bundled[name].splits().items()}
    if bundled[name].spec.dedupe:
        assert all(len(set(k)) == len(k) for k in keys.values())
    assert not set(keys["train"]) & set(keys["validation"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["validation"]) & set(keys["test"])


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_examples_have_the_kind_format(bundled, name):
    data = bundled[name]
    for ex in data.train + data.validation + data.test:
        if data.spec.kind == "classification":
            assert (
                set(ex) == {"text", "text_pair", "label"}
                and 0 <= ex["label"] < data.num_labels
                and ex["text"]
            )
        elif data.spec.kind == "regression":
            assert isinstance(ex["label"], float) and -4 < ex["label"] < 4 and ex["text"]
        else:
            assert set(ex) == {"prompt", "target"} and ex["prompt"] and ex["target"]
    if data.label_names:  # every class occurs in train
        assert {ex["label"] for ex in data.train} == set(range(data.num_labels))


def test_bundled_splits_are_deterministic_and_seeded(bundled):
    again = load_task("trec")
    assert again.splits() == bundled["trec"].splits()
    other = load_task("trec", split_seed=1)
    assert other.validation != again.validation and other.sizes() == again.sizes()


def test_bundled_specifics(bundled):
    assert bundled["trec"].label_names == ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")
    assert bundled["boolq"].test[0]["text_pair"]  # question + passage pairs
    # Neutral snippets (score exactly 0) are in movie-score but not in movie-sentiment.
    neutral = {
        ex["text"] for split in bundled["movie-score"].splits().values() for ex in split if ex["label"] == 0
    }
    assert len(neutral) == 37
    assert not neutral & {
        ex["text"] for split in bundled["movie-sentiment"].splits().values() for ex in split
    }
    asdiv = bundled["asdiv"].test
    assert all(extract_number(ex["target"]) is not None for ex in asdiv)
    targets = [ex["target"] for ex in asdiv]
    assert compute_metrics(["numeric_match"], targets, targets) == {"numeric_match": 1.0}


def test_max_samples_takes_a_seeded_subset(bundled):
    full = bundled["sms-spam"]
    small = load_task("sms-spam", max_samples={"train": 100, "test": 50})
    assert small.sizes() == {"train": 100, "validation": 500, "test": 50}
    assert all(ex in full.train for ex in small.train)
    assert small.train == load_task("sms-spam", max_samples={"train": 100}).train
    with pytest.raises(AiloraError, match="no split 'dev'"):
        load_task("sms-spam", max_samples={"dev": 10})


# GLUE in the official TSV formats.

_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_MNLI = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
         "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1"]  # fmt: skip
_MNLI_DEV_LABELS = ["label2", "label3", "label4", "label5"]
_STSB = [
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
    "score",
]


def glue_row(task: str, file: str, i: int) -> list[str]:
    """Row i of a GLUE file; sentences hold an unbalanced quote, as real GLUE TSVs do."""
    a, b, two = f'{task} {file} "a {i}', f"{task} {file} b {i}", str(i % 2)
    return {
        "CoLA": lambda: [f"gj0{i}", two, "" if i % 2 else "*", a],
        "SST-2": lambda: [a, two],
        "MRPC": lambda: [two, "702876", "702977", a, b],
        "QQP": lambda: [str(i), "1", "2", a, b, two],
        "STS-B": lambda: [
            str(i),
            "main-captions",
            "MSRvid",
            "2012test",
            "0001",
            "none",
            "none",
            a,
            b,
            f"{i % 6}.000",
        ],
        "MNLI": lambda: (
            [str(i), "1", "1", "fiction", "(", "(", "(", "(", a, b]
            + [_NLI3[i % 3]] * (6 if file.startswith("dev") else 2)
        ),
        "QNLI": lambda: [str(i), a, b, _NLI2[i % 2]],
        "RTE": lambda: [str(i), a, b, _NLI2[i % 2]],
    }[task]()


GLUE_HEADERS = {
    "CoLA": None,
    "SST-2": ["sentence", "label"],
    "MRPC": ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],  # the real file starts with a BOM
    "QQP": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
    "STS-B": _STSB,
    "MNLI": _MNLI,
    "QNLI": ["index", "question", "sentence", "label"],
    "RTE": ["index", "sentence1", "sentence2", "label"],
}
GLUE_FOLDERS = dict(zip(GLUE, GLUE_HEADERS))


def write_tsv(path: Path, header: list[str] | None, rows: list[list[str]]) -> None:
    lines = ([header] if header else []) + rows
    path.write_text("".join("\t".join(fields) + "\n" for fields in lines), encoding="utf-8")


@pytest.fixture
def glue_dir(tmp_path, monkeypatch):
    """The eight GLUE folders with 12 train and 5 dev rows each; the hub must not be touched."""

    def no_hub(*args):
        raise AssertionError("hub accessed although data_dir was given")

    monkeypatch.setattr(benchmarks, "load_hub", no_hub)
    for folder, header in GLUE_HEADERS.items():
        (tmp_path / folder).mkdir()
        devs = ["dev_matched.tsv", "dev_mismatched.tsv"] if folder == "MNLI" else ["dev.tsv"]
        for file, n in [("train.tsv", 12)] + [(dev, 5) for dev in devs]:
            columns = header
            if folder == "MNLI":  # train has label1 + gold_label; dev has label1..label5 + gold_label
                columns = header + (
                    ["gold_label"] if file == "train.tsv" else [*_MNLI_DEV_LABELS, "gold_label"]
                )
            write_tsv(tmp_path / folder / file, columns, [glue_row(folder, file, i) for i in range(n)])
    return tmp_path


@pytest.mark.parametrize("name", GLUE)
def test_glue_local_files_in_official_format(glue_dir, name):
    spec = replace(get_task(name), validation_size=3)
    data = load_task(spec, glue_dir)
    expected = {"train": 9, "validation": 3, "test": 5} | ({"test_mismatched": 5} if name == "mnli" else {})
    assert data.sizes() == expected
    for split, examples in data.splits().items():
        for ex in examples:
            i = int(ex["text"].split()[-1])
            assert (
                ex["text"]
                == f'{GLUE_FOLDERS[name]} {"train.tsv" if split != "test" and split != "test_mismatched" else ex["text"].split()[1]} "a {i}'
            )
            assert ex["text_pair"] == (None if name in ("cola", "sst2") else ex["text"].replace('"a', "b"))
            want = float(i % 6) if name == "stsb" else i % 3 if name == "mnli" else i % 2
            assert ex["label"] == want
    assert {ex["text"].split()[1] for ex in data.test} == {"dev_matched.tsv" if name == "mnli" else "dev.tsv"}


def test_glue_data_dir_may_be_the_task_folder(glue_dir):
    data = load_task(replace(get_task("rte"), validation_size=2), glue_dir / "RTE")
    assert data.sizes() == {"train": 10, "validation": 2, "test": 5}


def test_glue_missing_column_names_file_and_column(glue_dir):
    write_tsv(glue_dir / "SST-2" / "train.tsv", ["sentence", "lbl"], [["good", "1"]])
    with pytest.raises(AiloraError, match=r"SST-2/train.tsv: no column 'label'"):
        load_task("sst2", glue_dir)


def test_glue_label_outside_set_names_label_and_row(glue_dir):
    path = glue_dir / "MNLI" / "dev_matched.tsv"
    path.write_text(path.read_text().replace("\tcontradiction\n", "\t-\n", 1))
    with pytest.raises(AiloraError, match=r"dev_matched.tsv line 4: label '-' is not in the label set"):
        load_task(replace(get_task("mnli"), validation_size=2), glue_dir)


def test_glue_missing_dev_file_is_named(glue_dir):
    (glue_dir / "QNLI" / "dev.tsv").unlink()
    with pytest.raises(AiloraError, match=r"QNLI/dev.tsv not found"):
        load_task("qnli", glue_dir)


def fake_datasets(monkeypatch, load_dataset):
    calls = []

    def record(*args):
        calls.append(args)
        return load_dataset(*args)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=record))
    return calls


@pytest.mark.parametrize("name", ["cola", "squad-v2"])
def test_hub_failure_says_to_pass_a_local_directory(monkeypatch, name):
    def offline(*args):
        raise ConnectionError("Couldn't reach the Hub\n(offline mode is enabled)")

    calls = fake_datasets(monkeypatch, offline)
    with pytest.raises(AiloraError) as info:
        load_task(name)
    message = str(info.value)
    assert (
        "\n" not in message and "ConnectionError" in message and "pass data_dir, a local directory" in message
    )
    assert calls == [("nyu-mll/glue", "cola")] if name == "cola" else calls == [("rajpurkar/squad_v2", None)]


def test_glue_from_the_hub_maps_columns_and_splits(monkeypatch):
    def rows(n, tag):
        return [{"premise": f"p {tag} {i}", "hypothesis": f"h {tag} {i}", "label": i % 3} for i in range(n)]

    hub = {
        "train": rows(8, "t"),
        "validation_matched": rows(3, "m"),
        "validation_mismatched": rows(4, "mm"),
        "test_matched": [],
    }
    fake_datasets(monkeypatch, lambda *args: hub)
    data = load_task(replace(get_task("mnli"), validation_size=2))
    assert data.sizes() == {"train": 6, "validation": 2, "test": 3, "test_mismatched": 4}
    assert data.test[1] == {"text": "p m 1", "text_pair": "h m 1", "label": 1}


# SQuAD in the official JSON format.


def squad_file(path: Path, articles: int, impossible: bool) -> None:
    data = []
    for a in range(articles):
        paragraphs = []
        for p in range(2):
            context = f"Article {a} paragraph {p} says the answer is Denver Broncos."
            qas = [{"id": f"{a}-{p}-0", "question": "Who won?", "is_impossible": False,
                    "answers": [{"text": "Denver Broncos", "answer_start": context.index("Denver")}]}]  # fmt: skip
            if impossible:
                qas.append({"id": f"{a}-{p}-1", "question": "Who lost?", "is_impossible": True, "answers": [],
                            "plausible_answers": [{"text": "Denver", "answer_start": 0}]})  # fmt: skip
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"Title_{a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "x", "data": data}), encoding="utf-8")


@pytest.mark.parametrize("name, version", [("squad", "1.1"), ("squad-v2", "2.0")])
def test_squad_local_files(tmp_path, monkeypatch, name, version):
    monkeypatch.setattr(benchmarks, "load_hub", None)  # calling it would fail the test
    squad_file(tmp_path / f"train-v{version}.json", 5, impossible=version == "2.0")
    squad_file(tmp_path / f"dev-v{version}.json", 1, impossible=version == "2.0")
    data = load_task(replace(get_task(name), validation_size=3), tmp_path)
    per_article = 4 if version == "2.0" else 2
    val_articles = 1 if version == "2.0" else 2  # whole articles until at least 3 questions
    assert data.sizes() == {
        "train": (5 - val_articles) * per_article,
        "validation": val_articles * per_article,
        "test": per_article,
    }
    titles = {
        split: {ex["context"].split()[1] for ex in examples} for split, examples in data.splits().items()
    }
    assert not titles["train"] & titles["validation"]  # whole articles carved
    ex = data.test[0]
    assert set(ex) == {"id", "question", "context", "answers"}
    assert ex["context"][ex["answers"]["answer_start"][0] :].startswith(ex["answers"]["text"][0])
    golds = [e["answers"] for e in data.test]
    perfect = [g["text"][0] if g["text"] else "" for g in golds]
    assert compute_metrics(["squad_em", "squad_f1"], perfect, golds) == {"squad_em": 1.0, "squad_f1": 1.0}
    if version == "2.0":
        assert sum(not g["text"] for g in golds) == 2


def test_squad_from_the_hub(monkeypatch):
    row = {
        "id": "q",
        "title": "T",
        "context": "c",
        "question": "q?",
        "answers": {"text": ["c"], "answer_start": [0]},
    }
    hub = {"train": [row | {"id": f"t{i}", "title": f"T{i}"} for i in range(6)], "validation": [row]}
    fake_datasets(monkeypatch, lambda *args: hub)
    data = load_task(replace(get_task("squad"), validation_size=2))
    assert data.sizes() == {"train": 4, "validation": 2, "test": 1}
    assert data.test[0] == {k: row[k] for k in ("id", "question", "context", "answers")}


# User tasks from their own files.


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_custom_csv_single_file_is_split_with_the_seed(tmp_path):
    rows = [["text", "label"]] + [
        [f'"review {i}, with a comma"', "pos" if i % 3 else "neg"] for i in range(40)
    ]
    config = {"name": "reviews", "kind": "classification", "path": str(write_csv(tmp_path / "r.csv", rows)),
              "metrics": ["accuracy", "macro_f1"], "validation_size": 0.1, "test_size": 8}  # fmt: skip
    data = load_task(task_from_dict(config))
    assert data.sizes() == {"train": 28, "validation": 4, "test": 8}
    assert data.label_names == ("neg", "pos")
    assert data.train[0] == {"text": "review 1, with a comma", "text_pair": None, "label": 1}
    assert load_task(task_from_dict(config)).splits() == data.splits()
    texts = [ex["text"] for split in data.splits().values() for ex in split]
    assert len(set(texts)) == 40


def test_custom_jsonl_pair_task_from_a_json_spec(tmp_path):
    def jsonl(path, n):
        path.write_text(
            "".join(json.dumps({"q": f"q{i}", "p": f"p{i}", "y": i % 2}) + "\n" for i in range(n))
        )

    jsonl(tmp_path / "train.jsonl", 10)
    jsonl(tmp_path / "test.jsonl", 4)
    spec_path = tmp_path / "task.json"
    spec_path.write_text(json.dumps({"name": "pairs", "kind": "classification", "train": "train.jsonl",
                                     "test": "test.jsonl", "text_fields": ["q", "p"], "label_field": "y",
                                     "label_names": ["no", "yes"], "validation_size": 2}))  # fmt: skip
    assert task_from_json(spec_path).name == "pairs"
    data = load_task(str(spec_path))
    assert data.sizes() == {"train": 8, "validation": 2, "test": 4}
    assert data.test[3] == {"text": "q3", "text_pair": "p3", "label": 1}


def test_custom_generation_and_regression(tmp_path):
    (tmp_path / "g.jsonl").write_text(
        "".join(json.dumps({"src": f"s{i}", "tgt": f"{i} apples"}) + "\n" for i in range(10))
    )
    gen = {"name": "g", "kind": "generation", "path": str(tmp_path / "g.jsonl"), "text_fields": ["src"],
           "label_field": "tgt", "metrics": ["numeric_match"], "validation_size": 2, "test_size": 2}  # fmt: skip
    assert load_task(task_from_dict(gen)).test[0].keys() == {"prompt", "target"}
    path = write_csv(
        tmp_path / "s.csv", [["text", "score"], ["a", "1.5"], ["b", "2"], ["c", "x"], ["d", "0"]]
    )
    reg = {
        "name": "s",
        "kind": "regression",
        "path": str(path),
        "label_field": "score",
        "validation_size": 1,
        "test_size": 1,
    }
    with pytest.raises(AiloraError, match=r"s.csv line 4: label 'x' is not a number"):
        load_task(task_from_dict(reg))


def write_qa_spec(tmp_path: Path, **keys) -> Path:
    """A JSON spec of a generation task over 10 JSONL question/answer rows, plus ``keys``."""
    (tmp_path / "qa.jsonl").write_text(
        "".join(json.dumps({"q": f"how many {i}?", "a": str(i)}) + "\n" for i in range(10))
    )
    spec = {"name": "qa", "kind": "generation", "path": "qa.jsonl", "text_fields": ["q"], "label_field": "a",
            "validation_size": 2, "test_size": 2, **keys}  # fmt: skip
    (tmp_path / "qa.json").write_text(json.dumps(spec))
    return tmp_path / "qa.json"


def test_custom_generation_prompt_template_keep_and_decoding(tmp_path):
    spec = task_from_json(write_qa_spec(tmp_path, prompt_template="Q: {input}\nA (a number):", keep="end",
                                        decoding={"max_new_tokens": 8, "num_beams": 3, "length_penalty": 0.5}))  # fmt: skip
    template = prompt_template(spec)
    assert template.keep == "end"
    assert template.render(load_task(spec).test[0]["prompt"]).startswith("Q: how many ")
    assert template.render("how many 7?") == "Q: how many 7?\nA (a number):"
    assert decoding_defaults(spec) == {"max_new_tokens": 8, "num_beams": 3, "length_penalty": 0.5,
                                       "no_repeat_ngram_size": 0}  # fmt: skip
    plain = task_from_json(write_qa_spec(tmp_path))
    assert prompt_template(plain).render("x") == "x\nAnswer:" and decoding_defaults(plain)["max_new_tokens"] == 32


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"prompt_template": "Q: no slot"}, r"'prompt_template' must hold \{input\} exactly once"),
        ({"prompt_template": "{input} and {input}"}, r"'prompt_template' must hold \{input\} exactly once"),
        ({"prompt_template": "{question}: {input}"}, r"'prompt_template' has an unknown placeholder \{question\}"),
        ({"prompt_template": 3}, r"'prompt_template' must be a string"),
        ({"keep": "middle"}, r"'keep' must be one of start, end, got 'middle'"),
        ({"decoding": {"max_new_tokens": 0}}, r"'decoding.max_new_tokens' must be an integer >= 1, got 0"),
        ({"decoding": {"num_beams": 2.5}}, r"'decoding.num_beams' must be an integer >= 1, got 2.5"),
        ({"decoding": {"num_beams": True}}, r"'decoding.num_beams' must be an integer >= 1, got True"),
        ({"decoding": {"no_repeat_ngram_size": -1}}, r"'decoding.no_repeat_ngram_size' must be an integer >= 0"),
        ({"decoding": {"length_penalty": "inf"}}, r"'decoding.length_penalty' must be a finite number"),
        ({"decoding": {"temperature": 0.7}}, r"'decoding.temperature' is not a decoding setting"),
        ({"decoding": [8]}, r"'decoding' must be an object"),
        ({"kind": "classification", "keep": "end"}, r"'keep' is for generation tasks only"),
    ],
)  # fmt: skip
def test_bad_generation_spec_keys_are_one_line_errors_naming_key_and_file(tmp_path, keys, message):
    path = write_qa_spec(tmp_path, **keys)
    with pytest.raises(AiloraError, match=message) as info:
        task_from_json(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value) and "'qa'" in str(info.value)


def test_non_finite_length_penalty_is_rejected(tmp_path):
    config = json.loads(write_qa_spec(tmp_path).read_text()) | {"decoding": {"length_penalty": float("nan")}}
    with pytest.raises(AiloraError, match=r"task spec 'qa': 'decoding.length_penalty' must be a finite number"):
        task_from_dict(config, base_dir=tmp_path)


@pytest.fixture
def small_csv(tmp_path):
    rows = [["text", "label"]] + [[f"t{i}", "pos" if i % 2 else "neg"] for i in range(10)]
    return write_csv(tmp_path / "small.csv", rows)


def test_label_outside_the_label_set_names_label_and_row(tmp_path, small_csv):
    small_csv.write_text(small_csv.read_text().replace("t2,neg", "t2,maybe"))
    config = {"name": "x", "kind": "classification", "path": str(small_csv), "label_names": ["neg", "pos"]}
    with pytest.raises(
        AiloraError, match=r"small.csv line 4: label 'maybe' is not in the label set \['neg', 'pos'\]"
    ):
        load_task(task_from_dict(config))


def test_missing_column_names_file_and_column(tmp_path, small_csv):
    config = {"name": "x", "kind": "classification", "path": str(small_csv), "text_fields": ["sentence"]}
    with pytest.raises(AiloraError, match=r"small.csv: no column 'sentence' \(columns: text, label\)"):
        load_task(task_from_dict(config))
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 1}\n{"label": 0}\n')
    config = {"name": "x", "kind": "classification", "path": str(tmp_path / "d.jsonl")}
    with pytest.raises(AiloraError, match=r"d.jsonl line 2: no field 'text'"):
        load_task(task_from_dict(config))


def test_empty_split_is_named(tmp_path, small_csv):
    empty = write_csv(tmp_path / "empty.csv", [["text", "label"]])
    config = {"name": "x", "kind": "classification", "train": str(small_csv), "test": str(empty)}
    with pytest.raises(AiloraError, match=r"task 'x': split 'test' is empty"):
        load_task(task_from_dict(config))


def test_bad_custom_specs(small_csv):
    base = {"name": "x", "kind": "classification", "path": str(small_csv)}
    with pytest.raises(AiloraError, match="unknown metric 'bleu'"):
        task_from_dict(base | {"metrics": ["bleu"]})
    with pytest.raises(AiloraError, match="unknown key 'labels'"):
        task_from_dict(base | {"labels": ["a"]})
    with pytest.raises(AiloraError, match="missing 'test' file"):
        task_from_dict({"name": "x", "kind": "classification", "train": str(small_csv)})
    with pytest.raises(AiloraError, match="cannot carve 20 test examples from 10"):
        load_task(task_from_dict(base | {"test_size": 20}))
    assert isinstance(task_from_dict(base), TaskSpec)


def _split_files(tmp_path, train_labels, test_labels):
    paths = {}
    for split, labels in (("train", train_labels), ("validation", train_labels), ("test", test_labels)):
        rows = [["text", "label"]] + [[f"{split} text {i}", lab] for i, lab in enumerate(labels)]
        paths[split] = str(write_csv(tmp_path / f"{split}.csv", rows))
    return paths


@pytest.mark.parametrize("train_labels, test_label", [(["1", "2", "3"], "0"), (["neg", "pos"], "0"),
                                                      (["1", "3", "5"], "2")])
def test_a_label_outside_the_training_labels_is_never_read_as_an_index(tmp_path, train_labels, test_label):
    paths = _split_files(tmp_path, train_labels * 4, [train_labels[0], test_label])
    spec = task_from_dict({"name": "stars", "kind": "classification", **paths})
    with pytest.raises(AiloraError, match=rf"test.csv.*label '{test_label}' is not in the label set"):
        load_task(spec)


def test_labels_given_as_indices_of_the_spec_label_names_still_load(tmp_path):
    paths = _split_files(tmp_path, ["0", "1"] * 4, ["1", "0"])
    data = load_task(task_from_dict({"name": "s", "kind": "classification", "label_names": ["neg", "pos"], **paths}))
    assert data.label_names == ("neg", "pos") and [ex["label"] for ex in data.test] == [1, 0]


def test_an_empty_label_is_an_error_naming_the_line(tmp_path):
    rows = [["text", "label"]] + [[f"t{i}", "pos" if i % 2 else "neg"] for i in range(20)]
    rows[6][1] = ""
    spec = task_from_dict({"name": "rev", "kind": "classification", "path": str(write_csv(tmp_path / "r.csv", rows))})
    with pytest.raises(AiloraError, match=r"r.csv.*line 7.*empty label"):
        load_task(spec)


@pytest.mark.parametrize("extra, message", [
    ({"dedupe": "false"}, "'dedupe' must be true or false, got 'false'"),
    ({"seed": "abc"}, r"'seed' must be an integer in \[0, 2\^32\)"),
    ({"seed": -1}, r"'seed' must be an integer in \[0, 2\^32\)"),
    ({"validation_size": "0.1"}, r"validation_size must be a positive count or a fraction in \(0, 1\), got '0.1'"),
    ({"test_size": None}, r"test_size must be a positive count or a fraction in \(0, 1\), got None"),
    ({"metrics": "accuracy"}, "'metrics' must be a list of metric names"),
    ({"label_names": "neg,pos"}, "'label_names' must be a list of class names"),
    ({"metrics": ["pearson"]}, "metric 'pearson' scores regression tasks, not classification"),
    ({"metrics": ["rouge1"]}, "metric 'rouge1' scores generation tasks, not classification"),
    ({"metrics": ["squad_f1"]}, "metric 'squad_f1' scores extractive_qa tasks, not classification"),
])
def test_spec_values_of_the_wrong_type_or_kind_are_one_line_errors(tmp_path, extra, message):
    rows = [["text", "label"]] + [[f"t{i}", "pos" if i % 2 else "neg"] for i in range(20)]
    config = {"name": "rev", "kind": "classification", "path": str(write_csv(tmp_path / "r.csv", rows)), **extra}
    with pytest.raises(AiloraError, match=message):
        task_from_dict(config)


def test_metric_kinds_for_regression_generation_and_binary_f1(tmp_path):
    rows = [["text", "label"]] + [[f"t{i}", str(i % 3)] for i in range(30)]
    path = str(write_csv(tmp_path / "r.csv", rows))
    with pytest.raises(AiloraError, match="metric 'accuracy' scores classification tasks, not regression"):
        task_from_dict({"name": "r", "kind": "regression", "path": path, "metrics": ["accuracy"]})
    with pytest.raises(AiloraError, match="metric 'accuracy' scores classification tasks, not generation"):
        task_from_dict({"name": "g", "kind": "generation", "path": path, "metrics": ["accuracy"]})
    spec = task_from_dict({"name": "three", "kind": "classification", "path": path, "metrics": ["f1"]})
    with pytest.raises(AiloraError, match="metric 'f1' is binary F1, but the task has 3 classes.*use macro_f1"):
        load_task(spec)
