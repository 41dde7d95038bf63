"""The one registry of training methods: a method is a name, how it prepares a model, how it saves.

A family registers its methods from its own module (``ailora.methods.lora``: the LoRA family;
``ailora.methods.baselines``: the paper's Table 4 baselines); ``ailora.methods`` imports both, so
``ailora.methods.get_method(name)`` sees every method. This module imports nothing of ailora but
its errors and the options classes (``ailora.core.options``, which import nothing else), so any
module may register a method without an import cycle:

    register_method(TrainMethod("mine", prepare=my_prepare, save=my_save, description="...",
                                options=HoulsbyOptions))

``prepare(model, method_cfg, seed)`` freezes or wraps the base model and returns a ``Prepared``:
the model with only its trained weights requiring grad, plus what training needs to know about it
(what the preparation did, the optimizer's options); ``save(prepared, out_dir)`` writes what was
trained. ``method_cfg`` is the run config's method section (``ailora.train.config.MethodConfig``):
``method_cfg.name``, and ``method_cfg.options``, an instance of the options class the method names
(``ailora.core.options``; a method that names none reads none). Setting any other option is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ailora.core.options import NoOptions, register_family
from ailora.registry import lookup, register


@dataclass(frozen=True)
class Prepared:
    """A model made ready to train by a method, and what the training loop needs to know about it."""

    model: Any  # torch.nn.Module: only the trained weights require grad
    state: Any = None
    """What the preparation did: the LoRA family's ``AiloraState``, a baseline's ``BaselineState``,
    or None. Its ``metadata()`` goes into the run record."""
    loraplus_ratio: float | None = None
    """LoRA+: lr of lora_B / lr of its role, for ``ailora.param_groups`` (None: off)."""
    value_lr_ratio: float | None = None
    """lr of value adapters / base lr, for ``ailora.param_groups`` (None: the method's)."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Settings the state does not hold, added to its metadata (the LoRA family's loraplus_ratio)."""
    synced: Mapping[str, Any] = field(default_factory=dict)
    """Tensors besides parameters and buffers that must be identical on every process (the LoRA
    family's starting factors, which saving subtracts)."""
    groups: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``ailora.param_groups`` the method fixes: a baseline's ``head`` and
    ``own_group`` (the LoRA family's groups come from its state, so none)."""

    def metadata(self, name: str) -> dict:
        """Provenance for the run record: the state's metadata, or just the method's ``name``."""
        return {**self.state.metadata(), **self.details} if self.state is not None else {"method": name}


@dataclass(frozen=True)
class TrainMethod:
    name: str
    prepare: Callable[[Any, Any, int], Prepared]
    """``prepare(model, method_cfg, seed) -> Prepared`` with only the trained weights requiring grad."""
    save: Callable[[Prepared, Any], dict]
    """``save(prepared, out_dir) -> report`` writes what was trained (an adapter, or the full model)."""
    description: str = ""
    options: type = NoOptions
    """The frozen dataclass of the options the method reads (``ailora.core.options``); the run config's
    method section holds one, and setting any option it lacks is an error."""
    check: Callable[[Any], None] | None = None
    """``check(method_cfg)`` raises AiloraError for settings the method cannot run, before any model
    is loaded (the LoRA family: unknown roles or inits in targets and policy)."""
    start_from: Callable[[Any, Any, int, Any], Prepared] | None = None
    """``start_from(model, method_cfg, seed, directory) -> Prepared``: prepare a model loaded from a
    directory of ``ailora init --residual-out`` (residual weights, starting factors beside them) with
    no decomposition (the LoRA family); None: the method cannot start from one."""


METHODS: dict[str, TrainMethod] = {}


def register_method(method: TrainMethod, replace: bool = False) -> TrainMethod:
    """Add ``method`` to ``METHODS`` (``replace=True`` to overwrite a method of the same name); its
    options class joins the run config's method section (``ailora.core.options.register_family``)."""
    register_family(method.options)
    return register(METHODS, method.name, method, "training method", replace)


def get_method(name: str) -> TrainMethod:
    """The registered training method called ``name``."""
    return lookup(METHODS, name, "method")
