"""Each method family's options: one frozen dataclass per family, the one place an option is declared.

A field's docstring is its help text everywhere: ``ailora.apply``'s docstring, ``ailora init``'s
flags (``ailora.cli.common``), and ``ailora train``'s config keys ``method.<field>``
(``ailora.train.config``). Construction validates every value, so a bad one is a one-line
``OptionError`` naming the option before any model is loaded. A training method names its family's
class (``ailora.methods.registry.TrainMethod.options``); the run config's method section holds an
instance of it.

=======================  ================================================================
class                    methods
=======================  ================================================================
``LoraOptions``          what ``ailora.apply`` reads (the LoRA family's adapters and start)
``LoraTrainingOptions``  lora pissa milora ailora reailora dora rslora loraplus: the above
                         plus the optimizer's learning-rate ratios
``VeraOptions``          vera
``HoulsbyOptions``       houlsby
``NoOptions``            full, bitfit
=======================  ================================================================

Every class lives here, not beside its method, because the CLI's help reads them and must not import
torch (``ailora.methods`` imports PEFT when imported). Adding an option is a field here and the
line that hands it to PEFT.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field

from ailora.errors import AiloraError

RESIDUAL_DTYPES = ("auto", "model", "float32")


class OptionError(AiloraError):
    """A bad option value: ``key`` names the option, ``problem`` says what is wrong with it."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key} {problem}")
        self.key, self.problem = key, problem


def _positive_int(options, name: str) -> None:
    value = getattr(options, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise OptionError(name, f"must be a positive integer, got {value!r}")


def _positive_or_none(options, name: str) -> None:
    value = getattr(options, name)
    if value is not None and not (isinstance(value, int | float) and not isinstance(value, bool)
                                  and math.isfinite(value) and value > 0):
        raise OptionError(name, f"must be a finite positive number, got {value!r}")


def _dropout(options) -> None:
    if isinstance(options.dropout, float) and not math.isfinite(options.dropout):
        raise OptionError("dropout", f"must be a finite number, got {options.dropout}")
    if not (isinstance(options.dropout, int | float) and 0 <= options.dropout < 1):
        raise OptionError("dropout", f"must be a number in [0, 1), got {options.dropout!r}")


def _roles(value, name: str) -> list[str] | None:
    """A role list as given (``"query,value"`` or a list) as a list; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    if isinstance(value, list | tuple) and all(isinstance(t, str) for t in value):
        return list(value)
    raise OptionError(name, f"must be a list of role names (or one comma-separated string), got {value!r}")


@dataclass(frozen=True)
class LoraOptions:
    """The LoRA family's adapters and their start: what ``ailora.apply`` reads besides the method."""

    rank: int = 8
    """The rank r of every adapted block."""
    alpha: float | None = None
    """LoRA alpha, the numerator of the scaling alpha / r (default: the method's, r for the SVD starts and 2r for lora)."""
    targets: list[str] | None = None
    """The roles to adapt, e.g. query,value (default: the method's, query and value)."""
    policy: str | dict[str, str] | None = None
    """The per-role starts overriding the method's, e.g. query=principal,value=minor,key=lora; its roles join the targets."""
    solver: str = "exact"
    """The SVD solver: exact (full SVD) or fast (randomised SVD for principal starts, Gram eigendecomposition for minor ones); the init stays exact either way."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    use_rslora: bool = field(default=False, metadata={"flag": "--rslora"})
    """rsLoRA's scaling, alpha / sqrt(r) instead of alpha / r (the rslora method sets it)."""
    use_dora: bool = field(default=False, metadata={"flag": "--dora"})
    """DoRA's per-row magnitude of each adapted weight, trained as well: PEFT sets it to the row norms of W0, which the SVD start keeps exact (the dora method sets it)."""
    residual_dtype: str = field(default="auto", metadata={"choices": RESIDUAL_DTYPES})
    """The dtype of the residual W - s B0 A0 in a half-precision model: auto keeps the model's dtype where rounding moves no weight by more than 1e-4, else float32; model or float32 force one."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", _roles(self.targets, "targets"))
        _positive_int(self, "rank")
        _positive_or_none(self, "alpha")
        if isinstance(self.policy, Mapping):  # a plain dict, as JSON records it
            object.__setattr__(self, "policy", dict(self.policy))
        elif self.policy is not None and not isinstance(self.policy, str):
            raise OptionError("policy", f"must be ROLE=INIT pairs, e.g. query=principal, got {self.policy!r}")
        if not isinstance(self.solver, str):  # a name in ailora.core.svd.SOLVERS, checked by apply (torch)
            raise OptionError("solver", f"must be a solver's name, got {self.solver!r}")
        _dropout(self)
        for name in ("use_rslora", "use_dora"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(name, f"must be true or false, got {getattr(self, name)!r}")
        if self.residual_dtype not in RESIDUAL_DTYPES:
            raise OptionError("residual_dtype", f"must be auto, model or float32, got {self.residual_dtype!r}")


@dataclass(frozen=True)
class LoraTrainingOptions(LoraOptions):
    """The LoRA family as a training method: the adapters and their start, and the optimizer's ratios."""

    loraplus_ratio: float | None = None
    """LoRA+'s learning-rate multiplier of lora_B: its lr = this x its role's (the loraplus method's default is 16); head and biases unchanged."""
    value_lr_ratio: float | None = None
    """The learning rate of value adapters / train.lr (default: the method's, 2 for AILoRA and reAILoRA, else 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_or_none(self, "loraplus_ratio")
        _positive_or_none(self, "value_lr_ratio")

    def lora(self) -> LoraOptions:
        """The options ``ailora.apply`` reads."""
        return LoraOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LoraOptions)})


@dataclass(frozen=True)
class VeraOptions:
    """VeRA: trained vectors on frozen random matrices shared by every adapted layer."""

    vera_rank: int = 256
    """The rank of VeRA's shared random matrices (vera only; the paper uses 256)."""
    targets: list[str] | None = None
    """The roles to adapt, e.g. query,value (default: query and value)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", _roles(self.targets, "targets"))
        _positive_int(self, "vera_rank")
        _dropout(self)


@dataclass(frozen=True)
class HoulsbyOptions:
    """Houlsby adapters: bottlenecks after the attention output and the FFN."""

    bottleneck: int = 64
    """The size of Houlsby adapters (m; houlsby only; the paper uses 64): 2md + d + m parameters per adapter."""

    def __post_init__(self) -> None:
        _positive_int(self, "bottleneck")


@dataclass(frozen=True)
class NoOptions:
    """A method with no options of its own (full fine-tuning, BitFit)."""


# Every options class a run config may hold, in help order: the built-in families, then those of methods
# registered later (``register_family``, called by ``ailora.methods.register_method``).
FAMILIES: list[type] = [LoraTrainingOptions, VeraOptions, HoulsbyOptions, NoOptions]


def register_family(cls: type) -> None:
    """Make the options class ``cls`` of a newly registered method known to the run config (its keys,
    types and help). It must be a frozen dataclass whose fields all have defaults (the method's
    defaults), none called ``name`` (the method's), and whose fields that share a name with a known
    family's have that field's type and default (``method.targets`` means one thing)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):
        raise AiloraError(f"a method's options must be a frozen dataclass, got {cls!r}")
    if cls in FAMILIES:
        return
    types = {k: tp for family in FAMILIES for k, tp in typing.get_type_hints(family).items()}
    defaults, hints = option_defaults(), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "name" or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            raise AiloraError(f"option {f.name} of {cls.__name__}: an option needs a default and another name "
                              "than name (the method's)")
        if f.name in types and (hints[f.name], f.default) != (types[f.name], defaults[f.name]):
            raise AiloraError(f"option {f.name} of {cls.__name__} differs in type or default from method.{f.name} "
                              "of the methods registered before; give it its own name")
    FAMILIES.append(cls)


def field_help(cls) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body (base classes' fields first)."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def option_defaults() -> dict[str, object]:
    """Every family's option -> its default (an option shared by families has one default in all)."""
    return {f.name: f.default for cls in FAMILIES for f in dataclasses.fields(cls)}


def option_owner(name: str):
    """The first family class in ``FAMILIES`` that declares option ``name``, or None."""
    return next((cls for cls in FAMILIES if name in {f.name for f in dataclasses.fields(cls)}), None)


def options_doc(cls, indent: str = "    ") -> str:
    """``cls``'s fields and their help, one per line, for a docstring."""
    return "\n".join(textwrap.fill(f"{name}: {doc}", 100, initial_indent=indent, subsequent_indent=indent + "    ")
                     for name, doc in field_help(cls).items())
