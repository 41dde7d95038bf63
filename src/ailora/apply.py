"""``apply``: put SVD-initialised (or plain) LoRA adapters on a transformers model through PEFT.

The adapters are PEFT's own LoRA layers (``peft.tuners.lora.Linear``); ailora only chooses their
starting values and rewrites each adapted base weight as the frozen residual
``W_res = W - s * B0 @ A0``, so that the model's outputs are unchanged at step 0. That is checked
on a probe batch on every call.

Fused projections (GPT-2 ``c_attn``, Phi-3 ``qkv_proj``): one PEFT LoRA layer of rank r per
adapted block (rank 2r for Q and V), A stacked by block and B block-structured (the Q rows of B
only use the Q columns, ...). A gradient mask keeps B's off-block entries at zero during
training, so the blocks stay separate, and the trained layer is still a plain PEFT LoRA.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import peft
import torch
from torch import nn
from tqdm.auto import tqdm

from ailora import __version__
from ailora.errors import AiloraError, ExactnessError
from ailora.inits import INITS, InitConfig
from ailora.methods import get_method, resolve_policy
from ailora.probe import make_probe, max_abs_diff, model_dtype, run_probe, tolerance_for
from ailora.roles import Target, find_targets, weight_of
from ailora.svd import SOLVERS

# Task-head modules that PEFT should train and save in full (``modules_to_save``).
HEAD_NAMES = ("classifier", "pre_classifier", "score", "qa_outputs", "classification_head")
# Show a progress bar when there are at least this many layers to decompose.
PROGRESS_MIN_LAYERS = 24
# A residual stays in a half-precision model's dtype only if rounding it moves no weight by more.
RESIDUAL_TOLERANCE = 1e-4


@dataclass
class LayerRecord:
    """What one adapted module got: a row in the init report."""

    name: str
    roles: list[str]
    inits: list[str]
    shape: list[int]  # (out, in)
    rank: int  # total rank of the PEFT layer (r per adapted block)
    singular_values: dict[str, list[float]]  # role -> the values moved into the adapter
    residual_dtype: str
    seconds: float


@dataclass
class AiloraState:
    """What ailora knows about an applied model, kept on the PeftModel as ``model.ailora_state``.

    ``initial`` holds each module's starting (A0, B0) on the CPU: saving needs them to express the
    trained adapter against the original weights (B' = [B, -B0], A' = [A; A0]).
    """

    method: str
    policy: dict[str, str]
    rank: int
    alpha: float
    use_rslora: bool
    solver: str
    seed: int
    dtype: str
    lr_ratios: dict[str, float]
    head: list[str]
    targets: dict[str, Target]
    initial: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    layers: list[LayerRecord] = field(default_factory=list)
    check: dict = field(default_factory=dict)
    total_seconds: float = 0.0
    version: str = __version__

    def scaling(self, rank: int, alpha: float) -> float:
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank

    def metadata(self) -> dict:
        """The adapter's provenance, as written to ``ailora.json``."""
        return {
            "ailora_version": self.version, "peft_version": peft.__version__, "method": self.method,
            "policy": self.policy, "rank": self.rank, "alpha": self.alpha, "use_rslora": self.use_rslora,
            "solver": self.solver, "seed": self.seed, "dtype": self.dtype, "lr_ratios": self.lr_ratios,
            "head": self.head,
            "targets": {n: [asdict(b) for b in t.blocks] for n, t in self.targets.items()},
        }

    def report(self) -> dict:
        """Per-layer records, total seconds and the output check (the JSON of ``ailora init``)."""
        return {**self.metadata(), "layers": [asdict(r) for r in self.layers],
                "total_seconds": self.total_seconds, "output_check": self.check}


def _validate_weight(name: str, module: nn.Module, target: Target, rank: int) -> None:
    w = weight_of(module)
    kind = type(w).__name__
    if not w.is_floating_point() or "4bit" in kind or "8bit" in kind or hasattr(w, "quant_state"):
        raise AiloraError(f"layer {name} has quantised or integer weights ({w.dtype}, {kind}); "
                          "load the model in float32/bfloat16/float16 to initialise adapters")
    for b in target.blocks:
        limit = min(b.stop - b.start, target.in_features)
        if rank > limit:
            raise AiloraError(f"rank {rank} exceeds min(out, in) = {limit} of layer {name} ({b.role} block)")
    if not torch.isfinite(w).all():
        raise AiloraError(f"layer {name} has NaN or Inf weights")


def _head_modules(model: nn.Module, head) -> list[str]:
    if head is None or head is False:
        return []
    names = [n for n, _ in model.named_children()]
    if head == "auto":
        return [n for n in names if n in HEAD_NAMES]
    head = [head] if isinstance(head, str) else list(head)
    missing = []
    for h in head:
        try:
            model.get_submodule(h)
        except AttributeError:
            missing.append(h)
    if missing:
        raise AiloraError(f"head module(s) {missing} not in the model; top-level modules: {names}")
    return head


@dataclass
class _Plan:
    """Starting factors of one target, stacked over its blocks."""

    target: Target
    A: torch.Tensor  # (k*r, in) float32
    B: torch.Tensor  # (out, k*r) float32, block-structured
    record: LayerRecord


def _plan_target(module: nn.Module, target: Target, policy, rank, scaling, cfg: InitConfig, device) -> _Plan:
    t0 = time.perf_counter()
    w = weight_of(module).detach().to(device=device, dtype=torch.float32)
    k = len(target.blocks)
    a = torch.zeros(k * rank, target.in_features, device=device)
    b = torch.zeros(target.out_features, k * rank, device=device)
    svals = {}
    for i, blk in enumerate(target.blocks):
        init = INITS[policy[blk.role]].fn(w[blk.start:blk.stop], rank, scaling, cfg)
        cols = slice(i * rank, (i + 1) * rank)
        a[cols] = init.A
        b[blk.start:blk.stop, cols] = init.B
        if init.singular_values is not None:
            svals[blk.role] = init.singular_values.tolist()
    record = LayerRecord(
        name=target.name, roles=list(target.roles), inits=[policy[r] for r in target.roles],
        shape=[target.out_features, target.in_features], rank=k * rank, singular_values=svals,
        residual_dtype="", seconds=0.0,
    )
    record.seconds = time.perf_counter() - t0
    return _Plan(target, a, b, record)


def _block_mask(target: Target, rank: int) -> torch.Tensor:
    mask = torch.zeros(target.out_features, len(target.blocks) * rank)
    for i, blk in enumerate(target.blocks):
        mask[blk.start:blk.stop, i * rank:(i + 1) * rank] = 1
    return mask


def _run_in_float32(layer: nn.Module) -> None:
    """Run a base layer whose residual was kept in float32 inside a half-precision model:
    inputs go up to float32, the output comes back in the input's dtype."""

    def before(m, args):
        m._ailora_input_dtype = args[0].dtype
        return tuple(x.float() if torch.is_tensor(x) else x for x in args)

    layer.register_forward_pre_hook(before)
    layer.register_forward_hook(lambda m, args, out: out.to(m._ailora_input_dtype))


def _write_layer(peft_model, plan: _Plan, scaling: float, residual_dtype: str, rank: int) -> None:
    t = plan.target
    layer = peft_model.base_model.model.get_submodule(t.name)
    base = layer.get_base_layer()
    w = weight_of(base)
    w0 = w.detach().float()
    a, b = plan.A.to(w0.device), plan.B.to(w0.device)
    lora_dtype = layer.lora_A["default"].weight.dtype
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a.to(lora_dtype))
        layer.lora_B["default"].weight.copy_(b.to(lora_dtype))
        if plan.record.singular_values:  # an SVD start: the residual replaces W
            delta = scaling * (b @ a)
            res = w0 - delta
            keep = w.dtype
            if residual_dtype == "float32" or (
                residual_dtype == "auto" and w.dtype != torch.float32
                and (res.to(w.dtype).float() + delta - w0).abs().max().item() > RESIDUAL_TOLERANCE
            ):
                keep = torch.float32
            new = res.T if t.fan_in_fan_out else res
            base.weight = nn.Parameter(new.to(keep).contiguous(), requires_grad=False)
            if keep != w.dtype:
                _run_in_float32(base)
            plan.record.residual_dtype = str(keep).removeprefix("torch.")
        else:
            plan.record.residual_dtype = "unchanged"
    if t.fused:
        mask = _block_mask(t, rank).to(layer.lora_B["default"].weight.device)
        layer.lora_B["default"].weight.register_hook(lambda g, m=mask: g * m.to(g.dtype))


def apply(
    model: nn.Module,
    method: str = "ailora",
    rank: int = 8,
    alpha: float | None = None,
    targets: list[str] | str | None = None,
    policy: str | Mapping[str, str] | None = None,
    modules: Mapping[str, list[str]] | None = None,
    solver: str = "exact",
    seed: int = 0,
    head="auto",
    dropout: float = 0.0,
    use_rslora: bool = False,
    residual_dtype: str = "auto",
    device: str | torch.device | None = None,
    check: bool = True,
    progress: bool | None = None,
) -> peft.PeftModel:
    """Wrap ``model`` in a ``peft.PeftModel`` whose LoRA adapters start as ``method`` says.

    Args:
        method: a name in ``ailora.methods.METHODS`` (lora, pissa, milora, ailora, reailora).
        rank: r of every adapted block. alpha: LoRA alpha (default: r for the SVD starts, 2r for lora).
        targets: roles to adapt (default: the method's, query and value), e.g. ``["query", "value"]``.
        policy: per-role starts overriding the method's, e.g. ``"query=principal,value=minor,key=lora"``.
        modules: role -> module-name patterns for architectures ailora does not know.
        solver: ``exact`` (full SVD) or ``fast`` (randomised / Gram eigendecomposition).
        head: task-head modules trained in full ("auto": classifier/score/... when present).
        residual_dtype: "auto" keeps a half-precision model's dtype when rounding the residual moves
            no weight by more than 1e-4, else keeps that residual in float32; "model" or "float32" force.
        device: where the decompositions run (default: where each weight is; "cuda" to use a GPU).
        check: compare outputs on a probe batch before and after; raise ExactnessError past tolerance.
    Returns the PeftModel, with ``model.ailora_state`` (an AiloraState) describing what was done.
    """
    t_start = time.perf_counter()
    m = get_method(method)
    if not isinstance(rank, int) or rank <= 0:
        raise AiloraError(f"rank must be a positive integer, got {rank!r}")
    if solver not in SOLVERS:
        raise AiloraError(f"unknown solver {solver!r}; solvers are: {', '.join(SOLVERS)}")
    if residual_dtype not in ("auto", "model", "float32"):
        raise AiloraError(f"residual_dtype must be auto, model or float32, got {residual_dtype!r}")
    if isinstance(model, peft.PeftModel):
        raise AiloraError("the model already has PEFT adapters; pass the base transformers model")
    pol = resolve_policy(method, targets, policy)
    alpha = float(alpha if alpha is not None else m.alpha_per_rank * rank)
    tgts = find_targets(model, list(pol), modules)
    for t in tgts:
        _validate_weight(t.name, model.get_submodule(t.name), t, rank)
    head_names = _head_modules(model, head)
    scaling = alpha / math.sqrt(rank) if use_rslora else alpha / rank
    dtype = model_dtype(model)

    probe = make_probe(model) if check else None
    reference = run_probe(model, probe) if check else None

    # All decompositions first, before the model is touched: a failure leaves it as it was.
    gen = torch.Generator().manual_seed(seed)
    cfg = InitConfig(solver=solver, generator=gen)
    show = progress if progress is not None else len(tgts) >= PROGRESS_MIN_LAYERS
    plans = []
    for t in tqdm(tgts, desc=f"{method} init", unit="layer", disable=not show):
        module = model.get_submodule(t.name)
        dev = torch.device(device) if device is not None else weight_of(module).device
        plans.append(_plan_target(module, t, pol, rank, scaling, cfg if dev.type == "cpu" else
                                  InitConfig(solver, torch.Generator(dev).manual_seed(seed)), dev))

    rank_pattern, alpha_pattern = {}, {}
    for t in tgts:
        k = len(t.blocks)
        if k > 1:
            rank_pattern[re.escape(t.name)] = k * rank
            # keep s = alpha / r (or alpha / sqrt(r)) for the stacked layer
            alpha_pattern[re.escape(t.name)] = alpha * (math.sqrt(k) if use_rslora else k)
    config = peft.LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, use_rslora=use_rslora,
        target_modules=[t.name for t in tgts], rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
        fan_in_fan_out=all(t.fan_in_fan_out for t in tgts), modules_to_save=head_names or None,
        init_lora_weights=True,
    )
    peft_model = peft.get_peft_model(model, config)
    for plan in plans:
        _write_layer(peft_model, plan, scaling, residual_dtype, rank)

    state = AiloraState(
        method=method, policy=pol, rank=rank, alpha=alpha, use_rslora=use_rslora, solver=solver, seed=seed,
        dtype=str(dtype).removeprefix("torch."), lr_ratios=dict(m.lr_ratios), head=head_names,
        targets={t.name: t for t in tgts},
        initial={p.target.name: (p.A.detach().cpu().clone(), p.B.detach().cpu().clone()) for p in plans},
        layers=[p.record for p in plans],
    )
    peft_model.ailora_state = state
    if check:
        diff = max_abs_diff(run_probe(peft_model, probe), reference)
        tol = tolerance_for(dtype, reference)
        state.check = {"max_abs_diff": diff, "tolerance": tol, "passed": diff <= tol,
                       "probe": {k: list(v.shape) for k, v in probe.items()}}
        if diff > tol:
            raise ExactnessError(f"outputs changed by {diff:.3g} after {method} init (tolerance {tol:.1g})")
    state.total_seconds = time.perf_counter() - t_start
    return peft_model
