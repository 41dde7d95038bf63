"""FSDP2 for training: PyTorch's ``fully_shard`` on the model, gloo on CPU, NCCL on GPUs.

Accelerate 1.x turns an FSDP request on CPU processes into DDP (its FSDP path is for accelerators
only), so ``train.fsdp=true`` shards the model here, directly: each transformer block (the classes
the model names in ``_no_split_modules``) and then the root are ``fully_shard``-ed, so every
parameter, the frozen residuals included, is a DTensor holding 1/P of its rows on each of the P
processes (all-gathered per block for its forward and backward, gradients reduce-scattered).

What stays as without sharding: parameter names (so ``ailora.core.optim.param_groups`` builds the
role groups on the sharded model unchanged), gradient clipping (``torch.nn.utils.clip_grad_norm_``
reduces the norm over the shards), the adapter saved at the end (the trainable tensors gathered
whole and put back on the main process's model while ``ailora.save`` reads it: the same plain
LoRA for the original base). Checkpoints hold the trainable tensors and the optimizer's state
whole (gathered from the shards), so a resume cuts them back into the same shards exactly. Every function here is collective: all processes call it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from ailora.errors import AiloraError

__all__ = ["copy_full", "full", "is_sharded", "load_optimizer_state", "optimizer_state", "shard_model",
           "unsharded_trainable"]


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: modules whose class the model names in ``_no_split_modules``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_model(model: nn.Module) -> nn.Module:
    """``fully_shard`` every transformer block of ``model`` (a PeftModel or a transformers model), then
    the root, over all processes of the initialised default group; returns the same module, sharded.
    ``generate`` is registered as a forward method of the root: it calls the inner model's forward, past
    the root's hooks, so the root's own parameters (embeddings, head, final norm) would stay sharded.
    A transformers or PEFT model's ``generate`` then decodes in step across processes (``synced_gpus``
    defaults to True, see ``_decode_in_step``)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    if not torch.distributed.is_initialized():
        raise AiloraError("FSDP2 needs several processes: launch with torchrun (ACCELERATE_USE_CPU=true on CPUs)")
    blocks = _blocks(model)
    if not blocks:
        raise AiloraError(f"{type(model).__name__} names no transformer block class (_no_split_modules): "
                          "ailora does not know where to shard it")
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    if callable(getattr(model, "generate", None)):
        register_fsdp_forward_method(model, "generate")
        _decode_in_step(model)
    return model


def _decode_in_step(model: nn.Module) -> None:
    """Make ``synced_gpus=True`` the default of a sharded transformers/PEFT model's ``generate`` when
    several processes run. Every forward of a sharded model is a collective: a process whose sequences
    all stop early (EOS, or a shorter ``max_new_tokens``) must keep stepping until every process has
    stopped, or the others' forwards pair up with the wrong calls. transformers turns this on by itself
    only under its own FSDP or DeepSpeed set-up, which a model sharded here is not. A caller's explicit
    ``synced_gpus`` is kept."""
    import peft
    from transformers.generation import GenerationMixin

    if not isinstance(model, GenerationMixin | peft.PeftModel):
        return
    generate = model.generate  # the registered (hooked) method

    def in_step(*args, **kwargs):
        kwargs.setdefault("synced_gpus", torch.distributed.get_world_size() > 1)
        return generate(*args, **kwargs)

    model.generate = in_step


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a DTensor, gathered from every process), or ``t`` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def copy_full(p: torch.Tensor, whole: torch.Tensor) -> None:
    """Copy the whole tensor ``whole`` into ``p``: into this process's shard when ``p`` is a DTensor."""
    with torch.no_grad():
        if isinstance(p, DTensor):
            p.copy_(distribute_tensor(whole.to(p.dtype), p.device_mesh, p.placements))
        else:
            p.copy_(whole)


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper holds the torch optimizer


def optimizer_state(optimizer) -> dict:
    """The optimizer's ``state_dict`` with every sharded state tensor whole (the same on every process)."""
    sd = _inner(optimizer).state_dict()
    state = {i: {k: full(v) for k, v in s.items()} for i, s in sd["state"].items()}
    return {**sd, "state": state}


def load_optimizer_state(optimizer, sd: dict) -> None:
    """Load what ``optimizer_state`` returned: each whole state tensor of a sharded parameter is cut
    back into this process's shard, as the parameter is."""
    inner = _inner(optimizer)
    inner.load_state_dict(sd)
    for group in inner.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor):
                continue
            st = inner.state.get(p, {})
            for k, v in st.items():
                if torch.is_tensor(v) and not isinstance(v, DTensor) and v.shape == p.shape:
                    st[k] = distribute_tensor(v, p.device_mesh, p.placements)


@contextlib.contextmanager
def unsharded_trainable(model: nn.Module, here: bool):
    """Within it, on the process where ``here`` is true, ``model``'s trainable parameters are whole plain
    tensors (the frozen ones stay sharded): what ``ailora.save`` reads. Every process gathers."""
    if not is_sharded(model):
        yield model
        return
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():  # the root keeps its parameters gathered after a forward: shards again
        if isinstance(m, FSDPModule):
            m.reshard()
    swapped = []
    for name, p in list(model.named_parameters()):
        if p.requires_grad:
            whole = full(p.detach())
            if here:
                owner, attr = _owner(model, name)
                swapped.append((owner, attr, p))
                owner._parameters[attr] = nn.Parameter(whole, requires_grad=True)
    try:
        yield model
    finally:
        for owner, attr, p in swapped:
            owner._parameters[attr] = p


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module, _, attr = name.rpartition(".")
    return (model.get_submodule(module) if module else model), attr
