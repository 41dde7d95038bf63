"""Where each role (query, key, value, ...) lives in a transformers model, by architecture.

A role names a projection's function, not a module: ``query`` is BERT's ``attention.self.query``,
DeBERTa's ``query_proj``, DistilBERT's ``q_lin``, LLaMA's ``q_proj``, and the first row block of
GPT-2's fused ``c_attn`` or Phi-3's fused ``qkv_proj``. A ``Target`` is one module to adapt,
with the row blocks (roles) of its weight that are adapted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ailora.errors import AiloraError

ROLES = ("query", "key", "value", "output", "up", "gate", "down")


@dataclass(frozen=True)
class Block:
    """Rows [start, stop) of a weight (out, in) that carry one role."""

    role: str
    start: int
    stop: int


@dataclass(frozen=True)
class Target:
    """One module to adapt: its dotted name and the adapted row blocks of its (out, in) weight."""

    name: str
    blocks: tuple[Block, ...]
    out_features: int
    in_features: int
    fan_in_fan_out: bool  # GPT-2's Conv1D stores its weight as (in, out)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(b.role for b in self.blocks)

    @property
    def fused(self) -> bool:
        """True when the adapted blocks do not cover the whole weight as one block."""
        return len(self.blocks) > 1 or (self.blocks[0].start, self.blocks[0].stop) != (0, self.out_features)


# A fused layout maps a model config to the ordered (role, rows) blocks of a fused weight.
FusedLayout = Callable[[object], list[tuple[str, int]]]


def _gpt2_qkv(cfg) -> list[tuple[str, int]]:
    return [("query", cfg.n_embd), ("key", cfg.n_embd), ("value", cfg.n_embd)]


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _phi3_qkv(cfg) -> list[tuple[str, int]]:
    kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    hd = _head_dim(cfg)
    return [("query", cfg.num_attention_heads * hd), ("key", kv * hd), ("value", kv * hd)]


def _phi3_gate_up(cfg) -> list[tuple[str, int]]:
    return [("gate", cfg.intermediate_size), ("up", cfg.intermediate_size)]


@dataclass(frozen=True)
class Architecture:
    """Per-role regular expressions matched against the end of a module's dotted name."""

    roles: Mapping[str, str]
    fused: Mapping[str, FusedLayout] = None  # pattern -> layout, for weights that hold several roles

    def fused_layouts(self) -> Mapping[str, FusedLayout]:
        return self.fused or {}


_BERT_TAIL = {
    "output": r"attention\.output\.dense",
    "up": r"intermediate\.dense",
    "down": r"layer\.\d+\.output\.dense",
}
_BERT = Architecture({"query": r"attention\.self\.query", "key": r"attention\.self\.key",
                      "value": r"attention\.self\.value", **_BERT_TAIL})
_DEBERTA = Architecture({"query": r"attention\.self\.query_proj", "key": r"attention\.self\.key_proj",
                         "value": r"attention\.self\.value_proj", **_BERT_TAIL})
_DISTILBERT = Architecture({"query": r"attention\.q_lin", "key": r"attention\.k_lin",
                            "value": r"attention\.v_lin", "output": r"attention\.out_lin",
                            "up": r"ffn\.lin1", "down": r"ffn\.lin2"})
_LLAMA = Architecture({"query": r"self_attn\.q_proj", "key": r"self_attn\.k_proj",
                       "value": r"self_attn\.v_proj", "output": r"self_attn\.o_proj",
                       "up": r"mlp\.up_proj", "gate": r"mlp\.gate_proj", "down": r"mlp\.down_proj"})
_BART = Architecture({"query": r"(self_attn|encoder_attn)\.q_proj", "key": r"(self_attn|encoder_attn)\.k_proj",
                      "value": r"(self_attn|encoder_attn)\.v_proj",
                      "output": r"(self_attn|encoder_attn)\.out_proj", "up": r"fc1", "down": r"fc2"})
_T5 = Architecture({"query": r"(SelfAttention|EncDecAttention)\.q", "key": r"(SelfAttention|EncDecAttention)\.k",
                    "value": r"(SelfAttention|EncDecAttention)\.v",
                    "output": r"(SelfAttention|EncDecAttention)\.o",
                    "up": r"DenseReluDense\.(wi|wi_1)", "gate": r"DenseReluDense\.wi_0",
                    "down": r"DenseReluDense\.wo"})
_GPT2 = Architecture({"output": r"attn\.c_proj", "up": r"mlp\.c_fc", "down": r"mlp\.c_proj"},
                     fused={r"attn\.c_attn": _gpt2_qkv})
_PHI3 = Architecture({"output": r"self_attn\.o_proj", "down": r"mlp\.down_proj"},
                     fused={r"self_attn\.qkv_proj": _phi3_qkv, r"mlp\.gate_up_proj": _phi3_gate_up})

ARCHITECTURES: dict[str, Architecture] = {
    **dict.fromkeys(["bert", "roberta", "xlm-roberta", "electra", "camembert"], _BERT),
    **dict.fromkeys(["deberta-v2", "deberta"], _DEBERTA),
    "distilbert": _DISTILBERT,
    **dict.fromkeys(["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "smollm3"], _LLAMA),
    **dict.fromkeys(["bart", "mbart", "marian", "pegasus"], _BART),
    **dict.fromkeys(["t5", "mt5"], _T5),
    "gpt2": _GPT2,
    "phi3": _PHI3,
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


def _role_patterns(model: nn.Module, modules: Mapping[str, Iterable[str]] | None):
    """role -> list of (pattern, layout-or-None), user patterns replacing the architecture's."""
    arch = architecture_of(model)
    table: dict[str, list[tuple[str, FusedLayout | None]]] = {}
    if arch is not None:
        for role, pat in arch.roles.items():
            table.setdefault(role, []).append((pat, None))
        for pat, layout in arch.fused_layouts().items():
            for role, _ in layout(model.config):
                table.setdefault(role, []).append((pat, layout))
    for role, pats in (modules or {}).items():
        if role not in ROLES:
            raise AiloraError(f"unknown role {role!r} in modules; roles are: {', '.join(ROLES)}")
        pats = [pats] if isinstance(pats, str) else list(pats)
        table[role] = [(p, None) for p in pats]
    return table


def find_targets(
    model: nn.Module, roles: Iterable[str], modules: Mapping[str, Iterable[str]] | None = None
) -> list[Target]:
    """The modules that carry each requested role, one Target per module (fused roles merged).

    ``modules`` maps a role to regular expressions matched against the end of module names, for
    architectures ailora does not know (or to override what it knows). Raises AiloraError for an
    unknown role or a role that matches nothing, listing the module names that could match.
    """
    roles = list(dict.fromkeys(roles))
    for role in roles:
        if role not in ROLES:
            raise AiloraError(f"unknown role {role!r}; roles are: {', '.join(ROLES)}")
    table = _role_patterns(model, modules)
    mods = adaptable_modules(model)
    blocks: dict[str, list[Block]] = {}
    for role in roles:
        if role not in table:
            model_type = getattr(getattr(model, "config", None), "model_type", "?")
            raise AiloraError(
                f"role {role!r} is not known for model type {model_type!r}; name its modules with "
                f"modules={{'{role}': [pattern]}} (--modules {role}=PATTERN); linear modules: {_candidates(mods)}"
            )
        found = False
        for name, module in mods.items():
            for pat, layout in table[role]:
                if not _matches(pat, name):
                    continue
                out_f, _, _ = _shape(module)
                if layout is None:
                    blocks.setdefault(name, []).append(Block(role, 0, out_f))
                else:
                    blocks.setdefault(name, []).append(_fused_block(model.config, layout, role, name, out_f))
                found = True
                break
        if not found:
            pats = " or ".join(p for p, _ in table[role])
            raise AiloraError(f"role {role!r} (pattern {pats}) matches no module; linear modules: {_candidates(mods)}")
    targets = []
    for name, bl in blocks.items():
        out_f, in_f, fifo = _shape(mods[name])
        bl = sorted(bl, key=lambda b: b.start)
        if len({b.role for b in bl}) != len(bl) or any(a.stop > b.start for a, b in zip(bl, bl[1:])):
            raise AiloraError(f"module {name} is claimed twice by roles {[b.role for b in bl]}")
        targets.append(Target(name, tuple(bl), out_f, in_f, fifo))
    return targets


def _fused_block(cfg, layout: FusedLayout, role: str, name: str, out_f: int) -> Block:
    start = 0
    parts = layout(cfg)
    if sum(n for _, n in parts) != out_f:
        raise AiloraError(f"fused module {name} has {out_f} rows but its config implies {parts}")
    for r, n in parts:
        if r == role:
            return Block(role, start, start + n)
        start += n
    raise AssertionError(role)


def weight_of(module: nn.Module) -> torch.Tensor:
    """The module's weight as (out, in), a view (transposed for Conv1D)."""
    w = module.weight
    return w.T if type(module).__name__ == "Conv1D" else w
