"""Directories written by the streaming init (``ailora init --residual-out``), and training from them.

Such a directory is a transformers checkpoint whose adapted weights are already the residuals
W - s B0 A0, with the starting factors beside them, so that training starts with no decomposition:

    OUT/config.json, model.safetensors (or the same shards and index), tokenizer files
    OUT/initial_adapter/   the starting factors (A0, B0) as PEFT's adapter files, marked RESIDUAL_FORM:
                           they belong on this residual base only, never on the original model
    OUT/report.json        the init report (per layer: roles, singular values, residual dtype; the check)
    OUT/ailora_initialised.json   the marker: the init's options, the source checkpoint, and per layer
                           its tensor, residual dtype and a SHA-256 of the residual's bytes

``load_initialised(OUT)`` loads the residual model and wraps it in PEFT's LoRA layers holding the
stored factors: the model ``ailora.apply(original)`` returns, bit for bit (factors, residuals,
``AiloraState``), so ``ailora.save(model, dir)`` writes the plain adapter for the ORIGINAL base.
Each residual is checked against its recorded hash when loaded, and the run's options against the
init's. ``ailora train --model OUT`` starts the same way (the method's ``start_from``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import peft
import torch
from torch import nn

from ailora.core.adapters import PREFIX, mark_residual_form, read_adapter
from ailora.core.apply import (
    ApplyOptions,
    keep_blocks_apart,
    layout_for,
    lora_config,
    run_in_float32,
    state_for,
)
from ailora.core.checkpoint import Checkpoint
from ailora.core.files import read_json
from ailora.core.inits import INITS
from ailora.core.layouts import module_entries, split_pattern
from ailora.core.models import load_model
from ailora.core.roles import Target
from ailora.core.state import LayerRecord, attach_state
from ailora.errors import AiloraError

__all__ = ["INITIAL_ADAPTER", "MARKER_FILE", "REPORT_FILE", "canonical_modules", "initialised_record",
           "load_initialised", "options_from_record", "recorded_options", "start_from_initialised", "tensor_key", "weight_hash"]

MARKER_FILE = "ailora_initialised.json"
MARKER_FORMAT = "ailora-initialised-1"
INITIAL_ADAPTER = "initial_adapter"
REPORT_FILE = "report.json"
# The LoRA options that do not decide the starting factors and residuals (DoRA is refused apart: its
# magnitudes need the original weights); a run starting from the directory must ask for the same
# values of every other one, resolved (targets and policy as the policy they give, alpha as a number),
# and for the same ``modules`` and, where a start draws random numbers, ``seed``.
NOT_START = ("dropout", "use_dora")


def canonical_modules(modules) -> dict[str, list[str]] | None:
    """``modules=`` as JSON can hold it: role -> ["PATTERN" or "PATTERN@ROWS", ...]."""
    if not modules:
        return None
    out = {}
    for role, value in modules.items():
        out[role] = []
        for entry in module_entries(value):
            pattern, rows = split_pattern(entry)
            out[role].append(f"{pattern}@{rows.text}" if rows is not None else pattern)
    return out


def recorded_options(options: ApplyOptions) -> dict:
    """The options an init records in its marker: the method, every LoRA option, and how it was applied."""
    return {"method": options.method, **dataclasses.asdict(options.lora),
            "modules": canonical_modules(options.modules), "seed": options.seed, "head": options.head}


def options_from_record(recorded: dict) -> ApplyOptions:
    """The ``ApplyOptions`` of a marker's recorded options (markers before ``use_dora`` was recorded
    lack it: its default, False, is what they were written with)."""
    return ApplyOptions.of(**recorded)


def initialised_record(directory) -> dict | None:
    """The marker of a directory written by ``ailora init --residual-out``, or None for any other."""
    p = Path(directory) / MARKER_FILE
    if not p.is_file():
        if (Path(directory) / INITIAL_ADAPTER).is_dir():  # its weights are residuals: never a plain model
            raise AiloraError(f"{directory} has an {INITIAL_ADAPTER}/ from `ailora init --residual-out` but no "
                              f"{MARKER_FILE}: its weights are residuals, not the original model; restore the "
                              "marker, or train from the original checkpoint")
        return None
    record = read_json(p)
    if not isinstance(record, dict) or record.get("format") != MARKER_FORMAT:
        raise AiloraError(f"{p} is not a marker this version of ailora reads (format {MARKER_FORMAT})")
    if not (Path(directory) / REPORT_FILE).is_file():
        raise AiloraError(f"{directory} has no {REPORT_FILE} (the init report): it is incomplete; run ailora init again")
    return record


def _require_record(directory) -> dict:
    record = initialised_record(directory)
    if record is None:
        raise AiloraError(f"{directory} was not written by `ailora init --residual-out` (it has no {MARKER_FILE})")
    return record


def load_initialised(directory, kind: str | None = None, trust_remote_code: bool = False,
                     **config_overrides) -> peft.PeftModel:
    """The model ``ailora.apply`` gave the original checkpoint, from the directory the streaming init
    wrote (``ailora init --model DIR --residual-out OUT``), with no decomposition.

    ``kind``: the model class (default: the init's); ``config_overrides`` go to the model's config as
    in ``from_pretrained`` (``num_labels=3`` for a new classification head). The model loads in the
    init's dtype. Returns a PeftModel with its ``ailora_state``, equal to ``ailora.apply(original,
    **the init's options)``."""
    record = _require_record(directory)
    model = load_model(directory, kind=kind or record["kind"], dtype=record["dtype"],
                       trust_remote_code=trust_remote_code, **config_overrides)
    return start_from_initialised(model, directory)


def _start(options: ApplyOptions) -> dict:
    """What decides the starting factors and residuals, resolved."""
    start = {k: v for k, v in dataclasses.asdict(options.lora).items() if k not in NOT_START}
    del start["targets"]  # they decide the start through the policy
    start.update(policy=options.resolved_policy(), alpha=options.lora_alpha(),
                 modules=canonical_modules(options.modules), seed=options.seed)
    if all(INITS[name].uses_svd for name in start["policy"].values()):
        start.pop("seed")  # SVD starts draw nothing
    return start


def _check_same_start(options: ApplyOptions, record: dict, directory) -> None:
    """The run's options give the same start as the init's, or a one-line error naming the first that differs."""
    if options.lora.use_dora:
        raise AiloraError(f"DoRA cannot start from {directory}: its magnitudes need the original weights; "
                          "train DoRA from the original model")
    ours, theirs = _start(options), _start(options_from_record(record["options"]))
    for name in dict.fromkeys([*theirs, *ours]):
        if ours.get(name) != theirs.get(name):
            raise AiloraError(f"{directory} was initialised with {name}={theirs.get(name)!r}, this run asks for "
                              f"{name}={ours.get(name)!r}: train with the init's options, or initialise again")


def tensor_key(prefix: str, name: str, keys) -> str | None:
    """The checkpoint key of module ``name``'s weight: the same name, or with the model's
    ``base_model_prefix`` added or removed (a base checkpoint loaded under a task head, or the reverse)."""
    candidates = [f"{name}.weight"]
    if prefix:
        candidates += [f"{name}.weight".removeprefix(f"{prefix}."), f"{prefix}.{name}.weight"]
    return next((c for c in candidates if c in keys), None)


def weight_hash(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes as stored."""
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().data).hexdigest()


def _recorded_layers(model: nn.Module, targets: list[Target], record: dict, ckpt: Checkpoint, directory) -> dict:
    """target name -> its layer's name in the marker (the init may have built another model class)."""
    by_key = {layer["key"]: name for name, layer in record["layers"].items()}
    out = {}
    for t in targets:
        key = tensor_key(getattr(model, "base_model_prefix", ""), t.name, ckpt.where)
        if key not in by_key:
            raise AiloraError(f"{directory} was not initialised for layer {t.name} (initialised: "
                              f"{', '.join(list(record['layers'])[:6])}...)")
        out[t.name] = by_key.pop(key)
    if by_key:
        raise AiloraError(f"{directory} holds the residual of {next(iter(by_key.values()))}, which this run does not "
                          "adapt: train with the init's targets")
    return out


def _install(layer, t: Target, factors: tuple[torch.Tensor, torch.Tensor], recorded: dict, ckpt: Checkpoint) -> None:
    """Put the starting factors into PEFT's layer; a residual kept in float32 inside a half-precision
    model is read again in float32 and run so (as ``apply`` leaves it); check the residual's hash."""
    base = layer.get_base_layer()
    if recorded["residual_dtype"] == "float32" and base.weight.dtype != torch.float32:
        base.weight = nn.Parameter(ckpt.tensor(recorded["key"]), requires_grad=False)
        run_in_float32(base)
    if recorded["residual_dtype"] != "unchanged" and weight_hash(base.weight) != recorded["sha256"]:
        raise AiloraError(f"the weight of layer {t.name} is not the residual the init wrote ({recorded['key']}); "
                          "the directory was changed, or loaded in another dtype")
    a0, b0 = factors
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a0.to(layer.lora_A["default"].weight.dtype))
        layer.lora_B["default"].weight.copy_(b0.to(layer.lora_B["default"].weight.dtype))


def start_from_initialised(model: nn.Module, directory, options: ApplyOptions | None = None) -> peft.PeftModel:
    """Wrap ``model``, loaded from an initialised ``directory``, in PEFT's LoRA layers with the stored
    starting factors: what ``apply_with(original, options)`` returns. ``options``: the run's (default:
    the init's); those that decide the start must equal the init's."""
    directory = Path(directory)
    record = _require_record(directory)
    options = options if options is not None else options_from_record(record["options"])
    _check_same_start(options, record, directory)
    layout = layout_for(model, options)
    if str(layout.dtype).removeprefix("torch.") != record["dtype"]:
        raise AiloraError(f"{directory} was initialised for {record['dtype']} weights; load it in {record['dtype']} "
                          f"(it was loaded in {str(layout.dtype).removeprefix('torch.')})")
    ckpt = Checkpoint.open(directory)
    names = _recorded_layers(model, layout.targets, record, ckpt, directory)
    sd, _, _ = read_adapter(directory / INITIAL_ADAPTER, residual_form_ok=True)
    initial = {t.name: (sd[f"{PREFIX}{names[t.name]}.lora_A.weight"].float(),
                        sd[f"{PREFIX}{names[t.name]}.lora_B.weight"].float()) for t in layout.targets}
    # Where the model came from, for PEFT's config and adapters saved from it: they apply to the ORIGINAL.
    model.config._name_or_path = model.name_or_path = record["source"]
    peft_model = peft.get_peft_model(model, lora_config(layout, options))
    for t in layout.targets:
        layer = peft_model.base_model.model.get_submodule(t.name)
        _install(layer, t, initial[t.name], record["layers"][names[t.name]], ckpt)
        if t.fused:
            keep_blocks_apart(layer, t, options.lora.rank)
    report = read_json(directory / REPORT_FILE)
    layers = {r["name"]: LayerRecord(**r) for r in report["layers"]}
    state = state_for(layout, options, initial, [dataclasses.replace(layers[names[t.name]], name=t.name)
                                                 for t in layout.targets])
    state.check, state.total_seconds = report["output_check"], report["total_seconds"]
    attach_state(peft_model, state)
    mark_residual_form(peft_model, state)
    return peft_model
