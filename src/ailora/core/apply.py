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

from ailora.core.adapters import lora_scaling
from ailora.core.inits import INITS, InitConfig
from ailora.core.policies import get_method, resolve_policy
from ailora.core.probe import make_probe, max_abs_diff, model_dtype, run_probe, tolerance_for
from ailora.core.roles import Target, find_targets, weight_of
from ailora.core.svd import SOLVERS
from ailora.errors import AiloraError, ExactnessError
from ailora.version import __version__

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
    use_dora: bool = False
    loraplus_ratio: float | None = None  # LoRA+: lr of lora_B / lr of its role (param_groups reads it)
    layers: list[LayerRecord] = field(default_factory=list)
    check: dict = field(default_factory=dict)
    total_seconds: float = 0.0
    version: str = __version__

    def metadata(self) -> dict:
        """The adapter's provenance, as written to ``ailora.json``."""
        return {
            "ailora_version": self.version, "peft_version": peft.__version__, "method": self.method,
            "policy": self.policy, "rank": self.rank, "alpha": self.alpha, "use_rslora": self.use_rslora,
            "solver": self.solver, "seed": self.seed, "dtype": self.dtype, "lr_ratios": self.lr_ratios,
            "head": self.head, "use_dora": self.use_dora, "loraplus_ratio": self.loraplus_ratio,
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


# Same-shape blocks with the same start are decomposed in one batched call (far fewer, larger
# LAPACK calls); a batch holds at most this many float32 weight entries (256 MB).
MAX_BATCH_ELEMENTS = 2**26


def _plan_all(model: nn.Module, tgts: list[Target], policy, rank: int, scaling: float, solver: str,
              seed: int, device, show: bool) -> list[_Plan]:
    """Starting factors of every target. Each layer's ``seconds`` is its share of its batch's time."""
    plans, weights, generators = [], {}, {}
    for t in tgts:
        module = model.get_submodule(t.name)
        dev = torch.device(device) if device is not None else weight_of(module).device
        weights[t.name] = (module, dev)
        plans.append(_Plan(t, torch.zeros(len(t.blocks) * rank, t.in_features, device=dev),
                           torch.zeros(t.out_features, len(t.blocks) * rank, device=dev), LayerRecord(
            name=t.name, roles=list(t.roles), inits=[policy[r] for r in t.roles],
            shape=[t.out_features, t.in_features], rank=len(t.blocks) * rank, singular_values={},
            residual_dtype="", seconds=0.0)))

    def block(i: int, j: int) -> torch.Tensor:
        module, dev = weights[tgts[i].name]
        blk = tgts[i].blocks[j]
        return weight_of(module).detach()[blk.start:blk.stop].to(device=dev, dtype=torch.float32)

    def cfg_for(dev: torch.device) -> InitConfig:
        if dev not in generators:
            generators[dev] = torch.Generator(device=dev).manual_seed(seed)
        return InitConfig(solver=solver, generator=generators[dev])

    def store(i: int, j: int, a, b, svals, seconds: float) -> None:
        plan, blk = plans[i], tgts[i].blocks[j]
        cols = slice(j * rank, (j + 1) * rank)
        plan.A[cols], plan.B[blk.start:blk.stop, cols] = a, b
        if svals is not None:
            plan.record.singular_values[blk.role] = svals.tolist()
        plan.record.seconds += seconds

    groups: dict[tuple, list[tuple[int, int]]] = {}
    bar = tqdm(total=sum(len(t.blocks) for t in tgts), desc="decompose", unit="block", disable=not show)
    for i, t in enumerate(tgts):
        for j, blk in enumerate(t.blocks):
            init = INITS[policy[blk.role]]
            dev = weights[t.name][1]
            if init.uses_svd:
                groups.setdefault((init.name, blk.stop - blk.start, t.in_features, dev), []).append((i, j))
                continue
            t0 = time.perf_counter()
            res = init.fn(block(i, j), rank, scaling, cfg_for(dev))
            store(i, j, res.A, res.B, None, time.perf_counter() - t0)
            bar.update(1)
    for (name, rows, cols, dev), members in groups.items():
        # A batched full SVD is no faster than one matrix at a time (LAPACK runs them one by one) and
        # measured slower for large matrices, so only the fast solver's small factorisations batch.
        per_batch = max(1, MAX_BATCH_ELEMENTS // (rows * cols)) if solver == "fast" else 1
        for start in range(0, len(members), per_batch):
            chunk = members[start:start + per_batch]
            t0 = time.perf_counter()
            res = INITS[name].fn(torch.stack([block(i, j) for i, j in chunk]), rank, scaling, cfg_for(dev))
            share = (time.perf_counter() - t0) / len(chunk)
            for n, (i, j) in enumerate(chunk):
                store(i, j, res.A[n], res.B[n], res.singular_values[n], share)
            bar.update(len(chunk))
    bar.close()
    return plans


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
        if "default" in getattr(layer, "lora_magnitude_vector", {}):  # DoRA: unadapted rows keep ||W0||
            rows = mask.amax(dim=1)
            layer.lora_magnitude_vector["default"].weight.register_hook(lambda g, r=rows: g * r.to(g.dtype))


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
    use_dora: bool = False,
    residual_dtype: str = "auto",
    device: str | torch.device | None = None,
    check: bool = True,
    progress: bool | None = None,
) -> peft.PeftModel:
    """Wrap ``model`` in a ``peft.PeftModel`` whose LoRA adapters start as ``method`` says.

    Args:
        method: a name in ``ailora.core.policies.METHODS`` (lora, pissa, milora, ailora, reailora).
        rank: r of every adapted block. alpha: LoRA alpha (default: r for the SVD starts, 2r for lora).
        targets: roles to adapt (default: the method's, query and value), e.g. ``["query", "value"]``.
        policy: per-role starts overriding the method's, e.g. ``"query=principal,value=minor,key=lora"``.
        modules: role -> module-name patterns for architectures ailora does not know.
        solver: ``exact`` (full SVD) or ``fast`` (randomised / Gram eigendecomposition).
        head: task-head modules trained in full ("auto": classifier/score/... when present).
        use_rslora: scale by alpha / sqrt(r). use_dora: PEFT's DoRA, whose magnitude PEFT sets to the
            row norms of W0 (B = 0); after the SVD start ||W_res + s B0 A0|| = ||W0||, so it stays exact.
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
    scaling = lora_scaling(rank, alpha, use_rslora)
    dtype = model_dtype(model)

    probe = make_probe(model) if check else None
    reference = run_probe(model, probe) if check else None

    # All decompositions first, before the model is touched: a failure leaves it as it was.
    show = progress if progress is not None else len(tgts) >= PROGRESS_MIN_LAYERS
    plans = _plan_all(model, tgts, pol, rank, scaling, solver, seed, device, show)

    rank_pattern, alpha_pattern = {}, {}
    for t in tgts:
        k = len(t.blocks)
        if k > 1:
            rank_pattern[re.escape(t.name)] = k * rank
            # keep s = alpha / r (or alpha / sqrt(r)) for the stacked layer
            alpha_pattern[re.escape(t.name)] = alpha * (math.sqrt(k) if use_rslora else k)
    config = peft.LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, use_rslora=use_rslora, use_dora=use_dora,
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
        targets={t.name: t for t in tgts}, use_dora=use_dora,
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
