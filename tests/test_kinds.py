"""Task kinds behind one protocol, the model resolved once per run, and what a method tells the loop
about its optimizer groups; tiny models built in code, seconds on a CPU."""

from __future__ import annotations

import inspect
import json
import random
import re
import sys

import pytest
import transformers as T

import ailora.core.models as core_models
import ailora.train.context as train_context
import ailora.train.evaluate as evaluate
import ailora.train.kinds as train_kinds
import ailora.train.loop as loop
import ailora.train.stages as stages
from ailora.methods import get_method
from ailora.tasks import KINDS, TaskSpec
from ailora.tasks import kinds as data_kinds
from ailora.tasks import spec as task_spec
from ailora.tasks.metrics import METRICS, Metric
from ailora.train import RunConfig, train
from tests.tiny_models import save_tiny_bert

NAMED = {"run_dir": "unused", "task": {"name": "movie-sentiment"}}
WORDS = {0: ["bad", "awful", "poor"], 1: ["good", "great", "nice"]}


def _rows(spec, data_dir, n=48):
    rng = random.Random(5)
    return {"all": [{"text": f"it was {rng.choice(WORDS[i % 2])}", "label": i % 2} for i in range(n)]}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), 2)


def _cfg(model_dir, run_dir, task, *overrides):
    base = {"model": {"name": str(model_dir), "max_length": 16}, "task": {"name": task}, "run_dir": str(run_dir),
            "method": {"name": "lora", "rank": 4},
            "train": {"lr": 1e-2, "epochs": 1, "batch_size": 8, "progress": False, "tensorboard": False}}
    return RunConfig.from_dict(base, list(overrides))


@pytest.fixture
def tiny_task(monkeypatch):
    spec = TaskSpec("kinds-tiny", "two-class words", "classification", ("accuracy",), _rows, label_names=("no", "yes"))
    monkeypatch.setitem(task_spec.TASKS, spec.name, spec)
    return spec.name


def test_one_train_reads_the_config_once_and_checks_the_model_kind_once(bert_dir, tmp_path, tiny_task, monkeypatch):
    """Before: four config reads of ailora's own (plus one each inside the tokenizer and weight
    loaders of transformers) and three model-kind checks per train(); now one of each."""
    callers = []
    real = T.AutoConfig.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        callers.append(sys._getframe(1).f_code.co_name)
        return real(cls, *args, **kwargs)

    checks = []
    real_kind = train_kinds.Classification.model_kind
    real_check = core_models.check_kind
    monkeypatch.setattr(T.AutoConfig, "from_pretrained", classmethod(counted))
    monkeypatch.setattr(train_kinds.Classification, "model_kind",
                        lambda self, seq2seq: checks.append("task") or real_kind(self, seq2seq))
    monkeypatch.setattr(core_models, "check_kind", lambda *a: checks.append("loader") or real_check(*a))
    train(_cfg(bert_dir, tmp_path / "run", tiny_task))
    assert callers.count("load_config") == 1  # ailora's own read
    assert len(callers) == 3  # + AutoTokenizer's and AutoModel's own reads inside transformers
    assert checks == ["task"]


def test_every_kind_has_a_data_side_and_a_trainer():
    assert tuple(data_kinds.EXAMPLE_KINDS) == KINDS == tuple(train_kinds.TASK_KINDS)
    for name, kind in data_kinds.EXAMPLE_KINDS.items():
        assert kind.name == name
        assert all(name in METRICS[m].kinds for m in kind.default_metrics)


def test_the_loop_and_evaluation_never_test_the_kind_name():
    names = "|".join(KINDS)
    for module in (loop, evaluate, stages, train_context):
        source = inspect.getsource(module)
        assert not re.search(r"\.kind\s*(==|!=|in\b|not in\b)", source), module.__name__
        assert not re.search(rf"[\"']({names})[\"']", source), module.__name__
        assert "BaselineState" not in source, module.__name__


def test_a_registered_kind_trains_with_no_change_to_the_loop(bert_dir, tmp_path, monkeypatch):
    """A new kind (here: classification whose prediction rows carry the predicted class's name) is a
    trainer class, a data side and a metric naming it; the loop uses its rows and its metric."""

    class NamedData(data_kinds.ClassificationData):
        name = "named"

    class Named(train_kinds.Classification):
        def rows(self, examples, items, predictions, model):
            return [{"input": ex["text"], "prediction": self.label_names[p]} for ex, p in zip(examples, predictions)]

    monkeypatch.setitem(data_kinds.EXAMPLE_KINDS, "named", NamedData())
    monkeypatch.setitem(train_kinds.TASK_KINDS, "named", Named.for_run)
    monkeypatch.setitem(METRICS, "named_accuracy", Metric("named_accuracy", True, METRICS["accuracy"].fn,
                                                          kinds=("named",)))
    spec = TaskSpec("kinds-named", "two-class words, named", "named", ("named_accuracy",), _rows,
                    label_names=("no", "yes"))
    monkeypatch.setitem(task_spec.TASKS, spec.name, spec)
    res = train(_cfg(bert_dir, tmp_path / "run", spec.name))
    assert 0 <= res["test"]["named_accuracy"] <= 1 and res["task"]["kind"] == "named"
    test_file = tmp_path / "run" / "predictions" / f"test-step{res['steps']}.jsonl"
    rows = [json.loads(line) for line in test_file.read_text().splitlines()]
    assert len(rows) == 5 and {r["prediction"] for r in rows} <= {"no", "yes"}


def test_a_baseline_names_its_optimizer_groups_and_the_lora_family_does_not(bert_dir):
    for method, own in (("bitfit", "bitfit"), ("full", "full")):
        model = core_models.load_model(bert_dir, kind="seq-cls", num_labels=2)
        prepared = get_method(method).prepare(model, RunConfig.from_dict(NAMED, [f"method.name={method}"]).method, 0)
        assert dict(prepared.groups) == {"head": ["classifier"], "own_group": own}
    model = core_models.load_model(bert_dir, kind="seq-cls", num_labels=2)
    cfg = RunConfig.from_dict(NAMED, ["method.name=lora", "method.rank=4"])
    assert dict(get_method("lora").prepare(model, cfg.method, 0).groups) == {}
    groups = {g["name"] for g in loop._param_groups(cfg, get_method("bitfit").prepare(
        core_models.load_model(bert_dir, kind="seq-cls", num_labels=2), cfg.method, 0))}
    assert groups == {"head", "head.no_decay", "bitfit.no_decay"}  # the head apart, the biases in the own group
