"""QAILoRA: every start over a bitsandbytes-quantised residual (issue 21; methods.md, QPiSSA / LoftQ).

``apply(..., quantize="nf4" | "fp4" | "int8")`` decomposes each adapted weight W in float32 as
always, then stores the residual ``W_res = W - s B0 A0`` as a bitsandbytes layer (``Linear4bit`` or
``Linear8bitLt``) under PEFT's own LoRA layer for bitsandbytes. The start is then
``deq(Q(W_res)) + s B0 A0``, no longer exactly W: the difference is the quantisation error, measured
per layer and role against the error QLoRA starts from, ``||W - deq(Q(W))||_F``, and reported (never
folded into a tolerance). The per-layer output check stays exact: each layer must compute
``deq(Q(W_res)) x + s B (A x)``.

An already-quantised model (loaded with a ``BitsAndBytesConfig``) is started from its dequantised
weights, the only information there is. ``iters`` > 0 alternates, for the principal blocks only,
``(A, B) <- principal_r(W - deq(Q(W - s B A)))`` (LoftQ, QPiSSA's multi-iteration variant): the best
rank-r correction of a quantisation error lies in that error's principal directions, so refitting a
minor block there would throw its start away; minor blocks keep their single-pass factors.

Options (``apply`` / ``ApplyOptions``): ``quantize`` the type; ``quant_iters`` the refits above;
``quant_double`` bitsandbytes' double quantisation of the 4-bit scales; ``quant_keep`` keeps the
unadapted Linear layers in full precision (by default they are quantised as ``BitsAndBytesConfig``
would, the output head and tied weights kept). A model loaded quantised is started from its
dequantised weights, its other layers left as they were loaded.

bitsandbytes is imported only when quantising (``bnb``); ``ailora.quiet`` keeps the warning its CPU
back end logs on import from ailora's users.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ailora.core.decompose import InitConfigs
from ailora.core.inits import INITS
from ailora.core.probe import layer_probe
from ailora.errors import AiloraError

__all__ = ["QUANT_TYPES", "QuantResult", "QuantSpec", "Quantised", "bnb", "bnb_config", "dequantize", "is_quantised",
           "layer_reference", "prepare_streamed", "quantise_model", "quantise_weight"]


def bnb():
    """The bitsandbytes module, imported on first use; a one-line error when it is not installed."""
    try:
        import bitsandbytes
    except ImportError as exc:
        raise AiloraError("quantize needs bitsandbytes: pip install 'ailora[quant]' "
                          f"(or bitsandbytes==0.50.2); import failed: {exc}".splitlines()[0]) from None
    return bitsandbytes


@dataclass(frozen=True)
class QuantType:
    name: str
    bits: int
    description: str
    flag: str  # the model attribute transformers sets, and PEFT reads to pick its bitsandbytes LoRA layer


QUANT_TYPES = {
    "nf4": QuantType("nf4", 4, "4-bit NormalFloat, blocks of 64 (QLoRA)", "is_loaded_in_4bit"),
    "fp4": QuantType("fp4", 4, "4-bit float, blocks of 64", "is_loaded_in_4bit"),
    "int8": QuantType("int8", 8, "LLM.int8 row-wise absmax", "is_loaded_in_8bit"),
}


@dataclass(frozen=True)
class QuantSpec:
    """How ``apply`` quantises: the type, the error-reducing iterations, bitsandbytes' double
    quantisation of the 4-bit scales, and whether the unadapted layers stay in full precision."""

    type: str
    iters: int = 0
    double_quant: bool = False
    keep_unadapted: bool = False

    def __post_init__(self) -> None:
        if self.type not in QUANT_TYPES:
            raise AiloraError(f"unknown quant type {self.type!r}; types are: {', '.join(QUANT_TYPES)}")
        if not isinstance(self.iters, int) or isinstance(self.iters, bool) or self.iters < 0:
            raise AiloraError(f"quant_iters must be a non-negative integer, got {self.iters!r}")
        if self.double_quant and QUANT_TYPES[self.type].bits != 4:
            raise AiloraError("quant_double (double quantisation of the scales) only applies to nf4 and fp4")

    def describe(self) -> dict:
        return {"type": self.type, "iters": self.iters, "double_quant": self.double_quant,
                "keep_unadapted": self.keep_unadapted}


def is_quantised(module: nn.Module) -> bool:
    """A bitsandbytes 4-bit or 8-bit linear layer (its weight packed, not a float tensor)."""
    w = getattr(module, "weight", None)
    return w is not None and (hasattr(w, "quant_state") or hasattr(w, "SCB"))


def quant_type_of(module: nn.Module) -> str:
    """nf4, fp4 or int8: how a bitsandbytes layer is quantised."""
    w = module.weight
    return getattr(w, "quant_type", None) or "int8"


def dequantize(module: nn.Module) -> torch.Tensor:
    """A bitsandbytes layer's weight, dequantised: (out, in) float32 on the weight's device."""
    w = module.weight
    f = bnb().functional
    if hasattr(w, "quant_state"):
        return f.dequantize_4bit(w.data, w.quant_state).float()
    scb = w.SCB if w.SCB is not None else module.state.SCB
    return f.int8_vectorwise_dequant(w.data, scb).float()


def quantise_weight(w: torch.Tensor, bias: torch.Tensor | None, spec: QuantSpec, compute_dtype: torch.dtype,
                    device) -> nn.Module:
    """A bitsandbytes layer holding Q(w), w: (out, in) float32, as transformers' ``BitsAndBytesConfig``
    builds one (``bias``, when given, is kept as it is, in full precision)."""
    lib = bnb()
    out_f, in_f = w.shape
    data = w.detach().float().contiguous().cpu()  # quantised on the way to ``device`` (CPU or GPU)
    if QUANT_TYPES[spec.type].bits == 4:
        layer = lib.nn.Linear4bit(in_f, out_f, bias=False, compute_dtype=compute_dtype,
                                  compress_statistics=spec.double_quant, quant_type=spec.type, device="meta")
        layer.weight = lib.nn.Params4bit(data, requires_grad=False, compress_statistics=spec.double_quant,
                                         quant_type=spec.type)
    else:
        layer = lib.nn.Linear8bitLt(in_f, out_f, bias=False, has_fp16_weights=False, device="meta")
        layer.weight = lib.nn.Int8Params(data, requires_grad=False, has_fp16_weights=False)
    layer = layer.to(device)
    exact_on_cpu(layer)
    if bias is not None:
        layer.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)
    return layer


def exact_on_cpu(layer: nn.Module) -> None:
    """Keep a 4-bit layer on the plain dequantise-and-multiply path on CPU. On a CPU with AVX512-bf16,
    bitsandbytes repacks the weight in place on the first forward in eval mode without gradients, rounding
    the block scales to bfloat16: the layer would then compute something else than deq(Q(W)) x (and fail
    outright on layers narrower than a quantisation block), and the weight could no longer be
    dequantised as it was. GPU layers never take that path."""
    if hasattr(layer, "support_avx512bf16_for_cpu"):
        layer.support_avx512bf16_for_cpu = False


def _relative(diff: torch.Tensor, ref: torch.Tensor) -> float:
    return (diff.norm() / ref.norm().clamp_min(1e-30)).item()


@dataclass
class QuantResult:
    """One adapted layer, quantised: its new base layer and what the quantisation cost.

    ``by_role``: role -> {"error": ||W - start||_F / ||W||_F over the block's rows (after the last
    iteration), "qlora_error": the same for deq(Q(W)) (None when the model came quantised: QLoRA
    starts from exactly the loaded weights), "ratio", "errors_by_iteration", "serve_quantised_error":
    the adapter served on Q(W) against the trained model's start}; ``probe_rel_diff``: ||(W - start) x||
    / ||W x|| on the layer's probe rows (the saved adapter on the original base against the trained
    quantised model, a difference that training does not change)."""

    module: nn.Module
    by_role: dict[str, dict]
    probe_rel_diff: float
    from_quantised: bool  # the model came quantised: its weights were dequantised
    activation_diff: float | None = None  # int8: see ``activation_diff``

    def record(self) -> dict:
        return {"by_role": self.by_role, "probe_rel_diff": self.probe_rel_diff,
                "start_from": "dequantised weight" if self.from_quantised else "full-precision weight",
                **({"activation_diff": self.activation_diff} if self.activation_diff is not None else {})}


def full_weight(module: nn.Module) -> torch.Tensor:
    """An adapted layer's weight W: (out, in) float32 (dequantised for a bitsandbytes layer)."""
    if is_quantised(module):
        return dequantize(module)
    return module.weight.detach().float()


def _start(w: torch.Tensor, q: nn.Module, a: torch.Tensor, b: torch.Tensor, scaling: float):
    """deq(Q) and the start deq(Q) + s B A: both (out, in) float32."""
    deq = dequantize(q).to(w.device)
    return deq, torch.addmm(deq, b, a, alpha=scaling)


def _refit(plan, w: torch.Tensor, deq: torch.Tensor, policy: dict[str, str], scaling: float, cfg) -> None:
    """Refit every principal block's factors to the quantisation error W - deq(Q) (LoftQ's step)."""
    for j, blk in enumerate(plan.target.blocks):
        if policy[blk.role] == "principal":
            init = INITS["principal"].fn(blk.take(w - deq), plan.rank, scaling, cfg)
            plan.store(j, init.A, init.B, init.singular_values, plan.seconds[j])


def quantise_plan(plan, module: nn.Module, policy: dict[str, str], spec: QuantSpec, scaling: float, cfg,
                  compute_dtype: torch.dtype, probe: torch.Tensor) -> QuantResult:
    """Quantise one planned target's residual W - s B A (W itself for a non-SVD start, as QLoRA does),
    running ``spec.iters`` refits of its principal blocks; the plan's factors are updated in place.
    ``probe``: (rows, in) rows for the output difference."""
    w = full_weight(module).to(plan.device)
    svd = bool(plan.record.singular_values)
    refits = spec.iters if svd and any(policy[b.role] == "principal" for b in plan.target.blocks) else 0
    device = module.weight.device
    bias = getattr(module, "bias", None)
    errors, deq = [], None
    for it in range(refits + 1):
        if it:
            _refit(plan, w, deq, policy, scaling, cfg)
        res = torch.addmm(w, plan.B, plan.A, alpha=-scaling) if svd else w
        q = quantise_weight(res, bias, spec, compute_dtype, device)
        deq, start = _start(w, q, plan.A, plan.B, scaling)
        errors.append({blk.role: _relative(blk.take(w - start), blk.take(w)) for blk in plan.target.blocks})
    return _result(w, q, start, plan.target.blocks, errors, spec, compute_dtype, probe, is_quantised(module))


STREAMED_ITERS = ("quant_iters needs the decomposition of the original weights (ailora.apply on the model); the "
                  "streaming init stores one-pass factors: use quant_iters=0 with it")


def quantise_streamed(res: torch.Tensor, a: torch.Tensor, b: torch.Tensor, t, bias, spec: QuantSpec, scaling: float,
                      compute_dtype: torch.dtype, device, probe: torch.Tensor) -> QuantResult:
    """Quantise a residual written by the streaming init, ``res``: (out, in) as stored, with its starting
    factors A: (k*r, in), B: (out, k*r). The original weight is W = W_res + s B A (as the init computed
    the residual; up to the residual's rounding when it was kept in half precision), so the report is
    the one ``apply`` gives, without the original checkpoint."""
    if spec.iters:
        raise AiloraError(STREAMED_ITERS)
    res, a, b = res.float(), a.float().to(res.device), b.float().to(res.device)
    w = torch.addmm(res, b, a, alpha=scaling)
    q = quantise_weight(res, bias, spec, compute_dtype, device)
    deq, start = _start(w, q, a, b, scaling)
    errors = [{blk.role: _relative(blk.take(w - start), blk.take(w)) for blk in t.blocks}]
    return _result(w, q, start, t.blocks, errors, spec, compute_dtype, probe, False)


def _result(w, q, start, blocks, errors, spec, compute_dtype, probe, from_quantised: bool) -> QuantResult:
    """The QuantResult of one layer: W and the start deq(Q) + s B A (both (out, in) float32), its quantised
    residual ``q``, the errors per iteration (role -> error)."""
    device = q.weight.device
    plain = None if from_quantised else dequantize(quantise_weight(w, None, spec, compute_dtype, device)).to(w.device)
    by_role = {}
    for blk in blocks:
        qlora = None if plain is None else _relative(blk.take(w - plain), blk.take(w))
        err = errors[-1][blk.role]
        served = None if plain is None else _relative(blk.take(plain - start), blk.take(w))
        by_role[blk.role] = {"error": err, "qlora_error": qlora,
                             "ratio": None if not qlora else err / qlora,
                             "errors_by_iteration": [e[blk.role] for e in errors],
                             "serve_quantised_error": served}
    x = probe.to(device=w.device, dtype=torch.float32)
    return QuantResult(q, by_role, _relative(x @ (w - start).T, x @ w.T), from_quantised,
                       activation_diff(q, x.to(compute_dtype)))


def _kept_by_transformers(model: nn.Module) -> list[str]:
    """Modules ``BitsAndBytesConfig`` leaves in full precision (the output head, tied and last weights)."""
    try:
        from transformers.quantizers.base import get_keys_to_not_convert

        return get_keys_to_not_convert(model)
    except (AttributeError, ImportError, IndexError):  # not a transformers model: keep nothing back
        return []


def unadapted_to_quantise(model: nn.Module, adapted: list[str], head: list[str], spec: QuantSpec) -> list[str]:
    """The Linear layers QLoRA would quantise besides the adapted ones: every ``nn.Linear`` that is not
    adapted, not in a task head, not already quantised and not one transformers keeps."""
    if spec.keep_unadapted:
        return []
    kept = tuple(_kept_by_transformers(model)) + tuple(head)
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and n not in adapted
            and not any(n == k or n.startswith(f"{k}.") for k in kept)]


def validate(model: nn.Module, targets, spec: QuantSpec | None, use_dora: bool) -> None:
    """Before any heavy work: refuse what cannot be quantised, and a quantised model without ``quantize``."""
    quantised = [t.name for t in targets if is_quantised(model.get_submodule(t.name))]
    if spec is None:
        if quantised:
            raise AiloraError(f"layer {quantised[0]} is quantised ({quant_type_of(model.get_submodule(quantised[0]))}); "
                              "pass quantize='nf4'|'fp4'|'int8' to start from its dequantised weights")
        return
    bnb()
    if use_dora:
        raise AiloraError("quantize cannot be combined with DoRA (PEFT's DoRA re-reads the full base weight "
                          "every step); use a LoRA-family method without use_dora")
    for t in targets:
        module = model.get_submodule(t.name)
        if not isinstance(module, nn.Linear):
            raise AiloraError(f"layer {t.name} is a {type(module).__name__}; bitsandbytes quantises only "
                              "nn.Linear layers (GPT-2-style Conv1D models cannot be quantised here)")
        if is_quantised(module) and module.weight.device.type == "meta":
            raise AiloraError(f"layer {t.name} is quantised on the meta device and cannot be dequantised; "
                              "load its weights first")


@dataclass
class Quantised:
    """What ``apply`` installs: each adapted layer's quantised residual, and the other quantised layers."""

    spec: QuantSpec
    adapted: dict[str, QuantResult]
    others: dict[str, nn.Module]

    def modules(self) -> dict[str, nn.Module]:
        return {**{n: r.module for n, r in self.adapted.items()}, **self.others}


def prepare(model: nn.Module, plans, policy: dict[str, str], spec: QuantSpec, scaling: float, cfg,
            head: list[str], probe_rows) -> Quantised:
    """Quantise every planned residual (and the unadapted Linear layers), without touching ``model``.
    ``probe_rows(plan) -> (rows, in)`` gives each layer's probe rows."""
    dtype = _compute_dtype(model)
    adapted = {p.target.name: quantise_plan(p, model.get_submodule(p.target.name), policy, spec, scaling, cfg,
                                            dtype, probe_rows(p)) for p in plans}
    return Quantised(spec, adapted, _others(model, list(adapted), head, spec, dtype))


def dequantised_source(module: nn.Module):
    """The blocks of a bitsandbytes layer's dequantised weight (dequantised on each read: never held)."""
    return lambda blk: blk.take(dequantize(module))


def quantise_model(model: nn.Module, plans, policy: dict[str, str], scaling: float, head: list[str],
                   options) -> Quantised:
    """``apply``'s step: quantise every planned residual (and the unadapted layers) and put them in the
    model; ``options``: the ApplyOptions (its quant spec, solver and seed)."""
    g = torch.Generator().manual_seed(options.seed)
    rows = lambda p: layer_probe(p.target.in_features, torch.float32, "cpu", g)  # noqa: E731
    cfg = InitConfigs(options.lora.solver, options.seed).on(plans[0].device) if plans else None
    result = prepare(model, plans, policy, options.quant_spec(), scaling, cfg, head, rows)
    install(model, result)
    return result


def prepare_streamed(model: nn.Module, targets, initial: dict, residual_of, spec: QuantSpec, scaling: float,
                     head: list[str], probe_rows) -> Quantised:
    """``prepare`` for a model loaded from the streaming init's directory: each target's stored residual
    (``residual_of(target)``: (out, in), checked by the caller) and starting factors ``initial``
    (name -> (A0, B0)); ``probe_rows(target) -> (rows, in)``."""
    dtype = _compute_dtype(model)
    adapted = {}
    for t in targets:
        module = model.get_submodule(t.name)
        a, b = initial[t.name]
        adapted[t.name] = quantise_streamed(residual_of(t), a, b, t, module.bias, spec, scaling, dtype,
                                            module.weight.device, probe_rows(t))
    return Quantised(spec, adapted, _others(model, list(adapted), head, spec, dtype))


def _compute_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _others(model: nn.Module, adapted: list[str], head: list[str], spec: QuantSpec, dtype) -> dict[str, nn.Module]:
    out = {}
    for name in unadapted_to_quantise(model, adapted, head, spec):
        m = model.get_submodule(name)
        out[name] = quantise_weight(m.weight.detach(), m.bias, spec, dtype, m.weight.device)
    return out


def bnb_config(spec: QuantSpec, compute_dtype: torch.dtype):
    """transformers' ``BitsAndBytesConfig`` for ``spec``: what ``from_pretrained`` quantises a checkpoint with."""
    import transformers

    bnb()
    if QUANT_TYPES[spec.type].bits == 8:
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec.type,
                                           bnb_4bit_use_double_quant=spec.double_quant,
                                           bnb_4bit_compute_dtype=compute_dtype)


def install(model: nn.Module, quantised: Quantised) -> None:
    """Put the quantised layers in place and mark the model as transformers marks a bitsandbytes model,
    so that PEFT wraps each adapted layer in its LoRA layer for bitsandbytes."""
    for name, module in quantised.modules().items():
        model.set_submodule(name, module)
    setattr(model, QUANT_TYPES[quantised.spec.type].flag, True)


def base_reference(base: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a quantised base layer must compute on ``x`` (rows, in), in float32: (rows, out).

    4-bit: deq(Q(W)) x + bias, from the dequantised weight. int8: LLM.int8 quantises the input rows
    too (row-wise absmax, float16) whenever it runs its int8 product (on the GPU always, on the CPU
    in eval mode), so its reference is its own product, and ``activation_diff`` reports how far that
    is from deq(Q(W)) x."""
    if QUANT_TYPES[quant_type_of(base)].bits == 8:
        was = base.training
        base.eval()
        with torch.no_grad():
            out = base(x).float()
        base.train(was)
        return out
    out = x.float() @ dequantize(base).T
    bias = getattr(base, "bias", None)
    return out + bias.float() if bias is not None else out


def activation_diff(base: nn.Module, x: torch.Tensor) -> float | None:
    """int8 only: ||base(x) - deq(Q(W)) x|| / ||deq(Q(W)) x|| on rows x, the input quantisation of LLM.int8."""
    if QUANT_TYPES[quant_type_of(base)].bits != 8:
        return None
    deq_out = x.float() @ dequantize(base).T
    bias = getattr(base, "bias", None)
    return _relative(base_reference(base, x) - (deq_out + bias.float() if bias is not None else deq_out), deq_out)


def layer_reference(base: nn.Module, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """What an adapted quantised layer must compute: ``base_reference`` + s B (A x), in float32: (rows, out)."""
    return base_reference(base, x) + torch.matmul(x.float() @ a.float().T, b.float().T) * scaling


def summary(quantised: Quantised) -> dict:
    """Per role: the mean start error, QLoRA's, and the mean ratio of the two over the role's layers;
    the mean error after each iteration; how many unadapted layers were quantised."""
    roles: dict[str, list[dict]] = {}
    for result in quantised.adapted.values():
        for role, rec in result.by_role.items():
            roles.setdefault(role, []).append(rec)
    per_role = {}
    for role, recs in roles.items():
        ratios = [r["ratio"] for r in recs if r["ratio"] is not None]
        qlora = [r["qlora_error"] for r in recs if r["qlora_error"] is not None]
        longest = max(len(r["errors_by_iteration"]) for r in recs)
        per_role[role] = {
            "layers": len(recs), "mean_error": _mean([r["error"] for r in recs]),
            "mean_qlora_error": _mean(qlora), "mean_ratio": _mean(ratios),
            "mean_error_by_iteration": [_mean([r["errors_by_iteration"][min(i, len(r["errors_by_iteration"]) - 1)]
                                               for r in recs]) for i in range(longest)],
        }
    start_from = {r.record()["start_from"] for r in quantised.adapted.values()}
    return {**quantised.spec.describe(), "start_from": "+".join(sorted(start_from)), "roles": per_role,
            "unadapted_quantised": len(quantised.others), "saved_adapter": _saved_adapter(quantised)}


def _saved_adapter(quantised: Quantised) -> dict:
    """How far the saved plain-LoRA adapter is from the trained quantised model, per adapted layer
    (a constant of the start: training moves both by the same delta). On the original full-precision
    base the weights differ by W - deq(Q(W_res)) - s B0 A0 (the start's error); on the base quantised
    as QLoRA loads it, by deq(Q(W)) - deq(Q(W_res)) - s B0 A0."""
    results = list(quantised.adapted.values())
    recs = [rec for r in results for rec in r.by_role.values()]
    served = [rec["serve_quantised_error"] for rec in recs if rec["serve_quantised_error"] is not None]
    return {
        "on_original_base": {"max_weight_rel_error": max((rec["error"] for rec in recs), default=0.0),
                             "max_probe_rel_diff": max((r.probe_rel_diff for r in results), default=0.0)},
        "on_quantised_base": {"max_weight_rel_error": max(served) if served else None,
                              "quant_type": quantised.spec.type},
    }


def card_lines(quantization: dict) -> list[str]:
    """Model-card lines for an adapter trained on a quantised residual (``ailora.core.hub.model_card``)."""
    saved = quantization.get("saved_adapter", {})
    orig, quant = saved.get("on_original_base", {}), saved.get("on_quantised_base", {})
    lines = [f"- trained on a `{quantization['type']}` bitsandbytes residual (QAILoRA, {quantization['iters']} "
             f"error-reducing iterations; start taken from the {quantization.get('start_from', '?')})",
             f"- on the full-precision original base this adapter differs from the trained quantised model by "
             f"the start's quantisation error: max relative weight error {orig.get('max_weight_rel_error', 0.0):.3g}, "
             f"max relative output difference on probe rows {orig.get('max_probe_rel_diff', 0.0):.3g}"]
    if quant.get("max_weight_rel_error") is not None:
        lines.append(f"- served on the base quantised to `{quant['quant_type']}` (QLoRA-style): max relative "
                     f"weight error {quant['max_weight_rel_error']:.3g}")
    return lines


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def record(state, quantised: Quantised) -> None:
    """Write the quantisation report into an AiloraState: ``state.quantization`` and each layer's ``quant``."""
    state.quantization = summary(quantised)
    for rec in state.layers:
        if rec.name in quantised.adapted:
            rec.quant = quantised.adapted[rec.name].record()


def refuse_quantised_merge(model: nn.Module) -> None:
    """Merging into a quantised layer would re-quantise W_res + s B A, adding a new error nobody measured."""
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and is_quantised(module.get_base_layer()):
            raise AiloraError(f"layer {name} has a quantised base; merging would re-quantise it with a new error. "
                              "Save the adapter (ailora.save) and merge it into the full-precision original base")
