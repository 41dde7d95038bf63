"""The Table 4 baselines: parameter counts, starts, refused combinations, save/load, tiny training runs."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from peft.optimizers import create_loraplus_optimizer

import ailora
from ailora import methods as baselines
from ailora.errors import AiloraError
from ailora.methods import build_options, get_method
from ailora.methods.houlsby import HoulsbyAdapter, add_houlsby
from ailora.methods.select import prepare_bitfit
from ailora.train import RunConfig, check_run, train
from ailora.train.config import MethodConfig
from ailora.train.record import parameter_counts
from tests.test_train import bert_dir  # noqa: F401  (fixture; importing also registers tiny-sentiment)
from tests.tiny_models import V, tiny

D, HEAD = 32, 32 * 2 + 2  # hidden size of the tiny models; the 2-class classifier's weight + bias


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, V, (2, 7), generator=g), "attention_mask": torch.ones(2, 7, dtype=torch.long)}


def _out(model):
    with torch.no_grad():
        return model(**_batch()).logits


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _perturb(model, scale=0.05):
    """Stand in for training: move every trainable tensor."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in _trainable(model).values():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale)


def _prepare(name, **options):
    cfg = MethodConfig(name, build_options(name, options))
    cfg.validate()
    return get_method(name).prepare(tiny("bert"), cfg, 0)  # a Prepared: the model and what was done


def test_houlsby_adapter_has_2md_d_m_parameters_and_starts_near_identity():
    for arch, where in [("bert", ("attention.output.dense", "output.dense")), ("llama", ("o_proj", "down_proj"))]:
        model = tiny(arch)
        before = model(**_batch()).logits.detach()
        names = add_houlsby(model, bottleneck=8, seed=0)
        assert len(names) == 4 and all(n.endswith(where) for n in names)  # 2 layers x (attention, FFN)
        for n in names:
            layer = model.get_submodule(n)
            assert isinstance(layer, HoulsbyAdapter)
            assert sum(p.numel() for k, p in layer.named_parameters() if k.startswith("houlsby_")) == 2 * 8 * D + D + 8
        diff = (model(**_batch()).logits.detach() - before).abs().max().item()
        assert 0 < diff < 1e-4, arch
    with pytest.raises(AiloraError, match="nonlinear"):
        layer.delta_weight()


def test_houlsby_trains_adapters_layernorms_and_head():
    model = _prepare("houlsby", bottleneck=8).model
    names = set(_trainable(model))
    assert all(".houlsby_" in n or "LayerNorm" in n or n.startswith("classifier.") for n in names)
    assert sum(p.numel() for p in _trainable(model).values()) == 4 * (2 * 8 * D + D + 8) + 5 * 2 * D + HEAD


def test_bitfit_trains_only_biases_and_the_head():
    model = tiny("bert")
    names = [n for n, _ in model.named_parameters()]
    model = _prepare("bitfit").model
    want = {n for n in names if n.endswith(".bias") or n.startswith("classifier.")}
    assert set(_trainable(model)) == want and "classifier.weight" in want
    with pytest.raises(AiloraError, match="no bias vectors"):
        prepare_bitfit(tiny("llama"), MethodConfig(name="bitfit"), 0)


def test_baseline_groups_its_own_weights_at_lr_and_the_head_at_head_lr():
    prepared = _prepare("bitfit")
    state = prepared.state
    groups = ailora.param_groups(prepared.model, 1e-3, head_lr=5e-3, head=state.head, own_group=state.method)
    lr_of = {id(p): (g["name"], g["lr"]) for g in groups for p in g["params"]}
    for name, p in _trainable(prepared.model).items():
        expected = ("head", 5e-3) if name.startswith("classifier.") else ("bitfit", 1e-3)
        assert lr_of[id(p)][1] == expected[1] and lr_of[id(p)][0].startswith(expected[0]), name


def test_vera_counts_match_peft_and_leave_out_the_shared_matrices():
    model = _prepare("vera", vera_rank=16).model
    ours = parameter_counts(model)["trainable"]
    reference = peft.get_peft_model(tiny("bert"), peft.VeraConfig(r=16, target_modules=["query", "value"],
                                                                   modules_to_save=["classifier"]))
    assert ours == reference.get_nb_trainable_parameters()[0] == 4 * (16 + D) + HEAD
    assert not any("vera_A" in n or "vera_B" in n for n, _ in model.named_parameters())
    assert any("vera_A" in n for n, _ in model.named_buffers())
    torch.testing.assert_close(_out(model), _out(tiny("bert")))  # b = 0: exact at init


def test_loraplus_raises_only_lora_b_unlike_peft_optimizer():
    model = ailora.apply(tiny("bert"), method="ailora", rank=4, use_dora=True)
    lr_of = {id(p): g["lr"] for g in ailora.param_groups(model, 1e-3, loraplus_ratio=16) for p in g["params"]}
    for name, p in _trainable(model).items():
        role = 2.0 if ".value." in name else 1.0  # AILoRA's value ratio
        want = 1e-3 * role * 16 if ".lora_B." in name else 1e-3 * role if ".lora_" in name else 1e-3
        assert lr_of[id(p)] == pytest.approx(want), name
    # PEFT's LoRA+ optimizer sends every 1-D tensor to the B group: the head's bias at 16 x lr.
    peft_lr = {id(p): g["lr"] for g in create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3,
                                                                 loraplus_lr_ratio=16).param_groups
               for p in g["params"]}
    bias = model.base_model.model.classifier.modules_to_save["default"].bias
    assert peft_lr[id(bias)] == pytest.approx(16e-3) and lr_of[id(bias)] == pytest.approx(1e-3)


def test_dora_on_svd_start_is_exact_and_magnitude_is_w0_norm():
    w0 = tiny("bert").bert.encoder.layer[0].attention.self.query.weight.detach()
    model = ailora.apply(tiny("bert"), method="ailora", rank=4, use_dora=True)
    assert model.ailora_state.check["passed"]
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    torch.testing.assert_close(layer.lora_magnitude_vector["default"].weight.detach(), w0.norm(dim=1))
    # Fused GPT-2 c_attn: the magnitude of the unadapted key rows gets no gradient.
    gpt = ailora.apply(tiny("gpt2"), method="ailora", rank=4, use_dora=True)
    assert gpt.ailora_state.check["passed"]
    gpt(input_ids=_batch()["input_ids"]).logits.sum().backward()
    grad = gpt.base_model.model.transformer.h[0].attn.c_attn.lora_magnitude_vector["default"].weight.grad
    assert grad[D:2 * D].abs().max() == 0 and grad[:D].abs().max() > 0


ROUND_TRIPS = [
    ("full", {}), ("bitfit", {}), ("houlsby", {"bottleneck": 8}), ("dora", {"rank": 4}), ("rslora", {"rank": 4}),
    ("vera", {"vera_rank": 16}), ("loraplus", {"rank": 4}),
    ("ailora", {"rank": 4, "use_dora": True, "use_rslora": True, "loraplus_ratio": 4.0}),
]


@pytest.mark.parametrize("name, options", ROUND_TRIPS, ids=[r[0] + ("+" if r[1].get("use_dora") else "")
                                                            for r in ROUND_TRIPS])
def test_save_and_load_on_the_original_base_round_trips(name, options, tmp_path):
    prepared = _prepare(name, **options)
    model = prepared.model
    _perturb(model)
    model.eval()
    report = get_method(name).save(prepared, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "ailora.json").read_text())["format"] == report["format"]
    loaded = baselines.load(tiny("bert"), tmp_path / "out").eval()
    assert (_out(loaded) - _out(model)).abs().max() < 1e-5
    assert (_out(loaded) - _out(tiny("bert"))).abs().max() > 1e-4  # the trained change came back


REFUSED = [
    ("vera", "method.policy=query=principal", "no per-layer factors to start from an SVD"),
    ("vera", "method.use_dora=true", "no DoRA form of VeRA"),
    ("vera", "method.loraplus_ratio=16", "VeRA's B is frozen"),
    ("vera", "method.rank=16", "method.vera_rank"),
    ("bitfit", "method.rank=16", "no adapter rank"),
    ("bitfit", "method.targets=query", "bias vectors and the task head only"),
    ("full", "method.loraplus_ratio=16", "no lora_B"),
    ("full", "method.use_dora=true", "updates each weight directly"),
    ("houlsby", "method.rank=16", "method.bottleneck"),
    ("houlsby", "method.use_rslora=true", "bottleneck adapters"),
    ("ailora", "method.bottleneck=32", "size of Houlsby adapters"),
    ("lora", "method.vera_rank=64", "VeRA's shared random matrices"),
]


@pytest.mark.parametrize("name, option, reason", REFUSED, ids=[f"{n}-{o.split('=')[0][7:]}" for n, o, _ in REFUSED])
def test_meaningless_combinations_are_refused_with_the_reason(name, option, reason):
    with pytest.raises(AiloraError, match=reason) as err:
        check_run(RunConfig.from_dict({"task": {"name": "tiny-sentiment"}, "run_dir": "r", "method": {"name": name}},
                                      [option]))
    assert "\n" not in str(err.value) and f"method {name}" in str(err.value)


def test_sensible_combinations_validate():
    """Each combination passes the run checks with its options kept, and builds a model in which every
    option took effect and the outputs are still the base model's."""
    def checked(*overrides):
        cfg = RunConfig.from_dict({"task": {"name": "tiny-sentiment"}, "run_dir": "r"}, list(overrides))
        assert check_run(cfg) is cfg
        return cfg.method.options

    method = checked("method.name=ailora", "method.use_dora=true", "method.use_rslora=true", "method.loraplus_ratio=16")
    assert (method.use_dora, method.use_rslora, method.loraplus_ratio) == (True, True, 16)
    prepared = _prepare("ailora", use_dora=True, use_rslora=True, loraplus_ratio=16)
    lora_cfg = prepared.model.peft_config["default"]
    assert lora_cfg.use_dora and lora_cfg.use_rslora and prepared.loraplus_ratio == 16
    assert any("lora_magnitude_vector" in n for n in _trainable(prepared.model))
    torch.testing.assert_close(_out(prepared.model), _out(tiny("bert")), atol=1e-5, rtol=0)

    method = checked("method.name=vera", "method.vera_rank=64", "method.targets=query,value,key")
    assert (method.vera_rank, method.targets) == (64, ["query", "value", "key"])
    prepared = _prepare("vera", vera_rank=64, targets=["query", "value", "key"])
    assert prepared.model.peft_config["default"].r == 64
    assert {n.split(".")[-3] for n in _trainable(prepared.model) if "vera_lambda" in n} == {"query", "value", "key"}
    torch.testing.assert_close(_out(prepared.model), _out(tiny("bert")), atol=1e-5, rtol=0)


LORA = 4 * 8 * (D + D)  # 2 layers x (query, value) at the default rank 8
TRAINED = [  # method, overrides, trainable parameters (the head always included)
    ("bitfit", [], None),
    ("houlsby", ["method.bottleneck=8"], 4 * (2 * 8 * D + D + 8) + 5 * 2 * D + HEAD),
    ("dora", [], LORA + 4 * D + HEAD),
    ("rslora", [], LORA + HEAD),
    ("vera", ["method.vera_rank=16"], 4 * (16 + D) + HEAD),
    ("loraplus", [], LORA + HEAD),
    ("full", [], None),
]


@pytest.mark.parametrize("name, overrides, expected", TRAINED, ids=[t[0] for t in TRAINED])
def test_each_method_trains_and_records_its_trainable_count(bert_dir, tmp_path, name, overrides, expected):  # noqa: F811
    from ailora.core.models import load_model

    base = load_model(bert_dir, kind="seq-cls", num_labels=2)
    if name == "full":
        expected = sum(p.numel() for p in base.parameters())
    elif name == "bitfit":
        expected = sum(p.numel() for n, p in base.named_parameters() if n.endswith(".bias")) + D * 2
    data = {"model": {"name": str(bert_dir), "max_length": 16}, "run_dir": str(tmp_path / "run"),
            "task": {"name": "tiny-sentiment", "max_train_samples": 32, "max_eval_samples": 16},
            "method": {"name": name}, "train": {"lr": 1e-3, "epochs": 1, "batch_size": 8, "progress": False,
                                                "tensorboard": False}}
    res = train(RunConfig.from_dict(data, overrides))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "complete" and res["steps"] == 4
    assert saved["parameters"]["trainable"] == expected
    assert saved["adapter"]["format"]
    loaded = baselines.load(load_model(bert_dir, kind="seq-cls", num_labels=2), tmp_path / "run" / "adapter")
    assert sum(p.numel() for p in loaded.parameters()) >= sum(p.numel() for p in base.parameters())
