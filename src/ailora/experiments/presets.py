"""Sweep presets: the paper's comparisons as sweep specs (``ailora sweep --preset NAME``).

Each preset is a function ``(model, task) -> spec data`` (see ``ailora.experiments.sweep``), so any model
and task can stand in; the defaults, all-MiniLM-L6-v2 on ``movie-sentiment``, run on a laptop CPU.
The training settings (``CPU_SCALE``) are a CPU-sized stand-in for the paper's GLUE runs: 2,000
training sentences, 64 tokens, batch 32, at most 1,000 validation and test sentences. Every key
can be overridden on the command line (``ailora sweep --preset ranks task.max_train_samples=none``).

Learning rates: one grid, 5e-4 to 2e-3, for every method; the sweep picks one per method on
validation. At this scale (126 optimizer steps, a fresh task head trained at the same lr) 5e-4 left
PiSSA and MiLoRA near chance after two epochs (train loss 0.68, validation 71% / 68%), where 1e-3
gave 77.5% / 77.9% (LoRA 79.8%, AILoRA 79.6%, one seed each; MiniLM, movie-sentiment).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ailora.errors import AiloraError
from ailora.experiments.sweep import SweepSpec, planned_runs

DEFAULT_MODEL = "minilm"
DEFAULT_TASK = "movie-sentiment"
CPU_SCALE = {"model.max_length": 64, "train.batch_size": 32, "task.max_train_samples": 2000,
             "task.max_eval_samples": 1000, "train.epochs": 3, "train.group_by_length": True}
LRS = [5e-4, 1e-3, 2e-3]
SEEDS = [0, 1, 2]
FAMILY = ("lora", "pissa", "milora", "ailora")


def _spec(model: str, task: str, methods: list, options: dict | None = None, seeds=SEEDS, lrs=LRS) -> dict:
    return {"model": model, "tasks": [task], "seeds": list(seeds), "lrs": list(lrs),
            "options": {**CPU_SCALE, **(options or {})}, "methods": methods}


DEMO_LRS = [1e-3, 2e-3]
DEMO_EVAL_EVERY = 16  # optimizer steps between validations: 4 points per curve (epoch ends reuse theirs)


def demo(model: str, task: str) -> dict:
    """The README's first command: the four starts at rank 8, one seed, lr 1e-3 or 2e-3 chosen on validation.

    The protocol at a laptop's scale: each method's lr is picked on validation from two (the upper
    half of ``LRS``: with 64 optimizer steps, 5e-4 leaves PiSSA and MiLoRA near chance, see the
    module docstring; AILoRA's value adapters get twice the lr). To pay for the second lr with
    the time the single-lr demo took, training is shortened to 1,000 sentences (2,000 before) over
    two epochs; 500 validation and 500 test sentences. Validation every 16 optimizer steps gives
    the curves against steps; one seed, so the report's verdict rests on the paired bootstrap over
    test examples.
    """
    options = {"train.epochs": 2, "method.rank": 8, "task.max_train_samples": 1000, "task.max_eval_samples": 500,
               "train.eval_every_steps": DEMO_EVAL_EVERY}
    return _spec(model, task, list(FAMILY), options, seeds=[0], lrs=DEMO_LRS)


def ranks(model: str, task: str) -> dict:
    """Ranks 1 to 32 for LoRA, PiSSA, MiLoRA and AILoRA (the paper's Figure 5)."""
    methods = [{"method": m, "label": f"{m}-r{r}", "options": {"method.rank": r}}
               for m in FAMILY for r in (1, 2, 4, 8, 16, 32)]
    return _spec(model, task, methods)


def reailora(model: str, task: str) -> dict:
    """AILoRA against reAILoRA, its reversed control (minor on query, principal on value; Figure 6)."""
    return _spec(model, task, ["ailora", "reailora"], {"method.rank": 8})


# Table 5: one fixed budget of adapter parameters over the attention projections. AILoRA's starts
# on query (principal) and value (minor), LoRA's on key and output, as in the paper.
_ROLE = {"q": "query", "k": "key", "v": "value", "o": "output"}
_MODULE_SETTINGS = [("qv", 8), ("q", 16), ("k", 16), ("v", 16), ("o", 16),
                    ("qk", 8), ("qo", 8), ("kv", 8), ("ko", 8), ("vo", 8), ("qkvo", 4)]


def modules(model: str, task: str) -> dict:
    """Which projections to adapt under a fixed budget: q+v at r=8 against one at r=16, pairs at r=8,
    all four at r=4 (the paper's Table 5)."""
    methods = []
    for letters, r in _MODULE_SETTINGS:
        roles = [_ROLE[c] for c in letters]
        options = {"method.rank": r, "method.targets": roles}
        lora_roles = [f"{role}=lora" for role in roles if role in ("key", "output")]
        if lora_roles:
            options["method.policy"] = ",".join(lora_roles)
        methods.append({"method": "ailora", "label": f"{letters}-r{r}", "options": options})
    return _spec(model, task, methods)


@dataclass(frozen=True)
class Preset:
    name: str
    build: Callable[[str, str], dict]

    @property
    def description(self) -> str:
        return " ".join(self.build.__doc__.split("\n\n")[0].split())

    def spec(self, model: str | None = None, task: str | None = None) -> dict:
        return self.build(model or DEFAULT_MODEL, task or DEFAULT_TASK)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("demo", demo), Preset("ranks", ranks), Preset("reailora", reailora), Preset("modules", modules))}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise AiloraError(f"unknown preset {name!r}; presets are: {', '.join(PRESETS)}")
    return PRESETS[name]


def run_count(spec: dict) -> int:
    """How many runs a spec's data plans: tasks x seeds x the sum of the methods' grid sizes."""
    return len(planned_runs(SweepSpec.from_dict(spec)))
