"""One nested config per training run, validated at construction, with strict dotted overrides.

``RunConfig`` holds seven sections (model, method, task, train, progressive, generation, qa) and where the run is
written. Each field's docstring is its help text (``field_help``), so the CLI and the docs cannot
drift. ``RunConfig.from_dict`` and ``apply_overrides`` are strict: an unknown key or a value of the
wrong type is an ``AiloraError`` that names the key.

The method section is ``{"name": ..., <the method's options>}``: its options are an instance of the
class the method names (``ailora.core.options``: one frozen dataclass per method family, validated
when built), so building it looks the method up (an unknown method, or an option it does not read,
is an error then; ``ailora.methods.options``). Otherwise this module is plain data: construction
checks types, ranges and choices only; whether the task exists and the method can run the options
(roles, inits) is ``ailora.train.checks.check_run``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ailora.core.options import FAMILIES, field_help, option_defaults
from ailora.errors import AiloraError
from ailora.train.values import (
    check_choice,
    check_finite,
    check_positive,
    check_type,
    flatten,
    parse_value,
    set_dotted,
)

# Keys that say how to run, not what is run: a resumed run may change them.
RUN_CONTROL_KEYS = ("resume", "overwrite", "train.stop_after_steps", "train.progress")
# Keys that say where and what a run records besides its results: they change nothing it computes.
RECORD_KEYS = ("run_dir", "train.tensorboard", "train.report_to", "train.tracker_project", "train.tracker_group",
               "train.tracker_run_name")
# What the trackers call the run: a resumed run (or a sweep run of a directory written before the sweep
# named its runs) may be named anew; it logs to the tracker run stored in RUN_DIR/trackers.json.
TRACKER_NAMES = ("train.tracker_project", "train.tracker_group", "train.tracker_run_name")
# ``train.report_to``'s choices (``ailora.train.trackers``); "none": log nowhere.
TRACKERS = ("tensorboard", "wandb", "mlflow")

# Progtuning's choices (``ailora.train.progressive``).
EMBEDDINGS = ("first-stage", "frozen", "always")
REMAINDERS = ("top", "bottom")
BOUNDARIES = ("epoch", "steps")
ORDERS = ("depth", "grad-norm")
MODEL_KINDS = ("auto", "seq-cls", "causal-lm", "seq2seq-lm", "qa")


@dataclass
class ModelConfig:
    name: str = "minilm"
    """Model directory, or a model shipped in offline packages (minilm, smollm2)."""
    kind: str = "auto"
    """auto: from the task and the checkpoint (seq-cls for classification/regression, qa for extractive QA, seq2seq-lm for generation on an encoder-decoder, causal-lm on a decoder); a kind the checkpoint cannot be is an error."""
    dtype: str = "float32"
    """Weights' dtype when loading: float32, bfloat16 or float16."""
    max_length: int = 128
    """Most tokens per example (prompt and answer together for a causal LM, the encoder input for an encoder-decoder, question and window for QA); prompts are cut in their body, keeping instruction and answer cue."""

    def validate(self) -> None:
        check_choice("model.kind", self.kind, MODEL_KINDS)
        check_choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        check_positive("model.max_length", self.max_length)


@dataclass
class GenerationConfig:
    max_new_tokens: int | None = None
    """Most tokens generated per example at evaluation (default: the task's, e.g. 24 for asdiv, 64 for xsum, else 32)."""
    num_beams: int | None = None
    """Beam search width; 1 is greedy (default: the task's, else 1)."""
    length_penalty: float | None = None
    """Beam search length penalty: > 1 favours longer outputs (default: the task's, else 1.0)."""
    no_repeat_ngram_size: int | None = None
    """Never repeat an n-gram of this size (0: off; default: the task's, 3 for xsum, else 0)."""
    max_target_length: int = 128
    """Most target tokens trained on per example (the answer or summary, eos included)."""
    chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one (causal LMs)."""

    def validate(self) -> None:
        for key in ("max_new_tokens", "num_beams"):
            if getattr(self, key) is not None:
                check_positive(f"generation.{key}", getattr(self, key))
        if self.length_penalty is not None and not math.isfinite(self.length_penalty):
            raise AiloraError(f"generation.length_penalty must be finite, got {self.length_penalty}")
        if self.no_repeat_ngram_size is not None and self.no_repeat_ngram_size < 0:
            raise AiloraError(f"generation.no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        check_positive("generation.max_target_length", self.max_target_length)


@dataclass
class QAConfig:
    doc_stride: int | None = None
    """Extractive QA: tokens shared by consecutive windows of a context longer than model.max_length (default: a quarter of model.max_length, 32 of 128, 96 of 384; must be under half)."""
    max_answer_length: int = 30
    """Extractive QA: most tokens in a predicted answer span."""
    n_best: int = 20
    """Extractive QA: start and end candidates per window in post-processing."""

    def validate(self) -> None:
        for key in ("doc_stride", "max_answer_length", "n_best"):
            if getattr(self, key) is not None:
                check_positive(f"qa.{key}", getattr(self, key))


@dataclass
class MethodConfig:
    name: str = "ailora"
    """Fine-tuning method: a name in ailora.methods.METHODS (lora, pissa, milora, ailora, reailora; the baselines full, bitfit, houlsby, dora, rslora, vera, loraplus). An option the method does not read is an error."""
    options: Any = None
    """The method's options: an instance of the class its TrainMethod names (``ailora.core.options``),
    written as the section's other keys (method.rank=16); None: the class's defaults."""

    def __post_init__(self) -> None:
        if self.options is None:
            self.options = _build_method_options(self.name, {})

    def validate(self) -> None:
        """The options are the method's class (they validated themselves when built)."""
        expected = _build_method_options(self.name, {})
        if type(self.options) is not type(expected):
            raise AiloraError(f"method {self.name} reads {type(expected).__name__}, not "
                              f"{type(self.options).__name__}")

    def to_dict(self) -> dict:
        """``{"name": ..., <each option>: ...}``: one flat section, as config files write it."""
        return {"name": self.name, **dataclasses.asdict(self.options)}


def _build_method_options(name: str, values: dict):
    """The options object of method ``name`` from ``values`` (``ailora.methods.build_options``: an option
    the method does not read is refused). Imported here: the method registry imports torch, which
    ``ailora train --help`` (which reads only this module) must not."""
    from ailora.methods import build_options

    return build_options(name, values)


def method_option_types() -> dict[str, Any]:
    """Every method family's option -> its type (``ailora.core.options.FAMILIES``): the keys a method
    section may hold besides ``name``."""
    return {k: tp for cls in FAMILIES for k, tp in typing.get_type_hints(cls).items()}


@dataclass
class TaskConfig:
    name: str = ""
    """Task: a registered name (see `ailora ls`) or the path of a JSON task spec."""
    data_dir: str | None = None
    """Directory with local copies of the task's files (GLUE/SQuAD formats)."""
    max_train_samples: int | None = None
    """Use at most this many training examples (a seeded subset)."""
    max_eval_samples: int | None = None
    """Use at most this many validation and test examples each (a seeded subset)."""

    def validate(self) -> None:
        if not self.name:
            raise AiloraError("task.name is empty; name a task (see `ailora ls tasks`)")
        for key in ("max_train_samples", "max_eval_samples"):
            if getattr(self, key) is not None:
                check_positive(f"task.{key}", getattr(self, key))


@dataclass
class TrainConfig:
    lr: float = 2e-4
    """Base learning rate (AILoRA's value adapters get value_lr_ratio times it)."""
    epochs: int = 3
    """Passes over the training set."""
    batch_size: int = 16
    """Examples per process per forward pass."""
    eval_batch_size: int = 64
    """Examples per process per evaluation forward pass."""
    grad_accum: int = 1
    """Forward passes per optimizer step."""
    head_lr: float | None = None
    """Learning rate of the task head and other non-adapter weights (default: lr)."""
    weight_decay: float = 0.0
    """AdamW weight decay (never on biases and norm weights)."""
    warmup_ratio: float = 0.06
    """Fraction of the optimizer steps with a linear warmup; linear decay to zero after it."""
    max_grad_norm: float = 1.0
    """Clip the gradients' global norm to this (0: no clipping)."""
    mixed_precision: str = "no"
    """Accelerate mixed precision: no, fp16 or bf16."""
    seed: int = 0
    """Seed of the adapters' start, the head, the data order and dropout."""
    eval_every_steps: int = 0
    """Also evaluate every this many optimizer steps (0: once per epoch only)."""
    save_every_steps: int = 0
    """Also write the last checkpoint every this many optimizer steps (0: at evaluations only)."""
    select: str = "last"
    """Weights to test and save at the end: last, or best (by the task's main validation metric)."""
    stop_after_steps: int | None = None
    """Stop after this many optimizer steps, as an interruption would, after a checkpoint (tests, time boxes)."""
    tensorboard: bool | None = None
    """Write TensorBoard logs under RUN_DIR/tb (default: as train.report_to says). false is train.report_to without tensorboard; naming it beside a train.report_to that says otherwise is an error."""
    report_to: list[str] = field(default_factory=list)
    """Where to log the run through Accelerate's trackers: any of tensorboard, wandb, mlflow, or none (nowhere); e.g. train.report_to=wandb,mlflow. Empty (default): tensorboard, unless train.tensorboard=false."""
    tracker_project: str = "ailora"
    """The W&B project and the MLflow experiment the run logs to (for MLflow, MLFLOW_EXPERIMENT_NAME wins when set)."""
    tracker_group: str | None = None
    """The group of the run: W&B's run group, MLflow's tag ailora.group (ailora sweep: the sweep directory's name)."""
    tracker_run_name: str | None = None
    """The run's name in W&B and MLflow (default: the run directory's name; ailora sweep: TASK/LABEL/lrLR/seedSEED)."""
    progress: bool = True
    """Show tqdm progress bars."""
    eval_before: bool = False
    """Evaluate the untrained model on every evaluation split first (recorded as step 0, results "before")."""
    fsdp: bool = False
    """Shard the model (frozen residuals included) across the processes with PyTorch's FSDP2 (fully_shard; gloo on CPUs). Needs several processes (torchrun); not with Progtuning or mixed precision."""
    group_by_length: bool = False
    """Batch training examples of similar length together (less padding; seeded, so runs stay reproducible and resumable). Off by default, as in Hugging Face: where length goes with the label, length-sorted batches are less mixed."""

    def validate(self) -> None:
        check_positive("train.lr", self.lr)
        if self.head_lr is not None:
            check_positive("train.head_lr", self.head_lr)
        for key in ("epochs", "batch_size", "eval_batch_size", "grad_accum"):
            check_positive(f"train.{key}", getattr(self, key))
        for key in ("weight_decay", "max_grad_norm", "eval_every_steps", "save_every_steps"):
            if getattr(self, key) < 0:
                raise AiloraError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.warmup_ratio < 1:
            raise AiloraError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.seed < 2**32:  # what torch, NumPy and Accelerate's set_seed accept
            raise AiloraError(f"train.seed must be in [0, 2^32), got {self.seed}")
        check_choice("train.mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))
        check_choice("train.select", self.select, ("last", "best"))
        if self.stop_after_steps is not None:
            check_positive("train.stop_after_steps", self.stop_after_steps)
        if not self.tracker_project:
            raise AiloraError("train.tracker_project is empty; name the W&B project / MLflow experiment")
        _trackers(self.report_to, self.tensorboard)

    @property
    def trackers(self) -> tuple[str, ...]:
        """The trackers the run logs to, in ``TRACKERS``' spelling (empty: none)."""
        return _trackers(self.report_to, self.tensorboard)


def _trackers(report_to: list[str], tensorboard: bool | None) -> tuple[str, ...]:
    """The trackers named by ``train.report_to`` and the older ``train.tensorboard`` flag; a one-line
    AiloraError for an unknown name, a repeated one, or the two keys disagreeing."""
    names = list(report_to)
    for i, name in enumerate(names):
        check_choice(f"train.report_to[{i}]", name, (*TRACKERS, "none"))
    if len(set(names)) != len(names):
        raise AiloraError(f"train.report_to names a tracker twice: {','.join(names)}")
    if "none" in names and len(names) > 1:
        raise AiloraError(f"train.report_to: none means no tracker and stands alone, got {','.join(names)}")
    if not names:
        return ("tensorboard",) if tensorboard is not False else ()
    chosen = tuple(n for n in names if n != "none")
    if tensorboard is not None and tensorboard != ("tensorboard" in chosen):
        raise AiloraError(f"train.tensorboard={str(tensorboard).lower()} contradicts train.report_to="
                          f"{','.join(names)}; drop train.tensorboard (train.report_to says it all)")
    return chosen


@dataclass
class ProgressiveConfig:
    stages: int = 0
    """Progtuning: split the L transformer blocks into this many parts; stage t updates only parts t..T and the head, so low blocks freeze first (0 or 1: off)."""
    boundary: str = "epoch"
    """Stage boundaries: epoch (stage t spans epochs [tE/T, (t+1)E/T); needs stages <= train.epochs) or steps (equal shares of the optimizer steps)."""
    remainder: str = "top"
    """The L mod T extra blocks go to the top parts (top, which train longest) or the bottom parts (bottom)."""
    embeddings: str = "first-stage"
    """For methods that train embeddings: first-stage (updated in stage 1 only), frozen, or always (backward then runs through every block)."""
    reset_optimizer: bool = False
    """Drop the optimizer state (Adam moments) at each stage change instead of keeping it."""
    order: str = "depth"
    """Block order: depth, or grad-norm (a pilot scores each block by its gradient norm; the lowest scores freeze first)."""
    pilot_batches: int = 8
    """Training batches the grad-norm pilot averages over (at the start weights, no update)."""

    @property
    def enabled(self) -> bool:
        return self.stages > 1

    def validate(self) -> None:
        if self.stages < 0:
            raise AiloraError(f"progressive.stages must be >= 0, got {self.stages}")
        check_choice("progressive.boundary", self.boundary, BOUNDARIES)
        check_choice("progressive.remainder", self.remainder, REMAINDERS)
        check_choice("progressive.embeddings", self.embeddings, EMBEDDINGS)
        check_choice("progressive.order", self.order, ORDERS)
        check_positive("progressive.pilot_batches", self.pilot_batches)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """The fine-tuning method."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The task and how much of it to use."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, evaluation and checkpoints."""
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    """Progtuning (arXiv 2506.21119): progressively fewer updated transformer blocks."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Prompts and decoding of generation tasks."""
    qa: QAConfig = field(default_factory=QAConfig)
    """Windows and answer post-processing of extractive QA tasks."""
    run_dir: str = ""
    """Directory the run writes (config, metrics, results, checkpoints, adapter)."""
    resume: bool = False
    """Continue the run in run_dir from its last checkpoint."""
    overwrite: bool = False
    """Delete what run_dir holds and start again."""

    def __post_init__(self) -> None:
        if not self.run_dir:
            raise AiloraError("run_dir is empty; give the directory the run writes (--run-dir)")
        if self.resume and self.overwrite:
            raise AiloraError("resume and overwrite exclude each other; choose one")
        check_finite(self)
        for section in (self.model, self.method, self.task, self.train, self.progressive, self.generation, self.qa):
            section.validate()
        p = self.progressive
        if p.boundary == "epoch" and p.stages > self.train.epochs:
            raise AiloraError(f"progressive.stages ({p.stages}) exceeds train.epochs ({self.train.epochs}) "
                              "with epoch boundaries; use progressive.boundary=steps")

    @classmethod
    def from_dict(cls, data: dict, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
        """A validated config from nested plain data and ``key.sub=value`` overrides (both strict)."""
        data = apply_overrides(data, overrides)
        return _build(cls, data, "")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "method": self.method.to_dict()}

    def identity(self) -> dict:
        """The config without run-control keys, run_dir and the trackers' names for the run (the same
        run, spelt from another directory or moved with ``mv``, is the same), the trackers as one list
        (``train.report_to``, however it and ``train.tensorboard`` spell them): what must match for a run
        to be resumed."""
        skip = (*RUN_CONTROL_KEYS, *TRACKER_NAMES, "run_dir", "train.tensorboard")
        ids = {k: v for k, v in flatten(self.to_dict()).items() if k not in skip}
        return {**ids, "train.report_to": list(self.train.trackers)}


def load_config(path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A RunConfig from a JSON file plus dotted overrides."""
    p = Path(path)
    if not p.is_file():
        raise AiloraError(f"config file {p} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AiloraError(f"config file {p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AiloraError(f"config file {p} must hold a JSON object")
    return RunConfig.from_dict(data, overrides)


# Strict construction and overrides.


def _hints(cls) -> dict[str, Any]:
    """The keys of config section ``cls`` and their types: its fields, or for the method section its
    name and every method family's options (the method's own are picked when it is built)."""
    if cls is MethodConfig:
        return {"name": str, **method_option_types()}
    return typing.get_type_hints(cls)


def _is_config(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise AiloraError(f"{prefix.rstrip('.') or 'config'} must be an object, got {type(data).__name__}")
    hints = _hints(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        raise AiloraError(f"unknown config key {prefix}{unknown[0]}; keys here are: {', '.join(hints)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{prefix}{name}"
        kwargs[name] = _build(tp, value, key + ".") if _is_config(tp) else check_type(key, tp, value)
    if cls is MethodConfig:
        name = kwargs.pop("name", MethodConfig.name)
        return MethodConfig(name, _build_method_options(name, kwargs))
    return cls(**kwargs)


def field_type(path: str):
    """The type of the dotted config key ``path``; an unknown key or a section is an AiloraError."""
    cls, tp = RunConfig, None
    parts = path.split(".")
    for i, part in enumerate(parts):
        hints = _hints(cls)
        if part not in hints:
            where = ".".join(parts[:i]) or "the config"
            raise AiloraError(f"unknown config key {path}; keys of {where} are: {', '.join(hints)}")
        tp = hints[part]
        if i < len(parts) - 1:
            if not _is_config(tp):
                raise AiloraError(f"unknown config key {path}: {'.'.join(parts[:i + 1])} has no sub-keys")
            cls = tp
    if _is_config(tp):
        raise AiloraError(f"config key {path} is a section; set one of its keys, e.g. {path}.{next(iter(_hints(tp)))}")
    return tp


def apply_overrides(data: dict, overrides) -> dict:
    """A copy of nested ``data`` with each ``dotted.key=value`` set (key checked, value parsed)."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise AiloraError(f"override {item!r} is not KEY=VALUE (e.g. train.lr=3e-4)")
        path, text = (s.strip() for s in item.split("=", 1))
        set_dotted(out, path, parse_value(path, field_type(path), text))
    return out


def comparable(config: dict, ignore=()) -> dict:
    """A run's config (nested, as in results.json) flattened, without what two runs may differ in and
    still compute the same (run control, record keys), the Progtuning section and the keys ``ignore``.
    Method options at their defaults are left out too: a record written before each method had its own
    options holds every family's (vera_rank=256 beside rank=8), a newer one only its method's."""
    skip = {*RUN_CONTROL_KEYS, *RECORD_KEYS, *ignore}
    defaults = {f"method.{k}": v for k, v in option_defaults().items()}
    return {k: v for k, v in flatten(config).items() if k not in skip and not k.startswith("progressive.")
            and not (k in defaults and v == defaults[k])}


def section_help(cls) -> dict[str, str]:
    """Key -> help of config section ``cls``: its field docstrings; for the method section, the name's
    and each method family's options' (an option shared by families has the first family's help)."""
    if cls is not MethodConfig:
        return field_help(cls)
    out = {"name": field_help(MethodConfig)["name"]}
    for family in FAMILIES:
        for key, doc in field_help(family).items():
            out.setdefault(key, doc)
    return out


def all_help() -> dict[str, str]:
    """Every dotted key -> its help text (the CLI lists these)."""
    out = {}
    for name, doc in field_help(RunConfig).items():
        tp = _hints(RunConfig)[name]
        if _is_config(tp):
            out.update({f"{name}.{k}": v for k, v in section_help(tp).items()})
        else:
            out[name] = doc
    return out
