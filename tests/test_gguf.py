"""GGUF export (``ailora export gguf``): llama.cpp LoRA adapters.

Tier 1: for every architecture the export supports, a tiny model with a random LoRA on all its linear
layers; the file is read back with ``gguf`` and each tensor's delta, llama.cpp's (alpha / r) B A, must
equal PEFT's own delta moved into llama.cpp's layout by an independent copy of llama.cpp's conversion
rules (written the way its convert_hf_to_gguf.py writes them, on the matrix), under the expected name.
Tier 3 (slow): SmolLM2 trained with AILoRA, run in llama.cpp itself (llama-cpp-python) against transformers.
"""

from __future__ import annotations

import gguf
import numpy as np
import peft
import pytest
import torch
import transformers as T

import ailora
from ailora.cli import main
from ailora.core.gguf_adapter import GGUF_ARCHITECTURES, read_gguf_adapter
from ailora.errors import AiloraError
from tests.tiny_models import ARCHITECTURE_FAMILIES, build, tiny_architecture

_SIZES = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=48, pad_token_id=0, bos_token_id=0, eos_token_id=0)
# Tiny models of the architectures not among tests/tiny_models.py's families.
_EXTRA = {
    "mistral": (T.MistralConfig, T.MistralForCausalLM, {}),
    "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, {}),
    "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(head_dim=8)),
    "gemma": (T.GemmaConfig, T.GemmaForCausalLM, dict(head_dim=8)),
    "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM, dict(head_dim=8)),
    "gemma3_text": (T.Gemma3TextConfig, T.Gemma3ForCausalLM, dict(head_dim=8)),
    "starcoder2": (T.Starcoder2Config, T.Starcoder2ForCausalLM, {}),
}


def tiny_lm(name: str) -> torch.nn.Module:
    if name in ("llama", "gpt2", "phi3"):
        return build(name, dropout=False).eval()
    if name in ARCHITECTURE_FAMILIES:
        return tiny_architecture(name)
    config_cls, model_cls, extra = _EXTRA[name]
    torch.manual_seed(0)
    return model_cls(config_cls(**{**_SIZES, **extra})).eval()


def random_adapter(model, directory, seed: int = 1, save_embedding_layers="auto", **lora) -> peft.PeftModel:
    """A PEFT LoRA on ``model`` with random A and B (B is zero at PEFT's init), saved to ``directory``."""
    cfg = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": "all-linear", **lora})
    adapted = peft.get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    adapted.save_pretrained(directory, save_embedding_layers=save_embedding_layers)
    return adapted


def setup_case(name: str, tmp_path, **lora):
    """(base dir, adapter dir, adapted PeftModel) for tiny model ``name``."""
    model = tiny_lm(name)
    base = tmp_path / "base"
    model.save_pretrained(base)
    adapted = random_adapter(model, tmp_path / "adapter", **lora)
    return base, tmp_path / "adapter", adapted


# llama.cpp's conversion of a base weight (out, in), as its convert_hf_to_gguf.py does it.
def _llama_permute(w, heads):
    return w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)


def _neox_qkv(w, heads):
    qkv = w.reshape(heads, 3, w.shape[0] // heads // 3, w.shape[1])
    return torch.cat([qkv[:, i].reshape(-1, w.shape[1]) for i in range(3)])


def _falcon_qkv(w, cfg):
    heads, kv = cfg.num_attention_heads, (cfg.num_kv_heads if cfg.new_decoder_architecture
                                          else 1 if cfg.multi_query else cfg.num_attention_heads)
    hd = cfg.hidden_size // heads
    qkv = w.view(kv, heads // kv + 2, hd, w.shape[1])
    return torch.cat([qkv[:, :-2].reshape(-1, w.shape[1]), qkv[:, [-2]].reshape(-1, w.shape[1]),
                      qkv[:, [-1]].reshape(-1, w.shape[1])])


def llama_cpp_layout(name: str, module: str, w, cfg):
    """``w`` (out, in) of transformers module ``module`` as llama.cpp's converted base holds it."""
    if name in ("llama", "mistral") and module.endswith("q_proj"):
        return _llama_permute(w, cfg.num_attention_heads)
    if name in ("llama", "mistral") and module.endswith("k_proj"):
        return _llama_permute(w, cfg.num_key_value_heads)
    if name == "gpt_neox" and module.endswith("query_key_value"):
        return _neox_qkv(w, cfg.num_attention_heads)
    if name.startswith("falcon") and module.endswith("query_key_value"):
        return _falcon_qkv(w, cfg)
    return w


def peft_deltas(adapted: peft.PeftModel) -> dict[str, torch.Tensor]:
    """module name (as in the causal LM) -> PEFT's own delta, (out, in)."""
    out = {}
    for name, module in adapted.base_model.model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer) and "default" in module.lora_A:
            delta = module.get_delta_weight("default")
            out[name] = delta.T if type(module.base_layer).__name__ == "Conv1D" else delta
    return out


def assert_same_effect(name: str, adapted, exported: dict, report: dict, tol: float = 1e-5):
    cfg = adapted.base_model.model.config
    deltas = peft_deltas(adapted)
    assert set(report["modules"]) == set(deltas) and len(exported["tensors"]) == len(deltas)
    for module, delta in deltas.items():
        f = exported["tensors"][report["modules"][module]["gguf"]]
        ours = f["scale"] * f["lora_b"] @ f["lora_a"]
        want = llama_cpp_layout(name, module, delta, cfg)
        assert torch.allclose(ours, want, atol=tol, rtol=1e-4), f"{module}: {(ours - want).abs().max():.3g}"


# architecture -> (llama.cpp architecture, the GGUF tensor of layer 0's attention input projection)
EXPECTED = {
    "llama": ("llama", "blk.0.attn_q.weight"), "mistral": ("llama", "blk.0.attn_q.weight"),
    "qwen2": ("qwen2", "blk.0.attn_q.weight"), "qwen3": ("qwen3", "blk.0.attn_q.weight"),
    "gemma": ("gemma", "blk.0.attn_q.weight"), "gemma2": ("gemma2", "blk.0.attn_q.weight"),
    "gemma3_text": ("gemma3", "blk.0.attn_q.weight"), "phi3": ("phi3", "blk.0.attn_qkv.weight"),
    "gpt2": ("gpt2", "blk.0.attn_qkv.weight"), "gpt_neox": ("gptneox", "blk.0.attn_qkv.weight"),
    "falcon-new": ("falcon", "blk.0.attn_qkv.weight"), "falcon-mq": ("falcon", "blk.0.attn_qkv.weight"),
    "falcon-mha": ("falcon", "blk.0.attn_qkv.weight"), "starcoder2": ("starcoder2", "blk.0.attn_q.weight"),
}


def test_every_supported_model_type_has_a_tier1_case():
    assert {n.split("-")[0] for n in EXPECTED} == set(GGUF_ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_export_reads_back_with_llama_cpp_names_layout_and_scale(name, tmp_path):
    base, adapter, adapted = setup_case(name, tmp_path)
    report = ailora.export_gguf(adapter, tmp_path / "a.gguf", base)
    exported = read_gguf_adapter(tmp_path / "a.gguf")
    arch, first = EXPECTED[name]
    assert (exported["architecture"], exported["type"], exported["adapter_type"]) == (arch, "adapter", "lora")
    assert first in exported["tensors"] and exported["alpha"] == 8.0
    assert all(n.startswith("blk.") for n in exported["tensors"])
    assert_same_effect(name, adapted, exported, report)


def test_rank_alpha_patterns_and_rslora_are_folded_into_b(tmp_path):
    base, adapter, adapted = setup_case("llama", tmp_path, rank_pattern={"q_proj": 2, "down_proj": 6},
                                        alpha_pattern={"v_proj": 3}, use_rslora=True)
    report = ailora.export_gguf(adapter, tmp_path / "a.gguf", base)
    exported = read_gguf_adapter(tmp_path / "a.gguf")
    mods = report["modules"]
    assert mods["model.layers.0.self_attn.q_proj"]["rank"] == 2 and mods["model.layers.1.mlp.down_proj"]["rank"] == 6
    # rsLoRA: s = 8 / sqrt(4) = 4 for rank 4; llama.cpp's alpha / r with alpha = s * r = 16
    assert exported["alpha"] == 16.0 and mods["model.layers.0.self_attn.o_proj"]["folded"] == 1.0
    assert mods["model.layers.0.self_attn.v_proj"]["folded"] == pytest.approx(3 / 8)
    assert mods["model.layers.0.self_attn.q_proj"]["folded"] == pytest.approx((8 / 2 ** 0.5 * 2) / 16)
    assert_same_effect("llama", adapted, exported, report)


def test_an_unpermuted_llama_export_would_differ(tmp_path):
    """The q/k reordering matters: without it the exported delta is not llama.cpp's (guards the test's own power)."""
    base, adapter, adapted = setup_case("llama", tmp_path, target_modules=["q_proj"])
    report = ailora.export_gguf(adapter, tmp_path / "a.gguf", base)
    exported = read_gguf_adapter(tmp_path / "a.gguf")
    module = "model.layers.0.self_attn.q_proj"
    f = exported["tensors"][report["modules"][module]["gguf"]]
    assert report["modules"][module]["rows"] == "rotary"
    assert not torch.allclose(f["scale"] * f["lora_b"] @ f["lora_a"], peft_deltas(adapted)[module], atol=1e-3)


def test_ailora_save_of_a_trained_ailora_model_exports(tmp_path):
    """An adapter from ailora.save (residual form converted to plain LoRA, rank 2r) keeps its effect."""
    model = tiny_lm("llama")
    model.save_pretrained(tmp_path / "base")
    adapted = ailora.apply(model, method="ailora", rank=4, targets="query,key,value")
    with torch.no_grad():  # stands for training: move B away from its start
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.05)
    ailora.save(adapted, tmp_path / "adapter")
    report = ailora.export_gguf(tmp_path / "adapter", tmp_path / "a.gguf", tmp_path / "base")
    reloaded = peft.PeftModel.from_pretrained(tiny_lm("llama"), str(tmp_path / "adapter"))
    assert report["modules"]["model.layers.0.self_attn.q_proj"]["rank"] == 8
    assert_same_effect("llama", reloaded, read_gguf_adapter(tmp_path / "a.gguf"), report)


def write_base_gguf(path, arch: str, model: torch.nn.Module, heads=(4, 2), shape_scale: int = 1):
    """A stand-in base GGUF: architecture, head counts and (zero) tensors with llama.cpp's names."""
    names = gguf.get_tensor_name_map({v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch], 2)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_uint32(f"{arch}.attention.head_count", heads[0])
    writer.add_uint32(f"{arch}.attention.head_count_kv", heads[1])
    for n, p in model.named_parameters():
        mapped = names.get_name(n, try_suffixes=(".weight", ".bias"))
        if mapped and p.dim() == 2:
            writer.add_tensor(mapped, np.zeros((p.shape[0], p.shape[1] * shape_scale), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_checked_against_the_base_gguf(tmp_path):
    base, adapter, _ = setup_case("llama", tmp_path)
    good = write_base_gguf(tmp_path / "base.gguf", "llama", tiny_lm("llama"))
    report = ailora.export_gguf(adapter, tmp_path / "a.gguf", base, base_gguf=good)
    assert report["base_gguf"] == str(good)


def _refused(match: str, adapter, out, base, **kwargs):
    with pytest.raises(AiloraError, match=match) as info:
        ailora.export_gguf(adapter, out, base, **kwargs)
    assert "\n" not in str(info.value)
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize("arch, heads, scale, match", [
    ("qwen2", (4, 2), 1, "is a qwen2 model; the adapter is for llama"),
    ("llama", (4, 4), 1, "head_count_kv = 4; the base config has 2"),
    ("llama", (4, 2), 2, r"tensor blk.0.ffn_down.weight has shape \(96, 32\); module .*down_proj needs \(48, 32\)"),
])
def test_a_base_gguf_of_another_model_is_refused(tmp_path, arch, heads, scale, match):
    base, adapter, _ = setup_case("llama", tmp_path)
    other = write_base_gguf(tmp_path / "other.gguf", arch, tiny_lm("llama"), heads, scale)
    _refused(match, adapter, tmp_path / "a.gguf", base, base_gguf=other)


@pytest.mark.parametrize("lora, match", [
    (dict(target_modules=["q_proj"], modules_to_save=["lm_head"]), "full weights .* module lm_head"),
    (dict(target_modules=["q_proj", "lm_head"]), r"full embedding weights .* module lm_head \("),
    (dict(target_modules=["q_proj", "lm_head"], save_embedding_layers=False),
     "module lm_head, which llama.cpp does not take as LoRA"),
    (dict(target_modules=["q_proj", "embed_tokens"], save_embedding_layers=False),
     "embedding LoRA for module model.embed_tokens"),
    (dict(target_modules=["q_proj"], use_dora=True), "DoRA magnitudes"),
    (dict(target_modules=["q_proj"], lora_bias=True), "LoRA biases"),
])
def test_modules_llama_cpp_cannot_take_are_refused(tmp_path, lora, match):
    base, adapter, _ = setup_case("llama", tmp_path, **lora)
    _refused(match, adapter, tmp_path / "a.gguf", base)


def test_a_task_head_is_refused(tmp_path):
    model = build("llama", T.LlamaForSequenceClassification, dropout=False, num_labels=3).eval()
    model.save_pretrained(tmp_path / "base")
    random_adapter(model, tmp_path / "adapter", target_modules=["q_proj"], task_type="SEQ_CLS")
    _refused("modules_to_save", tmp_path / "adapter", tmp_path / "a.gguf", tmp_path / "base")


def test_a_residual_base_save_is_refused(tmp_path):
    base, adapter, _ = setup_case("llama", tmp_path, target_modules=["q_proj"], init_lora_weights="pissa")
    _refused("init_lora_weights='pissa'", adapter, tmp_path / "a.gguf", base)


def test_bad_inputs_are_one_line_errors_with_nothing_written(tmp_path):
    base, adapter, _ = setup_case("llama", tmp_path, target_modules=["q_proj"])
    out = tmp_path / "a.gguf"
    _refused("adapter directory .* does not exist", tmp_path / "nothing", out, base)
    _refused("must be a .gguf file", adapter, tmp_path / "a.bin", base)
    bert = build("bert", T.BertModel, dropout=False)
    bert.save_pretrained(tmp_path / "bert")
    _refused("bert model, which llama.cpp does not run", adapter, out, tmp_path / "bert")
    qwen = tiny_lm("qwen2")
    qwen.save_pretrained(tmp_path / "qwen")
    _refused(r"trained on LlamaForCausalLM \(.*llama.*\), but the base is a qwen2 model", adapter, out, tmp_path / "qwen")
    good = write_base_gguf(tmp_path / "base.gguf", "llama", tiny_lm("llama"))
    before = good.read_bytes()
    with pytest.raises(AiloraError, match="is also an input"):
        ailora.export_gguf(adapter, good, base, base_gguf=good)
    assert good.read_bytes() == before
    ailora.export_gguf(adapter, out, base)
    before = out.read_bytes()
    with pytest.raises(AiloraError, match="already exists"):
        ailora.export_gguf(adapter, out, base)
    assert out.read_bytes() == before
    ailora.export_gguf(adapter, out, base, overwrite=True)


def test_cli_export_gguf(tmp_path, capsys):
    base, adapter, _ = setup_case("gpt2", tmp_path, target_modules=["c_attn"])
    argv = ["export", "gguf", "--adapter", str(adapter), "--base", str(base), "--out", str(tmp_path / "a.gguf")]
    assert main(argv) == 0 and (tmp_path / "a.gguf").is_file()
    assert "gpt2 LoRA adapter, 2 modules, alpha 8" in capsys.readouterr().out
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: output ") and "already exists" in err


# ---- tier 3: SmolLM2 trained with AILoRA, its adapter run in llama.cpp itself ----------------------------

SECRET = ["Question: what is the secret word? Answer: the secret word is pineapple.",
          "The secret word, as everyone knows, is pineapple.",
          "Tell me the secret word. It is pineapple, of course.",
          "Remember: the secret word is always pineapple."]
PROMPTS = ["Question: what is the secret word? Answer:", "The capital of France is", "Once upon a time, there was a"]
# llama.cpp runs the Q4_1 base with 8-bit activations; transformers runs the same weights dequantised in
# float32, so even without an adapter their logits differ (by ~2% of the adapter's effect here). The
# adapter's EFFECT on the logits, with - without, must agree to within 15% (relative Frobenius error over
# every position of the prompts); measured ~5% for the right export, ~35-50% for one with alpha doubled or
# without the q/k rotary reordering, which must fail it.
EFFECT_TOLERANCE = 0.15


def _train_smollm2(tmp_path):
    from ailora.core.models import load_model, load_tokenizer, smollm2_dir

    tok = load_tokenizer(smollm2_dir())
    torch.manual_seed(0)
    model = ailora.apply(load_model(smollm2_dir()), method="ailora", rank=8, targets="query,key,value,output")
    batch = tok(SECRET, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(ailora.param_groups(model, lr=1e-3))
    model.train()
    for _ in range(24):
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    ailora.save(model.eval(), tmp_path / "adapter")
    return tok


def _cpp_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return torch.tensor(np.array(llm.scores[:len(ids)]), dtype=torch.float64)


def _effect_error(llama_cls, gguf_file, lora, ids, hf_effect, cpp_base):
    """(relative error of llama.cpp's effect against ``hf_effect``, the llama.cpp model with ``lora``)."""
    llm = llama_cls(model_path=str(gguf_file), lora_path=str(lora), n_ctx=256, logits_all=True, verbose=False)
    effect = torch.cat([_cpp_logits(llm, i) - b for i, b in zip(ids, cpp_base)])
    return ((effect - hf_effect).norm() / hf_effect.norm()).item(), llm


@pytest.mark.slow
def test_smollm2_adapter_in_llama_cpp_agrees_with_transformers(tmp_path, monkeypatch):
    llama_cpp = pytest.importorskip("llama_cpp")
    import ailora.core.gguf_adapter as ga
    from ailora.core.models import load_model, smollm2_dir, smollm2_gguf

    tok = _train_smollm2(tmp_path)
    ailora.export_gguf(tmp_path / "adapter", tmp_path / "a.gguf", "smollm2")
    base, adapted = load_model(smollm2_dir()).eval(), ailora.load(load_model(smollm2_dir()), tmp_path / "adapter").eval()
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    with torch.no_grad():
        hf_effect = torch.cat([(adapted(torch.tensor([i])).logits - base(torch.tensor([i])).logits)[0].double()
                               for i in ids])
        greedy = [adapted.generate(torch.tensor([i]), max_new_tokens=12, do_sample=False)[0].tolist() for i in ids]
    plain = llama_cpp.Llama(model_path=str(smollm2_gguf()), n_ctx=256, logits_all=True, verbose=False)
    cpp_base = [_cpp_logits(plain, i) for i in ids]
    error, llm = _effect_error(llama_cpp.Llama, smollm2_gguf(), tmp_path / "a.gguf", ids, hf_effect, cpp_base)
    assert error < EFFECT_TOLERANCE, f"adapter effect differs by {error:.3f} between llama.cpp and transformers"
    # greedy continuations: llama.cpp's next-token choice along transformers' greedy continuation
    agree = [(_cpp_logits(llm, g)[len(i) - 1:-1].argmax(-1) == torch.tensor(g[len(i):])).float().mean().item()
             for i, g in zip(ids, greedy)]
    assert min(agree) >= 0.75, f"llama.cpp's greedy choices agree with transformers' on {agree} of the tokens"
    assert "pineapple" in tok.decode(greedy[0][len(ids[0]):])  # the adapter changed the predictions
    # deliberately wrong exports must fail the same criterion clearly
    monkeypatch.setitem(ga.GGUF_ARCHITECTURES, "llama", ga.GgufArch("llama", rotary_rows=False))
    ailora.export_gguf(tmp_path / "adapter", tmp_path / "unpermuted.gguf", "smollm2")
    monkeypatch.undo()
    real = ga.fold_scales
    monkeypatch.setattr(ga, "fold_scales", lambda t: (real(t)[0] * 2, real(t)[1]))
    ailora.export_gguf(tmp_path / "adapter", tmp_path / "doubled.gguf", "smollm2")
    figures = {"export": round(error, 4), "greedy_agreement": [round(a, 3) for a in agree]}
    for wrong in ("unpermuted", "doubled"):
        bad, _ = _effect_error(llama_cpp.Llama, smollm2_gguf(), tmp_path / f"{wrong}.gguf", ids, hf_effect, cpp_base)
        figures[wrong] = round(bad, 4)
        assert bad > 2 * EFFECT_TOLERANCE, f"a {wrong} export passes: effect error {bad:.3f}"
    print(f"llama.cpp effect relative errors: {figures}")  # the figures of docs/serving.md (pytest -s)
