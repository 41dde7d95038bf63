"""ailora inside Hugging Face ``transformers.Trainer`` and TRL's ``SFTTrainer``.

    model = ailora.apply(model, method="ailora", rank=8)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      optimizer_cls_and_kwargs=ailora.hf.optimizer_cls_and_kwargs(model, lr=2e-4),
                      callbacks=[ailora.hf.AiloraCallback()])

Why a callback. ``Trainer`` saves a PeftModel with ``model.save_pretrained``, which writes the
factors as trained: against the residual base W - s B0 A0, not the original W. PEFT's own PiSSA
and OLoRA checkpoints still load right because their config says ``init_lora_weights="pissa"`` and
PEFT re-runs that start on load; ailora's starts (per role, per block of a fused layer, minor
singular vectors, float32 residuals) are nothing PEFT can re-run. So:

- ``AiloraCallback.on_save`` rewrites each checkpoint's adapter as plain LoRA on the original base
  (B' = [B, -B0], A' = [A; A0], as ``ailora.save``), from the files Trainer wrote (so it works the
  same under FSDP or DeepSpeed), with ``ailora.json`` and a model card beside it:
  ``PeftModel.from_pretrained(original_base, "checkpoint-20")`` reproduces the model at step 20.
- ``resume_from_checkpoint`` loads that adapter back with ``model.load_adapter``. The callback
  (at ``on_init_end``) registers a load hook on the model that recognises this model's plain form
  (its tail equals the start [A0; -B0] exactly) and keeps the trained part [A; B], so training
  resumes bit-exactly. Anything else keeps PyTorch's shape check, a loud error.
- Without the callback, a checkpoint holds the raw factors, and its config carries
  ``ailora.core.adapters.RESIDUAL_FORM`` as ``init_lora_weights`` (set by ``ailora.apply``):
  ``PeftModel.from_pretrained`` refuses it with that message instead of loading it wrong, while
  resuming (which reuses the live config) still works.

Trainer's ``learning_rate`` and ``weight_decay`` do not reach an optimizer a factory builds (Trainer
hands the factory the model only). ``optimizer_cls_and_kwargs(model, args=training_args)`` takes them
from the arguments: ``learning_rate`` as the base (query) rate, ``weight_decay`` on the weights Trainer
decays (never biases or norm weights), and its Adam betas and epsilon. Given ``lr=`` alone,
``AiloraCallback`` refuses at the start of training a Trainer whose arguments set another
``learning_rate``, betas or epsilon (not the defaults) or a ``weight_decay`` the optimizer does not
have, instead of training with rates nobody asked for; and either way an ``optim`` that names another
optimizer than the one the factory builds (``refuse_other_optim``).

Why ``optimizer_cls_and_kwargs``: Trainer refuses ``optimizers=(optimizer, None)`` under FSDP,
whose wrapping replaces the parameters after the optimizer would have been built. Given a factory,
Trainer builds the optimizer itself on the model it will train (wrapped or not), and the factory
groups that model's parameters by role (``ailora.param_groups``), so the value adapters keep
their learning rate (2x for AILoRA) under FSDP too.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path

import peft
import torch
from torch import nn
from transformers import TrainerCallback

from ailora.core.adapters import PREFIX, convert_raw_save
from ailora.core.optim import param_groups
from ailora.core.state import AiloraState, state_of
from ailora.errors import AiloraError

__all__ = ["AiloraCallback", "RoleGroupedOptimizer", "accept_plain_checkpoints", "optimizer_cls_and_kwargs"]

# Name components that wrappers (DDP, FSDP v1, activation checkpointing, torch.compile) insert.
WRAPPER_PARTS = re.compile(r"^module\.|(?:^|(?<=\.))(?:_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")


def unwrap(model: nn.Module) -> peft.PeftModel:
    """The PeftModel inside DDP / FSDP / compile wrappers; an error if there is none."""
    seen = model
    while not isinstance(model, peft.PeftModel):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise AiloraError(f"expected the PeftModel returned by ailora.apply, got {type(seen).__name__}")
        model = inner
    return model


def _ailora_state(model: nn.Module, state: AiloraState | None) -> AiloraState:
    state = state if state is not None else state_of(unwrap(model))
    if state is None:
        raise AiloraError("the model has no ailora state: pass the model returned by ailora.apply")
    return state


def accept_plain_checkpoints(model: peft.PeftModel, state: AiloraState | None = None) -> None:
    """Let ``model.load_adapter`` (and so Trainer's resume and ``load_best_model_at_end``) take this
    model's own plain-form adapter: a module whose A' = [A; A0] and B' = [B, -B0] end exactly in its
    start gets [A] and [B] back. Any other shape is left to PyTorch's check (an error)."""
    state = _ailora_state(model, state)
    starts = {n: (a0, b0) for n, (a0, b0) in state.initial.items() if b0.abs().max() > 0}

    def take_trained_part(module, state_dict, prefix, *args) -> None:
        error_msgs = args[-1]
        for name, (a0, b0) in starts.items():
            key_a = f"{prefix}{PREFIX}{name}.lora_A.default.weight"
            key_b = f"{prefix}{PREFIX}{name}.lora_B.default.weight"
            a, b = state_dict.get(key_a), state_dict.get(key_b)
            if a is None or b is None or a.shape[0] != 2 * a0.shape[0]:
                continue
            r = a0.shape[0]
            if torch.equal(a[r:], a0.to(a)) and torch.equal(b[:, r:], -b0.to(b)):
                state_dict[key_a], state_dict[key_b] = a[:r].clone(), b[:, :r].clone()
            else:
                error_msgs.append(f"adapter of {name} is rank {a.shape[0]} but does not end in this model's start "
                                  "[A0; -B0]: it was not saved from this model")

    unwrap(model).register_load_state_dict_pre_hook(take_trained_part)


class AiloraCallback(TrainerCallback):
    """Makes every Trainer checkpoint of an ailora model a plain PEFT adapter on the ORIGINAL base
    (``PeftModel.from_pretrained(original, "checkpoint-N")`` reproduces the model at step N) that
    ``resume_from_checkpoint`` still resumes exactly; see the module's docstring.

    Args:
        state: the model's AiloraState (default: read from the model Trainer holds).
    """

    def __init__(self, state: AiloraState | None = None):
        self.state = state

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self.state = _ailora_state(model, self.state)
        accept_plain_checkpoints(unwrap(model), self.state)

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        refuse_ignored_trainer_rates(args, optimizer)

    def on_save(self, args, state, control, model=None, **kwargs):
        if not args.should_save:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not checkpoint.is_dir():
            raise AiloraError(f"AiloraCallback: Trainer's checkpoint {checkpoint} is not there to convert")
        convert_raw_save(checkpoint, unwrap(model), self.state)


class _UnwrappedNames:
    """A model's parameters under the names they have without DDP / FSDP / compile wrappers."""

    def __init__(self, model: nn.Module):
        self.model = model

    def named_parameters(self):
        for name, p in self.model.named_parameters():
            yield WRAPPER_PARTS.sub("", name), p


class RoleGroupedOptimizer:
    """An optimizer factory for Trainer's ``optimizer_cls_and_kwargs``: called with the model Trainer
    trains (possibly wrapped), it returns ``optimizer(ailora.param_groups(model, lr, ...), **kwargs)``."""

    def __init__(self, state: AiloraState, lr: float, optimizer: type = torch.optim.AdamW, **group_kwargs):
        self.state, self.lr, self.optimizer, self.group_kwargs = state, lr, optimizer, group_kwargs

    def __call__(self, model: nn.Module, **optimizer_kwargs) -> torch.optim.Optimizer:
        groups = param_groups(_UnwrappedNames(model), self.lr, state=self.state, **self.group_kwargs)
        if any(g["name"].split(".")[0] == "adapter" for g in groups):  # an adapter whose role was not found
            raise AiloraError("RoleGroupedOptimizer: adapter parameter names do not match the model's targets; "
                              "pass the model returned by ailora.apply")
        built = self.optimizer(groups, **optimizer_kwargs)
        built.ailora_class = self.optimizer
        # What AiloraCallback compares with Trainer's arguments (``refuse_ignored_trainer_rates``).
        betas, eps = built.defaults.get("betas"), built.defaults.get("eps")
        built.ailora_rates = {"learning_rate": self.lr, "weight_decay": self.group_kwargs.get("weight_decay", 0.0),
                              **({"adam_beta1": betas[0], "adam_beta2": betas[1]} if betas else {}),
                              **({"adam_epsilon": eps} if eps is not None else {})}
        return built


def _default(args, name: str):
    """The default of field ``name`` of ``args``' class (TRL's SFTConfig has its own learning rate)."""
    field = getattr(type(args), "__dataclass_fields__", {}).get(name)
    return None if field is None else field.default


# Trainer's ``optim`` names that are a torch optimizer class (Trainer adds only options ailora's groups set).
TORCH_OPTIMS = {"adamw_torch": torch.optim.AdamW, "adamw_torch_fused": torch.optim.AdamW, "sgd": torch.optim.SGD,
                "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop}


def refuse_other_optim(args, optimizer: type) -> None:
    """Refuse ``TrainingArguments(optim=...)`` naming another optimizer than ``optimizer``, the class the
    factory builds: Trainer ignores ``optim`` when given ``optimizer_cls_and_kwargs``, without a word.
    An ``optim`` that is no torch class (adafactor, 8-bit, paged...) is refused only against the default
    AdamW: a class passed on purpose is taken to be that optimizer."""
    name = str(getattr(args.optim, "value", args.optim))
    wanted = TORCH_OPTIMS.get(name)
    if wanted is not None and issubclass(optimizer, wanted):
        return
    if wanted is None and optimizer is not torch.optim.AdamW:
        return
    built = (f"torch.optim.{optimizer.__name__}" if getattr(torch.optim, optimizer.__name__, None) is optimizer
             else f"{optimizer.__module__}.{optimizer.__qualname__}")
    fix = f"optimizer=torch.optim.{wanted.__name__}" if wanted else "the optimizer's class as optimizer="
    raise AiloraError(f"TrainingArguments(optim={name}) is ignored by Trainer when ailora.hf.optimizer_cls_and_kwargs "
                      f"builds the optimizer (here {built}); pass {fix}, or set optim='adamw_torch'")


def refuse_ignored_trainer_rates(args, optimizer) -> None:
    """Refuse a Trainer whose ``weight_decay``, or ``learning_rate`` / Adam betas / epsilon other than their
    defaults, differ from what ``optimizer_cls_and_kwargs`` built the optimizer with, or whose ``optim``
    names another optimizer: Trainer would ignore them without a word."""
    built = getattr(optimizer, "optimizer", optimizer)  # under Accelerate's wrapper
    rates = getattr(built, "ailora_rates", None)
    if rates is None:
        return
    refuse_other_optim(args, built.ailora_class)
    for name in rates:
        given = getattr(args, name)
        if given != rates[name] and (name == "weight_decay" or given != _default(args, name)):
            raise AiloraError(f"TrainingArguments({name}={given}) is not what ailora.hf.optimizer_cls_and_kwargs "
                              f"built the optimizer with ({rates[name]}); pass args=training_args to it (or the "
                              "same value) so that Trainer's rates are the ones used")


def _rates_from_args(lr: float | None, args, group_kwargs: dict) -> tuple[float, dict]:
    """(base lr, param_groups options) with Trainer's learning_rate and weight_decay when ``args`` is given;
    a value given both ways must agree."""
    if args is None:
        if lr is None:
            raise AiloraError("optimizer_cls_and_kwargs: give lr, or args (the TrainingArguments) to take it from")
        return lr, group_kwargs
    for mine, theirs, name in ((lr, args.learning_rate, "lr"),
                               (group_kwargs.get("weight_decay"), args.weight_decay, "weight_decay")):
        if mine is not None and mine != theirs:
            raise AiloraError(f"optimizer_cls_and_kwargs: {name}={mine} disagrees with the TrainingArguments' "
                              f"{theirs}; give it once")
    return args.learning_rate, {**group_kwargs, "weight_decay": args.weight_decay}


def _adam_kwargs(optimizer: type, args, optimizer_kwargs: dict | None) -> dict:
    """``optimizer_kwargs`` with Trainer's Adam betas and epsilon beneath them, for an optimizer taking them."""
    params = inspect.signature(optimizer).parameters
    adam = {"betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon} if args is not None else {}
    return {**{k: v for k, v in adam.items() if k in params}, **(optimizer_kwargs or {})}


def optimizer_cls_and_kwargs(model: nn.Module, lr: float | None = None, optimizer: type = torch.optim.AdamW,
                             optimizer_kwargs: dict | None = None, args=None,
                             **group_kwargs) -> tuple[Callable, dict]:
    """``Trainer(optimizer_cls_and_kwargs=...)`` with ailora's per-role learning rates (value x2 for AILoRA).

    Args:
        model: the model returned by ailora.apply (its roles and lr ratios are read here).
        lr: the base (query) learning rate; Trainer's scheduler scales every group alike.
        optimizer: the torch optimizer class. optimizer_kwargs: its other arguments (betas, eps...).
        args: the Trainer's TrainingArguments: its learning_rate is the base rate, its weight_decay is
            applied as Trainer applies it (not to biases and norm weights), its Adam betas and epsilon
            go to an optimizer that takes them (under ``optimizer_kwargs``); ``lr`` may then be left out.
            Its ``optim`` must name ``optimizer`` (``refuse_other_optim``).
        group_kwargs: ``ailora.param_groups`` options (value_lr_ratio, lr_ratios, weight_decay, head_lr,
            loraplus_ratio).
    """
    lr, group_kwargs = _rates_from_args(lr, args, group_kwargs)
    if args is not None:
        refuse_other_optim(args, optimizer)
    factory = RoleGroupedOptimizer(_ailora_state(model, None), lr, optimizer, **group_kwargs)
    return (lambda: factory), _adam_kwargs(optimizer, args, optimizer_kwargs)
