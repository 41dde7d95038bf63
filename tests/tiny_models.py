"""Tiny random-weight models of every architecture family ailora knows, built in code (tier-1 tests).

Every test builds its tiny models here: ``tiny(name)`` for the standard model of a family, ``build(name, ...)``
for a variant (another head class, more layers, another vocabulary, dropout off), ``save_tiny*`` for a model
saved like a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers as T

V = 96  # vocabulary size of every tiny model, unless overridden

# The sizes the analysis and extraction tests use (with any family): a wider MLP and a 100-word vocabulary.
ANALYSIS = dict(intermediate_size=64, vocab_size=100)


@dataclass(frozen=True)
class Family:
    """One architecture family: its config class, the model class ``tiny`` builds, and the config values
    (besides ``vocab_size=V``) that make it tiny; ``dropout`` names the config fields ``dropout=False`` zeroes."""

    config: type
    head: type
    sizes: dict = field(default_factory=dict)
    dropout: tuple[str, ...] = ()


_BERT_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
_BERT_DROPOUT = ("hidden_dropout_prob", "attention_probs_dropout_prob")
_LLAMA_SIZES = dict(_BERT_SIZES, num_key_value_heads=2)

FAMILIES = {
    "bert": Family(T.BertConfig, T.BertForSequenceClassification, _BERT_SIZES, _BERT_DROPOUT),
    "roberta": Family(T.RobertaConfig, T.RobertaForSequenceClassification, _BERT_SIZES, _BERT_DROPOUT),
    "deberta-v2": Family(T.DebertaV2Config, T.DebertaV2ForSequenceClassification, _BERT_SIZES, _BERT_DROPOUT),
    "distilbert": Family(T.DistilBertConfig, T.DistilBertForSequenceClassification,
                         dict(dim=32, n_layers=2, n_heads=4, hidden_dim=48), ("dropout", "attention_dropout")),
    "llama": Family(T.LlamaConfig, T.LlamaForCausalLM, _LLAMA_SIZES, ("attention_dropout",)),
    "gpt2": Family(T.GPT2Config, T.GPT2LMHeadModel,
                   dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0),
                   ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
    "phi3": Family(T.Phi3Config, T.Phi3ForCausalLM,
                   dict(_LLAMA_SIZES, pad_token_id=0, bos_token_id=0, eos_token_id=0),
                   ("resid_pdrop", "embd_pdrop", "attention_dropout")),
    "bart": Family(T.BartConfig, T.BartForConditionalGeneration,
                   dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64),
                   ("dropout", "attention_dropout", "activation_dropout")),
    "t5": Family(T.T5Config, T.T5ForConditionalGeneration,
                 dict(d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, decoder_start_token_id=0),
                 ("dropout_rate",)),
}


def tiny_config(name: str, dropout: bool = True, **overrides) -> T.PretrainedConfig:
    """The tiny config of family ``name`` with ``overrides`` (e.g. ``num_hidden_layers=4``, ``vocab_size=100``);
    ``dropout=False`` sets the family's dropout probabilities to 0."""
    family = FAMILIES[name]
    off = {} if dropout else dict.fromkeys(family.dropout, 0.0)
    return family.config(**{"vocab_size": V, **family.sizes, **off, **overrides})


def build(name: str, cls: type | None = None, seed: int = 0, dropout: bool = True, **overrides) -> torch.nn.Module:
    """A ``cls`` (default: the family's model class) on ``tiny_config(name, dropout, **overrides)``, with weights
    drawn after ``torch.manual_seed(seed)``; left in training mode."""
    config = tiny_config(name, dropout, **overrides)
    torch.manual_seed(seed)
    return (cls or FAMILIES[name].head)(config)


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """The standard tiny model of family ``name``, in eval mode."""
    return build(name, seed=seed).eval()


def save_tiny_bert(directory, num_hidden_layers: int = 2, **overrides):
    """A hidden-32 BertModel with the real MiniLM tokenizer, saved like a checkpoint (for training tests);
    ``overrides`` go to ``build`` (e.g. ``dropout=False``)."""
    from ailora.core.models import minilm_dir

    tok = T.AutoTokenizer.from_pretrained(minilm_dir())
    build("bert", T.BertModel, vocab_size=tok.vocab_size, num_hidden_layers=num_hidden_layers,
          **overrides).save_pretrained(directory)
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
