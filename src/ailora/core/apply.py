"""``apply``: put SVD-initialised (or plain) LoRA adapters on a transformers model through PEFT.

The adapters are PEFT's own LoRA layers (``peft.tuners.lora.Linear``); ailora only chooses their
starting values and rewrites each adapted base weight as the frozen residual
``W_res = W - s * B0 @ A0``, so that the model's outputs are unchanged at step 0. That is checked on
every call, without running the model: each adapted layer, as PEFT runs it (residual, factors,
scaling, dtypes, hooks), against its original weight on a few seeded random input rows
(``W_res x + s B (A x)`` against ``W x``: cost O(rows * out * in), nothing next to a decomposition,
and any wrong block is caught with probability one); and everything else in the model against a
snapshot taken before (``ailora.core.probe.untouched``: adapters on exactly the targets, every other
module, parameter and buffer the same and unmodified). A model whose architecture ailora does not
know (its forward is not one the tests run end to end), or ``check="full"``, also runs one short
probe sequence through the whole model before and after: a forward reads every weight of the
model, which costs more than all the fast decompositions together.

Fused projections (GPT-2 ``c_attn``, Phi-3 ``qkv_proj``, GPT-NeoX's per-head ``query_key_value``):
one PEFT LoRA layer of rank r per adapted block (rank 2r for Q and V), each block's start taken
from the SVD of its own rows (contiguous or one slice per head, ``ailora.core.layouts``), A stacked
by block and B block-structured (the Q rows of B only use the Q columns, ...). A gradient mask
keeps B's off-block entries at zero during training, so the blocks stay separate, and the trained
layer is still a plain PEFT LoRA.

``apply`` gathers its keywords in an ``ApplyOptions`` (checked when built; the LoRA options in one
``LoraOptions``, ``ailora.core.options``, where each option and its help are declared) and ``apply_with`` runs
the steps in order: validate the model, plan every start (all decompositions, before the model is
touched), wrap it in PEFT, write the factors and residuals, check the outputs. What was done is an
``AiloraState`` (``ailora.core.state``), attached to the PeftModel and read back by ``state_of``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import peft
import torch
from torch import nn

from ailora.core import quantize
from ailora.core.adapters import lora_scaling, mark_residual_form
from ailora.core.decompose import Plan, decompose, module_source
from ailora.core.options import LoraOptions, LoraTrainingOptions, options_doc
from ailora.core.policies import get_start, resolve_policy
from ailora.core.probe import (
    LAYER_PROBE_ROWS,
    Snapshot,
    changed_by,
    compare_outputs,
    excess,
    layer_probe,
    layer_tolerance,
    make_probe,
    model_dtype,
    run_layer,
    run_probe,
    snapshot,
    untouched,
)
from ailora.core.roles import Target, architecture_of, find_targets, roles_source, weight_of
from ailora.core.rounding import Rounding, keep_residual
from ailora.core.state import AiloraState, LayerRecord, attach_state, state_of
from ailora.core.svd import SOLVERS
from ailora.errors import AiloraError, ExactnessError

__all__ = ["HEAD_NAMES", "AiloraState", "ApplyOptions", "LayerRecord", "LoraOptions", "apply", "apply_with",
           "state_of"]

# Task-head modules that PEFT should train and save in full (``modules_to_save``).
HEAD_NAMES = ("classifier", "pre_classifier", "score", "qa_outputs", "classification_head")
# The end-to-end probe (check="full", or an architecture ailora does not know): one row of this many
# tokens (the per-layer check carries the rest; see the module docstring).
PROBE_BATCH, PROBE_LENGTH = 1, 8


@dataclass(frozen=True)
class ApplyOptions:
    """Every option of ``apply`` (documented there), checked when built: a bad method, rank,
    solver or residual dtype fails before any model is loaded or touched. ``lora`` holds the LoRA
    options (``LoraOptions``); the other fields say how to apply them."""

    method: str = "ailora"
    lora: LoraOptions = field(default_factory=LoraOptions)
    modules: Mapping[str, list[str]] | None = None
    seed: int = 0
    head: object = "auto"
    device: str | torch.device | None = None
    check: bool | str = True
    progress: bool | None = None
    distribute: bool = True

    def __post_init__(self) -> None:
        get_start(self.method)
        if type(self.lora) is not LoraOptions:  # LoraTrainingOptions' lr ratios would be dropped silently
            raise AiloraError(f"ApplyOptions.lora must be a LoraOptions, got {type(self.lora).__name__}")
        if self.lora.solver not in SOLVERS:
            raise AiloraError(f"unknown solver {self.lora.solver!r}; solvers are: {', '.join(SOLVERS)}")
        self.quant_spec()
        if not (isinstance(self.check, bool) or self.check == "full"):
            raise AiloraError(f"check must be True, False or 'full', got {self.check!r}")

    @classmethod
    def of(cls, method: str = "ailora", options: LoraOptions | None = None, **keywords) -> ApplyOptions:
        """The options of ``apply(model, method, options=..., **keywords)``: each keyword is a field of
        ``LoraOptions`` (unless ``options`` gives them all) or of this class; any other is a one-line error."""
        lora_names = [f.name for f in dataclasses.fields(LoraOptions)]
        own = [f.name for f in dataclasses.fields(cls) if f.name not in ("method", "lora")]
        for key in keywords:
            if key in TRAINING_ONLY:
                raise AiloraError(f"{key} is a training option, not one of apply: pass it to ailora.param_groups")
            if key not in lora_names and key not in own:
                raise AiloraError(f"unknown option {key!r} of apply; options are: {', '.join(lora_names + own)}")
        given = {k: v for k, v in keywords.items() if k in lora_names}
        if options is not None and given:
            raise AiloraError(f"give the LoRA options as options=LoraOptions(...) or as keywords, not both "
                              f"({next(iter(given))}=)")
        lora = options if options is not None else LoraOptions(**given)
        return cls(method=method, lora=lora, **{k: v for k, v in keywords.items() if k in own})

    def quant_spec(self) -> quantize.QuantSpec | None:
        """The quantisation ``lora.quantize`` asks for, or None (``ailora.core.quantize``)."""
        o = self.lora
        return None if o.quantize is None else quantize.QuantSpec(o.quantize, o.quant_iters, o.quant_double,
                                                                  o.quant_keep)

    def resolved_policy(self) -> dict[str, str]:
        """role -> init name: the method's starts, restricted to ``targets``, overridden by ``policy``."""
        return resolve_policy(self.method, self.lora.targets, self.lora.policy)

    def lora_alpha(self) -> float:
        """LoRA alpha: as given, else the method's alpha per rank times r."""
        if self.lora.alpha is not None:
            return float(self.lora.alpha)
        return float(get_start(self.method).alpha_per_rank * self.lora.rank)


# Fields of LoraTrainingOptions that only the optimizer reads (``ailora.param_groups``), never apply.
TRAINING_ONLY = tuple(f.name for f in dataclasses.fields(LoraTrainingOptions)
                      if f.name not in {g.name for g in dataclasses.fields(LoraOptions)})


def _validate_weight(name: str, module: nn.Module, target: Target, rank: int) -> None:
    w = weight_of(module)
    kind = type(w).__name__
    if quantize.is_quantised(module):  # only with quantize (``quantize.validate``): started from deq(W)
        w = quantize.dequantize(module)
    elif not w.is_floating_point() or "4bit" in kind or "8bit" in kind or hasattr(w, "quant_state"):
        raise AiloraError(f"layer {name} has quantised or integer weights ({w.dtype}, {kind}); "
                          "load the model in float32/bfloat16/float16 to initialise adapters")
    for b in target.blocks:
        limit = min(b.size, target.in_features)
        if rank > limit:
            raise AiloraError(f"rank {rank} exceeds min(out, in) = {limit} of layer {name} ({b.role} block)")
    if w.device.type != "meta" and not all_finite(w):  # meta: a skeleton, checked when read
        raise AiloraError(f"layer {name} has NaN or Inf weights")


def all_finite(w: torch.Tensor) -> bool:
    """A finite sum proves every entry finite (NaN and Inf propagate): one reduction, about ten times
    faster than an elementwise ``isfinite`` mask on CPU; only an overflowing sum needs the mask."""
    return bool(torch.isfinite(w.sum(dtype=torch.float32))) or bool(torch.isfinite(w).all())


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
class ApplyLayout:
    """What ``apply`` resolved against the model before touching it."""

    policy: dict[str, str]  # role -> init name
    alpha: float
    scaling: float
    targets: list[Target]
    head: list[str]
    dtype: torch.dtype


def layout_for(model: nn.Module, options: ApplyOptions) -> ApplyLayout:
    """Validate ``model`` against ``options``: its targets, their weights and the task head."""
    if isinstance(model, peft.PeftModel):
        raise AiloraError("the model already has PEFT adapters; pass the base transformers model")
    policy = options.resolved_policy()
    alpha = options.lora_alpha()
    targets = find_targets(model, list(policy), options.modules)
    quantize.validate(model, targets, options.quant_spec(), options.lora.use_dora)
    for t in targets:
        _validate_weight(t.name, model.get_submodule(t.name), t, options.lora.rank)
    head = _head_modules(model, options.head)
    return ApplyLayout(policy, alpha, lora_scaling(options.lora.rank, alpha, options.lora.use_rslora), targets, head,
                       model_dtype(model))


def _plan_all(model: nn.Module, layout: ApplyLayout, options: ApplyOptions) -> tuple[list[Plan], dict]:
    """Starting factors of every target (split across processes when there are several; see
    ``ailora.core.decompose``), and how the work was split. Each layer's ``seconds`` is its share of
    its batches' time."""
    plans = []
    for t in layout.targets:
        module = model.get_submodule(t.name)
        device = options.device if options.device is not None else weight_of(module).device
        source = quantize.dequantised_source(module) if quantize.is_quantised(module) else module_source(module)
        plans.append(Plan.empty(t, source, layout.policy, options.lora.rank, device))
    split = decompose(plans, layout.policy, options.lora.solver, options.seed, layout.scaling, options.progress,
                      options.distribute)
    return plans, split


def lora_config(layout: ApplyLayout, options: ApplyOptions) -> peft.LoraConfig:
    """PEFT's config for the targets: a fused target of k blocks gets rank k*r at the same scaling."""
    lora, alpha = options.lora, layout.alpha
    rank = lora.rank
    rank_pattern, alpha_pattern = {}, {}
    for t in layout.targets:
        k = len(t.blocks)
        if k > 1:
            rank_pattern[re.escape(t.name)] = k * rank
            # keep s = alpha / r (or alpha / sqrt(r)) for the stacked layer
            alpha_pattern[re.escape(t.name)] = alpha * (math.sqrt(k) if lora.use_rslora else k)
    return peft.LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=lora.dropout, use_rslora=lora.use_rslora,
        use_dora=lora.use_dora, target_modules=[t.name for t in layout.targets], rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern, fan_in_fan_out=all(t.fan_in_fan_out for t in layout.targets),
        modules_to_save=layout.head or None, init_lora_weights=True,
    )


def _block_mask(target: Target, rank: int) -> torch.Tensor:
    mask = torch.zeros(target.out_features, len(target.blocks) * rank)
    for i, blk in enumerate(target.blocks):
        mask[blk.rows, i * rank:(i + 1) * rank] = 1
    return mask


def run_in_float32(layer: nn.Module) -> None:
    """Run a base layer whose residual was kept in float32 inside a half-precision model:
    inputs go up to float32, the output comes back in the input's dtype. A half-precision bias goes
    up to float32 too (exactly: every bfloat16 and float16 value is a float32 value), since
    ``F.linear`` and GPT-2's ``addmm`` take the weight, bias and input in one dtype."""
    bias = getattr(layer, "bias", None)
    if isinstance(bias, torch.Tensor) and bias.dtype != torch.float32:
        layer.bias = nn.Parameter(bias.detach().float(), requires_grad=bias.requires_grad)

    def before(m, args):
        m._ailora_input_dtype = args[0].dtype
        return tuple(x.float() if torch.is_tensor(x) else x for x in args)

    layer.register_forward_pre_hook(before)
    layer.register_forward_hook(lambda m, args, out: out.to(m._ailora_input_dtype))


def _replace_with_residual(base: nn.Module, t: Target, a: torch.Tensor, b: torch.Tensor, scaling: float,
                           residual_dtype: str) -> Rounding:
    """W <- W - s B A in ``base`` (A: (k*r, in), B: (out, k*r)); returns the dtype the residual is kept
    in, with the criterion's numbers (``ailora.core.rounding``)."""
    w = weight_of(base)
    new, rounding = residual_weight(w, t, a, b, scaling, residual_dtype)
    base.weight = nn.Parameter(new, requires_grad=False)
    if new.dtype != w.dtype:
        run_in_float32(base)
    return rounding


def residual_weight(w: torch.Tensor, t: Target, a: torch.Tensor, b: torch.Tensor, scaling: float,
                    residual_dtype: str) -> tuple[torch.Tensor, Rounding]:
    """The residual W - s B A of the weight ``w`` (out, in) of target ``t`` (A: (k*r, in), B: (out, k*r)),
    laid out as the module stores it (transposed for a Conv1D), in the dtype it is kept in
    (``ailora.core.rounding.keep_residual``: ``w``'s, or float32 where ``residual_dtype`` or the
    output criterion asks for it), and that choice. ``apply`` and the streaming init
    (``ailora.core.initialised``) both compute it here, so their residuals are bit-identical."""
    # One fused pass (addmm_: W - s B A without a W-sized temporary for B A), in place on the one
    # float32 copy of W, computed directly in the layout the module keeps: W^T - s A^T B^T for a
    # Conv1D, so no transposed copy either.
    stored = w.detach().T if t.fan_in_fan_out else w.detach()
    left, right = (a.T, b.T) if t.fan_in_fan_out else (b, a)
    res = stored.to(torch.float32, copy=True).addmm_(left, right, alpha=-scaling)
    rounding = keep_residual(w.detach(), res.T if t.fan_in_fan_out else res, residual_dtype)
    return res.to(rounding.dtype).contiguous(), rounding


def record_rounding(record: LayerRecord, rounding: Rounding) -> None:
    """Put a residual's dtype and the criterion's error and bound into its layer's report row."""
    record.residual_dtype = str(rounding.dtype).removeprefix("torch.")
    record.residual_error, record.residual_bound = rounding.error, rounding.bound


def keep_blocks_apart(layer: nn.Module, t: Target, rank: int) -> None:
    """Mask the gradient of a fused layer's B (and DoRA magnitude) so off-block entries stay zero."""
    mask = _block_mask(t, rank).to(layer.lora_B["default"].weight.device)
    layer.lora_B["default"].weight.register_hook(lambda g, m=mask: g * m.to(g.dtype))
    if "default" in getattr(layer, "lora_magnitude_vector", {}):  # DoRA: unadapted rows keep ||W0||
        rows = mask.amax(dim=1)
        layer.lora_magnitude_vector["default"].weight.register_hook(lambda g, r=rows: g * r.to(g.dtype))


def _write_layer(peft_model, plan: Plan, scaling: float, residual_dtype: str, rank: int,
                 generator: torch.Generator | None, probe_dtype: torch.dtype | None = None) -> dict | None:
    """Copy a plan's factors into its PEFT layer; an SVD start also replaces W by its residual.
    With a ``generator``, check the layer on seeded random rows against its original weight and
    return {"max_abs_diff", "tolerance"}."""
    t = plan.target
    layer = peft_model.base_model.model.get_submodule(t.name)
    base = layer.get_base_layer()
    device = weight_of(base).device
    quantised = quantize.is_quantised(base)  # its residual is already in place (``quantize.quantise_model``)
    x = reference = None
    if generator is not None:
        x = layer_probe(t.in_features, probe_dtype or weight_of(base).dtype, device, generator)
        reference = None if quantised else run_layer(base, x)  # W x (+ bias), before W is touched
    a, b = plan.A.to(device), plan.B.to(device)
    lora_dtype = layer.lora_A["default"].weight.dtype
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a.to(lora_dtype))
        layer.lora_B["default"].weight.copy_(b.to(lora_dtype))
        if quantised:
            plan.record.residual_dtype = quantize.quant_type_of(base)
        elif plan.record.singular_values:  # an SVD start: the residual replaces W
            record_rounding(plan.record, _replace_with_residual(base, t, a, b, scaling, residual_dtype))
        else:
            plan.record.residual_dtype = "unchanged"
    if t.fused:
        keep_blocks_apart(layer, t, rank)
    if x is None:
        return None
    if quantised:  # exactly deq(Q(W_res)) x + s B (A x); the quantisation error is reported apart
        reference = quantize.layer_reference(base, x, a, b, scaling)
    diff = (run_layer(layer, x) - reference).abs().max().item()
    # The layer runs in its input's dtype (the model's) whatever dtype the residual is kept in.
    return {"max_abs_diff": diff, "tolerance": layer_tolerance(x.dtype, reference)}


def _new_state(layout: ApplyLayout, options: ApplyOptions, plans: list[Plan], split: dict) -> AiloraState:
    initial = {p.target.name: (p.A.detach().cpu().clone(), p.B.detach().cpu().clone()) for p in plans}
    return state_for(layout, options, initial, [p.record for p in plans], split)


def state_for(layout: ApplyLayout, options: ApplyOptions, initial: dict[str, tuple[torch.Tensor, torch.Tensor]],
              layers: list[LayerRecord], split: dict | None = None) -> AiloraState:
    """The AiloraState of ``options`` applied as ``layout`` says, with these starting factors
    (module -> (A0, B0) on the CPU) and per-layer records; ``split``: how the decompositions were
    shared across processes ({} in one)."""
    return AiloraState(
        method=options.method, options=options.lora, policy=layout.policy, alpha=layout.alpha, seed=options.seed,
        dtype=str(layout.dtype).removeprefix("torch."),
        lr_ratios=dict(get_start(options.method).lr_ratios),
        head=layout.head, targets={t.name: t for t in layout.targets},
        roles_source=roles_source(layout.targets), initial=initial, layers=layers, split=dict(split or {}),
    )


def _check_layers(state: AiloraState, layers: dict[str, dict]) -> None:
    """Record the per-layer check in ``state.check["layers"]``; raise ExactnessError naming the layer
    furthest past its tolerance."""
    worst = max(layers, key=lambda n: excess(layers[n]), default=None)
    passed = all(c["max_abs_diff"] <= c["tolerance"] for c in layers.values())
    state.check = {"layers": {"rows": LAYER_PROBE_ROWS, "count": len(layers), "passed": passed, "worst": worst,
                              **(layers[worst] if worst else {"max_abs_diff": 0.0, "tolerance": 0.0})}}
    if not passed:
        diff, tol = layers[worst]["max_abs_diff"], layers[worst]["tolerance"]
        raise ExactnessError(f"layer {worst} changed its outputs {changed_by(diff, tol)} after {state.method} init")


def _check_untouched(peft_model: peft.PeftModel, state: AiloraState, snap: Snapshot, layout: ApplyLayout,
                     swapped: Mapping[str, nn.Module] | None = None) -> None:
    """Record in ``state.check["untouched"]`` that nothing but the adapted layers changed (see
    ``ailora.core.probe.untouched``; ``swapped``: the layers ``quantize`` replaced); raise ExactnessError
    naming what did."""
    result = untouched(peft_model.base_model.model, snap, [t.name for t in layout.targets], layout.head, swapped)
    state.check["untouched"] = result
    if not result["passed"]:
        raise ExactnessError(f"{state.method} init changed more than the adapted layers: "
                             f"{', '.join(result['changed'])} (modules, parameters or buffers)")


def _check_outputs(peft_model: peft.PeftModel, state: AiloraState, probe: dict | None,
                   reference: torch.Tensor | None, dtype: torch.dtype) -> None:
    """Record the verdict in ``state.check``: "max_abs_diff" and "tolerance" are the end-to-end probe's
    when it ran, else the worst layer's; raise ExactnessError when the probe moved past tolerance."""
    layers = state.check["layers"]
    if probe is None:
        state.check.update(max_abs_diff=layers["max_abs_diff"], tolerance=layers["tolerance"], passed=True)
        return
    state.check.update(compare_outputs(peft_model, probe, reference, dtype),
                       probe={k: list(v.shape) for k, v in probe.items()})
    if not state.check["passed"]:  # past tolerance, or NaN
        raise ExactnessError(f"outputs changed {changed_by(state.check['max_abs_diff'], state.check['tolerance'])} "
                             f"after {state.method} init")


def apply(
    model: nn.Module,
    method: str = "ailora",
    *,
    options: LoraOptions | None = None,
    modules: Mapping[str, list[str]] | None = None,
    seed: int = 0,
    head="auto",
    device: str | torch.device | None = None,
    check: bool | str = True,
    progress: bool | None = None,
    distribute: bool = True,
    **lora_options,
) -> peft.PeftModel:
    """Wrap ``model`` in a ``peft.PeftModel`` whose LoRA adapters start as ``method`` says.

    ``ailora.apply(model, method="ailora", rank=8, targets=["query", "value"])``: the LoRA options
    (listed below, the fields of ``ailora.core.options.LoraOptions``) are keywords, or one
    ``options=LoraOptions(...)``; an unknown keyword is a one-line error naming the valid ones.

    Args:
        method: a name in ``ailora.core.policies.STARTS`` (lora, pissa, milora, ailora, reailora).
        modules: role -> module-name patterns for architectures ailora does not know; ``"PATTERN@ROWS"``
            or ``(PATTERN, ROWS)`` takes some rows of a fused module (``rows:0:64``, ``block:0/3``,
            ``heads:0/3:16``; see ``ailora.core.layouts``).
        seed: seed of random starts (lora) and of the check's random rows.
        head: task-head modules trained in full ("auto": classifier/score/... when present).
        device: where the decompositions run (default: where each weight is; "cuda" to use a GPU).
        check: True: check every adapted layer, as PEFT runs it, on seeded random rows against its
            original weight, and that nothing else in the model changed; for an architecture ailora
            does not know, also the model's outputs on a short probe before and after. "full": that
            probe for every model. Raise ExactnessError past tolerance. False: no check.
        progress: show a progress bar over the decompositions (default: when there are many).
        distribute: under several processes (``torch.distributed`` initialised, world size > 1), each
            process decomposes a share of the blocks and the owners broadcast the factors, so every
            process holds the factors one process would compute, in a fraction of the time. Every
            process must then call ``apply`` with the same model and options. False: each computes all.
    Returns the PeftModel, with ``model.ailora_state`` (an AiloraState, also ``state_of(model)``)
    describing what was done.

    LoRA options (``LoraOptions``):
    """
    return apply_with(model, ApplyOptions.of(method, options, modules=modules, seed=seed, head=head, device=device,
                                             check=check, progress=progress, distribute=distribute, **lora_options))


apply.__doc__ = f"{apply.__doc__.rstrip()}\n{options_doc(LoraOptions, ' ' * 8)}\n"


def apply_with(model: nn.Module, options: ApplyOptions) -> peft.PeftModel:
    """``apply`` with its options gathered in an ``ApplyOptions`` (validated when it was built):
    validate the model, plan every start, wrap it in PEFT, write the factors, check the outputs."""
    t_start = time.perf_counter()
    layout = layout_for(model, options)
    full = options.check == "full" or (options.check is True and architecture_of(model) is None)
    probe = make_probe(model, PROBE_BATCH, PROBE_LENGTH, options.seed) if full else None
    reference = run_probe(model, probe) if full else None
    snap = snapshot(model, [t.name for t in layout.targets]) if options.check else None
    # All decompositions first, before the model is touched: a failure leaves it as it was.
    plans, split = _plan_all(model, layout, options)
    quantised = (quantize.quantise_model(model, plans, layout.policy, layout.scaling, layout.head, options)
                 if options.lora.quantize else None)
    peft_model = peft.get_peft_model(model, lora_config(layout, options))
    generator = torch.Generator().manual_seed(options.seed) if options.check else None
    probe_dtype = layout.dtype if quantised else None
    layer_checks = {plan.target.name: _write_layer(peft_model, plan, layout.scaling, options.lora.residual_dtype,
                                                   options.lora.rank, generator, probe_dtype) for plan in plans}
    state = _new_state(layout, options, plans, split)
    if quantised:
        quantize.record(state, quantised)
    attach_state(peft_model, state)
    mark_residual_form(peft_model, state)  # a raw save_pretrained must not load silently wrong
    if options.check:
        _check_layers(state, layer_checks)
        _check_untouched(peft_model, state, snap, layout, quantised.modules() if quantised else None)
        if quantised and probe is not None:  # the end-to-end change is the quantisation error: reported
            state.quantization["probe"] = compare_outputs(peft_model, probe, reference, layout.dtype)
            probe = None
        _check_outputs(peft_model, state, probe, reference, layout.dtype)
    state.total_seconds = time.perf_counter() - t_start
    return peft_model
