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


# Tiny models of the other architectures of PEFT's default LoRA target mapping (tests/test_architectures.py),
# apart from FAMILIES so that the tests looping over FAMILIES keep their size. A name with a suffix is a
# layout variant: falcon's three fused-QKV layouts, GPT-BigCode without multi-query.
_SPECIAL_IDS = dict(pad_token_id=0, bos_token_id=0, eos_token_id=0)
_NEW_FALCON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **_SPECIAL_IDS)
_BIGCODE = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, **_SPECIAL_IDS)
_GPTJ_SIZES = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4, **_SPECIAL_IDS)
ARCHITECTURE_FAMILIES = {
    "opt": Family(T.OPTConfig, T.OPTForCausalLM,
                  dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=48, word_embed_proj_dim=32,
                       max_position_embeddings=64, **_SPECIAL_IDS), ("dropout", "attention_dropout")),
    "gpt_neox": Family(T.GPTNeoXConfig, T.GPTNeoXForCausalLM, dict(_BERT_SIZES, **_SPECIAL_IDS),
                       ("hidden_dropout", "attention_dropout")),
    "falcon-new": Family(T.FalconConfig, T.FalconForCausalLM,
                         dict(_NEW_FALCON, new_decoder_architecture=True, num_kv_heads=2),
                         ("hidden_dropout", "attention_dropout")),
    "falcon-mq": Family(T.FalconConfig, T.FalconForCausalLM, dict(_NEW_FALCON, multi_query=True),
                        ("hidden_dropout", "attention_dropout")),
    "falcon-mha": Family(T.FalconConfig, T.FalconForCausalLM, dict(_NEW_FALCON, multi_query=False),
                         ("hidden_dropout", "attention_dropout")),
    "gptj": Family(T.GPTJConfig, T.GPTJForCausalLM, _GPTJ_SIZES, ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
    "phi": Family(T.PhiConfig, T.PhiForCausalLM, dict(_BERT_SIZES, **_SPECIAL_IDS),
                  ("resid_pdrop", "embd_pdrop", "attention_dropout")),
    "stablelm": Family(T.StableLmConfig, T.StableLmForCausalLM, dict(_LLAMA_SIZES, **_SPECIAL_IDS),
                       ("hidden_dropout", "attention_dropout")),
    "gpt_bigcode": Family(T.GPTBigCodeConfig, T.GPTBigCodeForCausalLM, dict(_BIGCODE, multi_query=True),
                          ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
    "gpt_bigcode-mha": Family(T.GPTBigCodeConfig, T.GPTBigCodeForCausalLM, dict(_BIGCODE, multi_query=False),
                              ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
    "bloom": Family(T.BloomConfig, T.BloomForCausalLM, dict(hidden_size=32, n_layer=2, n_head=4, **_SPECIAL_IDS),
                    ("hidden_dropout", "attention_dropout")),
    "modernbert": Family(T.ModernBertConfig, T.ModernBertForSequenceClassification,
                         dict(_BERT_SIZES, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                              sep_token_id=2, max_position_embeddings=64),
                         ("embedding_dropout", "attention_dropout", "mlp_dropout")),
    "mpt": Family(T.MptConfig, T.MptForCausalLM, dict(d_model=32, n_heads=4, n_layers=2, expansion_ratio=2),
                  ("resid_pdrop", "emb_pdrop")),
    "codegen": Family(T.CodeGenConfig, T.CodeGenForCausalLM, _GPTJ_SIZES, ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
    "deberta": Family(T.DebertaConfig, T.DebertaForSequenceClassification, _BERT_SIZES, _BERT_DROPOUT),
    "gpt_neo": Family(T.GPTNeoConfig, T.GPTNeoForCausalLM,
                      dict(hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                           max_position_embeddings=64, **_SPECIAL_IDS), ("resid_dropout", "embed_dropout")),
    "mixtral": Family(T.MixtralConfig, T.MixtralForCausalLM, dict(_LLAMA_SIZES, **_SPECIAL_IDS), ("attention_dropout",)),
    "gemma3_text": Family(T.Gemma3TextConfig, T.Gemma3ForCausalLM, dict(_LLAMA_SIZES, head_dim=8, **_SPECIAL_IDS),
                          ("attention_dropout",)),
    "layoutlm": Family(T.LayoutLMConfig, T.LayoutLMForSequenceClassification, _BERT_SIZES, _BERT_DROPOUT),
}


def tiny_architecture(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """The tiny model of ``ARCHITECTURE_FAMILIES[name]`` (dropout off, eval mode), weights drawn after
    ``torch.manual_seed(seed)``; ``overrides`` go to its config."""
    family = ARCHITECTURE_FAMILIES[name]
    config = family.config(**{"vocab_size": V, **family.sizes, **dict.fromkeys(family.dropout, 0.0), **overrides})
    torch.manual_seed(seed)
    return family.head(config).eval()


# Encoder-decoders with a word-level tokenizer trained on the fly (no tokenizer files ship for BART/T5).

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0, 1, 2, 3 in every word_tokenizer
_SEQ2SEQ_IDS = {
    "bart": dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None),
    "t5": dict(pad_token_id=0, eos_token_id=2, decoder_start_token_id=0),
}


def word_tokenizer(texts, bos: bool = True) -> T.PreTrainedTokenizerFast:
    """A fast word-level tokenizer trained with the ``tokenizers`` library on ``texts``: ids 0-3 are
    <pad> <s> </s> <unk>, every text is encoded as ``[<s>] words </s>`` (``bos=False``: T5's ``words </s>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.train_from_iterator(list(texts), trainers.WordLevelTrainer(special_tokens=list(SPECIALS)))
    single = "<s> $A </s>" if bos else "$A </s>"
    core.post_processor = processors.TemplateProcessing(
        single=single, pair=f"{single} $B </s>", special_tokens=[(t, core.token_to_id(t)) for t in SPECIALS[1:3]])
    return T.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                     unk_token="<unk>")


def save_tiny_seq2seq(name: str, directory, texts, cls: type | None = None, **overrides):
    """A tiny ``name`` ("bart" or "t5") encoder-decoder (default class: its conditional-generation
    model) with a ``word_tokenizer`` trained on ``texts``, saved like a checkpoint; dropout off."""
    tok = word_tokenizer(texts, bos=name != "t5")
    model = build(name, cls, dropout=False, vocab_size=len(tok), **{**_SEQ2SEQ_IDS[name], **overrides})
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


# A word-level vocabulary for tiny causal LMs that need a real tokenizer (TRL's SFTTrainer, README snippets).
TINY_WORDS = ("the a an is was and or not to of in on it this that movie film good bad great awful plot actor "
              "story fun dull long short best worst love hate question answer yes no one two three four five "
              "what why how cat dog sat ran mat rug").split()


def tiny_tokenizer():
    """A fast word-level tokenizer over ``TINY_WORDS`` with <pad>, <s>, </s> and <unk> (ids 0-3), built in code."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *TINY_WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                     unk_token="<unk>")


def save_tiny_llama(directory, seed: int = 0):
    """A tiny LlamaForCausalLM (dropout off) with ``tiny_tokenizer()``, saved like a checkpoint."""
    tok = tiny_tokenizer()
    build("llama", seed=seed, dropout=False, vocab_size=len(tok), pad_token_id=0, bos_token_id=1,
          eos_token_id=2).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
