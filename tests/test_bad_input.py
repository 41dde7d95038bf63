"""The bad-input battery: every subcommand, fed files these tests corrupt themselves, must answer
with its documented exit status and ONE line on stderr naming what is wrong (no traceback), and
write nothing: no output, no staging leftovers.

Exit statuses (``ailora.cli``): 0 ok, 2 a user's mistake, 1 an internal error, 130 interrupted.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ailora.cli import main
from tests.tiny_models import build, save_tiny, save_tiny_bert

STAGING = re.compile(r"^\..+\.(tmp|old)-")


def _write_csv(path: Path, n: int, labels: list[str], seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["text", "label"])
        w.writeheader()
        for i in range(n):
            y = labels[i % len(labels)]
            w.writerow({"text": f"the film was {rng.choice(['good', 'fine'] if y == 'pos' else ['bad', 'sad'])} {i}",
                        "label": y})


def _task(d: Path, name: str, test_labels: list[str]) -> Path:
    _write_csv(d / "train.csv", 32, ["neg", "pos"], 0)
    _write_csv(d / "validation.csv", 8, ["neg", "pos"], 1)
    _write_csv(d / f"{name}-test.csv", 8, test_labels, 2)
    spec = {"name": name, "kind": "classification", "train": "train.csv", "validation": "validation.csv",
            "test": f"{name}-test.csv"}
    (d / f"{name}.json").write_text(json.dumps(spec))
    return d / f"{name}.json"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_weights(d: Path, edit) -> Path:
    f = d / "model.safetensors"
    sd = load_file(f)
    edit(sd)
    save_file(sd, f, metadata={"format": "pt"})
    return d


def _truncate(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _peft_adapters(d: Path, bert: Path) -> dict[str, Path]:
    """Adapters saved by plain PEFT: a raw PiSSA one (trained on its residual base) with its initial
    adapter, and a plain one whose classifier (``modules_to_save``) tensors were dropped; copies whose
    config names a start PEFT cannot re-run on load (pissa_niter_4, corda) or a quantised one (loftq)."""
    import peft
    from transformers import BertForSequenceClassification

    base = BertForSequenceClassification.from_pretrained(bert)
    out = {}
    for start in ("pissa", True):
        cfg = peft.LoraConfig(r=2, lora_alpha=2, target_modules=["query", "value"], init_lora_weights=start,
                              modules_to_save=["classifier"])
        model = peft.get_peft_model(copy.deepcopy(base), cfg)
        model.save_pretrained(d / f"peft-{start}-initial")
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.1)
        model.save_pretrained(d / f"peft-{start}")
    out["peft_pissa"], out["peft_pissa_initial"] = d / "peft-pissa", d / "peft-pissa-initial"
    out["peft_nohead"] = _copy(d / "peft-True", d / "peft-nohead")
    f = out["peft_nohead"] / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(f).items() if "classifier" not in k}, f)
    for start in ("pissa_niter_4", "corda", "loftq"):
        out[f"peft_{start}"] = _copy(d / "peft-pissa", d / f"peft-{start}")
        cfg_file = out[f"peft_{start}"] / "adapter_config.json"
        loftq = {"loftq_config": {"loftq_bits": 4, "loftq_iter": 1}} if start == "loftq" else {}
        cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "init_lora_weights": start, **loftq}))
    return out


def _bad_tasks(d: Path) -> dict[str, Path]:
    """Task specs whose data files are broken in ways a reader must name (file and line)."""
    d.mkdir()
    good = "text,label\nthe film was good,pos\nthe film was bad,neg\nfine film,pos\nsad film,neg\n"
    files = {
        "extra": good + "good, really,pos\n",  # an unquoted comma: three fields under two columns
        "quote": good + '"an unclosed quote,pos\nbad,neg\n',  # would swallow every row after it
        "latin1": good.replace("fine film", "caf\xe9 film"),  # written below as latin-1: one stray byte
        "nan": "text,label\none,0.5\ntwo,1.5\nthree,nan\nfour,2.0\n",
    }
    out = {}
    for name, text in files.items():
        (d / f"{name}.csv").write_bytes(text.encode("latin-1" if name == "latin1" else "utf-8"))
        kind = "regression" if name == "nan" else "classification"
        spec = {"name": name, "kind": kind, "train": f"{name}.csv", "validation": f"{name}.csv", "test": f"{name}.csv"}
        (d / f"{name}.json").write_text(json.dumps(spec))
        out[f"task_{name}"] = d / f"{name}.json"
    (d / "listed.jsonl").write_text("".join(json.dumps({"text": t, "label": "pos"}) + "\n" for t in ("a", ["b"])))
    (d / "listed.json").write_text(json.dumps({"name": "listed", "kind": "classification", "path": "listed.jsonl",
                                               "label_names": ["neg", "pos"]}))
    out["task_listed"] = d / "listed.json"
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """Real files and their corrupted copies; keys are the placeholders of the battery's argv."""
    d = tmp_path_factory.mktemp("bad-input")
    bert = save_tiny("bert", d / "bert")
    trunc = _copy(bert, d / "trunc")
    _truncate(trunc / "model.safetensors")
    rnd = _copy(bert, d / "random")
    (rnd / "model.safetensors").write_bytes(random.Random(0).randbytes(4096))
    badjson = _copy(bert, d / "badjson")
    (badjson / "config.json").write_text("{not json")
    query = "bert.encoder.layer.0.attention.self.query.weight"
    missing = _rewrite_weights(_copy(bert, d / "missing"), lambda sd: sd.pop(query))
    shape = _rewrite_weights(_copy(bert, d / "shape"), lambda sd: sd.__setitem__(query, torch.zeros(32, 16)))
    pickle = save_tiny("bert", d / "pickle", safetensors=False)
    other = d / "other"  # another hidden size: an adapter of `bert` does not fit it
    build("bert", hidden_size=16, num_attention_heads=2, intermediate_size=24).save_pretrained(other)
    adapter = d / "adapter"
    assert main(["init", "--model", str(bert), "--out", str(adapter), "--rank", "2", "--quiet"]) == 0
    adapter_trunc = _copy(adapter, d / "adapter-trunc")
    _truncate(adapter_trunc / "adapter_model.safetensors")
    adapter_half = _copy(adapter, d / "adapter-half")  # one lora_B tensor gone
    f = adapter_half / "adapter_model.safetensors"
    sd = load_file(f)
    save_file({k: v for k, v in sd.items() if k != min(k for k in sd if ".lora_B." in k)}, f)
    adapter_badcfg = _copy(adapter, d / "adapter-badcfg")
    (adapter_badcfg / "adapter_config.json").write_text("[1, 2")
    tokbert = save_tiny_bert(d / "tokbert")
    tasks = d / "tasks"
    tasks.mkdir()
    a_file = d / "a-file"
    a_file.write_text("not a directory\n")
    notjson = d / "notjson.json"
    notjson.write_text("{\"model\": ")
    readonly = d / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    alias = _copy(adapter, d / "holder" / "ad")  # an input that outputs alias (a copy: a failure must not hurt others)
    (d / "ad-link").symlink_to(alias)
    (d / "loop").symlink_to(d / "loop")
    (d / "notutf8.json").write_bytes(b'{"model": "caf\xe9"}')
    extra = {**_peft_adapters(d, bert), **_bad_tasks(d / "bad-tasks"), "alias": alias, "alias_link": d / "ad-link",
             "loop": d / "loop", "tasks": tasks, "notutf8": d / "notutf8.json"}
    return {k: str(v) for k, v in extra.items()} | {k: str(v) for k, v in dict(
        bert=bert, trunc=trunc, random=rnd, badjson=badjson, missing=missing, shape=shape, pickle=pickle,
        other=other, adapter=adapter, adapter_trunc=adapter_trunc, adapter_badcfg=adapter_badcfg, adapter_half=adapter_half, tokbert=tokbert,
        task=_task(tasks, "ok", ["neg", "pos"]), unseen=_task(tasks, "unseen", ["neg", "pos", "weird"]),
        file=a_file, notjson=notjson, readonly=readonly, nosweep=d).items()}


TRAIN = ["train", "--model", "{tokbert}", "--task", "{task}", "--run-dir", "{out}", "--epochs", "1", "--no-progress"]
SWEEP = ["sweep", "--model", "{tokbert}", "--tasks", "{task}", "--methods", "lora", "--lrs", "1e-3", "--no-progress"]
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes into a chmod 555 directory anyway

# (argv, exit status, words the one line must contain); {out} is a fresh path under the test's tmp dir.
BATTERY = [
    # init: unreadable models, bad patterns and numbers, outputs that cannot be written
    (["init", "--model", "{trunc}", "--out", "{out}"], 2, ["{trunc}", "cannot load its weights"]),
    (["init", "--model", "{random}", "--out", "{out}"], 2, ["{random}", "cannot load its weights"]),
    (["init", "--model", "{badjson}", "--out", "{out}"], 2, ["config.json cannot be read"]),
    (["init", "--model", "{missing}", "--out", "{out}"], 2, ["lacks", "layer.0.attention.self.query.weight"]),
    (["init", "--model", "{shape}", "--out", "{out}"], 2, ["query.weight has shape (32, 16)", "(32, 32)"]),
    (["init", "--model", "{pickle}", "--out", "{out}"], 2, ["pickle checkpoints are refused"]),
    (["init", "--model", "{bert}", "--out", "{out}", "--modules", "query=("], 2, ["not a valid regular expression"]),
    (["init", "--model", "{bert}", "--out", "{file}/x"], 2, ["{file} is a file"]),
    (["init", "--model", "{bert}", "--out", "{readonly}/x"], 2, ["cannot be written", "{readonly}"]),
    (["init", "--model", "{bert}", "--out", "{out}", "--alpha", "inf"], 2, ["--alpha", "finite"]),
    (["init", "--model", "{bert}", "--out", "{out}", "--rank", "0"], 2, ["--rank", "positive"]),
    (["init", "--model", "{out}/none", "--out", "{out}"], 2, ["does not exist"]),
    # train: numbers that are not finite, broken inputs, a label the training split lacks
    ([*TRAIN, "--lr", "inf"], 2, ["train.lr", "finite"]),
    ([*TRAIN, "train.max_grad_norm=nan"], 2, ["train.max_grad_norm", "finite"]),
    ([*TRAIN, "method.dropout=nan"], 2, ["method.dropout", "finite"]),
    ([*TRAIN[:4], "{unseen}", *TRAIN[5:]], 2, ["label 'weird'", "unseen-test.csv", "['neg', 'pos']"]),
    (["train", "--model", "{trunc}", "--task", "{task}", "--run-dir", "{out}"], 2, ["cannot load its weights"]),
    (["train", "--model", "{badjson}", "--task", "{task}", "--run-dir", "{out}"], 2,
     ["{badjson}/config.json", "not a valid JSON"]),
    ([*TRAIN[:5], "--run-dir", "{file}/run"], 2, ["{file} is a file"]),
    ([*TRAIN[:5], "--run-dir", "{file}"], 2, ["run directory", "is a file"]),
    ([*TRAIN, "train.lrr=1"], 2, ["unknown config key train.lrr"]),
    ([*TRAIN, "train.seed=-1"], 2, ["train.seed must be in [0, 2^32)"]),
    ([*TRAIN, "generation.num_beams=4"], 2, ["generation.num_beams=4 does nothing here", "is classification"]),
    ([*TRAIN, "qa.doc_stride=64"], 2, ["qa.doc_stride=64 does nothing here", "extractive_qa"]),
    ([*TRAIN, "progressive.order=grad-norm"], 2, ["does nothing with Progtuning off"]),
    ([*TRAIN, "train.seed=4294967296"], 2, ["train.seed must be in [0, 2^32)"]),
    (["train", "--config", "{notjson}", "--run-dir", "{out}"], 2, ["not valid JSON"]),
    (["train", "--epochs", "x", "--run-dir", "{out}"], 2, ["train.epochs", "integer"]),
    # convert
    (["convert", "--adapter", "{adapter}", "--rank", "1", "--out", "{file}/x"], 2, ["{file} is a file"]),
    (["convert", "--adapter", "{adapter_trunc}", "--rank", "1", "--out", "{out}"], 2, ["cannot read adapter weights"]),
    (["convert", "--adapter", "{adapter_badcfg}", "--rank", "1", "--out", "{out}"], 2, ["not a LoRA adapter config"]),
    (["convert", "--adapter", "{adapter}", "--rank", "1", "--base", "{trunc}", "--out", "{out}"], 2,
     ["cannot load its weights"]),
    # merge
    (["merge", "--base", "{bert}", "--adapter", "{adapter}", "--out", "{file}/x"], 2, ["{file} is a file"]),
    (["merge", "--base", "{trunc}", "--adapter", "{adapter}", "--out", "{out}"], 2, ["cannot load its weights"]),
    (["merge", "--base", "{other}", "--adapter", "{adapter}", "--out", "{out}"], 2, ["has shape", "expected"]),
    (["merge", "--base", "{bert}", "--adapter", "{adapter_trunc}", "--out", "{out}"], 2,
     ["cannot read adapter weights"]),
    (["merge", "--base", "{bert}", "--adapter", "{adapter_half}", "--out", "{out}"], 2, ["lacks the lora_B tensor"]),
    (["convert", "--adapter", "{adapter_half}", "--rank", "1", "--out", "{out}"], 2, ["lacks the lora_B tensor"]),
    # extract, analyze, report, ls
    (["extract", "--base", "{bert}", "--finetuned", "{bert}", "--rank", "2", "--out", "{file}/x"], 2,
     ["{file} is a file"]),
    (["extract", "--base", "{bert}", "--finetuned", "{trunc}", "--rank", "2", "--out", "{out}"], 2,
     ["cannot load its weights"]),
    (["analyze", "norms", "--base", "{bert}", "--finetuned", "{bert}", "--out", "{file}/x"], 2, ["{file} is a file"]),
    (["analyze", "spectrum", "--model", "{random}", "--rank", "2", "--out", "{out}"], 2,
     ["cannot load its weights"]),
    (["report", "{nosweep}", "--out", "{out}"], 2, ["sweep.json does not exist"]),
    (["ls", "bogus"], 2, ["invalid choice"]),
    # sweep and demo: the sweep directory, the grid, the shared options
    ([*SWEEP, "--dir", "{file}/x"], 2, ["{file} is a file"]),
    ([*SWEEP, "--dir", "{file}"], 2, ["sweep directory", "is a file"]),
    ([*SWEEP[:-2], "nan", "--dir", "{out}"], 2, ["lrs must be a list of positive numbers"]),
    ([*SWEEP, "--dir", "{out}", "train.max_grad_norm=inf"], 2, ["train.max_grad_norm", "finite"]),
    (["sweep", "--spec", "{notjson}", "--dir", "{out}"], 2, ["not valid JSON"]),
    (["demo", "--dir", "{file}/x"], 2, ["{file} is a file"]),
    # foreign PEFT adapters: a start PEFT re-runs on load needs --initial; a dropped head is named
    (["convert", "--adapter", "{peft_pissa}", "--out", "{out}"], 2,
     ["init_lora_weights='pissa'", "residual base", "--initial"]),
    (["convert", "--adapter", "{peft_pissa}", "--rank", "1", "--out", "{out}"], 2, ["'pissa'", "--initial"]),
    (["convert", "--adapter", "{peft_corda}", "--rank", "1", "--out", "{out}"], 2, ["'corda'", "--initial"]),
    (["convert", "--adapter", "{peft_loftq}", "--initial", "{peft_pissa_initial}", "--out", "{out}"], 2,
     ["quantised base", "'loftq'"]),
    (["convert", "--adapter", "{adapter}", "--out", "{out}"], 2, ["plain LoRA on the original base already", "--rank"]),
    (["convert", "--adapter", "{peft_nohead}", "--rank", "1", "--out", "{out}"], 2,
     ["no tensors for classifier", "modules_to_save"]),
    (["merge", "--base", "{bert}", "--adapter", "{peft_pissa_niter_4}", "--out", "{out}"], 2,
     ["'pissa_niter_4'", "cannot rebuild exactly"]),
    (["merge", "--base", "{bert}", "--adapter", "{peft_nohead}", "--out", "{out}"], 2, ["no tensors for classifier"]),
    # task files: structure, encoding, non-finite values, each named with its file and line
    ([*TRAIN[:4], "{task_extra}", *TRAIN[5:]], 2, ["extra.csv line 6", "3 fields but 2 columns"]),
    ([*TRAIN[:4], "{task_quote}", *TRAIN[5:]], 2, ["quote.csv line 6", "malformed CSV"]),
    ([*TRAIN[:4], "{task_latin1}", *TRAIN[5:]], 2, ["latin1.csv line 4", "not valid UTF-8", "0xe9"]),
    ([*TRAIN[:4], "{task_nan}", *TRAIN[5:]], 2, ["nan.csv line 4", "label nan is not a finite number"]),
    ([*TRAIN[:4], "{task_listed}", *TRAIN[5:]], 2, ["listed.jsonl line 2", "field 'text' is a JSON list"]),
    (["train", "--config", "{notutf8}", "--run-dir", "{out}"], 2, ["{notutf8}", "not valid JSON"]),
    (["sweep", "--spec", "{notutf8}", "--dir", "{out}"], 2, ["{notutf8}", "not valid JSON"]),
    # outputs that are, hold or lie inside an input (any spelling, links resolved), or a link loop
    (["convert", "--adapter", "{alias}", "--rank", "1", "--out", "{alias}", "--overwrite"], 2,
     ["--out {alias} is the input {alias} (--adapter)"]),
    (["convert", "--adapter", "{alias}", "--rank", "1", "--out", "{alias}/..", "--overwrite"], 2, ["holds the input"]),
    (["convert", "--adapter", "{alias}", "--rank", "1", "--out", "{alias}/sub"], 2, ["lies inside the input"]),
    (["convert", "--adapter", "{alias_link}", "--rank", "1", "--out", "{alias}", "--overwrite"], 2, ["is the input"]),
    (["merge", "--base", "{bert}", "--adapter", "{alias}", "--out", "{bert}", "--overwrite"], 2,
     ["is the input {bert} (--base)"]),
    (["init", "--model", "{bert}", "--out", "{bert}/..", "--overwrite"], 2, ["holds the input {bert} (--model)"]),
    ([*TRAIN[:5], "--run-dir", "{tasks}", "--overwrite"], 2, ["--run-dir {tasks} holds the input"]),
    ([*SWEEP, "--dir", "{tasks}", "--overwrite"], 2, ["--dir {tasks} holds the input"]),
    ([*SWEEP, "--dir", "{loop}"], 2, ["--dir {loop} is a loop of symbolic links"]),
    ([*TRAIN[:5], "--run-dir", "{loop}/run"], 2, ["is a loop of symbolic links"]),
    (["init", "--model", "{bert}", "--out", "{loop}"], 2, ["is a loop of symbolic links"]),
    # "merge onto a base whose task head has another size" is not an error: merge and convert take the
    # head from the adapter (tests/test_serving.py::test_merge_onto_a_base_whose_head_size_differs).
]


def _id(row) -> str:
    return "-".join(a.strip("{}-").split("/")[0] for a in row[0][:3] + row[0][-2:])[:60]


@pytest.mark.parametrize("argv, status, words", BATTERY, ids=[_id(r) for r in BATTERY])
def test_battery(argv, status, words, world, tmp_path, capsys):
    if "{readonly}" in " ".join(argv) and ROOT:
        pytest.skip("root can write into a read-only directory")
    names = {**world, "out": str(tmp_path / "out")}
    before = sorted(p.name for p in tmp_path.iterdir())
    code = _run([a.format(**names) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == status, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w.format(**names) in lines[0], (w, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no staging entry
    assert not [p for p in Path(world["file"]).parent.rglob("*") if STAGING.match(p.name)]


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors exit through SystemExit
        return int(exc.code)


def test_proc_is_not_writable(world, tmp_path, capsys):
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    assert main(["init", "--model", world["bert"], "--out", "/proc/ailora-out"]) == 2
    assert "cannot be written" in capsys.readouterr().err


def test_internal_error_is_one_line_and_debug_shows_it(monkeypatch, capsys):
    import ailora.cli.ls as ls

    def broken(args):
        raise RuntimeError("something inside\nsecond line")

    monkeypatch.setattr(ls, "run", broken)
    monkeypatch.delenv("AILORA_DEBUG", raising=False)
    assert main(["ls"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("internal error: RuntimeError: something inside (rerun with --debug or AILORA_DEBUG=1 "
                           "for the traceback)")
    with pytest.raises(RuntimeError, match="something inside"):
        main(["--debug", "ls"])
    monkeypatch.setenv("AILORA_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["ls"])


def test_interrupt_says_how_to_resume(monkeypatch, capsys):
    import ailora.cli.train as cli_train

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "build_config", interrupted)
    assert main(["train", "--run-dir", "x"]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted;") and "--resume" in err and len(err.splitlines()) == 1


# Runs that go wrong are recorded as failed; interrupted saves leave nothing behind.


def _cfg(world, run_dir, *overrides):
    from ailora.train import RunConfig

    base = {"model": {"name": world["tokbert"], "max_length": 16}, "task": {"name": world["task"]},
            "method": {"name": "lora", "rank": 2}, "run_dir": str(run_dir),
            "train": {"lr": 1e-3, "epochs": 2, "batch_size": 8, "progress": False, "tensorboard": False}}
    return RunConfig.from_dict(base, list(overrides))


def _staging(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if STAGING.match(p.name)]


def test_non_finite_loss_fails_the_run_and_keeps_the_last_good_checkpoint(world, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model", world["tokbert"], "--task", world["task"], "--run-dir", str(run), "--lr", "1e20",
            "--no-progress", "train.max_grad_norm=0", "train.save_every_steps=1", "method.name=lora",
            "model.max_length=16", "train.batch_size=8", "train.tensorboard=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not finite" in err[0] and "step" in err[0], err
    failed = json.loads((run / "failed.json").read_text())
    assert failed["status"] == "failed" and f"step {failed['step']}" in err[0]
    assert failed["last_checkpoint"] == "checkpoints/last.pt" and not (run / "results.json").exists()
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert 1 <= ckpt["loop"]["step"] < failed["step"]
    assert all(torch.isfinite(t).all() for t in ckpt["trainable"].values())
    assert not _staging(tmp_path)


def test_sweep_records_a_failed_run_and_goes_on(world, tmp_path):
    from ailora.experiments.sweep import SweepSpec, prepare_sweep_dir, run_sweep

    spec = SweepSpec.from_dict({
        "model": world["tokbert"], "tasks": [world["task"]], "seeds": [0],
        "methods": [{"method": "lora", "lrs": [1e20, 1e-3]}],
        "options": {"train.max_grad_norm": 0, "train.epochs": 1, "model.max_length": 16, "method.rank": 2,
                    "train.batch_size": 8, "train.progress": False, "train.tensorboard": False}})
    where = tmp_path / "sweep"
    prepare_sweep_dir(spec, where)
    restarted = where / "ok" / "lora" / "lr0.001" / "seed0"
    restarted.mkdir(parents=True)
    (restarted / "init_hashes.json").write_text("[]")  # a run killed before its first checkpoint
    lines: list[str] = []
    summary = run_sweep(spec, where, log=lines.append)
    assert summary["runs"] == {"planned": 2, "complete": 1, "failed": ["ok/lora/lr1e+20/seed0"]}
    assert any("failed: the training loss is not finite" in x for x in lines)
    assert summary["tasks"][world["task"]]["methods"]["lora"]["selected_lr"] == 1e-3
    # The restarted run records what an uninterrupted one would: no "overwrite": true.
    assert json.loads((restarted / "config.json").read_text())["overwrite"] is False
    lines.clear()
    run_sweep(spec, where, log=lines.append)
    assert lines == ["[1/2] ok/lora/lr1e+20/seed0: failed before", "[2/2] ok/lora/lr0.001/seed0: done before"]


def test_resume_removes_interrupted_saves_adds_wall_time_and_records_the_same(world, tmp_path):
    from ailora.train import train

    full = train(_cfg(world, tmp_path / "full"))
    part = tmp_path / "part"
    assert train(_cfg(world, part, "train.stop_after_steps=3"))["status"] == "interrupted"
    # What a SIGKILL during a save leaves: a temporary checkpoint file and a temporary adapter directory.
    (part / "checkpoints" / ".last.pt.tmp-k1ll3d").write_bytes(b"half a checkpoint")
    (part / ".adapter.tmp-k1ll3d").mkdir()
    (part / ".adapter.tmp-k1ll3d" / "adapter_model.safetensors").write_bytes(b"half")
    (part / ".results.json.tmp-k1ll3d").write_text("{")
    before = torch.load(part / "checkpoints" / "last.pt", weights_only=True)["loop"]["wall_seconds"]
    assert before > 0
    resumed = train(_cfg(world, part, "resume=true"))
    assert not _staging(tmp_path)
    assert resumed["wall_seconds"] > before  # the first process's time counts too
    assert full["task"]["label_names"] == resumed["task"]["label_names"] == ["neg", "pos"]
    timings = {"wall_seconds", "train_seconds", "peak_memory", "git", "resumed", "epochs", "progressive"}

    def same(r):
        return {k: v for k, v in r.items() if k not in timings} | {"config": {**r["config"], "run_dir": ""}}

    assert same(resumed) == same(full)
    assert [{**e, "seconds": 0} for e in resumed["epochs"]] == [{**e, "seconds": 0} for e in full["epochs"]]
    config = {**json.loads((part / "config.json").read_text()), "run_dir": ""}
    assert config == {**json.loads((tmp_path / "full" / "config.json").read_text()), "run_dir": ""}


def test_convert_checks_a_sequence_classification_adapter_against_its_base(world, tmp_path, capsys):
    """An adapter trained with a task head (saved in full) converts with --base: no traceback, checked."""
    from ailora.train import train

    train(_cfg(world, tmp_path / "run", "train.epochs=1"))
    out = tmp_path / "plain"
    assert main(["convert", "--adapter", str(tmp_path / "run" / "adapter"), "--rank", "1", "--base",
                 world["tokbert"], "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "convert_report.json").read_text())["check"]["passed"]


def test_rerun_removes_what_a_killed_write_left(world, tmp_path):
    out = tmp_path / "adapter"
    (tmp_path / ".adapter.tmp-k1ll3d").mkdir()
    (tmp_path / ".adapter.tmp-k1ll3d" / "adapter_config.json").write_text("{")
    (tmp_path / ".adapter.old-k1ll3d").mkdir()
    assert main(["init", "--model", world["bert"], "--out", str(out), "--rank", "2", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
