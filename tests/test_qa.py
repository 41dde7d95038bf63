"""Extractive QA: SQuAD v1.1/v2.0 files in the official format written here, a tiny BERT span head trained
on them, and post-processing (spans, null answers, threshold) checked on hand-made cases."""

from __future__ import annotations

import json
import math
import random

import pytest
import transformers as T

from ailora.tasks import load_task
from ailora.tasks.metrics import compute_metrics
from ailora.train import RunConfig, train
from ailora.train.data import Encoded
from ailora.train.qa import answers, best_spans, best_threshold, encode_qa
from tests.tiny_models import save_tiny_bert

COLORS = ["red", "blue", "green", "black", "white"]
THINGS = ["car", "house", "door", "book", "hat"]


def _squad_file(path, n_articles: int, v2: bool, seed: int):
    """An official-format SQuAD file: each paragraph says what colour things are; questions ask one."""
    rng = random.Random(seed)
    data = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(2):
            colors = {t: rng.choice(COLORS) for t in rng.sample(THINGS, 3)}
            context = " ".join(f"the {t} is {c}." for t, c in colors.items())
            qas = []
            for t, c in colors.items():
                start = context.index(f"the {t} is {c}") + len(f"the {t} is ")
                qas.append({"id": f"{a}-{p}-{t}", "question": f"what color is the {t}?",
                            "answers": [{"text": c, "answer_start": start}]})
            if v2:
                missing = next(t for t in THINGS if t not in colors)
                qas.append({"id": f"{a}-{p}-{missing}-x", "question": f"what color is the {missing}?", "answers": [],
                            "is_impossible": True})
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"article {a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "v2.0" if v2 else "1.1", "data": data}))


@pytest.fixture(scope="module")
def squad_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("squad")
    for version, v2 in (("1.1", False), ("2.0", True)):
        _squad_file(d / f"train-v{version}.json", 12, v2, 0)
        _squad_file(d / f"dev-v{version}.json", 3, v2, 1)
    return d


@pytest.fixture(scope="module")
def qa_bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("qa-bert"), 2, dropout=False)


def test_small_squad_files_load_with_a_validation_carve(squad_dir):
    data = load_task("squad", squad_dir)
    assert data.sizes() == {"train": 66, "validation": 6, "test": 18}  # one whole article (6 questions) carved
    assert {ex["context"] for ex in data.train}.isdisjoint({ex["context"] for ex in data.validation})


@pytest.mark.parametrize("task", ["squad", "squad-v2"])
def test_span_head_trains_on_squad_files(task, squad_dir, qa_bert, tmp_path):
    cfg = RunConfig.from_dict({
        "model": {"name": str(qa_bert), "max_length": 48}, "task": {"name": task, "data_dir": str(squad_dir)},
        "method": {"name": "ailora", "rank": 4}, "run_dir": str(tmp_path / "run"),
        "qa": {"doc_stride": 8} if task == "squad" else {},  # squad-v2: the default, a quarter of max_length
        "train": {"lr": 2e-2, "epochs": 3, "batch_size": 8, "progress": False, "tensorboard": False,
                  "eval_before": True}})
    res = train(cfg)
    assert res["epochs"][-1]["train_loss"] < res["epochs"][0]["train_loss"] - 0.3
    assert 0 <= res["test"]["squad_em"] <= res["test"]["squad_f1"] <= 1
    rows = (tmp_path / "run" / "predictions" / f"test-step{res['steps']}.jsonl").read_text().splitlines()
    assert len(rows) == 18 + 6 * (task == "squad-v2")  # one per question, not per window
    assert ("null_threshold" in res["test"]) == (task == "squad-v2")
    assert res["test"]["squad_f1"] > res["before"]["test"]["squad_f1"]


def _window(example: int, offsets, cls: int = 0) -> Encoded:
    return Encoded(list(range(len(offsets))), None, meta={"example": example, "offsets": offsets, "cls": cls})


def test_post_processing_on_hand_made_logits():
    ex = {"context": "the car is red. the hat is blue.", "answers": {"text": ["red"], "answer_start": [11]}}
    # tokens: [CLS] q [SEP] the car is red. ...: context offsets from position 3 on.
    offsets = [None, None, None, (0, 3), (4, 7), (8, 10), (11, 14), (16, 19), (20, 23), (24, 26), (27, 31)]
    start = [0.0, 9.0, 0, 0, 0, 0, 5.0, 0, 0, 0, 4.0]  # position 1 is the question: never a span
    end = [0.0, 9.0, 0, 0, 0, 0, 5.0, 0, 0, 0, 1.0]
    (text, score, null), = best_spans([ex], [_window(0, offsets)], [(start, end)], n_best=5, max_answer_length=3)
    assert text == "red" and score == 10.0 and null == 0.0
    # A span longer than max_answer_length tokens is never chosen (6..10 would score 10).
    (text2, _, _), = best_spans([ex], [_window(0, offsets)], [([0, 0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0],
                                                              [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9.0])],
                                n_best=5, max_answer_length=2)
    assert text2 and "blue" not in text2 and len(text2.split()) <= 2
    # Two windows: the null score is the lowest of theirs, the span the best of both.
    spans = best_spans([ex], [_window(0, offsets), _window(0, offsets)],
                       [(start, end), ([3.0] + start[1:], [3.0] + end[1:])])
    assert spans[0][2] == 0.0 and spans[0][0] == "red"
    assert answers([("red", 10.0, 12.0)], None) == ["red"] and answers([("red", 10.0, 12.0)], 1.0) == [""]


def test_null_threshold_maximises_f1_on_hand_made_cases():
    refs = [{"text": ["red"]}, {"text": []}, {"text": ["blue"]}, {"text": []}]
    spans = [("red", 5.0, 1.0), ("car", 1.0, 4.0), ("blue", 2.0, 3.0), ("hat", 1.0, 3.5)]  # diffs -4, 3, 1, 2.5
    t = best_threshold(spans, refs)
    preds = answers(spans, t)
    assert preds == ["red", "", "blue", ""] and t == 1.0
    assert compute_metrics(["squad_em", "squad_f1"], preds, refs) == {"squad_em": 1.0, "squad_f1": 1.0}
    # Official normalisation: case, punctuation and articles do not count.
    assert compute_metrics(["squad_em"], ["The Red!"], [{"text": ["red"]}])["squad_em"] == 1.0
    assert math.isclose(compute_metrics(["squad_f1"], ["red car"], [{"text": ["red"]}])["squad_f1"], 2 / 3)


def test_windows_label_the_answer_or_cls():
    from ailora.core.models import minilm_dir

    tok = T.AutoTokenizer.from_pretrained(minilm_dir())
    context = " ".join(f"the {t} is {c}." for t, c in zip(THINGS, COLORS))
    start = context.index("the book is black") + len("the book is ")
    ex = {"question": "what color is the book?", "context": context,
          "answers": {"text": ["black"], "answer_start": [start]}}
    wins = encode_qa(tok, [ex], 24, 6, for_training=True)
    assert len(wins) > 1 and all(len(w.input_ids) <= 24 for w in wins)
    found = [w for w in wins if w.target != (0, 0)]
    assert found and all(tok.decode(w.input_ids[w.target[0]:w.target[1] + 1]) == "black" for w in found)
    evals = encode_qa(tok, [ex], 24, 6, for_training=False)
    assert [w.meta["example"] for w in evals] == [0] * len(wins)
    assert all(o is None for o in evals[0].meta["offsets"][:8])  # [CLS] question [SEP] are not context


def test_default_doc_stride_is_a_quarter_of_the_window():
    from ailora.train.qa import doc_stride

    assert doc_stride(None, 128) == 32 and doc_stride(None, 384) == 96 and doc_stride(50, 384) == 50
    assert RunConfig.from_dict({"run_dir": "r", "task": {"name": "squad"}}).qa.doc_stride is None  # the default config trains QA as it is
