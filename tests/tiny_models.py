"""Tiny random-weight models of every architecture family ailora knows, built in code (tier-1 tests)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T

V = 96  # vocabulary size of every tiny model


def _bert_like(cls_cfg, cls_model, **kw):
    return cls_model(cls_cfg(vocab_size=V, **kw))


BUILDERS = {
    "bert": lambda: _bert_like(T.BertConfig, T.BertForSequenceClassification, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=48),
    "roberta": lambda: _bert_like(T.RobertaConfig, T.RobertaForSequenceClassification, hidden_size=32,
                                  num_hidden_layers=2, num_attention_heads=4, intermediate_size=48),
    "deberta-v2": lambda: _bert_like(T.DebertaV2Config, T.DebertaV2ForSequenceClassification, hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=48),
    "distilbert": lambda: _bert_like(T.DistilBertConfig, T.DistilBertForSequenceClassification, dim=32, n_layers=2,
                                     n_heads=4, hidden_dim=48),
    "llama": lambda: _bert_like(T.LlamaConfig, T.LlamaForCausalLM, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, intermediate_size=48),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                   bos_token_id=0, eos_token_id=0)),
    "phi3": lambda: _bert_like(T.Phi3Config, T.Phi3ForCausalLM, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, pad_token_id=0,
                               bos_token_id=0, eos_token_id=0),
    "bart": lambda: _bert_like(T.BartConfig, T.BartForConditionalGeneration, d_model=32, encoder_layers=2,
                               decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                               encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64),
    "t5": lambda: _bert_like(T.T5Config, T.T5ForConditionalGeneration, d_model=32, d_kv=8, num_heads=4, d_ff=48,
                             num_layers=2, decoder_start_token_id=0),
}


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[name]().eval()


def save_tiny_bert(directory, num_hidden_layers: int = 2):
    """A hidden-32 BertModel with the real MiniLM tokenizer, saved like a checkpoint (for training tests)."""
    from ailora.core.models import minilm_dir

    tok = T.AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    T.BertModel(T.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=num_hidden_layers,
                             num_attention_heads=4, intermediate_size=48, architectures=["BertModel"])
                ).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def save_tiny(name: str, directory, safetensors: bool = True):
    """tiny(name) saved like a checkpoint; ``safetensors=False`` leaves only a pickle checkpoint."""
    directory = Path(directory)
    tiny(name).save_pretrained(directory, safe_serialization=safetensors)
    if not safetensors:
        for f in directory.glob("*.safetensors"):
            f.unlink()
    return directory


def tiny_unknown_architecture(name: str = "bert") -> torch.nn.Module:
    """tiny(name) under a model type ailora has no table for: roles must be named by module patterns."""
    model = tiny(name)
    model.config.model_type = "mystery"
    return model


def tiny_with_linear(name: str, path: str, in_features: int, out_features: int) -> torch.nn.Module:
    """tiny(name) with the module at ``path`` replaced by a fresh Linear(in_features, out_features)."""
    model = tiny(name)
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent), attr, torch.nn.Linear(in_features, out_features))
    return model
