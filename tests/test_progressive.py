"""Progtuning: which parameters each stage updates, no backward below the lowest active block,
resume mid-stage, the pilot's scores, the saving against a run without it. Tiny models, seconds."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import ailora
from ailora.errors import AiloraError
from ailora.methods import METHODS, get_method
from ailora.train import RunConfig, train
from ailora.train import progressive as prog
from ailora.train.config import MethodConfig
from ailora.train.runrecord import RunRecord, TaskInfo, from_train
from tests import test_train  # noqa: F401  (registers the tiny-sentiment task)
from tests.records import make_record
from tests.tiny_models import build, save_tiny_bert, tiny

LORA_FAMILY = ("lora", "ailora", "pissa", "milora")
# Baselines may be registered under one of these names (skipped while none is).
BASELINES = {"full": ("full", "full-ft", "full_ft", "fft"), "bitfit": ("bitfit",),
             "adapters": ("houlsby", "adapter", "adapters", "houlsby-adapter")}


def _bert4():
    """A dropout-free 4-layer BERT classifier (two labels)."""
    return build("bert", num_hidden_layers=4, dropout=False)


def _llama4():
    return build("llama", num_hidden_layers=4)


def _gpt2_4():
    return build("gpt2", n_layer=4, dropout=False)


def _loss(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 96, (4, 10), generator=g)
    labels = ids if model.config.model_type in ("llama", "gpt2") else torch.tensor([0, 1, 1, 0])
    return model(input_ids=ids, labels=labels).loss


def _lora(model, method):
    model = ailora.apply(model, method=method, rank=2, seed=0)
    with torch.no_grad():  # B = 0 would leave A's gradient exactly zero at the start
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    return model


def _check_every_stage(model, schedule: prog.Schedule):
    """At each stage exactly the active parameters get non-zero gradients and change; others stay bit-identical."""
    opt = torch.optim.AdamW(list(schedule.params.values()), lr=1e-2, weight_decay=0.1)
    for stage in range(schedule.stages):
        schedule.enter(stage)
        before = {n: p.detach().clone() for n, p in schedule.params.items()}
        _loss(model, stage).backward()
        active = schedule.active(stage)
        got = {n for n, p in schedule.params.items() if p.grad is not None and p.grad.abs().sum() > 0}
        assert got == active, (stage, sorted(got ^ active)[:5])
        opt.step()
        opt.zero_grad(set_to_none=True)
        changed = {n for n, p in schedule.params.items() if not torch.equal(p, before[n])}
        assert changed == active, (stage, sorted(changed ^ active)[:5])
    schedule.close()
    assert all(p.requires_grad for p in schedule.params.values()) and not schedule._hooks


# The schedule on models built in code.


def test_split_parts_and_stage_of():
    assert prog.split_parts(range(6), 4, "top") == [[0], [1], [2, 3], [4, 5]]
    assert prog.split_parts(range(6), 4, "bottom") == [[0, 1], [2, 3], [4], [5]]
    assert prog.split_parts([3, 0, 2, 1], 2) == [[3, 0], [2, 1]]
    with pytest.raises(AiloraError, match="cannot split 2 blocks into 3"):
        prog.split_parts(range(2), 3)
    assert [prog.stage_of(e, 0, 3, 3, 30) for e in range(3)] == [0, 1, 2]
    assert [prog.stage_of(e, 0, 3, 5, 50) for e in range(5)] == [0, 0, 1, 1, 2]
    assert [prog.stage_of(0, s, 3, 1, 9, "steps") for s in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert prog.stage_of(4, 40, 0, 5, 50) == 0


@pytest.mark.parametrize("arch,path", [
    ("bert", "bert.encoder.layer"), ("roberta", "roberta.encoder.layer"), ("deberta-v2", "deberta.encoder.layer"),
    ("distilbert", "distilbert.transformer.layer"), ("llama", "model.layers"), ("gpt2", "transformer.h"),
    ("phi3", "model.layers")])
def test_find_blocks(arch, path):
    model = tiny(arch)
    assert prog.find_blocks(model) == prog.Blocks(path, 2)
    wrapped = ailora.apply(model, method="lora", rank=2)
    blocks = prog.find_blocks(wrapped)
    assert blocks == prog.Blocks(f"base_model.model.{path}", 2)
    assert blocks.index_of(f"{blocks.path}.1.x.lora_A.default.weight") == 1 and blocks.index_of("score.weight") is None


@pytest.mark.parametrize("arch,enc,dec", [("bart", "model.encoder.layers", "model.decoder.layers"),
                                          ("t5", "encoder.block", "decoder.block")])
def test_encoder_decoder_stages_encoder_then_decoder(arch, enc, dec):
    model = ailora.apply(tiny(arch), method="lora", rank=2)
    blocks = prog.find_blocks(model)
    enc, dec = f"base_model.model.{enc}", f"base_model.model.{dec}"
    assert blocks.path == f"{enc}+{dec}" and blocks.count == 4
    assert blocks.index_of(f"{enc}.1.x") == 1 and blocks.index_of(f"{dec}.0.x") == 2
    schedule = prog.Schedule(model, 2)
    assert schedule.parts == [[0, 1], [2, 3]]
    schedule.enter(1)  # the encoder is frozen: only decoder adapters train, and backward still runs
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(f"{dec}." in n for n in trained)
    ids = torch.tensor([[5, 6, 7, 2]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trained)


@pytest.mark.parametrize("method", LORA_FAMILY)
@pytest.mark.parametrize("make", [_bert4, _llama4], ids=["encoder", "decoder"])
def test_each_stage_updates_exactly_its_parameters(method, make):
    model = _lora(make(), method)
    schedule = prog.Schedule(model, 3)
    assert schedule.parts == [[0], [1], [2, 3]]
    head = {n for n, w in schedule.where.items() if w == "head"}
    assert (head != set()) == (make is _bert4)  # the classifier; a causal LM's lm_head stays frozen
    assert all(w != "embeddings" for w in schedule.where.values())
    _check_every_stage(model, schedule)


@pytest.mark.parametrize("embeddings", prog.EMBEDDINGS)
def test_full_fine_tuning_embeddings_option(embeddings):
    model = _bert4()  # every parameter trainable, as in full fine-tuning
    schedule = prog.Schedule(model, 2, embeddings=embeddings, remainder="bottom")
    assert schedule.parts == [[0, 1], [2, 3]]
    emb = {n for n, w in schedule.where.items() if w == "embeddings"}
    assert "bert.embeddings.word_embeddings.weight" in emb
    assert "classifier.weight" in schedule.active(1) and "bert.pooler.dense.weight" in schedule.active(1)
    assert (emb <= schedule.active(0)) == (embeddings != "frozen")
    assert (emb <= schedule.active(1)) == (embeddings == "always")
    _check_every_stage(model, schedule)


def _blocks_module(model):
    return model.get_submodule(prog.find_blocks(model).path)


def _graph_size(loss) -> int:
    seen, todo = set(), [loss.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            todo.extend(f for f, _ in fn.next_functions)
    return len(seen)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("method", ["ailora", "full"])
def test_no_backward_below_the_lowest_active_block(method):
    model = _lora(_bert4(), method) if method != "full" else _bert4()
    schedule = prog.Schedule(model, 4)
    calls, needs_grad = [0] * 4, [None] * 4
    for i, block in enumerate(_blocks_module(model)):
        block.register_full_backward_hook(lambda m, gi, go, i=i: calls.__setitem__(i, calls[i] + 1))
        block.register_forward_hook(lambda m, a, out, i=i: needs_grad.__setitem__(i, out[0].requires_grad))
    sizes = []
    for stage in range(4):
        calls[:] = [0] * 4
        schedule.enter(stage)
        loss = _loss(model)
        sizes.append(_graph_size(loss))
        loss.backward()
        assert calls == [0] * stage + [1] * (4 - stage), (stage, calls)
        assert needs_grad == [False] * stage + [True] * (4 - stage)
        model.zero_grad(set_to_none=True)
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4  # the backward graph shrinks every stage
    # Embeddings trained throughout (full FT only: LoRA trains none) need a backward through every block.
    schedule.close()
    schedule = prog.Schedule(model, 4, embeddings="always")
    schedule.enter(3)
    calls[:] = [0] * 4
    _loss(model).backward()
    assert calls == ([1] * 4 if method == "full" else [0, 0, 0, 1])


@pytest.mark.parametrize("kind", list(BASELINES))
def test_baseline_methods(kind):
    name = next((n for n in BASELINES[kind] if n in METHODS), None)
    if name is None:
        pytest.skip(f"no {kind} method registered yet (looked for {', '.join(BASELINES[kind])})")
    for make in (_bert4, _gpt2_4):  # a decoder with biases, for BitFit
        model = get_method(name).prepare(make(), MethodConfig(name=name), 0).model
        _check_every_stage(model, prog.Schedule(model, 3))


def test_order_from_scores_and_custom_order():
    assert prog.order_from_scores([0.5, 0.1, 0.3, 0.1]) == [1, 3, 2, 0]
    model = _lora(_bert4(), "ailora")
    schedule = prog.Schedule(model, 2, order=[3, 1, 0, 2])
    assert schedule.parts == [[3, 1], [0, 2]] and schedule.active_blocks(1) == [0, 2]
    _check_every_stage(model, schedule)
    with pytest.raises(AiloraError, match="block order"):
        prog.Schedule(model, 2, order=[0, 1, 2])


def test_savings_of_two_records():
    task = TaskInfo("t", "classification", ("accuracy",), "accuracy", {}, None)
    config = {"method": {"name": "ailora"}, "train": {"lr": 1.0, "seed": 0}, "progressive": {"stages": 0}}
    base = make_record({**config, "run_dir": "a"}, task, {}, {"accuracy": 0.9}, updated_parameters=1000,
                       train_seconds=10.0, wall_seconds=20.0)
    run = make_record({**config, "progressive": {"stages": 3}, "run_dir": "b"}, task, {}, {"accuracy": 0.85},
                      updated_parameters=600, train_seconds=7.5, wall_seconds=18.0)
    out = prog.savings(run, base)
    assert out["updated_parameter_saving"] == pytest.approx(0.4) and out["train_time_saving"] == pytest.approx(0.25)
    assert out["wall_time_saving"] == pytest.approx(0.1) and out["test_delta"] == pytest.approx(-0.05)
    assert out["differs_in"] == []
    # A record from before Progtuning has neither count: every step updated every trainable parameter.
    data = base.to_json()
    for key in ("updated_parameters", "train_seconds", "progressive"):
        del data[key]
    data["config"] = {**config, "train": {"lr": 2.0, "seed": 0}}
    old = RunRecord.from_json({**data, "parameters": {"trainable": 100, "total": 1000, "trainable_percent": 10.0},
                               "steps": 20}, "old")
    out = prog.savings(run, old)
    assert out["baseline_updated_parameters"] == 2000 and out["train_time_saving"] is None
    assert out["differs_in"] == ["train.lr"]


# Through the training loop.


@pytest.fixture(scope="module")
def bert4_dir(tmp_path_factory):
    """A 4-layer hidden-32 BERT (dropout on) with the MiniLM tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert4"), 4)


def _cfg(model_dir, run_dir, *overrides):
    base = {"model": {"name": str(model_dir), "max_length": 16}, "task": {"name": "tiny-sentiment"},
            "run_dir": str(run_dir), "method": {"name": "ailora", "rank": 4},
            "train": {"lr": 3e-2, "epochs": 3, "batch_size": 16, "warmup_ratio": 0.1, "progress": False,
                      "tensorboard": False}, "progressive": {"stages": 3}}
    return RunConfig.from_dict(base, list(overrides))


def _ckpt(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["trainable"]


def _changed_blocks(a: dict, b: dict, path: str) -> set:
    blocks = prog.Blocks(path, 4)
    return {blocks.index_of(n) if blocks.index_of(n) is not None else "head" for n in a if not torch.equal(a[n], b[n])}


def test_run_follows_the_schedule_and_resumes_mid_stage(bert4_dir, tmp_path):
    over = ["method.dropout=0.1", "progressive.reset_optimizer=true"]
    full = train(_cfg(bert4_dir, tmp_path / "full", *over))
    per_stage = full["progressive"]["per_stage"]
    spe = per_stage[0]["steps"]
    assert [s["steps"] for s in per_stage] == [spe] * 3 and [s["blocks"] for s in per_stage] == [
        [0, 1, 2, 3], [1, 2, 3], [2, 3]]
    assert full["updated_parameters"] == sum(s["active_parameters"] * s["steps"] for s in per_stage)
    assert full["updated_parameters"] < full["parameters"]["trainable"] * full["steps"]
    assert full["train_seconds"] > 0 and all(s["seconds"] > 0 for s in per_stage)

    run, snaps = tmp_path / "part", {}
    for stop in (spe, spe + 2, 2 * spe):  # end of stage 1, inside stage 2, end of stage 2
        res = train(_cfg(bert4_dir, run, *over, f"train.stop_after_steps={stop}", f"resume={stop != spe}"))
        assert res["status"] == "interrupted"
        snaps[stop] = _ckpt(run)
    resumed = train(_cfg(bert4_dir, run, *over, "resume=true"))
    path = "base_model.model.bert.encoder.layer"
    assert _changed_blocks(snaps[spe], snaps[spe + 2], path) == {1, 2, 3, "head"}
    assert _changed_blocks(snaps[spe + 2], snaps[2 * spe], path) == {1, 2, 3, "head"}
    assert _changed_blocks(snaps[2 * spe], _ckpt(run), path) == {2, 3, "head"}
    assert resumed["resumed"] and resumed["test"] == full["test"]
    strip = [{k: v for k, v in s.items() if k != "seconds"} for s in per_stage]
    assert [{k: v for k, v in s.items() if k != "seconds"} for s in resumed["progressive"]["per_stage"]] == strip
    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(run / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The whole trainable set is saved and counted, not the last stage's.
    assert resumed["parameters"]["trainable"] == full["parameters"]["trainable"]


def test_pilot_scores_are_recorded_and_order_the_blocks(bert4_dir, tmp_path):
    over = ["progressive.order=grad-norm", "progressive.pilot_batches=2", "train.epochs=2",
            "progressive.stages=2", "task.max_train_samples=48"]
    res = train(_cfg(bert4_dir, tmp_path / "run", *over))
    p = res["progressive"]
    scores = p["pilot"]["scores"]
    assert p["pilot"]["method"] == "grad-norm" and p["pilot"]["batches"] == 2
    assert len(scores) == 4 and all(s > 0 for s in scores)
    assert p["order"] == prog.order_from_scores(scores) and p["parts"] == [p["order"][:2], p["order"][2:]]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["progressive"]["pilot"]["scores"] == scores
    # A resumed run reuses the start-weight scores instead of scoring its trained weights.
    shutil.rmtree(tmp_path / "run")
    train(_cfg(bert4_dir, tmp_path / "run", *over, "train.stop_after_steps=4"))
    resumed = train(_cfg(bert4_dir, tmp_path / "run", *over, "resume=true"))
    assert resumed["progressive"]["pilot"]["scores"] == scores


def test_savings_against_the_same_run_without_progtuning(bert4_dir, tmp_path):
    over = ["train.epochs=2", "progressive.boundary=steps", "task.max_train_samples=64"]  # 8 steps
    base = train(_cfg(bert4_dir, tmp_path / "base", *over, "progressive.stages=0"))
    run = train(_cfg(bert4_dir, tmp_path / "prog", *over, "progressive.stages=4"))
    assert base["progressive"] is None and base["updated_parameters"] == base["parameters"]["trainable"] * base["steps"]
    out = prog.savings(from_train(run), from_train(base))
    blocks = run["progressive"]["trainable_parameters"]["blocks"]
    assert len(set(blocks)) == 1  # 4 equal blocks, each frozen for 0..3 quarters of the steps
    assert out["updated_parameter_saving"] == pytest.approx(blocks[0] * 6 / 4 / base["parameters"]["trainable"])
    assert out["differs_in"] == [] and out["main_metric"] == "accuracy" and out["train_time_saving"] is not None


def test_config_and_cli(tmp_path):
    ok = {"task": {"name": "tiny-sentiment"}, "run_dir": str(tmp_path)}
    for overrides, message in [
        (["progressive.stages=4"], r"progressive.stages \(4\) exceeds train.epochs \(3\)"),
        (["progressive.stages=-1"], "must be >= 0"),
        (["progressive.order=random"], "progressive.order must be one of depth, grad-norm"),
        (["progressive.embeddings=yes"], "progressive.embeddings must be one of"),
        (["progressive.remainder=middle"], "progressive.remainder must be one of"),
    ]:
        with pytest.raises(AiloraError, match=message):
            RunConfig.from_dict(ok, overrides)
    cfg = RunConfig.from_dict(ok, ["progressive.stages=4", "progressive.boundary=steps"])
    assert cfg.progressive.stages == 4
    from ailora.cli.train import add_parser, build_config

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--task", "tiny-sentiment", "--run-dir", str(tmp_path),
                              "--progressive-stages", "3"])
    assert build_config(args).progressive.stages == 3
