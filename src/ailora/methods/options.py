"""Which ``MethodConfig`` options each training method reads, and why any other combination is refused.

The combination table (a method reads these options; every other option must keep its default):

============================================  =======================================================
method                                        options it reads
============================================  =======================================================
lora pissa milora ailora reailora,            rank alpha targets policy solver dropout use_rslora
dora (= lora + use_dora), rslora (= lora +    use_dora loraplus_ratio value_lr_ratio
use_rslora), loraplus (= lora + ratio 16)
vera                                          vera_rank targets dropout
houlsby                                       bottleneck
bitfit, full                                  (none)
============================================  =======================================================

So AILoRA (or PiSSA, MiLoRA...) combines with rsLoRA scaling, DoRA's magnitude and a LoRA+ ratio,
in any mix; VeRA with an SVD start, DoRA or LoRA+, BitFit with a rank, full fine-tuning with a
LoRA+ ratio and the like are refused with a one-line reason. An option that a method does not
read is refused rather than ignored, so that a sweep never records a setting that had no effect.
A value equal to the default cannot be told apart from "not given" and passes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ailora.errors import AiloraError

# QAILoRA (``ailora.core.quantize``): read by the LoRA family only.
QUANT_OPTIONS = ("quantize", "quant_iters", "quant_double", "quant_keep")

LORA_OPTIONS = frozenset({"rank", "alpha", "targets", "policy", "solver", "dropout", "use_rslora", "use_dora",
                          "loraplus_ratio", "value_lr_ratio", *QUANT_OPTIONS})
VERA_OPTIONS = frozenset({"vera_rank", "targets", "dropout"})
HOULSBY_OPTIONS = frozenset({"bottleneck"})
NO_OPTIONS = frozenset()

# What each option is, for the generic refusal.
MEANING = {
    "rank": "the rank of LoRA adapters",
    "alpha": "the numerator of LoRA's scaling alpha / r",
    "targets": "the roles that get adapters",
    "policy": "the per-role (SVD) start of LoRA factors",
    "solver": "the SVD solver of the LoRA family's starts",
    "dropout": "dropout on an adapter's input",
    "use_rslora": "rsLoRA's alpha / sqrt(r) scaling of LoRA adapters",
    "use_dora": "DoRA's magnitude / direction split of LoRA-adapted weights",
    "loraplus_ratio": "LoRA+'s learning-rate multiplier of lora_B",
    "value_lr_ratio": "the learning-rate multiplier of value LoRA adapters",
    "bottleneck": "the size of Houlsby adapters",
    "vera_rank": "the rank of VeRA's shared random matrices",
    "quantize": "the bitsandbytes quantisation of a LoRA-family residual base (QAILoRA)",
    "quant_iters": "the error-reducing iterations of a quantised LoRA-family start",
    "quant_double": "double quantisation of a 4-bit LoRA-family residual's scales",
    "quant_keep": "keeping the unadapted layers of a quantised LoRA-family model in full precision",
}

# What each non-LoRA method trains (the LoRA family trains LoRA adapters).
TRAINS = {
    "full": "trains every weight of the model",
    "bitfit": "trains bias vectors and the task head only",
    "houlsby": "trains bottleneck adapters, LayerNorms and the task head",
    "vera": "trains per-layer scaling vectors on frozen random matrices shared by all layers",
}

# The combinations people ask for, each with its own reason.
REASONS = {
    ("vera", "policy"): "VeRA's A and B are frozen random matrices shared by all layers, so there are no "
                        "per-layer factors to start from an SVD",
    ("vera", "use_dora"): "DoRA rescales each weight's trained low-rank update and PEFT has no DoRA form of "
                          "VeRA; use DoRA with a LoRA-family method (method.name=dora or ailora)",
    ("vera", "loraplus_ratio"): "VeRA's B is frozen (it trains the vectors d and b), so there is no lora_B "
                                "learning rate to raise",
    ("vera", "rank"): "VeRA's rank is method.vera_rank (the paper uses 256)",
    ("vera", "alpha"): "VeRA has no alpha: its trained vectors d and b set the scale",
    ("vera", "use_rslora"): "VeRA has no alpha / r scaling to change: its trained vectors d and b set the scale",
    ("full", "loraplus_ratio"): "full fine-tuning has no lora_B; every weight trains at train.lr",
    ("full", "use_dora"): "full fine-tuning updates each weight directly; DoRA reparametrises LoRA-adapted ones",
    ("bitfit", "rank"): "BitFit trains bias vectors and the task head only; it has no adapter rank",
    ("bitfit", "loraplus_ratio"): "BitFit has no lora_B; its biases train at train.lr",
    ("houlsby", "rank"): "a Houlsby adapter's size is method.bottleneck (the paper uses 64)",
    ("houlsby", "targets"): "Houlsby adapters sit after the attention output projection and after the FFN "
                            "(roles output and down)",
}


def changed_fields(cfg) -> list[tuple[str, Any]]:
    """(name, value) of each field of the dataclass ``cfg`` whose value differs from its default."""
    out = []
    for f in dataclasses.fields(cfg):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if getattr(cfg, f.name) != default:
            out.append((f.name, getattr(cfg, f.name)))
    return out


def refuse_unused(cfg, method: str, reads: frozenset[str] | None) -> None:
    """Raise AiloraError when ``cfg`` (a MethodConfig) sets an option that ``method`` does not read.

    ``reads`` is the method's option set (None: a user-registered method that declares none, not checked).
    """
    if reads is None:
        return
    for name, value in changed_fields(cfg):
        if name == "name" or name in reads:
            continue
        why = REASONS.get((method, name))
        if why is None:
            what = TRAINS.get(method, "trains LoRA adapters")
            why = f"{name} is {MEANING.get(name, 'not an option of this method')}, and {method} {what}"
        raise AiloraError(f"method.{name}={value!r} does not apply to method {method}: {why}")
