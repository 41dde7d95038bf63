"""Tier 1: the output check of ``apply`` (per layer, and nothing else touched) catches planted bugs."""

from __future__ import annotations

import re

import pytest
import torch

import ailora
import ailora.core.apply as apply_module
from ailora.core.probe import snapshot, untouched
from ailora.errors import AiloraError, ExactnessError
from tests.tiny_models import tiny, tiny_unknown_architecture


def _plant_in_residual(monkeypatch, victim: str, corrupt) -> None:
    """A planted bug: the residual stored for ``victim`` is ``corrupt(stored)`` (the layout the module keeps)."""
    real = apply_module.residual_weight

    def planted(w, t, a, b, scaling, residual_dtype):
        out, rounding = real(w, t, a, b, scaling, residual_dtype)
        return (corrupt(out.clone()) if t.name == victim else out), rounding

    monkeypatch.setattr(apply_module, "residual_weight", planted)


def _one_wrong_entry(w: torch.Tensor) -> torch.Tensor:
    w[3, 5] += 0.01  # 100 times the fp32 tolerance, in one entry of one layer
    return w


def test_one_corrupted_residual_entry_is_caught_and_names_the_layer(monkeypatch):
    victim = "model.layers.1.self_attn.v_proj"
    _plant_in_residual(monkeypatch, victim, _one_wrong_entry)
    with pytest.raises(ExactnessError, match=f"layer {re.escape(victim)} changed its outputs by"):
        ailora.apply(tiny("llama"), method="ailora", rank=2, solver="fast")


def test_a_transposed_residual_is_caught():
    """Conv1D keeps W as (in, out): a residual stored as (out, in) has the right shape for a square
    layer (GPT-2's c_proj) and the wrong layout."""
    victim = "transformer.h.0.attn.c_proj"
    with pytest.MonkeyPatch.context() as mp:
        _plant_in_residual(mp, victim, lambda w: w.T.contiguous())
        with pytest.raises(ExactnessError, match=f"layer {re.escape(victim)} changed its outputs by"):
            ailora.apply(tiny("gpt2"), method="pissa", rank=2, targets=["output"])
    ailora.apply(tiny("gpt2"), method="pissa", rank=2, targets=["output"])  # the real layout passes


def test_fused_blocks_written_to_the_wrong_rows_are_caught(monkeypatch):
    """GPT-2's c_attn holds Q, K, V as columns 0:32, 32:64, 64:96 of its (in, out) weight: a residual
    with K and V exchanged is a wrong fused layout."""
    victim = "transformer.h.1.attn.c_attn"

    def swap_k_v(w):
        return torch.cat([w[:, :32], w[:, 64:], w[:, 32:64]], dim=1)

    _plant_in_residual(monkeypatch, victim, swap_k_v)
    with pytest.raises(ExactnessError, match=f"layer {re.escape(victim)} changed its outputs by"):
        ailora.apply(tiny("gpt2"), method="ailora", rank=2)


def _plant_after_writing(monkeypatch, harm) -> None:
    """A planted bug: after the adapters are written, ``harm(peft_model)`` changes something else."""
    real = apply_module.mark_residual_form

    def planted(peft_model, state):
        harm(peft_model.base_model.model)
        return real(peft_model, state)

    monkeypatch.setattr(apply_module, "mark_residual_form", planted)


@pytest.mark.parametrize("harm, named", [
    (lambda m: m.model.norm.weight.data.mul_(1.01), "model.norm.weight"),  # a parameter written in place
    (lambda m: setattr(m.model.layers[0], "mlp", type(m.model.layers[0].mlp)(m.config)), "model.layers.0.mlp"),
    (lambda m: m.model.rotary_emb.inv_freq.mul_(2), "model.rotary_emb.inv_freq"),  # a buffer
    (lambda m: setattr(m.model.layers[1].input_layernorm, "weight",
                       torch.nn.Parameter(m.model.layers[1].input_layernorm.weight.detach().clone())),
     "model.layers.1.input_layernorm.weight"),  # a parameter replaced by an equal copy: still not the same
])
def test_a_change_outside_the_adapted_layers_is_caught_and_named(monkeypatch, harm, named):
    _plant_after_writing(monkeypatch, harm)
    with pytest.raises(ExactnessError, match=f"changed more than the adapted layers: .*{re.escape(named)}"):
        ailora.apply(tiny("llama"), method="ailora", rank=2)


def test_adapters_on_a_module_that_is_not_a_target_are_caught(monkeypatch):
    real = apply_module.lora_config

    def planted(layout, options):
        cfg = real(layout, options)
        cfg.target_modules = set(cfg.target_modules) | {"model.layers.0.self_attn.k_proj"}
        return cfg

    monkeypatch.setattr(apply_module, "lora_config", planted)
    with pytest.raises(ExactnessError, match="model.layers.0.self_attn.k_proj"):
        ailora.apply(tiny("llama"), method="ailora", rank=2)


def test_untouched_reports_what_it_compared_and_heads_pass():
    model = ailora.apply(tiny("bert"), method="ailora", rank=2)  # BERT's classifier: a modules_to_save copy
    check = model.ailora_state.check
    assert check["untouched"]["passed"] and check["untouched"]["changed"] == []
    assert check["untouched"]["tensors"] > 10 and check["passed"]
    assert model.ailora_state.head == ["classifier"]


def test_snapshot_leaves_out_only_the_replaced_weights():
    base = tiny("llama")
    snap = snapshot(base, ["model.layers.0.self_attn.q_proj"])
    names = {f"{m}.{a}" for m, _, a, _, _ in snap.tensors}
    assert "model.layers.0.self_attn.q_proj.weight" not in names and "model.layers.0.self_attn.k_proj.weight" in names
    assert untouched(base, snap, [])["passed"]


def test_unknown_architecture_and_full_check_run_the_end_to_end_probe():
    base = tiny_unknown_architecture("bert")
    model = ailora.apply(base, method="ailora", rank=2, modules={"query": [r"self\.query"], "value": [r"self\.value"]})
    assert model.ailora_state.check["probe"] == {"input_ids": [1, 8], "attention_mask": [1, 8]}
    assert model.ailora_state.check["passed"]
    with pytest.raises(AiloraError, match="check must be True, False or 'full', got 'yes'"):
        ailora.apply(tiny("llama"), check="yes")
