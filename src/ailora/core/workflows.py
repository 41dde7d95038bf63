"""Directory-to-directory workflows behind ``ailora init`` and ``ailora merge``.

Each loads a model from a directory (or a named offline model), does one library operation and
writes its result atomically, so the command line only parses arguments and prints a summary.
(``ailora convert`` is ``ailora.core.convert.convert_dir``; ``ailora init --residual-out``, which
never loads the model, is ``init_residual_dir``.)
"""

from __future__ import annotations

from pathlib import Path

from ailora.core.adapters import load, merge_to_dir, read_adapter_config, save
from ailora.core.apply import ApplyOptions, apply_with
from ailora.core.convert import load_base_for_adapter
from ailora.core.files import check_empty_or_overwrite
from ailora.core.initialised import REPORT_FILE, initialised_record
from ailora.core.models import load_model, resolve_model_path
from ailora.core.state import state_of
from ailora.core.streaming import initialise_checkpoint
from ailora.errors import AiloraError


def init_dir(model: str, out, options: ApplyOptions, kind: str = "auto", dtype: str | None = None,
             trust_remote_code: bool = False, overwrite: bool = False) -> dict:
    """Initialise adapters on the model at ``model`` (a directory, or minilm / smollm2) and write
    them to ``out`` as a plain PEFT adapter with ``report.json``; returns that report.

    Everything that can fail without the model (the options, the policy, a non-empty ``out``)
    fails before the model is loaded.
    """
    options.resolved_policy()
    path = resolve_model_path(model)
    if initialised_record(path) is not None:
        raise AiloraError(f"{path} holds residual weights (written by ailora init --residual-out); initialise the "
                          "original checkpoint, or train from this one with ailora train --model")
    check_empty_or_overwrite(Path(out), overwrite)
    adapted = apply_with(load_model(path, kind=kind, dtype=dtype, trust_remote_code=trust_remote_code), options)
    state = state_of(adapted)
    report = {**state.report(), "model": str(path)}
    save(adapted, out, overwrite=overwrite, state=state, extra_json={REPORT_FILE: report})
    return report


def init_residual_dir(model: str, out, options: ApplyOptions, kind: str = "auto", dtype: str | None = None,
                      trust_remote_code: bool = False, overwrite: bool = False) -> dict:
    """The streaming init (``ailora.core.streaming``): the safetensors checkpoint at ``model`` read tensor by
    tensor, the residual model, starting factors and report written to ``out``; returns the report."""
    return initialise_checkpoint(resolve_model_path(model), out, options, kind=kind, dtype=dtype,
                                 trust_remote_code=trust_remote_code, overwrite=overwrite)


def merge_dir(base: str, adapter, out, kind: str = "auto", dtype: str | None = None,
              trust_remote_code: bool = False, overwrite: bool = False) -> dict:
    """Load ``base`` (a directory, or minilm / smollm2) with the adapter directory ``adapter``, merge,
    and write the full model (and the base's tokenizer files) to ``out``; returns the output check."""
    path = resolve_model_path(base)
    read_adapter_config(adapter)  # cheap checks before the model is loaded
    check_empty_or_overwrite(Path(out), overwrite)
    # built with the adapter's task head (class, number of labels) unless ``kind`` names another class
    base_model = load_base_for_adapter(path, adapter, kind=kind, dtype=dtype, trust_remote_code=trust_remote_code)
    model = load(base_model, adapter)
    return merge_to_dir(model, out, overwrite=overwrite, tokenizer_from=path)
