"""Serving-ready adapters (tier 1): what vLLM / SGLang read of adapter_config.json (r, lora_alpha,
use_rslora, target_modules; one scale for every module) reproduces the trained model; the rank
warning and save(rank=k); the Hub model card and push; convert / merge with the adapter's task head."""

from __future__ import annotations

import copy
import json
import math

import peft
import pytest
import torch
import transformers as T
from safetensors.torch import load_file

import ailora
from ailora.core.adapters import PREFIX
from ailora.core.convert import convert_dir
from ailora.core.probe import make_probe, run_probe
from ailora.core.roles import weight_of
from ailora.core.workflows import merge_dir
from ailora.errors import AiloraError
from tests.tiny_models import build, save_tiny_bert, tiny


def perturb(model, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def one_scale_weights(original, adapter_dir) -> dict[str, torch.Tensor]:
    """What an engine that reads only r, lora_alpha, use_rslora and target_modules computes:
    W + (lora_alpha / r) B A for every module (sqrt(r) under rsLoRA), ignoring any pattern."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / (math.sqrt(config["r"]) if config["use_rslora"] else config["r"])
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    out = {}
    for name in config["target_modules"]:
        a, b = tensors[f"{PREFIX}{name}.lora_A.weight"], tensors[f"{PREFIX}{name}.lora_B.weight"]
        assert a.shape[0] <= config["r"]  # buffers sized from r hold every module
        out[name] = weight_of(original.get_submodule(name)).detach() + scale * b @ a
    return out


def trained_weights(model) -> dict[str, torch.Tensor]:
    """W_res + s B A of every adapted module of a live ailora model."""
    out = {}
    for name in model.ailora_state.targets:
        layer = model.base_model.model.get_submodule(name)
        w = weight_of(layer.get_base_layer()).detach()
        out[name] = w + layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    return out


@pytest.mark.parametrize("kwargs", [dict(), dict(use_rslora=True), dict(targets=["query", "value", "key"],
                                                                        policy="key=lora")])
def test_a_one_scale_loader_reproduces_the_trained_model(kwargs, tmp_path):
    original = tiny("bert")
    model = ailora.apply(copy.deepcopy(original), method="ailora", rank=4, **kwargs)
    perturb(model)
    ailora.save(model, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["r"] == 8  # 2r: the trained factors and the start, against the original W
    mixed = "policy" in kwargs  # key=lora has B0 = 0, so its adapter stays rank 4: the only pattern
    assert bool(config["rank_pattern"]) == mixed and set(config["rank_pattern"].values()) <= {4}
    served, trained = one_scale_weights(original, tmp_path / "a"), trained_weights(model)
    for name, w in trained.items():
        torch.testing.assert_close(served[name], w, atol=1e-5, rtol=0)


def test_a_fused_layer_serves_at_its_stacked_rank(tmp_path):
    original = tiny("gpt2")
    model = ailora.apply(copy.deepcopy(original), method="ailora", rank=2)
    perturb(model)
    ailora.save(model, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["r"] == 8 and not config["rank_pattern"] and not config["alpha_pattern"]  # Q and V blocks: 2 x 2r
    probe = make_probe(model)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(original), str(tmp_path / "a"))
    assert (run_probe(loaded, probe) - run_probe(model, probe)).abs().max() <= 1e-4


def test_rank_warning_and_save_at_a_served_rank(tmp_path):
    original = tiny("bert")
    model = ailora.apply(copy.deepcopy(original), method="pissa", rank=3)
    perturb(model)
    with pytest.warns(UserWarning, match=r"r=6 is not one vLLM accepts.*rank=8"):
        meta = ailora.save(model, tmp_path / "r6")
    assert meta["serving"]["r"] == 6 and meta["serving"]["warning"]
    meta = ailora.save(model, tmp_path / "r8", rank=8)  # zero-padded: exact, uniform, no warning
    config = json.loads((tmp_path / "r8" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == pytest.approx(8 * 1.0) and not config["rank_pattern"]
    assert meta["max_relative_error"] == 0 and meta["serving"]["warning"] is None
    served, trained = one_scale_weights(original, tmp_path / "r8"), trained_weights(model)
    assert all((served[n] - w).abs().max() <= 1e-5 for n, w in trained.items())


def test_model_card_and_push_to_hub_pass_through(tmp_path, monkeypatch):
    """No network here: the upload is checked against a stand-in for huggingface_hub.HfApi."""
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id))

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append(("upload", repo_id, sorted(p.name for p in (tmp_path / "a").iterdir())))
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = ailora.apply(tiny("bert"), method="ailora", rank=4)
    meta = ailora.save(model, tmp_path / "a", base_model="org/tiny-bert", push_to_hub="me/my-adapter")
    assert calls[0] == ("create", "me/my-adapter") and calls[1][0:2] == ("upload", "me/my-adapter")
    assert "README.md" in calls[1][2] and meta["pushed"].endswith("/commit/1")
    card = (tmp_path / "a" / "README.md").read_text()
    front = card.split("---\n")[1]
    assert 'base_model: "org/tiny-bert"' in front and "library_name: peft" in front
    assert front.count('- "ailora"') == 1 and '- "peft"' in front and "query: principal" in card and "value: minor" in card
    assert "--max-lora-rank 8" in card and "max |diff|" in card
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["auto_mapping"]["base_model_class"] == "BertForSequenceClassification"


@pytest.fixture
def bert_dir(tmp_path):
    return save_tiny_bert(tmp_path / "bert", dropout=False)


def _trained_classifier(bert_dir, tmp_path, num_labels: int, head="auto"):
    model = T.BertForSequenceClassification.from_pretrained(bert_dir, num_labels=num_labels).eval()
    adapted = ailora.apply(model, method="ailora", rank=2, head=head)
    perturb(adapted)
    ailora.save(adapted, tmp_path / "adapter")
    return adapted


@pytest.mark.parametrize("num_labels", [3, 1])
def test_merge_and_convert_take_the_head_from_the_adapter(num_labels, bert_dir, tmp_path):
    """The base is a BertModel (no head, as MiniLM); the adapter's head has 3 labels (or 1: regression)."""
    adapted = _trained_classifier(bert_dir, tmp_path, num_labels)
    check = merge_dir(str(bert_dir), tmp_path / "adapter", tmp_path / "merged")
    merged = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert check["passed"] and merged.config.num_labels == num_labels
    ids = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5, rtol=0)
    report = convert_dir(tmp_path / "adapter", tmp_path / "r2", rank=2, base=str(bert_dir))
    assert report["check"]["max_abs_diff"] >= 0 and report["modules"]


def test_merge_onto_a_base_whose_head_size_differs(bert_dir, tmp_path):
    two = T.BertForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    two.save_pretrained(tmp_path / "two-label-base")
    _trained_classifier(bert_dir, tmp_path, 4)
    check = merge_dir(str(tmp_path / "two-label-base"), tmp_path / "adapter", tmp_path / "merged")
    assert check["passed"]
    assert T.AutoConfig.from_pretrained(tmp_path / "merged").num_labels == 4


def test_an_adapter_without_its_head_is_refused_on_a_headless_base(bert_dir, tmp_path):
    _trained_classifier(bert_dir, tmp_path, 3, head=None)
    with pytest.raises(AiloraError, match="no weights for the task head"):
        merge_dir(str(bert_dir), tmp_path / "adapter", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_raw_save_is_refused_by_convert(tmp_path):
    model = ailora.apply(build("bert", dropout=False).eval(), method="ailora", rank=2)
    model.save_pretrained(tmp_path / "raw")
    with pytest.raises(AiloraError, match="raw save of an ailora model"):
        convert_dir(tmp_path / "raw", tmp_path / "out", rank=2)
