"""Faults a demanding user meets (issue 20): a failed conversion check, SIGTERM, a broken resume
state, a full disk, a run directory spelt or placed another way, dependency noise on stderr,
Trainer's rates, thread counts in the record, and the task-file readers' strictness.

Every case either gives the right result or one line on stderr naming what is wrong, with its
documented exit status, and leaves nothing partial behind. (The command-line rows of the same
classes are in ``tests/test_bad_input.py``'s battery.)
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers as T

import ailora
import ailora.hf
from ailora.cli import main
from ailora.core import files
from ailora.errors import AiloraError
from ailora.interrupts import EXIT_TERMINATED, Terminated, terminate_as_interrupt
from ailora.tasks import load_task
from ailora.tasks.readers import read_table, read_text
from ailora.train import RunConfig, loop, record, train
from tests.test_bad_input import _task
from tests.tiny_models import build, save_tiny, save_tiny_bert

ROOT = Path(__file__).resolve().parents[1]
STAGING = re.compile(r"^\..+\.(tmp|old)-")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("faults")
    (d / "tasks").mkdir()
    return {"bert": save_tiny("bert", d / "bert"), "tokbert": save_tiny_bert(d / "tokbert"),
            "task": _task(d / "tasks", "ok", ["neg", "pos"])}


def _cfg(tiny, run_dir, *overrides) -> RunConfig:
    base = {"model": {"name": str(tiny["tokbert"]), "max_length": 16}, "task": {"name": str(tiny["task"])},
            "method": {"name": "lora", "rank": 2}, "run_dir": str(run_dir),
            "train": {"lr": 1e-3, "epochs": 2, "batch_size": 8, "progress": False, "tensorboard": False}}
    return RunConfig.from_dict(base, list(overrides))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _staging(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if STAGING.match(p.name)]


# convert: a failed output check is exit 2 with nothing written.


def test_a_failed_conversion_check_exits_2_and_writes_nothing(tiny, tmp_path, monkeypatch, capsys):
    import ailora.core.convert as convert

    adapter = tmp_path / "adapter"
    assert main(["init", "--model", str(tiny["bert"]), "--out", str(adapter), "--rank", "8", "--quiet"]) == 0
    real_verify = convert.verify
    monkeypatch.setattr(convert, "verify", lambda ref, model: {**real_verify(ref, model), "max_abs_diff": 0.5,
                                                               "passed": False})
    out = tmp_path / "out"
    assert main(["convert", "--adapter", str(adapter), "--rank", "8", "--base", str(tiny["bert"]),
                 "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "differ from the trained model's by 0.5" in line and str(tiny["bert"]) in line
    assert not out.exists() and not _staging(tmp_path)


# SIGTERM: handled like Ctrl-C, with its own exit status and a line saying how to continue.


def _sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises before this ends
    raise AssertionError("SIGTERM was not raised as Terminated")


@pytest.mark.parametrize("command, target", [("train", "ailora.cli.train.build_config"),
                                             ("sweep", "ailora.cli.sweep.build_spec")])
def test_sigterm_ends_train_and_sweep_like_an_interrupt(command, target, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(target, _sigterm)
    before = signal.getsignal(signal.SIGTERM)
    argv = ["train", "--run-dir", str(tmp_path / "r")] if command == "train" else \
        ["sweep", "--model", "minilm", "--tasks", "x", "--methods", "lora", "--dir", str(tmp_path / "s")]
    assert main(argv) == EXIT_TERMINATED == 143
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("terminated (SIGTERM); ")
    assert ("--resume" in err) if command == "train" else ("run the same command again" in err)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the command's only


def _sigterm_swallowed(*args, **kwargs):
    """A library (Ray's C core, during ray.wait) that catches the raised Terminated and raises a plain
    KeyboardInterrupt in its place."""
    try:
        _sigterm()
    except KeyboardInterrupt:
        raise KeyboardInterrupt() from None


def test_sigterm_a_library_turns_into_a_plain_interrupt_still_exits_143(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("ailora.cli.sweep.build_spec", _sigterm_swallowed)
    argv = ["sweep", "--model", "minilm", "--tasks", "x", "--methods", "lora", "--dir", str(tmp_path / "s")]
    assert main(argv) == EXIT_TERMINATED
    assert capsys.readouterr().err.startswith("terminated (SIGTERM); ")
    monkeypatch.setattr("ailora.cli.sweep.build_spec", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(argv) == 130  # a Ctrl-C in the next command is not taken for the earlier SIGTERM
    assert capsys.readouterr().err.startswith("interrupted")


def test_terminate_as_interrupt_raises_a_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt) as caught, terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert isinstance(caught.value, Terminated) and caught.value.signum == signal.SIGTERM


def test_sigterm_during_training_keeps_the_checkpoint_and_resumes_to_the_same_adapter(tiny, tmp_path):
    """A real ``ailora train`` process, sent SIGTERM after its first checkpoints: exit 143, one line,
    no staging file; --resume then ends with the adapter of an uninterrupted run, bit for bit."""
    args = ["--model", str(tiny["tokbert"]), "--task", str(tiny["task"]), "--method", "lora", "--rank", "2",
            "--lr", "1e-3", "--epochs", "3", "--batch-size", "8", "--no-progress", "model.max_length=16",
            "train.save_every_steps=1", "train.tensorboard=false"]
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ailora.cli", "train", *args, "--run-dir", str(run)],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived")
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["terminated (SIGTERM); continue from the last checkpoint with the same "
                                        "command plus --resume"], err
    assert not _staging(tmp_path) and not (run / "results.json").exists()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the process above: the same float sums
    try:
        resumed = train(_cfg(tiny, run, "train.epochs=3", "train.save_every_steps=1", "resume=true"))
        full = train(_cfg(tiny, tmp_path / "full", "train.epochs=3", "train.save_every_steps=1"))
    finally:
        torch.set_num_threads(threads)
    assert resumed["status"] == full["status"] == "complete"
    a = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == (tmp_path / "full" / "adapter" / "adapter_model.safetensors").read_bytes()


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_a_step_checkpoints_that_step_and_resume_is_exact(signum, status, tiny, tmp_path,
                                                                          monkeypatch, capsys):
    """SIGTERM or Ctrl-C in the middle of an optimizer step: the step ends, is checkpointed (no periodic
    checkpoints here, so that one is the only), the command exits with the signal's status; --resume
    then ends with the adapter of an uninterrupted run, bit for bit."""
    real, calls = loop.optimizer_step, []

    def signal_mid_step(ctx, group):
        calls.append(len(calls))
        if len(calls) == 3:
            os.kill(os.getpid(), signum)  # handled before the step's first tensor operation
        return real(ctx, group)

    monkeypatch.setattr(loop, "optimizer_step", signal_mid_step)
    args = ["train", "--model", str(tiny["tokbert"]), "--task", str(tiny["task"]), "--method", "lora", "--rank",
            "2", "--lr", "1e-3", "--epochs", "2", "--batch-size", "8", "--no-progress", "model.max_length=16",
            "train.tensorboard=false", "--run-dir", str(tmp_path / "run")]
    assert main(args) == status and len(calls) == 3
    assert "--resume" in capsys.readouterr().err
    assert record.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["loop"]["step"] == 3
    assert main([*args, "--resume"]) == 0
    resumed = len(calls) - 3
    assert main([*args[:-1], str(tmp_path / "full")]) == 0
    assert 3 + resumed == len(calls) - 3 - resumed  # the resumed run went on from step 3
    a = (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == (tmp_path / "full" / "adapter" / "adapter_model.safetensors").read_bytes()


# A broken resume state is one line naming the file; nothing else in the run is touched.


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 16, "torch-list"])
def test_a_broken_last_checkpoint_is_one_line_naming_it(content, tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(_cfg(tiny, run, "train.stop_after_steps=3"))["status"] == "interrupted"
    last = run / "checkpoints" / "last.pt"
    if content == "torch-list":  # a valid torch file of another structure
        torch.save([1, 2, 3], last)
    else:
        last.write_bytes(content)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    argv = ["train", "--model", str(tiny["tokbert"]), "--task", str(tiny["task"]), "--run-dir", str(run),
            "--method", "lora", "--rank", "2", "--lr", "1e-3", "--epochs", "2", "--batch-size", "8", "--resume",
            "--no-progress", "model.max_length=16", "train.tensorboard=false"]
    capsys.readouterr()  # what the first run printed (dependency warnings outside a command)
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert f"checkpoint {last} is broken" in line and "weights_only" not in line and "--overwrite" in line
    assert ("it is empty" in line) == (content == b"")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_broken_results_or_config_is_one_line_on_resume(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(_cfg(tiny, run, "train.epochs=1"))["status"] == "complete"
    (run / "results.json").write_text("{trunc")
    with pytest.raises(AiloraError, match="results.json is not valid JSON"):
        train(_cfg(tiny, run, "train.epochs=1", "resume=true"))
    (run / "config.json").write_bytes(b"[1, 2]")
    with pytest.raises(AiloraError, match="config.json is unreadable .*JSON list"):
        train(_cfg(tiny, run, "train.epochs=1", "resume=true"))


# A full disk: "no space left", nothing partial, the previous file intact.


def test_a_full_disk_is_named_and_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    record.save_checkpoint(path, {"step": 1})

    def full(obj, f, *args, **kwargs):  # what torch.save raises when the disk fills
        Path(f).write_bytes(b"part of it")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(AiloraError, match=f"no space left on the device of {path.parent} while writing {path}"):
        record.save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1} and not _staging(tmp_path)


def test_enospc_from_any_write_is_named(tmp_path, monkeypatch):
    def enospc(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", enospc)
    with pytest.raises(AiloraError, match="no space left .* while writing .*results.json"):
        files.write_json(tmp_path / "results.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_a_command_is_exit_2_with_nothing_written(tiny, tmp_path, monkeypatch, capsys):
    import ailora.core.adapters as adapters

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(adapters, "save_file", full)
    out = tmp_path / "out"
    assert main(["init", "--model", str(tiny["bert"]), "--out", str(out), "--rank", "8", "--quiet"]) == 2
    assert f"no space left on the device of {tmp_path} while writing {out}/adapter_model.safetensors" \
        in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


# Resume does not depend on how run_dir is spelt, or where the directory now is.


def test_resume_takes_another_spelling_and_a_moved_directory(tiny, tmp_path, monkeypatch):
    assert "run_dir" not in _cfg(tiny, tmp_path / "x").identity()
    full = train(_cfg(tiny, tmp_path / "full"))
    assert train(_cfg(tiny, tmp_path / "part", "train.stop_after_steps=2"))["status"] == "interrupted"
    monkeypatch.chdir(tmp_path)
    assert train(_cfg(tiny, "./part/", "train.stop_after_steps=4", "resume=true"))["status"] == "interrupted"
    (tmp_path / "part").rename(tmp_path / "moved")  # as `mv`
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    resumed = train(_cfg(tiny, "../moved", "resume=true"))
    assert resumed["status"] == "complete"
    assert (tmp_path / "moved" / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "full" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert resumed["test"] == full["test"]


def test_an_output_that_is_the_working_directory_is_refused(tiny, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out in (".", str(work), "..", "./"):
        assert main(["init", "--model", str(tiny["bert"]), "--out", out, "--overwrite", "--quiet"]) == 2
        assert "is the working directory or holds it" in _one_error_line(capsys)
    with pytest.raises(AiloraError, match="run directory . is the working directory"):
        train(_cfg(tiny, ".", "overwrite=true"))
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"] and (work / "notes.txt").read_text() == "mine"


# Stderr: a dependency's warnings and log records stay off it; ailora's own warnings are one line.


NOISY = """
import logging, sys, warnings
import ailora.cli.ls as ls
from ailora.cli import main
from ailora.errors import AiloraError

def run(args):
    logging.getLogger("bitsandbytes.cextension").warning("Failed to load CPU gemm_4bit_forward from kernels")
    warnings.warn_explicit("a dependency's deprecation", FutureWarning, "dep.py", 1, module="peft.tuners")
    warnings.warn_explicit("a dependency's note", UserWarning, "dep.py", 2, module="torch.nn")
    warnings.warn_explicit("ailora says this\\nand more", UserWarning, "x.py", 3, module="ailora.core.adapters")
    raise AiloraError(sys.argv[1])

ls.run = run
sys.exit(main(["ls"]))
"""


def test_dependency_noise_stays_off_stderr():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", NOISY, "what is wrong"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["warning: ailora says this", "error: what is wrong"]


# Trainer: its learning_rate and weight_decay are honoured (args=) or a conflict is refused.


def _bert_model():
    return ailora.apply(build("bert", T.BertForSequenceClassification, num_labels=3, dropout=False).eval(),
                        method="ailora", rank=2)


def test_the_optimizer_factory_takes_trainers_rates_from_its_arguments(tmp_path):
    model = _bert_model()
    args = T.TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-3, weight_decay=0.1, report_to=[],
                               use_cpu=True)
    make, kwargs = ailora.hf.optimizer_cls_and_kwargs(model, args=args)
    groups = {g["name"]: g for g in make()(model, **kwargs).param_groups}
    assert groups["query"]["lr"] == pytest.approx(3e-3) and groups["value"]["lr"] == pytest.approx(6e-3)
    assert groups["query"]["weight_decay"] == groups["head"]["weight_decay"] == 0.1
    no_decay = [g for name, g in groups.items() if name.endswith(".no_decay")]
    assert no_decay and all(g["weight_decay"] == 0.0 for g in no_decay)  # biases and norms, as Trainer
    assert all(p.ndim == 1 for g in no_decay for p in g["params"])
    args.adam_beta2, args.adam_epsilon = 0.95, 1e-6
    make, kwargs = ailora.hf.optimizer_cls_and_kwargs(model, args=args, optimizer_kwargs={"eps": 1e-7})
    built = make()(model, **kwargs)
    assert built.defaults["betas"] == (0.9, 0.95) and built.defaults["eps"] == 1e-7  # the explicit kwarg wins
    with pytest.raises(AiloraError, match="lr=0.01 disagrees with the TrainingArguments' 0.003"):
        ailora.hf.optimizer_cls_and_kwargs(model, lr=1e-2, args=args)
    with pytest.raises(AiloraError, match="give lr, or args"):
        ailora.hf.optimizer_cls_and_kwargs(model)


@pytest.mark.parametrize("trainer_args, refused", [({"weight_decay": 0.1}, "weight_decay=0.1"),
                                                   ({"learning_rate": 1e-3}, "learning_rate=0.001"),
                                                   ({"adam_epsilon": 1e-6}, "adam_epsilon=1e-06"),
                                                   ({}, None), ({"learning_rate": 1e-2}, None)])
def test_a_trainer_whose_rates_the_factory_ignores_is_refused(trainer_args, refused, tmp_path):
    model = _bert_model()
    _train_one_step_or_refuse(model, _one_step_args(tmp_path, **trainer_args), {},
                              refused and f"TrainingArguments\\({refused}\\) is not what")


def _one_step_args(tmp_path, **trainer_args):
    return T.TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to=[],
                               use_cpu=True, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
                               **trainer_args)


def _train_one_step_or_refuse(model, args, chosen: dict, refused: str | None) -> None:
    """A Trainer with ailora's factory (lr=1e-2 alone) and callback: one step, or ``refused`` raised by the
    callback with no parameter moved."""
    from tests.test_hf import Rows

    trainer = T.Trainer(model=model, args=args, train_dataset=Rows(causal=False),
                        optimizer_cls_and_kwargs=ailora.hf.optimizer_cls_and_kwargs(model, lr=1e-2, **chosen),
                        callbacks=[ailora.hf.AiloraCallback()])
    if refused is None:
        assert trainer.train().global_step == 1
        return
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(AiloraError, match=refused):
        trainer.train()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("optim, optimizer, refused", [
    ("sgd", None, "optimizer=torch.optim.SGD"), ("adafactor", None, "the optimizer's class as optimizer="),
    ("adamw_torch", None, None), ("sgd", torch.optim.SGD, None), ("adafactor", T.Adafactor, None)])
def test_a_trainer_optim_the_factory_does_not_build_is_refused(optim, optimizer, refused, tmp_path):
    """Trainer ignores ``optim`` when given a factory: naming another optimizer than the one built is a
    one-line error, from the factory (args=) and, given lr= alone, from the callback before any step."""
    model = _bert_model()
    args = _one_step_args(tmp_path, learning_rate=1e-2, optim=optim)
    chosen = {} if optimizer is None else {"optimizer": optimizer}
    if refused is not None:
        with pytest.raises(AiloraError, match=f"optim={optim}\\) is ignored by Trainer.*{re.escape(refused)}"):
            ailora.hf.optimizer_cls_and_kwargs(model, args=args, **chosen)
    else:
        make, kwargs = ailora.hf.optimizer_cls_and_kwargs(model, args=args, **chosen)
        assert isinstance(make()(model, **kwargs), optimizer or torch.optim.AdamW)
    _train_one_step_or_refuse(model, args, chosen, refused and f"optim={optim}\\) is ignored by Trainer")


# The run record says how many threads computed it.


def test_the_record_holds_the_thread_counts(tiny, tmp_path):
    results = train(_cfg(tiny, tmp_path / "run", "train.epochs=1"))
    assert results["distributed"]["threads"] == torch.get_num_threads()
    assert results["distributed"]["interop_threads"] == torch.get_num_interop_threads()


# Task files: structure, encoding and values.


def test_readers_refuse_what_would_shift_or_swallow_rows(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text('text,label\n"quoted, with comma",pos\ntrailing,neg,\n')
    assert [r for _, r in read_table(f, ("text", "label"), delimiter=",")] == [
        {"text": "quoted, with comma", "label": "pos"}, {"text": "trailing", "label": "neg"}]  # empty extra: fine
    f.write_text("text\tlabel\ngood\tpos\tstray\n")
    with pytest.raises(AiloraError, match=r"t.csv line 2: 3 fields but 2 columns"):
        read_table(f, ("text", "label"))
    f.write_text("text,label,text\na,pos,b\n")
    with pytest.raises(AiloraError, match=r"t.csv line 1: column 'text' appears twice"):
        read_table(f, ("text", "label"), delimiter=",")
    f.write_bytes("text,label\nna\u00efve,pos\n".encode("utf-8") + b"caf\xe9,neg\n")
    with pytest.raises(AiloraError, match=r"t.csv line 3: not valid UTF-8 \(byte 0xe9\)"):
        read_text(f)
    assert read_text(f, legacy_cp1252=True).endswith("caf\u00e9,neg\n")  # the one bundled cp1252 article


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_regression_target_is_named(split, value, tmp_path):
    rows = {s: [f"text {s} {i},{i / 4}" for i in range(6)] for s in ("train", "validation", "test")}
    rows[split][3] = f"text {split} 3,{value}"
    for s, lines in rows.items():
        (tmp_path / f"{s}.csv").write_text("text,label\n" + "\n".join(lines) + "\n")
    spec = {"name": "reg", "kind": "regression", **{s: f"{s}.csv" for s in rows}}
    (tmp_path / "reg.json").write_text(json.dumps(spec))
    with pytest.raises(AiloraError, match=f"{split}.csv line 5: label {float(value)} is not a finite number"):
        load_task(str(tmp_path / "reg.json"))
