"""``apply``: put SVD-initialised (or plain) LoRA adapters on a transformers model through PEFT.

The adapters are PEFT's own LoRA layers (``peft.tuners.lora.Linear``); ailora only chooses their
starting values and rewrites each adapted base weight as the frozen residual
``W_res = W - s * B0 @ A0``, so that the model's outputs are unchanged at step 0. That is checked on
every call, at two levels: each adapted layer, as PEFT runs it (residual, factors, scaling, dtypes,
hooks), against its original weight on a few seeded random input rows (``W_res x + s B (A x)`` against
``W x``: cost O(rows * out * in), nothing next to a decomposition, and any wrong block is caught with
probability one); then the whole model on one short probe sequence, before and after.

Fused projections (GPT-2 ``c_attn``, Phi-3 ``qkv_proj``, GPT-NeoX's per-head ``query_key_value``):
one PEFT LoRA layer of rank r per adapted block (rank 2r for Q and V), each block's start taken
from the SVD of its own rows (contiguous or one slice per head, ``ailora.core.layouts``), A stacked
by block and B block-structured (the Q rows of B only use the Q columns, ...). A gradient mask
keeps B's off-block entries at zero during training, so the blocks stay separate, and the trained
layer is still a plain PEFT LoRA.

``apply`` gathers its keywords in an ``ApplyOptions`` (checked when built) and ``apply_with`` runs
the steps in order: validate the model, plan every start (all decompositions, before the model is
touched), wrap it in PEFT, write the factors and residuals, check the outputs. What was done is an
``AiloraState`` (``ailora.core.state``), attached to the PeftModel and read back by ``state_of``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import peft
import torch
from torch import nn
from tqdm.auto import tqdm

from ailora.core.adapters import lora_scaling, mark_residual_form
from ailora.core.inits import INITS, InitConfig, InitFn
from ailora.core.policies import get_policy_method, resolve_policy
from ailora.core.probe import (
    LAYER_PROBE_ROWS,
    compare_outputs,
    layer_probe,
    layer_tolerance,
    make_probe,
    model_dtype,
    run_layer,
    run_probe,
)
from ailora.core.roles import Target, find_targets, roles_source, weight_of
from ailora.core.state import AiloraState, LayerRecord, attach_state, state_of
from ailora.core.svd import SOLVERS
from ailora.errors import AiloraError, ExactnessError

__all__ = ["HEAD_NAMES", "AiloraState", "ApplyOptions", "LayerRecord", "apply", "apply_with", "state_of"]

# Task-head modules that PEFT should train and save in full (``modules_to_save``).
HEAD_NAMES = ("classifier", "pre_classifier", "score", "qa_outputs", "classification_head")
# Show a progress bar when there are at least this many layers to decompose.
PROGRESS_MIN_LAYERS = 24
# A residual stays in a half-precision model's dtype only if rounding it moves no weight by more.
RESIDUAL_TOLERANCE = 1e-4
RESIDUAL_DTYPES = ("auto", "model", "float32")
# The end-to-end part of the output check: one row of this many tokens (the per-layer check carries the
# rest; see the module docstring).
PROBE_BATCH, PROBE_LENGTH = 1, 8


@dataclass(frozen=True)
class ApplyOptions:
    """Every option of ``apply`` (documented there), checked when built: a bad method, rank,
    solver or residual dtype fails before any model is loaded or touched."""

    method: str = "ailora"
    rank: int = 8
    alpha: float | None = None
    targets: list[str] | str | None = None
    policy: str | Mapping[str, str] | None = None
    modules: Mapping[str, list[str]] | None = None
    solver: str = "exact"
    seed: int = 0
    head: object = "auto"
    dropout: float = 0.0
    use_rslora: bool = False
    use_dora: bool = False
    residual_dtype: str = "auto"
    device: str | torch.device | None = None
    check: bool = True
    progress: bool | None = None

    def __post_init__(self) -> None:
        get_policy_method(self.method)
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise AiloraError(f"rank must be a positive integer, got {self.rank!r}")
        if self.solver not in SOLVERS:
            raise AiloraError(f"unknown solver {self.solver!r}; solvers are: {', '.join(SOLVERS)}")
        if self.residual_dtype not in RESIDUAL_DTYPES:
            raise AiloraError(f"residual_dtype must be auto, model or float32, got {self.residual_dtype!r}")
        if self.alpha is not None and not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha)
                                           and self.alpha > 0):
            raise AiloraError(f"alpha must be a finite positive number, got {self.alpha!r}")
        if not (isinstance(self.dropout, int | float) and 0 <= self.dropout < 1):
            raise AiloraError(f"dropout must be a number in [0, 1), got {self.dropout!r}")

    def resolved_policy(self) -> dict[str, str]:
        """role -> init name: the method's starts, restricted to ``targets``, overridden by ``policy``."""
        return resolve_policy(self.method, self.targets, self.policy)

    def lora_alpha(self) -> float:
        """LoRA alpha: as given, else the method's alpha per rank times r."""
        if self.alpha is not None:
            return float(self.alpha)
        return float(get_policy_method(self.method).alpha_per_rank * self.rank)


def _validate_weight(name: str, module: nn.Module, target: Target, rank: int) -> None:
    w = weight_of(module)
    kind = type(w).__name__
    if not w.is_floating_point() or "4bit" in kind or "8bit" in kind or hasattr(w, "quant_state"):
        raise AiloraError(f"layer {name} has quantised or integer weights ({w.dtype}, {kind}); "
                          "load the model in float32/bfloat16/float16 to initialise adapters")
    for b in target.blocks:
        limit = min(b.size, target.in_features)
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


@dataclass(frozen=True)
class _Layout:
    """What ``apply`` resolved against the model before touching it."""

    policy: dict[str, str]  # role -> init name
    alpha: float
    scaling: float
    targets: list[Target]
    head: list[str]
    dtype: torch.dtype


def _layout(model: nn.Module, options: ApplyOptions) -> _Layout:
    """Validate ``model`` against ``options``: its targets, their weights and the task head."""
    if isinstance(model, peft.PeftModel):
        raise AiloraError("the model already has PEFT adapters; pass the base transformers model")
    policy = options.resolved_policy()
    alpha = options.lora_alpha()
    targets = find_targets(model, list(policy), options.modules)
    for t in targets:
        _validate_weight(t.name, model.get_submodule(t.name), t, options.rank)
    head = _head_modules(model, options.head)
    return _Layout(policy, alpha, lora_scaling(options.rank, alpha, options.use_rslora), targets, head,
                   model_dtype(model))


@dataclass
class _Plan:
    """Starting factors of one target, stacked over its blocks, filled in block by block."""

    target: Target
    module: nn.Module  # the target in the unwrapped model
    device: torch.device  # where its decompositions run
    rank: int  # r per block
    A: torch.Tensor  # (k*r, in) float32
    B: torch.Tensor  # (out, k*r) float32, block-structured
    record: LayerRecord

    @classmethod
    def empty(cls, model: nn.Module, t: Target, policy: dict[str, str], rank: int, device) -> _Plan:
        module = model.get_submodule(t.name)
        dev = torch.device(device) if device is not None else weight_of(module).device
        k = len(t.blocks)
        record = LayerRecord(name=t.name, roles=list(t.roles), inits=[policy[r] for r in t.roles],
                             shape=[t.out_features, t.in_features], rank=k * rank, singular_values={},
                             residual_dtype="", seconds=0.0)
        return cls(t, module, dev, rank, torch.zeros(k * rank, t.in_features, device=dev),
                   torch.zeros(t.out_features, k * rank, device=dev), record)

    def block(self, j: int) -> torch.Tensor:
        """Block j's rows of the weight, in row order: (rows, in) float32 on the plan's device."""
        blk = self.target.blocks[j]
        return blk.take(weight_of(self.module).detach()).to(device=self.device, dtype=torch.float32)

    def store(self, j: int, a: torch.Tensor, b: torch.Tensor, svals, seconds: float) -> None:
        """Put block j's factors A: (r, in), B: (rows, r) in place; record its singular values and time."""
        blk = self.target.blocks[j]
        cols = slice(j * self.rank, (j + 1) * self.rank)
        self.A[cols], self.B[blk.rows, cols] = a, b
        if svals is not None:
            self.record.singular_values[blk.role] = svals.tolist()
        self.record.seconds += seconds


class _InitConfigs:
    """InitConfigs whose generator is seeded once per device and shared by every init run there."""

    def __init__(self, solver: str, seed: int):
        self.solver, self.seed, self.generators = solver, seed, {}

    def on(self, device: torch.device) -> InitConfig:
        if device not in self.generators:
            self.generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return InitConfig(solver=self.solver, generator=self.generators[device])


# Same-shape blocks with the same start are decomposed in one batched call (far fewer, larger
# LAPACK calls); a batch holds at most this many float32 weight entries (256 MB).
MAX_BATCH_ELEMENTS = 2**26

_Batch = tuple[InitFn, list[tuple[_Plan, int]], bool]  # (init, [(plan, block index)], stacked)


def _batches(plans: list[_Plan], policy: dict[str, str], solver: str) -> Iterator[_Batch]:
    """The blocks in the order they are decomposed: every non-SVD start one by one (in target order,
    so the seeded generators draw in a fixed order), then the SVD starts grouped by shape."""
    groups: dict[tuple, list[tuple[_Plan, int]]] = {}
    for plan in plans:
        for j, blk in enumerate(plan.target.blocks):
            init = INITS[policy[blk.role]]
            if init.uses_svd:
                key = (init.name, blk.size, plan.target.in_features, plan.device)
                groups.setdefault(key, []).append((plan, j))
            else:
                yield init, [(plan, j)], False
    for (name, rows, cols, _), members in groups.items():
        # A batched full SVD is no faster than one matrix at a time (LAPACK runs them one by one) and
        # measured slower for large matrices, so only the fast solver's small factorisations batch.
        per_batch = max(1, MAX_BATCH_ELEMENTS // (rows * cols)) if solver == "fast" else 1
        for start in range(0, len(members), per_batch):
            yield INITS[name], members[start:start + per_batch], True


def _run_batch(batch: _Batch, rank: int, scaling: float, cfg: InitConfig) -> None:
    """Run one init on its blocks and store the factors; each block is charged its share of the time."""
    init, members, stacked = batch
    t0 = time.perf_counter()
    if not stacked:
        ((plan, j),) = members
        res = init.fn(plan.block(j), rank, scaling, cfg)
        plan.store(j, res.A, res.B, None, time.perf_counter() - t0)
        return
    res = init.fn(torch.stack([plan.block(j) for plan, j in members]), rank, scaling, cfg)
    share = (time.perf_counter() - t0) / len(members)
    for n, (plan, j) in enumerate(members):
        plan.store(j, res.A[n], res.B[n], res.singular_values[n], share)


def _plan_all(model: nn.Module, layout: _Layout, options: ApplyOptions) -> list[_Plan]:
    """Starting factors of every target. Each layer's ``seconds`` is its share of its batch's time."""
    plans = [_Plan.empty(model, t, layout.policy, options.rank, options.device) for t in layout.targets]
    configs = _InitConfigs(options.solver, options.seed)
    show = options.progress if options.progress is not None else len(plans) >= PROGRESS_MIN_LAYERS
    total = sum(len(t.blocks) for t in layout.targets)
    with tqdm(total=total, desc="decompose", unit="block", disable=not show) as bar:
        for batch in _batches(plans, layout.policy, options.solver):
            plan = batch[1][0][0]
            _run_batch(batch, options.rank, layout.scaling, configs.on(plan.device))
            bar.update(len(batch[1]))
    return plans


def _lora_config(layout: _Layout, options: ApplyOptions) -> peft.LoraConfig:
    """PEFT's config for the targets: a fused target of k blocks gets rank k*r at the same scaling."""
    rank, alpha = options.rank, layout.alpha
    rank_pattern, alpha_pattern = {}, {}
    for t in layout.targets:
        k = len(t.blocks)
        if k > 1:
            rank_pattern[re.escape(t.name)] = k * rank
            # keep s = alpha / r (or alpha / sqrt(r)) for the stacked layer
            alpha_pattern[re.escape(t.name)] = alpha * (math.sqrt(k) if options.use_rslora else k)
    return peft.LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=options.dropout, use_rslora=options.use_rslora,
        use_dora=options.use_dora, target_modules=[t.name for t in layout.targets], rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern, fan_in_fan_out=all(t.fan_in_fan_out for t in layout.targets),
        modules_to_save=layout.head or None, init_lora_weights=True,
    )


def _block_mask(target: Target, rank: int) -> torch.Tensor:
    mask = torch.zeros(target.out_features, len(target.blocks) * rank)
    for i, blk in enumerate(target.blocks):
        mask[blk.rows, i * rank:(i + 1) * rank] = 1
    return mask


def _run_in_float32(layer: nn.Module) -> None:
    """Run a base layer whose residual was kept in float32 inside a half-precision model:
    inputs go up to float32, the output comes back in the input's dtype."""

    def before(m, args):
        m._ailora_input_dtype = args[0].dtype
        return tuple(x.float() if torch.is_tensor(x) else x for x in args)

    layer.register_forward_pre_hook(before)
    layer.register_forward_hook(lambda m, args, out: out.to(m._ailora_input_dtype))


def _replace_with_residual(base: nn.Module, t: Target, a: torch.Tensor, b: torch.Tensor, scaling: float,
                           residual_dtype: str) -> torch.dtype:
    """W <- W - s B A in ``base`` (A: (k*r, in), B: (out, k*r)); returns the dtype the residual is kept in."""
    w = weight_of(base)
    w0 = w.detach().float()
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
    return keep


def _keep_blocks_apart(layer: nn.Module, t: Target, rank: int) -> None:
    """Mask the gradient of a fused layer's B (and DoRA magnitude) so off-block entries stay zero."""
    mask = _block_mask(t, rank).to(layer.lora_B["default"].weight.device)
    layer.lora_B["default"].weight.register_hook(lambda g, m=mask: g * m.to(g.dtype))
    if "default" in getattr(layer, "lora_magnitude_vector", {}):  # DoRA: unadapted rows keep ||W0||
        rows = mask.amax(dim=1)
        layer.lora_magnitude_vector["default"].weight.register_hook(lambda g, r=rows: g * r.to(g.dtype))


def _write_layer(peft_model, plan: _Plan, scaling: float, residual_dtype: str, rank: int,
                 generator: torch.Generator | None) -> dict | None:
    """Copy a plan's factors into its PEFT layer; an SVD start also replaces W by its residual.
    With a ``generator``, check the layer on seeded random rows against its original weight and
    return {"max_abs_diff", "tolerance"}."""
    t = plan.target
    layer = peft_model.base_model.model.get_submodule(t.name)
    base = layer.get_base_layer()
    device = weight_of(base).device
    x = reference = None
    if generator is not None:
        x = layer_probe(t.in_features, weight_of(base).dtype, device, generator)
        reference = run_layer(base, x)  # W x (+ bias), before W is touched
    a, b = plan.A.to(device), plan.B.to(device)
    lora_dtype = layer.lora_A["default"].weight.dtype
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a.to(lora_dtype))
        layer.lora_B["default"].weight.copy_(b.to(lora_dtype))
        if plan.record.singular_values:  # an SVD start: the residual replaces W
            keep = _replace_with_residual(base, t, a, b, scaling, residual_dtype)
            plan.record.residual_dtype = str(keep).removeprefix("torch.")
        else:
            plan.record.residual_dtype = "unchanged"
    if t.fused:
        _keep_blocks_apart(layer, t, rank)
    if x is None:
        return None
    diff = (run_layer(layer, x) - reference).abs().max().item()
    # The layer runs in its input's dtype (the model's) whatever dtype the residual is kept in.
    return {"max_abs_diff": diff, "tolerance": layer_tolerance(x.dtype, reference)}


def _new_state(layout: _Layout, options: ApplyOptions, plans: list[_Plan]) -> AiloraState:
    return AiloraState(
        method=options.method, policy=layout.policy, rank=options.rank, alpha=layout.alpha,
        use_rslora=options.use_rslora, solver=options.solver, seed=options.seed,
        dtype=str(layout.dtype).removeprefix("torch."),
        lr_ratios=dict(get_policy_method(options.method).lr_ratios),
        head=layout.head, targets={t.name: t for t in layout.targets}, use_dora=options.use_dora,
        roles_source=roles_source(layout.targets),
        initial={p.target.name: (p.A.detach().cpu().clone(), p.B.detach().cpu().clone()) for p in plans},
        layers=[p.record for p in plans],
    )


def _check_layers(state: AiloraState, layers: dict[str, dict]) -> None:
    """Record the per-layer check in ``state.check["layers"]``; raise ExactnessError naming the layer
    furthest past its tolerance."""
    worst = max(layers, key=lambda n: layers[n]["max_abs_diff"] / layers[n]["tolerance"], default=None)
    passed = all(c["max_abs_diff"] <= c["tolerance"] for c in layers.values())
    state.check = {"layers": {"rows": LAYER_PROBE_ROWS, "count": len(layers), "passed": passed, "worst": worst,
                              **(layers[worst] if worst else {"max_abs_diff": 0.0, "tolerance": 0.0})}}
    if not passed:
        diff, tol = layers[worst]["max_abs_diff"], layers[worst]["tolerance"]
        raise ExactnessError(f"layer {worst} changed its outputs by {diff:.3g} after {state.method} init "
                             f"(tolerance {tol:.1g})")


def _check_outputs(peft_model: peft.PeftModel, state: AiloraState, probe: dict, reference: torch.Tensor,
                   dtype: torch.dtype) -> None:
    """Record the end-to-end output check in ``state.check``; raise ExactnessError past tolerance."""
    state.check.update(compare_outputs(peft_model, probe, reference, dtype),
                       probe={k: list(v.shape) for k, v in probe.items()})
    diff, tol = state.check["max_abs_diff"], state.check["tolerance"]
    state.check["passed"] = state.check["passed"] and state.check["layers"]["passed"]
    if diff > tol:
        raise ExactnessError(f"outputs changed by {diff:.3g} after {state.method} init (tolerance {tol:.1g})")


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
        modules: role -> module-name patterns for architectures ailora does not know; ``"PATTERN@ROWS"``
            or ``(PATTERN, ROWS)`` takes some rows of a fused module (``rows:0:64``, ``block:0/3``,
            ``heads:0/3:16``; see ``ailora.core.layouts``).
        solver: ``exact`` (full SVD) or ``fast`` (randomised / Gram eigendecomposition).
        head: task-head modules trained in full ("auto": classifier/score/... when present).
        use_rslora: scale by alpha / sqrt(r). use_dora: PEFT's DoRA, whose magnitude PEFT sets to the
            row norms of W0 (B = 0); after the SVD start ||W_res + s B0 A0|| = ||W0||, so it stays exact.
        residual_dtype: "auto" keeps a half-precision model's dtype when rounding the residual moves
            no weight by more than 1e-4, else keeps that residual in float32; "model" or "float32" force.
        device: where the decompositions run (default: where each weight is; "cuda" to use a GPU).
        check: check every adapted layer on seeded random rows against its original weight, and the
            model's outputs on a short probe before and after; raise ExactnessError past tolerance.
    Returns the PeftModel, with ``model.ailora_state`` (an AiloraState, also ``state_of(model)``)
    describing what was done.
    """
    options = ApplyOptions(
        method=method, rank=rank, alpha=alpha, targets=targets, policy=policy, modules=modules, solver=solver,
        seed=seed, head=head, dropout=dropout, use_rslora=use_rslora, use_dora=use_dora,
        residual_dtype=residual_dtype, device=device, check=check, progress=progress,
    )
    return apply_with(model, options)


def apply_with(model: nn.Module, options: ApplyOptions) -> peft.PeftModel:
    """``apply`` with its options gathered in an ``ApplyOptions`` (validated when it was built):
    validate the model, plan every start, wrap it in PEFT, write the factors, check the outputs."""
    t_start = time.perf_counter()
    layout = _layout(model, options)
    probe = make_probe(model, PROBE_BATCH, PROBE_LENGTH, options.seed) if options.check else None
    reference = run_probe(model, probe) if options.check else None
    # All decompositions first, before the model is touched: a failure leaves it as it was.
    plans = _plan_all(model, layout, options)
    peft_model = peft.get_peft_model(model, _lora_config(layout, options))
    generator = torch.Generator().manual_seed(options.seed) if options.check else None
    layer_checks = {plan.target.name: _write_layer(peft_model, plan, layout.scaling, options.residual_dtype,
                                                   options.rank, generator) for plan in plans}
    state = _new_state(layout, options, plans)
    attach_state(peft_model, state)
    mark_residual_form(peft_model, state)  # a raw save_pretrained must not load silently wrong
    if options.check:
        _check_layers(state, layer_checks)
        _check_outputs(peft_model, state, probe, reference, layout.dtype)
    state.total_seconds = time.perf_counter() - t_start
    return peft_model
