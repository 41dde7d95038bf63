"""Exporting a LoRA adapter as a llama.cpp LoRA adapter (GGUF), for llama.cpp and Ollama.

llama.cpp computes ``W x + (alpha / r) B (A x)`` for every adapted tensor of its own base GGUF, with ONE
``alpha`` for the whole adapter and each tensor's own rank ``r`` (the columns of its B). Three things
make a naive export silently wrong, and each is handled here:

- scales: PEFT gives each module its own scale (``rank_pattern``, ``alpha_pattern``, rsLoRA's
  alpha / sqrt(r)). The file carries the alpha most modules need; every other module has the ratio
  between its scale and alpha / r folded into its B (only B A matters).
- row order: llama.cpp's conversion of a LLaMA-family checkpoint reorders the rows of q_proj and
  k_proj for its rotary layout (within each head, the two rotary halves are interleaved), and stores
  fused projections role by role ([all q; all k; all v]: GPT-NeoX's and Falcon's per-head or
  per-group layouts are regrouped). A B for such a weight must have its rows moved the same way,
  or it changes the wrong rows. A is never touched: the columns (inputs) keep their order.
- what a llama.cpp adapter cannot hold: only ``.lora_a`` / ``.lora_b`` pairs on the projections of
  its blocks. A trained task head or other full weights (PEFT's modules_to_save), LoRA biases,
  DoRA magnitudes, embeddings and lm_head, and adapters whose factors apply to a modified base
  (PiSSA/OLoRA/LoftQ saves not converted to plain LoRA) are refused, naming the module, before
  anything is written.

The file: ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``,
``general.architecture`` = llama.cpp's name of the base architecture; tensors
``blk.N.<tensor>.weight.lora_a`` (r, in) and ``.lora_b`` (out, r), float32, named as in the base GGUF.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import peft
import torch

from ailora.core.adapters import PREFIX, lora_scaling, module_rank_alpha, read_adapter, read_adapter_config
from ailora.core.files import atomic_file, require_writable
from ailora.core.models import load_config, resolve_model_path, smollm2_gguf
from ailora.core.roles import ARCHITECTURES, weight_of
from ailora.errors import AiloraError, first_line
from ailora.version import __version__


def _kv_heads(config) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _falcon_kv_heads(config) -> int:
    """The key/value heads llama.cpp's Falcon runs with: the groups of the new decoder, one for
    multi-query, else one per head (the layouts of ``FalconAttention._split_heads``)."""
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


@dataclass(frozen=True)
class GgufArch:
    """How llama.cpp runs one transformers model type."""

    name: str  # llama.cpp's architecture (general.architecture), a value of gguf.MODEL_ARCH_NAMES
    rotary_rows: bool = False  # its conversion reorders q_proj / k_proj rows for its rotary layout (LLaMA)
    kv_heads: Callable[[object], int] = _kv_heads  # key/value heads, as its GGUF records them


# transformers model type -> llama.cpp architecture: the model types ailora adapts that llama.cpp runs.
# Mistral converts as LLaMA (rows reordered alike); the others use rotary in the NeoX layout (no reorder).
GGUF_ARCHITECTURES: dict[str, GgufArch] = {
    "llama": GgufArch("llama", rotary_rows=True),
    "mistral": GgufArch("llama", rotary_rows=True),
    "qwen2": GgufArch("qwen2"),
    "qwen3": GgufArch("qwen3"),
    "gemma": GgufArch("gemma"),
    "gemma2": GgufArch("gemma2"),
    "gemma3_text": GgufArch("gemma3"),
    "phi3": GgufArch("phi3"),
    "gpt2": GgufArch("gpt2"),
    "gpt_neox": GgufArch("gptneox"),
    "falcon": GgufArch("falcon", kv_heads=_falcon_kv_heads),
    "starcoder2": GgufArch("starcoder2"),
}
# PEFT starts whose saved factors apply to the original weights; the others (PiSSA, OLoRA, LoftQ, CorDA...)
# train on a modified base and load right only through PEFT, which redoes the start on load.
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")


@dataclass(frozen=True)
class LoraTensor:
    """One adapted module as llama.cpp will apply it: B A times ``scale`` (alpha / r, folded below)."""

    module: str  # the transformers module name, e.g. model.layers.0.self_attn.q_proj
    gguf_name: str  # the base GGUF's tensor, e.g. blk.0.attn_q.weight
    a: torch.Tensor  # (r, in), float32
    b: torch.Tensor  # (out, r), float32, rows in llama.cpp's order
    scale: float  # the module's own LoRA scale s (alpha / r, or alpha / sqrt(r) under rsLoRA)
    rows: str  # "as is", "rotary" or "fused": how B's rows were reordered

    @property
    def rank(self) -> int:
        return self.a.shape[0]


def export_gguf(adapter, out, base, base_gguf=None, overwrite: bool = False) -> dict:
    """Write ``adapter`` (a directory from ``ailora.save``, a Trainer checkpoint saved with
    ``AiloraCallback``, or a plain PEFT LoRA) as a llama.cpp LoRA adapter file ``out`` (``.gguf``).

    Args:
        base: the base model the adapter was trained on: a model directory (config.json), a named
            offline model (smollm2), or the base's GGUF file. Its config gives the architecture, heads
            and module shapes.
        base_gguf: the base GGUF that llama.cpp will run (default: ``base`` when it is a GGUF file, the
            package's GGUF for smollm2): its architecture, head counts and every adapted tensor's name
            and shape are checked before writing, as llama.cpp would on load.
        overwrite: replace an existing ``out`` (refused otherwise).
    Returns the report: out, architecture, alpha, tensors and, per module, its GGUF tensor, rank, scale,
    the factor folded into B and how B's rows were reordered. Nothing is written unless every check passes.
    """
    base_path, base_gguf = _base_paths(base, base_gguf)
    out = _check_out(out, overwrite, [Path(adapter), base_path, base_gguf])
    _check_config(read_adapter_config(adapter)[1], adapter)  # before the tensors: it says what they hold
    sd, cfg, meta = read_adapter(adapter)
    config = _base_config(base_path)
    arch = _gguf_arch(config, base_path)
    _check_trained_on(meta, cfg, config, adapter)
    tensors = _lora_tensors(sd, cfg, config, arch, adapter)
    alpha, factors = fold_scales(tensors)
    if base_gguf is not None:
        check_base_gguf(base_gguf, arch, config, tensors)
    _write(out, arch.name, alpha, tensors, factors, Path(adapter).name)
    return {"out": str(out), "architecture": arch.name, "alpha": alpha, "tensors": 2 * len(tensors),
            "base_gguf": str(base_gguf) if base_gguf is not None else None,
            "modules": {t.module: {"gguf": t.gguf_name, "rank": t.rank, "scale": t.scale, "folded": factors[t.module],
                                   "rows": t.rows} for t in tensors}}


def _is_gguf(path) -> bool:
    return str(path).lower().endswith(".gguf")


def _base_paths(base, base_gguf) -> tuple[Path, Path | None]:
    """(where the base's config comes from, the base GGUF to check against or None)."""
    if str(base) == "smollm2" and base_gguf is None:
        base_gguf = smollm2_gguf()
    if _is_gguf(base):
        base_gguf = base if base_gguf is None else base_gguf
        if not Path(base).is_file():
            raise AiloraError(f"base GGUF {base} does not exist")
        return Path(base), Path(base_gguf)
    if base_gguf is not None and not Path(base_gguf).is_file():
        raise AiloraError(f"base GGUF {base_gguf} does not exist")
    return resolve_model_path(str(base)), Path(base_gguf) if base_gguf is not None else None


def _check_out(out, overwrite: bool, inputs: list[Path | None]) -> Path:
    """``out`` as a Path: a ``.gguf`` file that is none of the inputs and may be written."""
    out = Path(out)
    if not _is_gguf(out):
        raise AiloraError(f"output {out} must be a .gguf file")
    for given in filter(None, inputs):
        if given.exists() and out.resolve() == given.resolve():
            raise AiloraError(f"output {out} is also an input ({given}); choose another output file")
    if out.is_dir():
        raise AiloraError(f"output {out} is a directory; give a .gguf file name")
    if out.exists() and not overwrite:
        raise AiloraError(f"output {out} already exists; choose another or allow overwrite")
    return require_writable(out)


def _check_config(cfg: peft.LoraConfig, adapter) -> None:
    """Refuse adapter kinds whose effect a llama.cpp LoRA (B A on the original weights) cannot carry."""
    init = cfg.init_lora_weights
    if init not in PLAIN_INITS:
        raise AiloraError(f"adapter {adapter} was saved with init_lora_weights={init!r}: its factors apply to a "
                          "modified base, not the original; convert it first (ailora convert --initial)")
    unsupported = {"use_dora": "DoRA magnitudes", "lora_bias": "LoRA biases",
                   "layer_replication": "layer replication", "target_parameters": "LoRA on bare parameters"}
    for field, what in unsupported.items():
        if getattr(cfg, field, None):
            raise AiloraError(f"adapter {adapter} uses {what} ({field}), which a llama.cpp LoRA adapter cannot "
                              "hold; merge it instead (ailora merge) and convert the merged model")


def _base_config(path: Path):
    if not _is_gguf(path):
        return load_config(path)
    import transformers  # reads the GGUF's metadata (needs the gguf package), as transformers loads it

    try:
        return transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # transformers' own errors for foreign or unsupported GGUF files
        raise AiloraError(f"base GGUF {path}: transformers cannot read its config: {first_line(exc)}") from None


def _gguf_arch(config, where) -> GgufArch:
    model_type = getattr(config, "model_type", None)
    if model_type not in GGUF_ARCHITECTURES:
        raise AiloraError(f"base {where} is a {model_type} model, which llama.cpp does not run as ailora exports it; "
                          f"GGUF export supports: {', '.join(GGUF_ARCHITECTURES)}")
    return GGUF_ARCHITECTURES[model_type]


def _model_types_of_class(name: str) -> set[str]:
    """The transformers model types whose classes include ``name`` (e.g. LlamaForCausalLM -> {llama})."""
    from transformers.models.auto import modeling_auto as auto

    tables = [getattr(auto, t) for t in dir(auto) if t.startswith("MODEL_") and t.endswith("_MAPPING_NAMES")]
    return {mt for table in tables for mt, cls in table.items() if isinstance(cls, str) and cls == name}


def _check_trained_on(meta: dict, cfg: peft.LoraConfig, config, adapter) -> None:
    """The model class the adapter records (ailora.json, or PEFT's auto_mapping) is of the base's model type."""
    cls = (meta.get("model") or {}).get("class") or (getattr(cfg, "auto_mapping", None) or {}).get("base_model_class")
    types = _model_types_of_class(cls) if cls else set()
    if types and config.model_type not in types:
        raise AiloraError(f"adapter {adapter} was trained on {cls} ({', '.join(sorted(types))}), but the base is a "
                          f"{config.model_type} model")


def _meta_model(config) -> torch.nn.Module:
    """The base's causal-LM model on the meta device: module names and shapes, no weights."""
    import transformers

    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


# Parts of an adapter tensor's name that say what it is, when it is not a LoRA factor.
_NOT_LORA = {"lora_embedding": "an embedding LoRA", "magnitude": "a DoRA magnitude",
             ".base_layer.": "full embedding weights (PEFT's save_embedding_layers)"}


def _lora_pairs(sd: dict, adapter) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (A: (r, in), B: (out, r)); a one-line error for any tensor that is not a LoRA factor."""
    pairs = {}
    for key in sd:
        if key.endswith(".lora_A.weight"):
            name = key[len(PREFIX):-len(".lora_A.weight")]
            pairs[name] = (sd[key].float(), sd[f"{PREFIX}{name}.lora_B.weight"].float())
        elif not key.endswith(".lora_B.weight"):
            module = re.split(r"\.(modules_to_save|original_module|base_layer|lora_\w+)\.|\.(weight|bias)$",
                              key[len(PREFIX):])[0]
            what = next((w for part, w in _NOT_LORA.items() if part in key), "full weights (a trained task head or "
                        "modules_to_save)")
            raise AiloraError(f"adapter {adapter} holds {what} for module {module} ({key}), which a llama.cpp LoRA "
                              "adapter cannot hold; train without it, or merge (ailora merge) and convert the merged model")
    if not pairs:
        raise AiloraError(f"adapter {adapter} holds no LoRA factors")
    return pairs


def _lora_tensors(sd: dict, cfg: peft.LoraConfig, config, arch: GgufArch, adapter) -> list[LoraTensor]:
    model = _meta_model(config)
    import gguf

    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch.name]
    names = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    out = []
    for name, (a, b) in _lora_pairs(sd, adapter).items():
        full, module = _module_of(model, name, adapter)
        gguf_name = names.get_name(f"{full}.weight", try_suffixes=(".weight",))
        if gguf_name is None or not gguf_name.startswith("blk."):
            raise AiloraError(f"adapter {adapter} adapts module {name}, which llama.cpp does not take as LoRA "
                              f"({gguf_name or 'no tensor of its ' + arch.name + ' model'}); train without it")
        out_f, in_f = weight_of(module).shape
        r, alpha = module_rank_alpha(cfg, name)
        if a.shape != (r, in_f) or b.shape != (out_f, r):
            raise AiloraError(f"adapter {adapter} module {name} has factors {tuple(a.shape)}/{tuple(b.shape)}; the "
                              f"base needs ({r}, {in_f})/({out_f}, {r})")
        rows, order = row_order(full, arch, config, out_f)
        out.append(LoraTensor(name, gguf_name, a.contiguous(), (b if order is None else b[order]).contiguous(),
                              lora_scaling(r, alpha, cfg.use_rslora), rows))
    return out


def _module_of(model: torch.nn.Module, name: str, adapter) -> tuple[str, torch.nn.Module]:
    """(full name in the causal LM, module) of adapter module ``name`` (also trained on the bare backbone)."""
    for full in (name, f"{model.base_model_prefix}.{name}"):
        try:
            module = model.get_submodule(full)
        except AttributeError:
            continue
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            return full, module
        raise AiloraError(f"adapter {adapter} adapts module {name}, a {type(module).__name__}, which llama.cpp "
                          "does not take as LoRA; train without it")
    raise AiloraError(f"adapter {adapter} adapts module {name}, which the base model does not have")


def rotary_order(rows: int, heads: int) -> torch.Tensor:
    """The row order of llama.cpp's LLaMA rotary layout: within each head of ``rows // heads`` rows, the
    first and second halves interleaved (row j of the first half, then row j of the second). (rows,) index."""
    half = rows // heads // 2
    return torch.arange(rows).reshape(heads, 2, half).transpose(1, 2).reshape(-1)


def _fused_order(name: str, config, rows: int) -> torch.Tensor | None:
    """Rows of a fused projection regrouped role by role (all of the first role, then the next...), as
    llama.cpp stores them; None for a module that is not fused."""
    table = ARCHITECTURES.get(config.model_type)
    for pattern, fused in (table.fused_layouts() if table else {}).items():
        if re.search(rf"(^|\.)({pattern})$", name):
            return torch.cat([torch.arange(a, b) for role in fused.roles for a, b in fused.spans(config, role, name, rows)])
    return None


def row_order(name: str, arch: GgufArch, config, rows: int) -> tuple[str, torch.Tensor | None]:
    """How llama.cpp orders the rows of module ``name``'s weight: ("as is", None), ("rotary", index) or
    ("fused", index), the index such that llama.cpp's row i is the transformers row index[i]."""
    if arch.rotary_rows and name.endswith(("q_proj", "k_proj")):
        heads = config.num_attention_heads if name.endswith("q_proj") else arch.kv_heads(config)
        return "rotary", rotary_order(rows, heads)
    order = _fused_order(name, config, rows)
    return ("as is", None) if order is None else ("fused", order)


def fold_scales(tensors: list[LoraTensor]) -> tuple[float, dict[str, float]]:
    """The adapter's one alpha, and per module the factor its B must be multiplied by so that llama.cpp's
    alpha / rank is the module's own scale s: factor = s * r / alpha (1.0 for most modules).

    alpha is what most modules need (s * r), rounded to float32 as the file stores it."""
    import numpy as np

    needed = [t.scale * t.rank for t in tensors]
    nonzero = sorted(x for x in needed if x != 0)
    if not nonzero:
        raise AiloraError("the adapter's scale is 0 on every module (lora_alpha 0): it changes nothing")
    alpha = float(np.float32(max(nonzero, key=nonzero.count)))
    return alpha, {t.module: 1.0 if math.isclose(n, alpha, rel_tol=1e-7) else n / alpha
                   for t, n in zip(tensors, needed)}


def _field(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def read_gguf(path, what: str = "GGUF"):
    """A ``gguf.GGUFReader`` of ``path``, or a one-line error naming it (missing, truncated, foreign)."""
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # numpy's and gguf's own errors for files that are not GGUF
        raise AiloraError(f"{what} {path} cannot be read as GGUF: {first_line(exc)}") from None


def check_base_gguf(path, arch: GgufArch, config, tensors: list[LoraTensor]) -> None:
    """The checks llama.cpp makes when it loads the adapter onto ``path``, made first: the same
    architecture, the heads the rows were reordered for, and each adapted tensor present with
    the shape of B A (ne = [in, out] in GGUF's order)."""
    reader = read_gguf(path, "base GGUF")
    found = _field(reader, "general.architecture")
    if _field(reader, "general.type") == "adapter":
        raise AiloraError(f"base GGUF {path} is itself an adapter, not a base model")
    if found != arch.name:
        raise AiloraError(f"base GGUF {path} is a {found} model; the adapter is for {arch.name} ({config.model_type})")
    heads = {"head_count": config.num_attention_heads, "head_count_kv": arch.kv_heads(config)}
    for key, want in heads.items():
        have = _field(reader, f"{arch.name}.attention.{key}")
        if have is not None and int(have) != want:
            raise AiloraError(f"base GGUF {path} has {arch.name}.attention.{key} = {have}; the base config has {want}")
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    for t in tensors:
        want = (t.a.shape[1], t.b.shape[0])
        if t.gguf_name not in shapes:
            raise AiloraError(f"base GGUF {path} has no tensor {t.gguf_name} (module {t.module}): another model?")
        if shapes[t.gguf_name][:2] != want:
            raise AiloraError(f"base GGUF {path} tensor {t.gguf_name} has shape {shapes[t.gguf_name]}; module "
                              f"{t.module} needs {want}: another model?")


def _write(out: Path, arch: str, alpha: float, tensors: list[LoraTensor], factors: dict[str, float],
           name: str) -> None:
    """The adapter file, atomically (a temporary sibling renamed over ``out`` once complete)."""
    import gguf

    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(name)
        writer.add_string("ailora.version", __version__)
        for t in tensors:
            b = t.b if factors[t.module] == 1.0 else t.b * factors[t.module]
            writer.add_tensor(f"{t.gguf_name}.lora_a", t.a.numpy())
            writer.add_tensor(f"{t.gguf_name}.lora_b", b.contiguous().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def read_gguf_adapter(path) -> dict:
    """What a llama.cpp LoRA adapter file holds: architecture, alpha, and per base tensor its factors
    (A: (r, in), B: (out, r), float32 torch tensors) and llama.cpp's scale alpha / r. For tests and checks."""
    reader = read_gguf(path, "adapter")
    factors: dict[str, dict] = {}
    for t in reader.tensors:
        base, _, half = t.name.rpartition(".")
        factors.setdefault(base, {})[half] = torch.from_numpy(t.data.copy()).float()
    alpha = float(_field(reader, "adapter.lora.alpha"))
    for f in factors.values():
        f["scale"] = alpha / f["lora_b"].shape[1] if alpha else 1.0
    return {"architecture": _field(reader, "general.architecture"), "type": _field(reader, "general.type"),
            "adapter_type": _field(reader, "adapter.type"), "alpha": alpha, "tensors": factors}
