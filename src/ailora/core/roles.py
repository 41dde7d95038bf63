"""Where each role (query, key, value, ...) lives in a transformers model, by architecture.

A role names a projection's function, not a module: ``query`` is BERT's ``attention.self.query``,
DeBERTa's ``query_proj``, DistilBERT's ``q_lin``, LLaMA's ``q_proj``, and the query rows of a fused
projection: the first block of GPT-2's ``c_attn`` or Phi-3's ``qkv_proj``, the first slice of every
head of GPT-NeoX's ``query_key_value`` (``ailora.core.layouts``). A ``Target`` is one module to
adapt, with the row blocks (roles) of its weight that are adapted.

Roles come from three places, recorded on each Target as ``source``: the table below
(``architecture``; every model type of PEFT's default LoRA target mapping that transformers ships
and whose roles are plain projections), the user's ``modules=`` patterns (``modules``), or, for a
model type not in the table, the usual module names of each role (``fallback``: q_proj, query, wq,
...), used only where they are unambiguous (one module per block, in the same place in each block).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ailora.core.layouts import (
    Block,
    Fused,
    Layout,
    RowSpec,
    check_disjoint,
    module_entries,
    periodic,
    split_pattern,
)
from ailora.errors import AiloraError

__all__ = ["ARCHITECTURES", "ROLES", "Architecture", "Block", "Target", "adaptable_modules", "architecture_of",
           "fallback_roles", "find_targets", "roles_source", "weight_of"]

ROLES = ("query", "key", "value", "output", "up", "gate", "down")


@dataclass(frozen=True)
class Target:
    """One module to adapt: its dotted name and the adapted row blocks of its (out, in) weight."""

    name: str
    blocks: tuple[Block, ...]
    out_features: int
    in_features: int
    fan_in_fan_out: bool  # GPT-2's Conv1D stores its weight as (in, out)
    source: str = "architecture"  # where its roles came from: architecture, modules or fallback

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(b.role for b in self.blocks)

    @property
    def fused(self) -> bool:
        """True when the adapted blocks do not cover the whole weight as one block."""
        return len(self.blocks) > 1 or self.blocks[0].spans != ((0, self.out_features),)


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _kv_heads(cfg) -> int:
    return getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads


def _qkv(cfg, query: int, kv: int, groups: int = 1) -> Layout:
    return periodic(groups, [("query", query), ("key", kv), ("value", kv)])


def _falcon_qkv(cfg) -> Layout:
    """Falcon's three layouts (``FalconAttention._split_heads``)."""
    heads, hd = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    if cfg.new_decoder_architecture:  # per kv group g: [q heads of g; k_g; v_g]
        return _qkv(cfg, heads // cfg.num_kv_heads * hd, hd, cfg.num_kv_heads)
    if cfg.multi_query:  # [q heads; one k; one v]
        return _qkv(cfg, cfg.hidden_size, hd)
    return _qkv(cfg, hd, hd, heads)


def _bigcode_qkv(cfg) -> Layout:
    """GPT-BigCode: multi-query [q heads; one k; one v], else per head [q_h; k_h; v_h]."""
    hd = cfg.hidden_size // cfg.num_attention_heads
    return _qkv(cfg, cfg.hidden_size, hd) if cfg.multi_query else _qkv(cfg, hd, hd, cfg.num_attention_heads)


_QKV = ("query", "key", "value")
# [Q; K; V] one after the other (grouped-query K and V smaller)
_CONTIGUOUS_QKV = Fused(_QKV, lambda c: _qkv(c, c.num_attention_heads * _head_dim(c), _kv_heads(c) * _head_dim(c)),
                        "[Q|K|V]")
# per head h: [q_h; k_h; v_h] (GPT-NeoX, BLOOM, DeBERTa v1)
_PER_HEAD_QKV = Fused(_QKV, lambda c: _qkv(c, _head_dim(c), _head_dim(c), c.num_attention_heads), "per head [q|k|v]")
_GATE_UP = Fused(("gate", "up"), lambda c: periodic(1, [("gate", c.intermediate_size), ("up", c.intermediate_size)]),
                 "[gate|up]")
# CodeGen: 4 model-parallel groups, each [q; v; k] (``CodeGenAttention.forward``)
_CODEGEN_QVK = Fused(("query", "value", "key"), lambda c: periodic(
    4, [(role, c.hidden_size // 4) for role in ("query", "value", "key")]), "4 groups of [q|v|k]")


@dataclass(frozen=True)
class Architecture:
    """Per-role regular expressions matched against the end of a module's dotted name."""

    roles: Mapping[str, str]
    fused: Mapping[str, Fused] = None  # pattern -> row layout, for weights that hold several roles

    def fused_layouts(self) -> Mapping[str, Fused]:
        return self.fused or {}


def _arch(query, key, value, output, up=None, down=None, gate=None, fused=None) -> Architecture:
    """An Architecture from one pattern per role (None: the role is not there or is in ``fused``)."""
    pats = dict(query=query, key=key, value=value, output=output, up=up, gate=gate, down=down)
    return Architecture({r: p for r, p in pats.items() if p is not None}, fused)


_BERT_TAIL = {
    "output": r"attention\.output\.dense",
    "up": r"intermediate\.dense",
    "down": r"layer\.\d+\.output\.dense",
}
_BERT = Architecture({"query": r"attention\.self\.query", "key": r"attention\.self\.key",
                      "value": r"attention\.self\.value", **_BERT_TAIL})
_DEBERTA = Architecture({"query": r"attention\.self\.query_proj", "key": r"attention\.self\.key_proj",
                         "value": r"attention\.self\.value_proj", **_BERT_TAIL})
_DEBERTA_V1 = Architecture(_BERT_TAIL, fused={r"attention\.self\.in_proj": _PER_HEAD_QKV})
_DISTILBERT = Architecture({"query": r"attention\.q_lin", "key": r"attention\.k_lin",
                            "value": r"attention\.v_lin", "output": r"attention\.out_lin",
                            "up": r"ffn\.lin1", "down": r"ffn\.lin2"})
_LLAMA = Architecture({"query": r"self_attn\.q_proj", "key": r"self_attn\.k_proj",
                       "value": r"self_attn\.v_proj", "output": r"self_attn\.o_proj",
                       "up": r"mlp\.up_proj", "gate": r"mlp\.gate_proj", "down": r"mlp\.down_proj"})
# Mixtral's experts are one fused parameter per layer, not Linear modules: attention roles only.
_LLAMA_ATTENTION = Architecture({r: p for r, p in _LLAMA.roles.items() if r in ("query", "key", "value", "output")})
_BART = Architecture({"query": r"(self_attn|encoder_attn)\.q_proj", "key": r"(self_attn|encoder_attn)\.k_proj",
                      "value": r"(self_attn|encoder_attn)\.v_proj",
                      "output": r"(self_attn|encoder_attn)\.out_proj", "up": r"fc1", "down": r"fc2"})
_T5 = Architecture({"query": r"(SelfAttention|EncDecAttention)\.q", "key": r"(SelfAttention|EncDecAttention)\.k",
                    "value": r"(SelfAttention|EncDecAttention)\.v",
                    "output": r"(SelfAttention|EncDecAttention)\.o",
                    "up": r"DenseReluDense\.(wi|wi_1)", "gate": r"DenseReluDense\.wi_0",
                    "down": r"DenseReluDense\.wo"})
_GPT2 = Architecture({"output": r"attn\.c_proj", "up": r"mlp\.c_fc", "down": r"mlp\.c_proj"},
                     fused={r"attn\.c_attn": Fused(_QKV, lambda c: _qkv(c, c.n_embd, c.n_embd), "[Q|K|V]")})
_PHI3 = Architecture({"output": r"self_attn\.o_proj", "down": r"mlp\.down_proj"},
                     fused={r"self_attn\.qkv_proj": _CONTIGUOUS_QKV, r"mlp\.gate_up_proj": _GATE_UP})
_NEOX_MLP = {"up": r"mlp\.dense_h_to_4h", "down": r"mlp\.dense_4h_to_h"}
_GPT_NEOX = Architecture({"output": r"attention\.dense", **_NEOX_MLP},
                         fused={r"attention\.query_key_value": _PER_HEAD_QKV})
_BLOOM = Architecture({"output": r"self_attention\.dense", **_NEOX_MLP},
                      fused={r"self_attention\.query_key_value": _PER_HEAD_QKV})
_FALCON = Architecture({"output": r"self_attention\.dense", **_NEOX_MLP},
                       fused={r"self_attention\.query_key_value": Fused(
                           _QKV, _falcon_qkv, "per kv group [q heads|k|v], multi-query [Q|k|v] or per head [q|k|v]")})
_GPT_BIGCODE = Architecture({"output": r"attn\.c_proj", "up": r"mlp\.c_fc", "down": r"mlp\.c_proj"},
                            fused={r"attn\.c_attn": Fused(_QKV, _bigcode_qkv, "multi-query [Q|k|v] or per head [q|k|v]")})
# ModernBERT's Wi output is chunked into (input, gate) and computes act(input) * gate: its first half is
# what LLaMA calls gate_proj (the activated half), its second half up_proj.
_MODERNBERT = Architecture({"output": r"attn\.Wo", "down": r"mlp\.Wo"},
                           fused={r"attn\.Wqkv": _CONTIGUOUS_QKV, r"mlp\.Wi": _GATE_UP})
_MPT = Architecture({"output": r"attn\.out_proj", "up": r"ffn\.up_proj", "down": r"ffn\.down_proj"},
                    fused={r"attn\.Wqkv": _CONTIGUOUS_QKV})
_CODEGEN = Architecture({"output": r"attn\.out_proj", "up": r"mlp\.fc_in", "down": r"mlp\.fc_out"},
                        fused={r"attn\.qkv_proj": _CODEGEN_QVK})
_GPTJ = _arch(r"attn\.q_proj", r"attn\.k_proj", r"attn\.v_proj", r"attn\.out_proj", r"mlp\.fc_in", r"mlp\.fc_out")
_GPT_NEO = _arch(r"attn\.attention\.q_proj", r"attn\.attention\.k_proj", r"attn\.attention\.v_proj",
                 r"attn\.attention\.out_proj", r"mlp\.c_fc", r"mlp\.c_proj")
_PHI = _arch(r"self_attn\.q_proj", r"self_attn\.k_proj", r"self_attn\.v_proj", r"self_attn\.dense",
             r"mlp\.fc1", r"mlp\.fc2")

ARCHITECTURES: dict[str, Architecture] = {
    **dict.fromkeys(["bert", "roberta", "xlm-roberta", "electra", "camembert", "layoutlm"], _BERT),
    "deberta-v2": _DEBERTA,
    "deberta": _DEBERTA_V1,
    "distilbert": _DISTILBERT,
    "mixtral": _LLAMA_ATTENTION,
    **dict.fromkeys(["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo",
                     "smollm3", "stablelm"], _LLAMA),
    **dict.fromkeys(["bart", "mbart", "marian", "pegasus", "opt"], _BART),
    **dict.fromkeys(["t5", "mt5"], _T5),
    "gpt2": _GPT2,
    "phi3": _PHI3,
    "phi": _PHI,
    "gpt_neox": _GPT_NEOX,
    "bloom": _BLOOM,
    "falcon": _FALCON,
    "gpt_bigcode": _GPT_BIGCODE,
    "modernbert": _MODERNBERT,
    "mpt": _MPT,
    "codegen": _CODEGEN,
    "gptj": _GPTJ,
    "gpt_neo": _GPT_NEO,
}


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _shape(module: nn.Module) -> tuple[int, int, bool]:
    """(out, in, fan_in_fan_out) of a Linear or a transposed Conv1D."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features, False
    n_in, n_out = module.weight.shape
    return n_out, n_in, True


def _matches(pattern: str, name: str) -> bool:
    return re.search(rf"(^|\.)({pattern})$", name) is not None


def architecture_of(model: nn.Module) -> Architecture | None:
    return ARCHITECTURES.get(getattr(getattr(model, "config", None), "model_type", None))


def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear / Conv1D in the model, by dotted name."""
    return {n: m for n, m in model.named_modules() if _adaptable(m)}


def _candidates(mods: Iterable[str]) -> str:
    """Module names with layer indices collapsed to N, for an error message that lists what could match."""
    tails = sorted({re.sub(r"\.\d+(?=\.|$)", ".N", n) for n in mods})
    return ", ".join(tails[:30]) + (" ..." if len(tails) > 30 else "")


# A role's usual module names (the last part of the dotted name), for model types not in the table.
FALLBACK_NAMES = {
    "query": ("q_proj", "query", "q", "wq", "q_lin", "query_proj"),
    "key": ("k_proj", "key", "k", "wk", "k_lin", "key_proj"),
    "value": ("v_proj", "value", "v", "wv", "v_lin", "value_proj"),
    "output": ("o_proj", "out_proj", "o", "wo", "out_lin"),
    "up": ("up_proj", "fc1", "fc_in", "lin1", "c_fc", "dense_h_to_4h", "w3"),
    "gate": ("gate_proj", "w1"),
    "down": ("down_proj", "fc2", "fc_out", "lin2", "dense_4h_to_h", "w2"),
}
SOURCES = ("architecture", "modules", "fallback")


def _position(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``model.layers.N.self_attn.q_proj``."""
    return re.sub(r"\.\d+(?=\.|$)", ".N", name)


def _block_of(name: str) -> str:
    """The repeated block a module sits in: its name up to its first layer index."""
    m = re.match(r"(.*?\.\d+)(\.|$)", name)
    return m.group(1) if m else name


def fallback_roles(names: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Roles found by their usual module names among ``names``.

    Returns ``(found, ambiguous)``: role -> a pattern matching its modules, for each role whose
    usual names match exactly one module per block, in the same place in every block; role -> the
    places it matched, for each role whose matches are ambiguous (and so not used).
    """
    names = list(names)
    found, ambiguous = {}, {}
    for role, leaves in FALLBACK_NAMES.items():
        hits = [n for n in names if n.rsplit(".", 1)[-1] in leaves]
        if not hits:
            continue
        places = sorted({_position(n) for n in hits})
        blocks = [_block_of(n) for n in hits]
        if len(places) == 1 and len(set(blocks)) == len(blocks):
            found[role] = r"\.".join(r"\d+" if part.isdigit() else re.escape(part) for part in hits[0].split("."))
        else:
            ambiguous[role] = ", ".join(places[:6]) + (" ..." if len(places) > 6 else "")
    return found, ambiguous


@dataclass(frozen=True)
class _Rule:
    """One way to find a role: a module-name pattern, which rows of it (None: all), and where it came from."""

    pattern: str
    rows: Fused | RowSpec | None
    source: str

    def block(self, cfg, role: str, name: str, out_f: int) -> Block:
        if self.rows is None:
            return Block.span(role, 0, out_f)
        if isinstance(self.rows, Fused):
            return Block(role, self.rows.spans(cfg, role, name, out_f))
        return Block(role, self.rows.spans(name, out_f))


def _role_rules(model: nn.Module, modules: Mapping[str, Iterable] | None, mods: Iterable[str]):
    """role -> [_Rule], user patterns replacing the architecture's (or the fallback's); and, for an
    unknown model type, role -> the places where its usual names matched ambiguously."""
    arch = architecture_of(model)
    table: dict[str, list[_Rule]] = {}
    ambiguous: dict[str, str] = {}
    if arch is not None:
        for role, pat in arch.roles.items():
            table.setdefault(role, []).append(_Rule(pat, None, "architecture"))
        for pat, fused in arch.fused_layouts().items():
            for role in fused.roles:
                table.setdefault(role, []).append(_Rule(pat, fused, "architecture"))
    else:
        found, ambiguous = fallback_roles(mods)
        table = {role: [_Rule(pat, None, "fallback")] for role, pat in found.items()}
    for role, pats in (modules or {}).items():
        if role not in ROLES:
            raise AiloraError(f"unknown role {role!r} in modules; roles are: {', '.join(ROLES)}")
        table[role] = [_Rule(*split_pattern(p), "modules") for p in module_entries(pats)]
        ambiguous.pop(role, None)
    return table, ambiguous


def _unknown_role(model: nn.Module, role: str, ambiguous: str | None, mods: Iterable[str]) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    why = f" (its usual module names are ambiguous here: {ambiguous})" if ambiguous else ""
    return (f"role {role!r} is not known for model type {model_type!r}{why}; name its modules with "
            f"modules={{'{role}': [pattern]}} (--modules {role}=PATTERN); linear modules: {_candidates(mods)}")


def _role_blocks(model: nn.Module, role: str, rules: list[_Rule], mods: Mapping[str, nn.Module]):
    """[(module name, Block, source)] of every module a rule of ``role`` matches (the first rule that matches)."""
    hits = []
    for name, module in mods.items():
        for rule in rules:
            if _matches(rule.pattern, name):
                out_f, _, _ = _shape(module)
                hits.append((name, rule.block(getattr(model, "config", None), role, name, out_f), rule.source))
                break
    if not hits:
        pats = " or ".join(r.pattern for r in rules)
        raise AiloraError(f"role {role!r} (pattern {pats}) matches no module; linear modules: {_candidates(mods)}")
    return hits


def find_targets(model: nn.Module, roles: Iterable[str], modules: Mapping[str, Iterable] | None = None) -> list[Target]:
    """The modules that carry each requested role, one Target per module (fused roles merged).

    ``modules`` maps a role to module-name patterns (regular expressions matched against the end of
    module names), for architectures ailora does not know or to override what it knows. An entry
    ``"PATTERN@ROWS"`` or ``(PATTERN, ROWS)`` takes only some rows of a fused module, ROWS as in
    ``ailora.core.layouts`` (``rows:0:64``, ``block:0/3``, ``heads:0/3:16``). Raises AiloraError for
    an unknown role, a role that matches nothing or rows claimed twice, listing the module names
    that could match. A model type not in the table falls back to the roles' usual module names
    where they are unambiguous, with a warning.
    """
    roles = list(dict.fromkeys(roles))
    for role in roles:
        if role not in ROLES:
            raise AiloraError(f"unknown role {role!r}; roles are: {', '.join(ROLES)}")
    mods = adaptable_modules(model)
    table, ambiguous = _role_rules(model, modules, mods)
    found: dict[str, list[tuple[Block, str]]] = {}
    for role in roles:
        if role not in table:
            raise AiloraError(_unknown_role(model, role, ambiguous.get(role), mods))
        for name, block, source in _role_blocks(model, role, table[role], mods):
            found.setdefault(name, []).append((block, source))
    targets = []
    for name, pairs in found.items():
        out_f, in_f, fifo = _shape(mods[name])
        blocks = sorted((b for b, _ in pairs), key=lambda b: b.spans[0][0])
        check_disjoint(name, blocks)
        source = "+".join(s for s in SOURCES if s in {s for _, s in pairs})
        targets.append(Target(name, tuple(blocks), out_f, in_f, fifo, source))
    _warn_fallback(model, targets)
    return targets


def _warn_fallback(model: nn.Module, targets: list[Target]) -> None:
    places = {}
    for t in targets:
        if "fallback" in t.source:
            for role in t.roles:
                places.setdefault(role, _position(t.name))
    if places:
        model_type = getattr(getattr(model, "config", None), "model_type", "?")
        found = ", ".join(f"{r}={p}" for r, p in places.items())
        warnings.warn(f"model type {model_type!r} is not in ailora's table; roles found by their usual module "
                      f"names: {found} (check them, or name them with modules=)", UserWarning, stacklevel=3)


def roles_source(targets: Iterable[Target]) -> str:
    """Where the targets' roles came from: architecture, modules, fallback, or several joined by "+"."""
    have = {s for t in targets for s in t.source.split("+")}
    return "+".join(s for s in SOURCES if s in have) or "architecture"


def weight_of(module: nn.Module) -> torch.Tensor:
    """The module's weight as (out, in), a view (transposed for Conv1D)."""
    w = module.weight
    return w.T if type(module).__name__ == "Conv1D" else w
