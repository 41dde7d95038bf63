"""Tier 1: QAILoRA (``apply(..., quantize=...)``, ``ailora.core.quantize``) on tiny models.

Every start over a bitsandbytes residual, each quant type: PEFT's LoRA layer for bitsandbytes, each
adapted layer computing exactly deq(Q(W_res)) x + s B (A x), the reported errors recomputed from the
weights, the already-quantised path, save/reload on the original base within the reported error,
training and a bit-exact resume, and each bad input as a one-line error."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import transformers as T
from peft.tuners.lora import bnb as peft_bnb
from torch import nn

import ailora
from ailora.core import quantize as Q
from ailora.core.apply import ApplyOptions
from ailora.errors import AiloraError
from tests.test_train import _cfg, bert_dir  # noqa: F401  (a fixture)
from tests.tiny_models import build, save_tiny_llama, tiny

STARTS = ["ailora", "pissa", "milora", "reailora", "lora"]


def _rel(diff: torch.Tensor, ref: torch.Tensor) -> float:
    return (diff.norm() / ref.norm()).item()


def _weights(model: nn.Module, names) -> dict[str, torch.Tensor]:
    return {n: model.get_submodule(n).weight.detach().float().clone() for n in names}


def _start_weight(layer, state, name) -> torch.Tensor:
    """deq(Q(W_res)) + s B0 A0 of an adapted quantised layer: (out, in)."""
    a0, b0 = state.initial[name]
    return Q.dequantize(layer.get_base_layer()) + layer.scaling["default"] * b0 @ a0


@pytest.mark.parametrize("quant", ["nf4", "fp4", "int8"])
@pytest.mark.parametrize("method", STARTS)
def test_every_start_over_a_quantised_residual(quant, method):
    model = tiny("llama")
    targets = [n for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj"))]
    original = _weights(model, targets)
    pm = ailora.apply(model, method=method, rank=4, quantize=quant)
    state = pm.ailora_state
    inner = pm.base_model.model
    assert state.check["layers"]["passed"] and state.check["untouched"]["passed"]
    assert state.check["layers"]["count"] == len(targets)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    for rec in state.layers:
        layer = inner.get_submodule(rec.name)
        assert type(layer) is (peft_bnb.Linear8bitLt if quant == "int8" else peft_bnb.Linear4bit)  # PEFT's own
        assert rec.residual_dtype == quant and Q.quant_type_of(layer.get_base_layer()) == quant
        a, b = (p.weight for p in (layer.lora_A["default"], layer.lora_B["default"]))
        with torch.no_grad():
            expected = Q.base_reference(layer.get_base_layer(), x) + layer.scaling["default"] * (x @ a.T) @ b.T
            assert torch.allclose(layer.eval()(x), expected, atol=1e-5)
        # The reported error, recomputed from the weights.
        w, start = original[rec.name], _start_weight(layer, state, rec.name)
        role = rec.roles[0]
        reported = rec.quant["by_role"][role]
        assert reported["error"] == pytest.approx(_rel(w - start, w), rel=1e-4)
        plain = Q.dequantize(Q.quantise_weight(w, None, Q.QuantSpec(quant), torch.float32, "cpu"))
        assert reported["qlora_error"] == pytest.approx(_rel(w - plain, w), rel=1e-4)
        if rec.inits[0] == "lora":  # QLoRA itself: B0 = 0, the same quantised W
            assert reported["error"] == reported["qlora_error"]
    roles = state.quantization["roles"]
    assert set(roles) == {"query", "value"} and state.quantization["unadapted_quantised"] > 0
    if method in ("pissa", "ailora"):  # the principal start takes the largest directions out of the quantiser
        assert roles["query"]["mean_ratio"] < 1
    assert all(not isinstance(m, nn.Linear) or Q.is_quantised(m) or n.endswith("lm_head") or "lora_" in n
               or n.endswith(("q_proj", "v_proj")) for n, m in inner.named_modules())


def test_iterations_reduce_the_principal_error_and_leave_minor_blocks():
    pm = ailora.apply(tiny("llama"), method="ailora", rank=4, quantize="nf4", quant_iters=3)
    for rec in pm.ailora_state.layers:
        errs = rec.quant["by_role"][rec.roles[0]]["errors_by_iteration"]
        if rec.inits[0] == "principal":
            assert len(errs) == 4 and errs[-1] < errs[0]
        else:  # a minor start keeps its factors: one pass
            assert len(errs) == 1
    iters = pm.ailora_state.quantization["roles"]["query"]["mean_error_by_iteration"]
    assert len(iters) == 4 and iters[-1] < iters[0]


def test_keep_unadapted_and_double_quant():
    pm = ailora.apply(tiny("bert"), method="pissa", rank=4, quantize="nf4", quant_keep=True, quant_double=True)
    inner = pm.base_model.model
    assert pm.ailora_state.quantization["unadapted_quantised"] == 0
    assert type(inner.get_submodule("bert.encoder.layer.0.attention.self.key")) is nn.Linear
    base = inner.get_submodule("bert.encoder.layer.0.attention.self.query").get_base_layer()
    assert base.weight.compress_statistics and base.weight.quant_state.nested


def test_from_an_already_quantised_model(tmp_path):
    save_tiny_llama(tmp_path)
    cfg = T.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=cfg, device_map="cpu")
    with pytest.raises(AiloraError, match="pass quantize='nf4'") as err:
        ailora.apply(loaded, method="pissa", rank=4)
    assert "\n" not in str(err.value)
    name = "model.layers.0.self_attn.q_proj"
    deq = Q.dequantize(loaded.get_submodule(name))
    pm = ailora.apply(loaded, method="pissa", rank=4, quantize="nf4")
    state = pm.ailora_state
    assert state.quantization["start_from"] == "dequantised weight"
    rec = next(r for r in state.layers if r.name == name)
    assert rec.quant["by_role"]["query"]["qlora_error"] is None  # QLoRA starts from exactly the loaded weights
    # The start was taken from the dequantised weight: the same factors as PiSSA on it in float32.
    plain = build("llama", dropout=False, vocab_size=loaded.config.vocab_size)
    with torch.no_grad():
        plain.get_submodule(name).weight.copy_(deq)
    ref = ailora.apply(plain, method="pissa", rank=4, targets=["query"])
    assert torch.equal(state.initial[name][0], ref.ailora_state.initial[name][0])
    layer = pm.base_model.model.get_submodule(name)
    assert rec.quant["by_role"]["query"]["error"] == pytest.approx(_rel(deq - _start_weight(layer, state, name), deq),
                                                                   rel=1e-4)


def test_save_reloads_on_the_original_base_within_the_reported_error(tmp_path):
    original = tiny("llama")
    pm = ailora.apply(copy.deepcopy(original), method="ailora", rank=4, quantize="nf4")
    state = pm.ailora_state
    with torch.no_grad():  # stand-in for training: move every factor
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))))
    meta = ailora.save(pm, tmp_path / "adapter")
    assert meta["quantization"]["type"] == "nf4"
    assert "nf4" in (tmp_path / "adapter" / "README.md").read_text()
    loaded = ailora.load(original, tmp_path / "adapter").base_model.model
    bound = meta["quantization"]["saved_adapter"]["on_original_base"]["max_weight_rel_error"]
    for rec in state.layers:
        trained = pm.base_model.model.get_submodule(rec.name)
        on_original = loaded.get_submodule(rec.name)
        eff_trained = Q.dequantize(trained.get_base_layer()) + trained.get_delta_weight("default")
        eff_original = on_original.get_base_layer().weight + on_original.get_delta_weight("default")
        w = on_original.get_base_layer().weight
        diff = _rel(eff_original - eff_trained, w)
        assert diff == pytest.approx(rec.quant["by_role"][rec.roles[0]]["error"], rel=1e-3) and diff <= bound * 1.001
    with pytest.raises(AiloraError, match="quantised base"):
        ailora.merge(pm)


def test_bad_inputs_are_one_line_errors(monkeypatch):
    cases = [
        (lambda: ApplyOptions.of(quantize="nf3"), "quantize must be one of nf4, fp4, int8"),
        (lambda: ApplyOptions.of(quant_iters=2), "quantize must be nf4, fp4 or int8 for quant_iters"),
        (lambda: ApplyOptions.of(quantize="int8", quant_double=True), "applies to nf4 and fp4 only"),
        (lambda: ApplyOptions.of(quantize="nf4", quant_iters=-1), "non-negative"),
        (lambda: ailora.apply(tiny("llama"), quantize="nf4", use_dora=True), "DoRA"),
        (lambda: ailora.apply(tiny("gpt2"), quantize="nf4"), "Conv1D"),
    ]
    for make, match in cases:
        with pytest.raises(AiloraError, match=match) as err:
            make()
        assert "\n" not in str(err.value)
    model = tiny("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(AiloraError, match="needs bitsandbytes") as err:
        ailora.apply(model, quantize="nf4")
    assert "\n" not in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing touched


def test_baselines_refuse_quantize(tmp_path):
    from ailora.train import RunConfig
    from ailora.train.loop import train

    for name in ("vera", "houlsby", "full", "bitfit"):  # refused as the config is read, before any model loads
        with pytest.raises(AiloraError, match=f"method.quantize='nf4' does not apply to method {name}") as err:
            train(RunConfig.from_dict({"model": {"name": "unused"}, "task": {"name": "tiny-sentiment"},
                                       "run_dir": str(tmp_path / name), "method": {"name": name, "quantize": "nf4"}}))
        assert "\n" not in str(err.value) and not (tmp_path / name).exists()


def test_train_and_resume_bit_exact(bert_dir, tmp_path):  # noqa: F811  (the fixture)
    from safetensors.torch import load_file

    from ailora.train import train

    over = ["method.quantize=nf4", "method.quant_iters=1", "train.epochs=2", "train.grad_accum=2",
            "task.max_train_samples=48", "method.dropout=0.1"]
    full = train(_cfg(bert_dir, tmp_path / "full", *over))
    assert full["status"] == "complete"
    part = train(_cfg(bert_dir, tmp_path / "part", *over, "train.stop_after_steps=3"))
    assert part["status"] == "interrupted"
    resumed = train(_cfg(bert_dir, tmp_path / "part", *over, "resume=true"))
    assert resumed["resumed"] and resumed["steps"] == full["steps"] and resumed["test"] == full["test"]
    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "part" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    import json

    meta = json.loads((tmp_path / "full" / "adapter" / "ailora.json").read_text())
    assert meta["quantization"]["type"] == "nf4" and meta["quantization"]["iters"] == 1


def test_cli_init_quantize(tmp_path, capsys):
    import json

    from ailora.cli import main

    save_tiny_llama(tmp_path / "m")
    assert main(["init", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "a"), "--method", "pissa",
                 "--rank", "4", "--quantize", "fp4", "--quant-iters", "1", "--quiet"]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["quantization"]["type"] == "fp4" and report["layers"][0]["quant"]["by_role"]
    assert "kernels" not in capsys.readouterr().err


def test_streaming_init_loads_quantised(tmp_path):
    from ailora.core.streaming import initialise_checkpoint

    save_tiny_llama(tmp_path / "m")
    options = ApplyOptions.of("ailora", rank=4, quantize="nf4")
    initialise_checkpoint(tmp_path / "m", tmp_path / "res", options)
    streamed = ailora.load_initialised(tmp_path / "res")  # the init's --quantize, through BitsAndBytesConfig
    inner = streamed.base_model.model
    assert getattr(inner, "is_loaded_in_4bit", False)
    assert Q.is_quantised(inner.get_submodule("model.layers.0.mlp.up_proj"))  # loaded quantised by transformers
    direct = ailora.apply(T.AutoModelForCausalLM.from_pretrained(tmp_path / "m"), method="ailora", rank=4,
                          quantize="nf4")
    s, d = streamed.ailora_state, direct.ailora_state
    for name, (a0, b0) in d.initial.items():  # same factors, same quantised residuals, same reported errors
        assert torch.equal(s.initial[name][0], a0) and torch.equal(s.initial[name][1], b0)
        ours = Q.dequantize(inner.get_submodule(name).get_base_layer())
        assert torch.equal(ours, Q.dequantize(direct.base_model.model.get_submodule(name).get_base_layer()))
    for rs, rd in zip(s.layers, d.layers, strict=True):
        for role, rec in rd.quant["by_role"].items():
            assert rs.quant["by_role"][role]["error"] == pytest.approx(rec["error"], rel=1e-4)
            assert rs.quant["by_role"][role]["qlora_error"] == pytest.approx(rec["qlora_error"], rel=1e-4)
    with pytest.raises(AiloraError, match="quant_iters needs") as err:
        initialise_checkpoint(tmp_path / "m", tmp_path / "res2", ApplyOptions.of(quantize="nf4", quant_iters=1))
    assert "\n" not in str(err.value) and not (tmp_path / "res2").exists()


@pytest.mark.slow
def test_smollm2_qailora_end_to_end(tmp_path):
    """Tier 3: the real SmolLM2 (its float32 cache) over an nf4 residual: PEFT's bnb layers, the principal
    role closer to W than QLoRA, a training step moving only the adapters, save on the original base."""
    from ailora.core.models import load_model, smollm2_dir

    original = load_model(smollm2_dir()).eval()
    pm = ailora.apply(copy.deepcopy(original), method="ailora", rank=8, quantize="nf4", quant_iters=1, progress=False)
    state = pm.ailora_state
    assert state.check["layers"]["passed"] and state.check["untouched"]["passed"]
    roles = state.quantization["roles"]
    assert roles["query"]["mean_ratio"] < 1 and roles["value"]["mean_ratio"] is not None
    assert all(isinstance(pm.base_model.model.get_submodule(r.name), peft_bnb.Linear4bit) for r in state.layers)
    ids = torch.randint(0, original.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    frozen = {n: p.detach().clone() for n, p in pm.named_parameters() if not p.requires_grad and p.is_floating_point()}
    pm.train()
    loss = pm(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=1e-2).step()
    assert torch.isfinite(loss)
    assert all(torch.equal(p, frozen[n]) for n, p in pm.named_parameters() if n in frozen)
    pm.eval()
    meta = ailora.save(pm, tmp_path / "adapter")
    loaded = ailora.load(original, tmp_path / "adapter").base_model.model
    name = state.layers[0].name
    trained, on_original = pm.base_model.model.get_submodule(name), loaded.get_submodule(name)
    w = on_original.get_base_layer().weight
    diff = _rel(on_original.get_base_layer().weight + on_original.get_delta_weight("default")
                - Q.dequantize(trained.get_base_layer()) - trained.get_delta_weight("default"), w)
    assert diff == pytest.approx(state.layers[0].quant["by_role"]["query"]["error"], rel=1e-3)
    assert diff <= meta["quantization"]["saved_adapter"]["on_original_base"]["max_weight_rel_error"] * 1.001


def test_end_to_end_probe_is_reported_and_bfloat16_runs():
    """check="full" (or an unknown architecture): the whole-model probe difference is the quantisation
    error, recorded rather than checked; a bfloat16 model computes in bfloat16 over its 4-bit residuals."""
    pm = ailora.apply(tiny("llama"), method="pissa", rank=4, quantize="nf4", check="full")
    probe = pm.ailora_state.quantization["probe"]
    assert probe["max_abs_diff"] > 0 and pm.ailora_state.check["layers"]["passed"]
    half = ailora.apply(tiny("llama").to(torch.bfloat16), method="ailora", rank=4, quantize="fp4")
    base = half.base_model.model.get_submodule(half.ailora_state.layers[0].name).get_base_layer()
    assert base.compute_dtype == torch.bfloat16 and half.ailora_state.check["layers"]["passed"]
