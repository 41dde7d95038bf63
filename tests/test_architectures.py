"""Tier 1: every architecture of PEFT's default LoRA target mapping, fused layouts, the structural fallback."""

from __future__ import annotations

import copy
import re
import warnings

import peft
import pytest
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

import ailora
from ailora.cli import main
from ailora.core.layouts import Block, RowSpec, periodic
from ailora.core.probe import make_probe, run_probe
from ailora.core.roles import ARCHITECTURES, find_targets, weight_of
from ailora.errors import AiloraError
from tests.test_core import perturb
from tests.tiny_models import ARCHITECTURE_FAMILIES, tiny, tiny_architecture

ARCHS = list(ARCHITECTURE_FAMILIES)
# fused query/key/value projections, by layout: per head, per kv group, multi-query, contiguous, CodeGen's groups
FUSED = ["gpt_neox", "bloom", "falcon-new", "falcon-mq", "falcon-mha", "gpt_bigcode", "gpt_bigcode-mha",
         "modernbert", "mpt", "codegen", "deberta"]
ATTENTION = ["query", "key", "value", "output"]


def roles_of(name: str) -> list[str]:
    """Every role the tiny model has (Mixtral's experts are not Linear modules)."""
    return ATTENTION if name == "mixtral" else ATTENTION + ["up", "down"]


@pytest.mark.parametrize("name", ARCHS)
def test_exact_at_init_with_every_role(name):
    base = tiny_architecture(name)
    probe = make_probe(base)
    before = run_probe(base, probe)
    model = ailora.apply(base, method="ailora", rank=2, targets=roles_of(name),
                         policy={r: "principal" for r in roles_of(name) if r != "value"})
    assert model.ailora_state.check["passed"] and model.ailora_state.roles_source == "architecture"
    assert {r for t in model.ailora_state.targets.values() for r in t.roles} == set(roles_of(name))
    assert (run_probe(model, probe) - before).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ARCHS)
def test_perturbed_adapter_reloads_on_the_original_base(name, tmp_path):
    original = tiny_architecture(name)
    probe = make_probe(original)
    at_start = run_probe(original, probe)
    model = ailora.apply(copy.deepcopy(original), method="ailora", rank=2)
    perturb(model)
    trained = run_probe(model, probe)
    assert (trained - at_start).abs().max() > 1e-3  # the perturbation really moved it
    ailora.save(model, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(original), str(tmp_path / "adapter"))
    assert (run_probe(loaded, probe) - trained).abs().max() <= 1e-4


@pytest.mark.parametrize("name", FUSED)
def test_query_rows_hold_top_and_value_rows_bottom_singular_values_of_their_block(name):
    original = tiny_architecture(name)
    weights = {n: weight_of(m).detach().clone() for n, m in original.named_modules() if hasattr(m, "weight")}
    r = 2
    model = ailora.apply(copy.deepcopy(original), method="ailora", rank=r)
    fused = [t for t in model.ailora_state.targets.values() if t.fused]
    assert fused and all(t.roles == ("query", "value") for t in fused)
    for t in fused:
        rec = next(x for x in model.ailora_state.layers if x.name == t.name)
        layer = model.base_model.model.get_submodule(t.name)
        delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        for blk in t.blocks:
            sv = torch.linalg.svdvals(blk.take(weights[t.name]).double())
            want = sv[:r] if blk.role == "query" else sv[-r:]
            got = torch.tensor(rec.singular_values[blk.role], dtype=torch.double)
            torch.testing.assert_close(got, want, atol=1e-5 * sv[0].item(), rtol=0)
            moved = torch.linalg.svdvals(blk.take(delta).double())[:r]
            torch.testing.assert_close(moved, want, atol=1e-5 * sv[0].item(), rtol=0)


@pytest.mark.parametrize("name", FUSED)
def test_blocks_stay_apart_after_adamw_steps_with_weight_decay(name):
    r = 2
    model = ailora.apply(tiny_architecture(name), method="ailora", rank=r)
    opt = torch.optim.AdamW(ailora.param_groups(model, lr=1e-2, weight_decay=0.1), weight_decay=0.1)
    probe = make_probe(model)
    model.train()
    for _ in range(3):
        model(**probe).logits.square().mean().backward()
        opt.step()
        opt.zero_grad()
    for t in (t for t in model.ailora_state.targets.values() if t.fused):
        b = model.base_model.model.get_submodule(t.name).lora_B["default"].weight.detach()
        q, v = t.blocks
        assert q.take(b)[:, r:].abs().max() == 0 and v.take(b)[:, :r].abs().max() == 0
        assert q.take(b)[:, :r].abs().max() > 0 and v.take(b)[:, r:].abs().max() > 0
        key = torch.ones(t.out_features, dtype=torch.bool)
        key[q.rows] = key[v.rows] = False
        assert key.sum() > 0 and b[key].abs().max() == 0  # the key rows are not adapted


def _zero_rows(model: torch.nn.Module, role: str) -> torch.nn.Module:
    """A copy of ``model`` with ``role``'s rows (weight and bias) of every fused projection set to 0."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_bias", "v_bias")):  # DeBERTa v1 adds these after the split
                p.zero_()
        for t in find_targets(model, ["query", "key", "value"]):
            module = model.get_submodule(t.name)
            (blk,) = [b for b in t.blocks if b.role == role]
            weight_of(module)[blk.rows] = 0
            if module.bias is not None:
                module.bias[blk.rows] = 0
    return model


@pytest.mark.parametrize("name", FUSED)
def test_fused_layout_is_the_one_the_model_computes_with(name):
    """Known answers from the model itself: with the value rows zeroed every output projection reads
    zeros; zeroing the query rows or the key rows gives the same scores q.k = 0, so the same output.
    Weights drawn larger than usual, so that the attention scores matter."""
    model = tiny_architecture(name, initializer_range=0.5)
    probe = make_probe(model)
    seen = []
    zero_v = _zero_rows(model, "value")
    for t in find_targets(zero_v, ["output"]):
        zero_v.get_submodule(t.name).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    run_probe(zero_v, probe)
    assert seen and all(x.abs().max() == 0 for x in seen)
    no_q, no_k = run_probe(_zero_rows(model, "query"), probe), run_probe(_zero_rows(model, "key"), probe)
    torch.testing.assert_close(no_q, no_k, atol=1e-5, rtol=0)
    assert (no_q - run_probe(model, probe)).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["phi3", "modernbert"])
def test_fused_up_rows_are_the_linear_half_of_the_gated_mlp(name):
    """act(gate) * up is linear in up: doubling the up rows doubles what the down projection reads."""
    model = tiny("phi3") if name == "phi3" else tiny_architecture(name)
    probe = make_probe(model)
    reads = {}
    for scale in (1.0, 2.0):
        m = copy.deepcopy(model)
        targets = find_targets(m, ["up", "gate"])
        assert targets and all(set(t.roles) == {"gate", "up"} for t in targets)
        with torch.no_grad():
            for t in targets:
                (up,) = [b for b in t.blocks if b.role == "up"]
                weight_of(m.get_submodule(t.name))[up.rows] *= scale
        down = find_targets(m, ["down"])[0].name
        m.get_submodule(down).register_forward_pre_hook(lambda mod, args, s=scale: reads.setdefault(s, args[0]))
        run_probe(m, probe)
    assert reads[1.0].abs().max() > 0
    torch.testing.assert_close(reads[2.0], 2 * reads[1.0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ARCHS + ["gpt2", "bert", "llama", "bart", "t5", "distilbert", "deberta-v2"])
def test_peft_default_targets_are_adapted_modules(name):
    """PEFT's default LoRA targets of the model type are modules (or fused modules) ailora adapts."""
    model = tiny_architecture(name) if name in ARCHITECTURE_FAMILIES else tiny(name)
    model_type = model.config.model_type
    assert model_type in ARCHITECTURES
    if model_type not in PEFT_DEFAULTS:
        pytest.skip(f"{model_type} is not in PEFT's mapping")
    leaves = set(PEFT_DEFAULTS[model_type])
    default = {n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in leaves}
    adapted = {t.name for t in find_targets(model, roles_of(name))}
    assert default and default <= adapted


def _as_unknown(model):
    model.config.model_type = "mystery"
    return model


def test_unknown_model_type_falls_back_to_usual_module_names():
    known = ailora.apply(tiny("llama"), method="ailora", rank=2)
    with pytest.warns(UserWarning, match="'mystery' is not in ailora's table.*query=model.layers.N.self_attn.q_proj"):
        model = ailora.apply(_as_unknown(tiny("llama")), method="ailora", rank=2)
    assert model.ailora_state.roles_source == "fallback"
    assert model.ailora_state.report()["roles_source"] == "fallback"
    assert model.ailora_state.targets.keys() == known.ailora_state.targets.keys()
    for name, (a, b) in known.ailora_state.initial.items():
        torch.testing.assert_close(model.ailora_state.initial[name][0], a, atol=0, rtol=0)
        torch.testing.assert_close(model.ailora_state.initial[name][1], b, atol=0, rtol=0)


def test_fallback_refuses_ambiguous_names():
    """T5 has a q in self-attention and another in cross-attention: the fallback does not guess."""
    with pytest.raises(AiloraError, match="not known for model type 'mystery' .*ambiguous here.*EncDecAttention"):
        ailora.apply(_as_unknown(tiny("t5")), method="ailora", rank=2)
    # a fused query_key_value has no usual name: named rows are needed
    with pytest.raises(AiloraError, match="role 'query' is not known for model type 'mystery'"):
        ailora.apply(_as_unknown(tiny_architecture("gpt_neox")), method="ailora", rank=2)


@pytest.mark.parametrize("query, value", [
    ((r"attention\.query_key_value", "heads:0/3:4"), r"attention\.query_key_value@heads:2/3:4"),
    ([(r"query_key_value", "rows:0:8,24:32,48:56,72:80")], [r"query_key_value@rows:16:24,40:48,64:72,88:96"]),
])
def test_user_described_fused_layout_matches_the_built_in_one(query, value):
    known = ailora.apply(tiny_architecture("gpt_neox"), method="ailora", rank=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = ailora.apply(_as_unknown(tiny_architecture("gpt_neox")), method="ailora", rank=2,
                             modules={"query": query, "value": value})
    assert not [w for w in caught if "ailora's table" in str(w.message)]  # named rows: no fallback warning
    assert model.ailora_state.roles_source == "modules"
    assert {n: t.blocks for n, t in model.ailora_state.targets.items()} == \
        {n: t.blocks for n, t in known.ailora_state.targets.items()}
    for name, (_, b) in known.ailora_state.initial.items():
        torch.testing.assert_close(model.ailora_state.initial[name][1], b, atol=0, rtol=0)


@pytest.mark.parametrize("modules, message", [
    ({"query": [("query_key_value", "rows:8:2")]}, "needs START < STOP"),
    ({"query": ["query_key_value@heads:3/3:4"]}, "needs 0 <= I < K"),
    ({"query": ["query_key_value@columns:0:8"]}, "bad row description 'columns:0:8'; expected rows:START:STOP"),
    ({"query": ["query_key_value@block:0/5"]}, "has 96 rows, not divisible into 1 x 5 equal parts"),
    ({"query": ["query_key_value@rows:0:200"]}, "run past the 96 rows"),
    ({"query": [("query_key_value", 3)]}, "bad modules entry"),
    ({"query": ["query_key_value@block:0/3"], "value": ["query_key_value@rows:16:40"]}, "claimed twice"),
])
def test_bad_row_descriptions_are_one_line_errors(modules, message):
    base = _as_unknown(tiny_architecture("gpt_neox"))
    before = {n: p.clone() for n, p in base.state_dict().items()}
    targets = list(modules)
    with pytest.raises(AiloraError, match=re.escape(message)) as err:
        ailora.apply(base, method="ailora", rank=2, targets=targets, modules=modules)
    assert "\n" not in str(err.value)
    assert all(torch.equal(before[n], p) for n, p in base.state_dict().items())  # nothing touched


def test_blocks_index_contiguous_rows_by_slice_and_interleaved_rows_by_index():
    total, roles = periodic(2, [("query", 3), ("key", 1), ("value", 1)])
    assert total == 10 and roles["query"] == ((0, 3), (5, 8)) and roles["value"] == ((4, 5), (9, 10))
    blk = Block("query", roles["query"])
    assert blk.size == 6 and blk.rows.tolist() == [0, 1, 2, 5, 6, 7]
    assert blk.describe() == {"role": "query", "rows": [[0, 3], [5, 8]]}
    with pytest.raises(ValueError, match="index with .rows"):
        _ = blk.start
    contiguous = Block.span("query", 0, 4)
    assert contiguous.rows == slice(0, 4) and contiguous.describe() == {"role": "query", "start": 0, "stop": 4}
    assert RowSpec("heads:1/3:2").spans("m", 12) == ((2, 4), (8, 10))
    assert RowSpec("block:2/3").spans("m", 12) == ((8, 12),)


def test_ls_architectures_lists_every_family(capsys):
    assert main(["ls", "architectures"]) == 0
    out = capsys.readouterr().out
    for model_type in ["opt", "gpt_neox", "falcon", "gptj", "phi", "stablelm", "gpt_bigcode", "bloom", "modernbert"]:
        assert re.search(rf"^  {model_type} ", out, re.M), model_type
    assert "per head [q|k|v]" in out and "(other)" in out
