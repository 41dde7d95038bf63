"""The training loop: tiny models built in code, tiny synthetic tasks, seconds on a CPU."""

from __future__ import annotations

import argparse
import json
import random

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

from ailora.errors import AiloraError
from ailora.tasks import TaskSpec, register_task
from ailora.train import RunConfig, check_run, load_config, train
from ailora.train.data import IGNORE_INDEX, collate
from ailora.train.generation import PromptFormat, encode_causal_lm
from ailora.train.loop import trainable_parameters
from tests.tiny_models import build, save_tiny_bert

POS, NEG = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]


def _sentiment(spec, data_dir, n=160):
    rng = random.Random(0)
    rows = []
    for i in range(n):
        y = i % 2
        rows.append({"text": f"the film was {rng.choice(POS if y else NEG)} {rng.choice(['today', 'indeed'])}",
                     "label": y})
    return {"all": rows}


def _reverse(spec, data_dir, n=48):
    rng = random.Random(1)
    rows = []
    for _ in range(n):
        words = [rng.choice("12345") for _ in range(3)]
        rows.append({"prompt": " ".join(words) + " =", "target": " ".join(reversed(words))})
    return {"all": rows}


register_task(TaskSpec("tiny-sentiment", "synthetic two-class sentiment", "classification", ("accuracy",),
                       _sentiment, label_names=("negative", "positive")), replace=True)
register_task(TaskSpec("tiny-reverse", "reverse three digits", "generation", ("numeric_match",),
                       _reverse, test_size=8, validation_size=8), replace=True)


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    """A 2-layer hidden-32 BERT with the MiniLM tokenizer, saved like a real checkpoint."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), 2)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    """A 2-layer LLaMA and a word-level tokenizer (digits, '=', specials) built in code."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    d = tmp_path_factory.mktemp("tiny-llama")
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", "=", *"12345"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = T.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                    unk_token="<unk>")
    build("llama", vocab_size=len(vocab), pad_token_id=0, bos_token_id=1, eos_token_id=2).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _cfg(model_dir, run_dir, *overrides, task="tiny-sentiment"):
    base = {"model": {"name": str(model_dir), "max_length": 16}, "task": {"name": task}, "run_dir": str(run_dir),
            "method": {"name": "ailora", "rank": 4},
            "train": {"lr": 3e-2, "epochs": 3, "batch_size": 8, "warmup_ratio": 0.1, "progress": False}}
    return RunConfig.from_dict(base, list(overrides))


def test_trains_and_writes_a_complete_record(bert_dir, tmp_path):
    res = train(_cfg(bert_dir, tmp_path / "run", "train.epochs=4"))
    losses = [e["train_loss"] for e in res["epochs"]]
    assert losses[-1] < losses[0] - 0.1
    assert res["validation"]["accuracy"] > 0.8 and res["test"]["accuracy"] > 0.8
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3, 4]
    assert set(lines[0]) >= {"epoch", "train_loss", "validation", "seconds"}
    saved = json.loads((run / "results.json").read_text())
    for key in ("config", "epochs", "test", "wall_seconds", "peak_memory", "parameters", "versions", "git", "seed"):
        assert key in saved, key
    assert 0 < saved["parameters"]["trainable"] < saved["parameters"]["total"]
    assert saved["versions"]["torch"] and saved["config"]["method"]["name"] == "ailora"
    assert json.loads((run / "config.json").read_text()) == saved["config"]
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    assert list((run / "tb").iterdir())
    # The adapter reproduces the trained model on the ORIGINAL base.
    import ailora
    from ailora.core.models import load_model

    base = load_model(bert_dir, kind="seq-cls", num_labels=2)
    loaded = ailora.load(base, run / "adapter")
    ids = torch.tensor([[101, 2204, 2143, 102]])
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["trainable"]
    trained = ailora.apply(load_model(bert_dir, kind="seq-cls", num_labels=2), method="ailora", rank=4)
    for name, p in trainable_parameters(trained).items():
        p.data.copy_(ckpt[name])
    trained.eval(), loaded.eval()
    assert torch.allclose(trained(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-4)


@pytest.mark.parametrize("grouped", [False, True], ids=["plain", "group_by_length"])
def test_resume_equals_uninterrupted(bert_dir, tmp_path, grouped):
    over = ["train.epochs=2", "train.grad_accum=2", "method.dropout=0.1", f"train.group_by_length={grouped}"]
    full = train(_cfg(bert_dir, tmp_path / "full", *over))
    part = train(_cfg(bert_dir, tmp_path / "part", *over, "train.stop_after_steps=7"))
    assert part["status"] == "interrupted" and not (tmp_path / "part" / "results.json").exists()
    with pytest.raises(AiloraError, match="already holds a run"):
        train(_cfg(bert_dir, tmp_path / "part", *over))
    resumed = train(_cfg(bert_dir, tmp_path / "part", *over, "resume=true"))
    assert resumed["resumed"] and resumed["steps"] == full["steps"]
    assert resumed["epochs"] == [{**e, "seconds": r["seconds"]} for e, r in zip(full["epochs"], resumed["epochs"])]
    assert resumed["test"] == full["test"]
    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "part" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Resuming a finished run is a no-op that returns its results.
    assert train(_cfg(bert_dir, tmp_path / "part", *over, "resume=true"))["test"] == full["test"]


def test_run_dir_guards(bert_dir, tmp_path):
    with pytest.raises(AiloraError, match="nothing to resume"):
        train(_cfg(bert_dir, tmp_path / "empty", "resume=true"))
    run = tmp_path / "run"
    train(_cfg(bert_dir, run, "train.epochs=1", "task.max_train_samples=16"))
    with pytest.raises(AiloraError, match="config differs in train.lr"):
        train(_cfg(bert_dir, run, "train.epochs=1", "task.max_train_samples=16", "train.lr=1e-3", "resume=true"))
    res = train(_cfg(bert_dir, run, "train.epochs=1", "task.max_train_samples=16", "overwrite=true"))
    assert res["status"] == "complete"


def test_config_errors(tmp_path):
    ok = {"task": {"name": "tiny-sentiment"}, "run_dir": str(tmp_path)}
    cases = [
        (["train.lrr=1"], "unknown config key train.lrr"),
        (["optim.lr=1"], "unknown config key optim.lr"),
        (["train.lr="], "train.lr must be a number"),
        (["train.lr=abc"], "train.lr must be a number"),
        (["train.epochs=1.5"], "train.epochs must be an integer"),
        (["train.lr=-1"], "train.lr must be positive"),
        (["method.name=nope"], "unknown method 'nope'"),
        (["task.name=nope"], "unknown task 'nope'"),
        (["train"], "not KEY=VALUE"),
        (["train=1"], "is a section"),
        (["train.select=worst"], "train.select must be one of"),
    ]
    for overrides, message in cases:
        with pytest.raises(AiloraError, match=message):
            check_run(RunConfig.from_dict(ok, overrides))
    with pytest.raises(AiloraError, match="train.lr must be a number"):
        RunConfig.from_dict({**ok, "train": {"lr": "3e-4"}})
    with pytest.raises(AiloraError, match="unknown config key train.rate"):
        RunConfig.from_dict({**ok, "train": {"rate": 1}})
    with pytest.raises(AiloraError, match="run_dir is empty"):
        RunConfig.from_dict({"task": {"name": "tiny-sentiment"}})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**ok, "train": {"lr": 1}}))
    cfg = load_config(path, ["method.targets=query,value", "method.alpha=none"])
    assert cfg.train.lr == 1.0 and cfg.method.options.targets == ["query", "value"] and cfg.method.options.alpha is None


def test_cli_parser_maps_flags_to_overrides(tmp_path):
    from ailora.cli.train import add_parser, build_config

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--task", "tiny-sentiment", "--lr", "3e-4", "--rank", "4", "--run-dir",
                              str(tmp_path), "--max-train-samples", "10", "--resume", "train.epochs=5"])
    cfg = build_config(args)
    assert (cfg.train.lr, cfg.method.options.rank, cfg.train.epochs, cfg.task.max_train_samples, cfg.resume) == (
        3e-4, 4, 5, 10, True)
    with pytest.raises(AiloraError, match="train.lr must be a number"):
        build_config(parser.parse_args(["train", "--task", "tiny-sentiment", "--lr", "", "--run-dir", "x"]))
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices["train"].format_help()
    assert "Base learning rate" in text and "train.warmup_ratio:" in text  # help from the field docstrings


def test_causal_lm_answer_only_loss(llama_dir, tmp_path):
    tok = T.AutoTokenizer.from_pretrained(llama_dir)
    plain = PromptFormat("", "")
    enc = encode_causal_lm(tok, [{"prompt": "1 2 3 =", "target": "3 2 1"}, {"prompt": "4 =", "target": "4"}], plain,
                           32, 16, False, 4)
    batch = collate(enc, tok.pad_token_id)
    first = batch["labels"][0].tolist()
    n_prompt = len(tok("1 2 3 =")["input_ids"])
    assert n_prompt >= 4 and first[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert first[n_prompt:] == tok("3 2 1", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert batch["labels"][1].tolist()[-1] == IGNORE_INDEX and batch["attention_mask"][1].tolist()[-1] == 0
    left = collate(encode_causal_lm(tok, [{"prompt": "1 =", "target": "1"}, {"prompt": "1 2 3 =", "target": "3"}],
                                    plain, 32, 16, True, 4), tok.pad_token_id, left=True)
    assert left["input_ids"][0, 0].item() == tok.pad_token_id and left["input_ids"][0, -1].item() == tok.vocab["="]
    res = train(_cfg(llama_dir, tmp_path / "lm", "method.name=lora", "train.lr=1e-2", "train.epochs=2",
                     "generation.max_new_tokens=4", task="tiny-reverse"))
    assert res["status"] == "complete" and "numeric_match" in res["test"]
    assert res["epochs"][-1]["train_loss"] < res["epochs"][0]["train_loss"]


@pytest.mark.slow
def test_minilm_ailora_movie_sentiment(tmp_path):
    # 1 epoch: 200 examples (25 steps) leave MiniLM's random head near chance, 400 (50 steps) do not.
    res = train(RunConfig.from_dict({
        "model": {"name": "minilm", "max_length": 64}, "run_dir": str(tmp_path / "run"),
        "task": {"name": "movie-sentiment", "max_train_samples": 400, "max_eval_samples": 200},
        "method": {"name": "ailora", "rank": 8}, "train": {"lr": 3e-3, "epochs": 1, "batch_size": 8, "progress": False}}))
    assert res["test"]["accuracy"] > 0.6
