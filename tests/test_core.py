"""Tier 1: the SVD-initialised family on tiny random models of every architecture family."""

from __future__ import annotations

import copy
import re

import peft
import pytest
import torch

import ailora
from ailora.core.apply import ApplyOptions, apply_with, state_of
from ailora.core.probe import make_probe, run_probe
from ailora.core.roles import find_targets, weight_of
from ailora.errors import AiloraError, ExactnessError
from tests.tiny_models import FAMILIES, tiny, tiny_unknown_architecture, tiny_with_linear

METHODS = ["lora", "pissa", "milora", "ailora", "reailora"]
ARCHS = list(FAMILIES)


def perturb(model, scale=0.2, seed=1):
    """Stand-in for training: move every trainable tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_outputs_unchanged_at_init(arch, method):
    base = tiny(arch)
    probe = make_probe(base)
    before = run_probe(base, probe)
    model = ailora.apply(base, method=method, rank=2)
    assert model.ailora_state.check["passed"]
    assert (run_probe(model, probe) - before).abs().max() <= 1e-4


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("solver", ["exact", "fast"])
def test_residual_plus_adapter_is_w(arch, solver):
    original = tiny(arch)
    weights = {n: weight_of(m).detach().clone() for n, m in original.named_modules() if hasattr(m, "weight")}
    model = ailora.apply(copy.deepcopy(original), method="ailora", rank=3, solver=solver)
    state = model.ailora_state
    s = state.alpha / state.options.rank
    for name in state.targets:
        layer = model.base_model.model.get_submodule(name)
        w_res = weight_of(layer.get_base_layer()).detach()
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        torch.testing.assert_close(w_res + s * (b @ a), weights[name], atol=1e-5, rtol=0)


@pytest.mark.parametrize("solver", ["exact", "fast"])
def test_principal_and_minor_slices_hold_top_and_bottom_singular_values(solver):
    base = tiny("llama")  # grouped-query attention: v_proj is (16, 32), q_proj (32, 32)
    original = {n: weight_of(m).detach().clone() for n, m in base.named_modules() if hasattr(m, "weight")}
    r = 4
    model = ailora.apply(base, method="ailora", rank=r, solver=solver)
    for rec in model.ailora_state.layers:
        sv = torch.linalg.svdvals(original[rec.name].double())
        (role,) = rec.roles
        want = sv[:r] if role == "query" else sv[-r:]
        tol = 1e-5 if solver == "exact" or role == "value" else 1e-3
        torch.testing.assert_close(torch.tensor(rec.singular_values[role], dtype=torch.double), want,
                                   atol=tol * sv[0].item(), rtol=0)
        layer = model.base_model.model.get_submodule(rec.name)
        delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        torch.testing.assert_close(torch.linalg.svdvals(delta.double())[:r], want, atol=tol * sv[0].item(), rtol=0)
    shapes = {rec.roles[0]: rec.shape for rec in model.ailora_state.layers}
    assert shapes["value"][0] == 16 and shapes["query"][0] == 32


@pytest.mark.parametrize("arch", ["gpt2", "phi3"])
def test_fused_blocks_get_own_start_and_stay_separate(arch):
    model = ailora.apply(tiny(arch), method="ailora", rank=2)
    fused = [t for t in model.ailora_state.targets.values() if t.fused]
    assert fused and all(t.roles == ("query", "value") for t in fused)
    rec = next(r for r in model.ailora_state.layers if r.name == fused[0].name)
    assert rec.inits == ["principal", "minor"] and rec.rank == 4
    opt = torch.optim.AdamW(ailora.param_groups(model, lr=1e-2), weight_decay=0.1)
    probe = make_probe(model)
    for _ in range(3):
        out = model(**probe).logits
        out.square().mean().backward()
        opt.step()
        opt.zero_grad()
    for t in fused:
        b = model.base_model.model.get_submodule(t.name).lora_B["default"].weight
        (q, v) = t.blocks
        assert b[q.start:q.stop, 2:].abs().max() == 0 and b[v.start:v.stop, :2].abs().max() == 0
        assert b[q.start:q.stop, :2].abs().max() > 0
        key_rows = b[q.stop:v.start]
        assert key_rows.abs().max() == 0  # the key block is not adapted


def test_phi3_gqa_fused_block_sizes():
    targets = find_targets(tiny("phi3"), ["query", "key", "value"])
    blocks = {b.role: b.stop - b.start for b in targets[0].blocks}
    assert blocks == {"query": 32, "key": 16, "value": 16}


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_adapter_reproduces_trained_model_on_original_base(arch, tmp_path):
    original = tiny(arch)
    model = ailora.apply(copy.deepcopy(original), method="ailora", rank=2)
    perturb(model)
    probe = make_probe(model)
    trained = run_probe(model, probe)
    assert (trained - run_probe(original, probe)).abs().max() > 1e-3  # training really moved it
    meta = ailora.save(model, tmp_path / "adapter")
    assert all(m["rank"] == 2 * m["trained_rank"] for m in meta["modules"].values())
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(original), str(tmp_path / "adapter"))
    assert (run_probe(loaded, probe) - trained).abs().max() <= 1e-4


def test_compression_reports_error_and_is_lossless_at_true_rank(tmp_path):
    original = tiny("bert")
    model = ailora.apply(copy.deepcopy(original), method="pissa", rank=4)
    perturb(model)
    probe = make_probe(model)
    trained = run_probe(model, probe)
    lossless = ailora.save(model, tmp_path / "r8", rank=8)  # rank of B'A' is at most 2r = 8
    assert lossless["max_relative_error"] < 1e-6
    lossy = ailora.save(model, tmp_path / "r2", rank=2)
    assert 0 < lossy["max_relative_error"] < 1
    for sub, tol in [("r8", 1e-4), ("r2", None)]:
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(original), str(tmp_path / sub))
        diff = (run_probe(loaded, probe) - trained).abs().max()
        assert diff <= tol if tol else diff > 1e-6


def test_merge_and_unmerge_are_exact():
    model = ailora.apply(tiny("llama"), method="ailora", rank=2)
    perturb(model)
    probe = make_probe(model)
    before = run_probe(model, probe)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    assert ailora.merge(model)["passed"]
    changed = [n for n, p in model.named_parameters() if "base_layer" in n and not torch.equal(p, weights[n])]
    assert changed
    ailora.unmerge(model)
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], atol=1e-6, rtol=0)
    assert (run_probe(model, probe) - before).abs().max() <= 1e-5


def test_merge_to_dir_writes_full_model(tmp_path):
    model = ailora.apply(tiny("bert"), method="milora", rank=2)
    perturb(model)
    probe = make_probe(model)
    before = run_probe(model, probe)
    ailora.merge_to_dir(model, tmp_path / "merged")
    from transformers import BertForSequenceClassification
    merged = BertForSequenceClassification.from_pretrained(tmp_path / "merged", use_safetensors=True)
    assert (run_probe(merged, probe) - before).abs().max() <= 1e-4


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_only_adapter_and_head_train(arch):
    model = ailora.apply(tiny(arch), method="ailora", rank=2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_" in n or "modules_to_save" in n for n in names)
    if arch == "bert":
        assert any("classifier" in n for n in names)


@pytest.mark.parametrize("solver", ["exact", "fast"])
@pytest.mark.parametrize("method", ["ailora", "lora"])
def test_deterministic(solver, method):
    a = ailora.apply(tiny("bert"), method=method, rank=3, solver=solver, seed=7)
    b = ailora.apply(tiny("bert"), method=method, rank=3, solver=solver, seed=7)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na


def test_param_groups_value_gets_twice_query_lr():
    model = ailora.apply(tiny("bert"), method="ailora", rank=2)
    groups = {g["name"]: g for g in ailora.param_groups(model, lr=1e-3)}
    assert groups["query"]["lr"] == 1e-3 and groups["value"]["lr"] == 2e-3
    assert "head" in groups or "head.no_decay" in groups
    groups = {g["name"]: g for g in ailora.param_groups(model, lr=1e-3, value_lr_ratio=4)}
    assert groups["value"]["lr"] == 4e-3
    lora = {g["name"]: g for g in ailora.param_groups(ailora.apply(tiny("bert"), method="lora"), lr=1e-3)}
    assert lora["value"]["lr"] == 1e-3
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == n_trainable


def test_per_role_policy_gives_any_role_any_start():
    model = ailora.apply(tiny("bert"), method="ailora", rank=2,
                         policy="query=principal,value=minor,key=lora,output=principal")
    inits = {rec.roles[0]: rec.inits[0] for rec in model.ailora_state.layers}
    assert inits == {"query": "principal", "value": "minor", "key": "lora", "output": "principal"}
    assert model.ailora_state.check["passed"]


def test_unknown_architecture_by_naming_modules():
    """BERT's query and value have their usual names (the fallback finds them, tests/test_architectures.py);
    its FFN's ``intermediate.dense`` has no usual name, so ``up`` must be named."""
    base = tiny_unknown_architecture("bert")
    with pytest.raises(AiloraError, match="'up' is not known for model type 'mystery'.*intermediate.dense"):
        ailora.apply(copy.deepcopy(base), method="ailora", targets=["query", "up"])
    model = ailora.apply(base, method="ailora", rank=2, targets=["query", "value", "up"],
                         modules={"query": [r"self\.query"], "value": [r"self\.value"], "up": [r"intermediate\.dense"]})
    assert len(model.ailora_state.targets) == 6 and model.ailora_state.roles_source == "modules"


def test_bfloat16_model_decomposes_in_fp32_and_keeps_outputs():
    base = tiny("llama").to(torch.bfloat16)
    model = ailora.apply(base, method="ailora", rank=2)
    dtypes = {rec.residual_dtype for rec in model.ailora_state.layers}
    assert dtypes <= {"float32", "bfloat16"} and model.ailora_state.check["passed"]
    forced = ailora.apply(tiny("llama").to(torch.bfloat16), method="ailora", rank=2, residual_dtype="float32")
    assert {rec.residual_dtype for rec in forced.ailora_state.layers} == {"float32"}


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_float32_residual_in_bfloat16_model_with_bias_runs_and_reloads(arch, tmp_path):
    """A float32 residual inside a bf16 model whose layers have a bias (BERT's Linear, GPT-2's Conv1D)
    runs in float32 with its bias lifted to float32, passes the check, and the saved adapter
    reproduces it on the original bf16 base."""
    original = tiny(arch).to(torch.bfloat16)
    model = ailora.apply(copy.deepcopy(original), method="ailora", rank=2, residual_dtype="float32")
    assert {rec.residual_dtype for rec in model.ailora_state.layers} == {"float32"}
    assert model.ailora_state.check["passed"] and model.ailora_state.check["untouched"]["passed"]
    layer = model.base_model.model.get_submodule(model.ailora_state.layers[0].name).get_base_layer()
    assert layer.weight.dtype == layer.bias.dtype == torch.float32
    probe = make_probe(model)
    out, reference = run_probe(model, probe), run_probe(original, probe)
    assert (out - reference).abs().max() <= 1e-2 * reference.abs().max()  # bf16 rounding of activations only
    perturb(model)
    trained = run_probe(model, probe)
    assert (trained - reference).abs().max() > 0.1 * reference.abs().max()  # training really moved it
    ailora.save(model, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(original), str(tmp_path / "adapter"))
    assert (run_probe(loaded, probe) - trained).abs().max() <= 1e-2 * trained.abs().max()


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, "rank must be a positive integer"),
    ({"rank": 17}, "rank 17 exceeds min\\(out, in\\) = 16 of layer model.layers.0.self_attn.v_proj"),
    ({"method": "qlora"}, "unknown method 'qlora'"),
    ({"policy": "query=principal,vaule=minor"}, "unknown role 'vaule'"),
    ({"policy": "query=biggest"}, "unknown init 'biggest'"),
    ({"targets": ["query", "keys"]}, "unknown role 'keys'"),
    ({"solver": "magic"}, "unknown solver 'magic'"),
    ({"modules": {"query": [r"nothing\.here"]}}, "matches no module; linear modules: .*q_proj"),
    ({"modules": {"query": ["q_proj("]}}, "'q_proj\\(' is not a valid regular expression"),
    ({"alpha": float("inf")}, "alpha must be a finite positive number"),
    ({"alpha": float("nan")}, "alpha must be a finite positive number"),
    ({"dropout": 1.5}, "dropout must be a number in \\[0, 1\\)"),
])
def test_bad_arguments_are_one_line_errors_and_leave_model_untouched(kwargs, message):
    base = tiny("llama")
    before = copy.deepcopy(base.state_dict())
    with pytest.raises(AiloraError, match=message) as err:
        ailora.apply(base, **{"method": "ailora", **kwargs})
    assert "\n" not in str(err.value)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    assert not any("lora_" in n for n, _ in base.named_modules())


def test_nan_and_integer_weights_are_refused():
    base = tiny("bert")
    with torch.no_grad():
        base.bert.encoder.layer[1].attention.self.value.weight[0, 0] = float("nan")
    with pytest.raises(AiloraError, match="layer bert.encoder.layer.1.attention.self.value has NaN or Inf"):
        ailora.apply(base)
    base = tiny("bert")
    layer = base.bert.encoder.layer[0].attention.self.query
    layer.weight = torch.nn.Parameter(layer.weight.detach().to(torch.int8), requires_grad=False)
    with pytest.raises(AiloraError, match="quantised or integer weights"):
        ailora.apply(base)


def test_adapter_dir_errors(tmp_path):
    original = tiny("bert")
    model = ailora.apply(copy.deepcopy(original), method="ailora", rank=2)
    ailora.save(model, tmp_path / "ok")
    with pytest.raises(AiloraError, match="is not empty"):
        ailora.save(model, tmp_path / "ok")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "adapter_config.json").write_text((tmp_path / "ok" / "adapter_config.json").read_text())
    with pytest.raises(AiloraError, match="missing adapter_model.safetensors"):
        ailora.load(copy.deepcopy(original), tmp_path / "partial")
    with pytest.raises(AiloraError, match="does not exist"):
        ailora.load(copy.deepcopy(original), tmp_path / "nope")
    other = tiny_with_linear("bert", "bert.encoder.layer.0.attention.self.query", 32, 16)
    with pytest.raises(AiloraError, match="shape .* expected .* layer bert.encoder.layer.0.attention.self.query"):
        ailora.load(other, tmp_path / "ok")


def test_state_of_is_the_attached_state_and_state_arguments_override_it(tmp_path):
    assert state_of(tiny("bert")) is None
    model = ailora.apply(tiny("bert"), method="ailora", rank=2)
    state = state_of(model)
    assert state is model.ailora_state and ailora.state_of(model) is state
    lrs = {g["name"]: g["lr"] for g in ailora.param_groups(model, lr=1e-3)}
    delattr(model, "ailora_state")
    assert {g["name"]: g["lr"] for g in ailora.param_groups(model, lr=1e-3, state=state)} == lrs
    assert "value" not in {g["name"] for g in ailora.param_groups(model, lr=1e-3)}  # no state: no roles
    meta = ailora.save(model, tmp_path / "a", state=state)
    assert meta["method"] == "ailora" and all(m["rank"] == 4 for m in meta["modules"].values())


def test_loraplus_ratio_comes_only_from_the_argument():
    model = ailora.apply(tiny("bert"), method="ailora", rank=2)
    assert not any(g["name"].endswith(".lora_B") for g in ailora.param_groups(model, lr=1e-3))
    groups = {g["name"]: g["lr"] for g in ailora.param_groups(model, lr=1e-3, loraplus_ratio=4)}
    assert groups["value.lora_B"] == pytest.approx(8e-3) and groups["value"] == pytest.approx(2e-3)
    assert "loraplus_ratio" not in state_of(model).metadata()


def test_apply_options_are_checked_when_built_and_apply_with_matches_apply():
    with pytest.raises(AiloraError, match="residual_dtype must be auto, model or float32"):
        ApplyOptions.of(residual_dtype="half")
    with pytest.raises(AiloraError, match="unknown method 'qlora'"):
        ApplyOptions.of(method="qlora")
    a = ailora.apply(tiny("gpt2"), method="ailora", rank=2, solver="fast", seed=3)
    b = apply_with(tiny("gpt2"), ApplyOptions.of(method="ailora", rank=2, solver="fast", seed=3))
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb), na
    assert state_of(b).report()["layers"][0]["inits"] == ["principal", "minor"]


def test_fast_blocks_decomposed_one_by_one_match_the_stacked_path(monkeypatch):
    """Blocks over UNBATCHED_ENTRIES are not stacked: each is decomposed straight from a view of the
    model's weight. Forcing that path on a tiny model gives the stacked path's factors, passes the
    check, and leaves the weights it read unchanged (no solver writes into its input)."""
    import ailora.core.decompose as decompose_module
    import ailora.core.svd as svd_module

    stacked = ailora.apply(tiny("llama"), method="ailora", rank=2, solver="fast")
    monkeypatch.setattr(decompose_module, "UNBATCHED_ENTRIES", 0)
    monkeypatch.setattr(svd_module, "UNBATCHED_ENTRIES", 0)
    base, policy = tiny("llama"), {"query": "principal", "value": "minor"}
    plans = [decompose_module.Plan.empty(t, decompose_module.module_source(base.get_submodule(t.name)), policy, 2,
                                         "cpu") for t in find_targets(base, ["query", "value"])]
    batches = list(decompose_module.batches(plans, policy, "fast"))
    assert batches and all(len(b.members) == 1 for b in batches)
    one_by_one = ailora.apply(tiny("llama"), method="ailora", rank=2, solver="fast")
    assert one_by_one.ailora_state.check["passed"] and one_by_one.ailora_state.check["untouched"]["passed"]
    for (na, pa), (nb, pb) in zip(stacked.state_dict().items(), one_by_one.state_dict().items(), strict=True):
        assert na == nb and torch.allclose(pa, pb, atol=1e-5), na


def test_quiet_progress_silences_the_default_bar_but_not_an_explicit_one(monkeypatch, capsys):
    import ailora.core.decompose as decompose_module

    monkeypatch.setattr(decompose_module, "PROGRESS_MIN_LAYERS", 1)
    ailora.apply(tiny("llama"), rank=2)
    assert "decompose" in capsys.readouterr().err
    with decompose_module.quiet_progress():
        ailora.apply(tiny("llama"), rank=2)
        assert "decompose" not in capsys.readouterr().err
        ailora.apply(tiny("llama"), rank=2, progress=True)
        assert "decompose" in capsys.readouterr().err
    ailora.apply(tiny("llama"), rank=2)
    assert "decompose" in capsys.readouterr().err


def _plant_bad_residual(monkeypatch, victim: str, fraction: float) -> None:
    """A planted bug: the residual of ``victim``'s last block subtracts only ``fraction`` of s B A
    while the adapter keeps all of it (a wrong block, not a wrong model)."""
    import ailora.core.apply as apply_module

    real = apply_module._replace_with_residual

    def planted(base, t, a, b, scaling, residual_dtype):
        if t.name == victim:
            b = b.clone()
            b[t.blocks[-1].rows] *= fraction
        return real(base, t, a, b, scaling, residual_dtype)

    monkeypatch.setattr(apply_module, "_replace_with_residual", planted)


def test_a_non_finite_layer_fails_the_check_and_is_the_one_named(monkeypatch):
    """A NaN difference compares as neither above nor below the tolerance: the check must still fail,
    and name the NaN layer, not whichever layer a max() over NaN ratios happens to return."""
    targets = find_targets(tiny("llama"), ["query", "value"])
    victim = targets[len(targets) // 2].name
    _plant_bad_residual(monkeypatch, victim, float("nan"))
    with pytest.raises(ExactnessError, match=f"layer {re.escape(victim)} changed its outputs to non-finite"):
        ailora.apply(tiny("llama"), method="ailora", rank=2)


def test_merging_an_adapter_gone_nan_is_refused():
    model = ailora.apply(tiny("llama"), method="ailora", rank=2)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("nan"))
    with pytest.raises(ExactnessError, match="merging changed outputs to non-finite"):
        ailora.merge(model)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])  # gpt2: the V block of fused c_attn
def test_planted_bad_residual_is_caught_and_names_the_layer(monkeypatch, arch):
    victim = find_targets(tiny(arch), ["query", "value"])[-1].name
    _plant_bad_residual(monkeypatch, victim, 0.5)
    with pytest.raises(ExactnessError, match=f"layer {re.escape(victim)} changed its outputs by"):
        ailora.apply(tiny(arch), method="ailora", rank=2)
    # the same bug without the check goes through, and the layer computes something else (the
    # model's outputs may move less: a tiny BERT's logits hardly see its last value projection)
    original = tiny(arch).get_submodule(victim)
    unchecked = ailora.apply(tiny(arch), method="ailora", rank=2, check=False)
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (unchecked.base_model.model.get_submodule(victim)(x) - original(x)).abs().max() > 1e-3


def test_per_layer_check_is_recorded_and_the_end_to_end_probe_runs_when_asked():
    model = ailora.apply(tiny("gpt2"), method="pissa", rank=2)
    check = model.ailora_state.check
    assert check["layers"]["count"] == len(model.ailora_state.layers) == 2
    assert check["layers"]["rows"] == 4 and check["layers"]["passed"] and check["passed"]
    assert check["layers"]["worst"] in model.ailora_state.targets
    assert 0 <= check["layers"]["max_abs_diff"] <= check["layers"]["tolerance"] == 1e-4
    assert check["untouched"]["passed"] and "probe" not in check  # a known architecture: no forward
    full = ailora.apply(tiny("gpt2"), method="pissa", rank=2, check="full").ailora_state.check
    assert full["probe"] == {"input_ids": [1, 8], "attention_mask": [1, 8]} and full["passed"]
    assert "layers" not in ailora.apply(tiny("gpt2"), method="pissa", rank=2, check=False).ailora_state.check
