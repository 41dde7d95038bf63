"""Which options each training method reads, and why any other combination is refused.

A method reads the fields of the options class it names (``TrainMethod.options``, the classes in
``ailora.core.options``); the run config's method section is built here, as an instance of it:

============================================  =======================================================
method                                        options it reads
============================================  =======================================================
lora pissa milora ailora reailora,            ``LoraTrainingOptions``: rank alpha targets policy
dora (= lora + use_dora), rslora (= lora +    solver dropout use_rslora use_dora residual_dtype
use_rslora), loraplus (= lora + ratio 16)     loraplus_ratio value_lr_ratio
vera                                          ``VeraOptions``: vera_rank targets dropout
houlsby                                       ``HoulsbyOptions``: bottleneck
bitfit, full                                  ``NoOptions``: none
============================================  =======================================================

So AILoRA (or PiSSA, MiLoRA...) combines with rsLoRA scaling, DoRA's magnitude and a LoRA+ ratio,
in any mix; VeRA with an SVD start, DoRA or LoRA+, BitFit with a rank, full fine-tuning with a
LoRA+ ratio and the like are refused with a one-line reason. An option that a method does not
read is refused rather than ignored, so that a sweep never records a setting that had no effect.
An option of another family set to its default cannot be told apart from "not given": it is
dropped, so a sweep's shared base and a run config recorded before each method had its own options
(every option of every method in one flat section) still read.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from ailora.core.options import OptionError, field_help, option_defaults, option_owner
from ailora.errors import AiloraError
from ailora.methods.registry import get_method

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


def _meaning(name: str) -> str:
    """What option ``name`` is, for the generic refusal: its help up to the first parenthesis or colon."""
    owner = option_owner(name)
    doc = field_help(owner).get(name, "") if owner is not None else ""
    head = re.split(r" \(|:|, e\.g\.", doc, maxsplit=1)[0].rstrip(".")
    first = head.split(" ", 1)[0]
    if first.isalpha() and first[1:].islower():  # "The rank..." -> "the rank...", not "LoRA..." -> "loRA..."
        head = head[0].lower() + head[1:]
    return head or "not an option of this method"


def refusal(method: str, name: str, value) -> AiloraError:
    """The one-line error for option ``name`` set to ``value`` on ``method``, which does not read it."""
    why = REASONS.get((method, name))
    if why is None:
        why = f"{name} is {_meaning(name)}, and {method} {TRAINS.get(method, 'trains LoRA adapters')}"
    return AiloraError(f"method.{name}={value!r} does not apply to method {method}: {why}")


def build_options(method: str, values: Mapping[str, Any]):
    """The options object of ``method`` (an instance of its ``TrainMethod.options``) from ``values``
    (option -> value). An option the method does not read is refused (``refusal``) unless it holds
    that option's default; a bad value is a one-line error naming ``method.<option>``."""
    cls = get_method(method).options
    own = {f.name for f in dataclasses.fields(cls)}
    defaults = option_defaults()
    kept = {}
    for name, value in values.items():
        if name in own:
            kept[name] = value
        elif not (name in defaults and value == defaults[name]):
            raise refusal(method, name, value)
    try:
        return cls(**kept)
    except OptionError as exc:
        raise AiloraError(f"method.{exc.key} {exc.problem}") from None
