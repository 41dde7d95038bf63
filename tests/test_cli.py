"""The command line: init / convert / merge / ls, their reports, and one-line errors."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch

from ailora.cli import main
from ailora.core.probe import make_probe, run_probe
from tests.tiny_models import save_tiny


@pytest.fixture
def bert_dir(tmp_path):
    return save_tiny("bert", tmp_path / "bert")


def test_init_writes_adapter_and_report(bert_dir, tmp_path, capsys):
    out = tmp_path / "init"
    assert main(["init", "--model", str(bert_dir), "--out", str(out), "--rank", "4", "--solver", "fast"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "ailora" and report["solver"] == "fast" and report["output_check"]["passed"]
    layer = report["layers"][0]
    assert {"name", "roles", "shape", "rank", "singular_values", "seconds"} <= set(layer)
    assert len(next(iter(layer["singular_values"].values()))) == 4
    assert report["total_seconds"] > 0
    assert "output check (worst of 4 layers, 4 random rows each)" in capsys.readouterr().out
    # The init adapter is a zero delta on the original base: outputs equal the base's.
    from transformers import BertForSequenceClassification
    base = BertForSequenceClassification.from_pretrained(bert_dir)
    probe = make_probe(base)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(out))
    assert (run_probe(loaded, probe) - run_probe(base, probe)).abs().max() <= 1e-4


def test_convert_peft_residual_form_adapter(bert_dir, tmp_path):
    """A PiSSA adapter trained by plain PEFT on its residual base converts with --initial."""
    from transformers import BertForSequenceClassification
    base = BertForSequenceClassification.from_pretrained(bert_dir)
    cfg = peft.LoraConfig(r=2, lora_alpha=2, target_modules=["query", "value"], init_lora_weights="pissa")
    model = peft.get_peft_model(copy.deepcopy(base), cfg)
    model.save_pretrained(tmp_path / "initial")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "trained")
    probe = make_probe(base)
    trained = run_probe(model, probe)
    out = tmp_path / "plain"
    assert main(["convert", "--adapter", str(tmp_path / "trained"), "--initial", str(tmp_path / "initial"),
                 "--out", str(out), "--base", str(bert_dir), "--quiet"]) == 0
    report = json.loads((out / "convert_report.json").read_text())
    assert report["check"]["passed"]
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(out))
    assert (run_probe(loaded, probe) - trained).abs().max() <= 1e-4
    assert main(["convert", "--adapter", str(out), "--out", str(tmp_path / "r2"), "--rank", "2", "--quiet"]) == 0
    assert json.loads((tmp_path / "r2" / "ailora.json").read_text())["max_relative_error"] > 0


def test_merge_cli(bert_dir, tmp_path):
    assert main(["init", "--model", str(bert_dir), "--out", str(tmp_path / "a"), "--quiet", "--method", "pissa"]) == 0
    assert main(["merge", "--base", str(bert_dir), "--adapter", str(tmp_path / "a"), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_ls_lists_registries(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for word in ["ailora", "reailora", "principal", "minor", "fast", "phi3", "gpt2"]:
        assert word in out


@pytest.mark.parametrize("argv, message", [
    (["init", "--model", "/no/such/model", "--out", "{tmp}/x"], "model path /no/such/model does not exist"),
    (["init", "--model", "{bert}", "--out", "{tmp}/x", "--rank", "33"], "rank 33 exceeds min"),
    (["init", "--model", "{bert}", "--out", "{tmp}/x", "--targets", "query,gate"], "role 'gate' is not known"),
    (["init", "--model", "{bert}", "--out", "{tmp}/x", "--method", "dora2"], "unknown method 'dora2'"),
    (["init", "--model", "{bert}", "--out", "{tmp}/x", "--modules", "query=zzz"], "matches no module"),
    (["convert", "--adapter", "{tmp}/none", "--out", "{tmp}/x", "--rank", "2"], "does not exist"),
    (["merge", "--base", "{bert}", "--adapter", "{bert}", "--out", "{tmp}/x"], "missing adapter_config.json"),
])
def test_bad_input_one_line_error_nothing_written(argv, message, bert_dir, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, bert=bert_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.tmp")]


def test_pickle_only_model_is_refused(tmp_path, capsys):
    save_tiny("bert", tmp_path / "pt", safetensors=False)
    assert main(["init", "--model", str(tmp_path / "pt"), "--out", str(tmp_path / "x")]) == 2
    assert "pickle checkpoints are refused" in capsys.readouterr().err


def test_rank_flag_rejects_non_positive(bert_dir, tmp_path):
    with pytest.raises(SystemExit):
        main(["init", "--model", str(bert_dir), "--out", str(tmp_path / "x"), "--rank", "0"])


def test_init_refuses_a_non_empty_out_unless_overwrite(bert_dir, tmp_path, capsys):
    out = tmp_path / "a"
    argv = ["init", "--model", str(bert_dir), "--out", str(out), "--quiet", "--rank", "2"]
    assert main(argv) == 0
    assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "ailora.json",
                                             "README.md", "report.json"}
    assert main(argv) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--method", "pissa"]) == 0
    assert json.loads((out / "report.json").read_text())["method"] == "pissa"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".a.")]


def test_overrides_may_stand_between_options(tmp_path, capsys):
    """KEY=VALUE overrides anywhere among the options all apply, in order; other stray words are refused."""
    argv = ["train", "--model", "minilm", "train.lr=1e-3", "--task", "movie-sentiment", "train.epochs=3",
            "--run-dir", str(tmp_path / "r"), "train.epochs=4", "--print-config"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["lr"] == 1e-3 and printed["train"]["epochs"] == 4
    with pytest.raises(SystemExit):
        main(["train", "--model", "minilm", "--run-dir", str(tmp_path / "r"), "--print-config", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
