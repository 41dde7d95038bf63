"""Progtuning (arXiv 2506.21119): progressively fewer updated transformer blocks, for any method.

The model is embeddings E, L transformer blocks and a head H. With T stages the blocks (in depth
order, or ordered by a pilot's scores) are split into T consecutive parts P1..PT; in stage t only
the trainable parameters of Pt..PT and H are updated, so low blocks freeze first and the number
of updated blocks shrinks every stage while the top part trains throughout. The method decides
which parameters are trainable at all (LoRA factors, biases, everything...); Progtuning only
switches that set off part by part, so it composes with every method.

What the paper leaves open, and the defaults chosen here (all in ``ProgressiveConfig``, the
config's ``progressive`` section):

* remainder: with L = qT + r, the r extra blocks go to the top parts (``top``, the default: the
  paper's pilot found higher blocks contribute more, and they train longest) or the bottom ones.
* embeddings: trained only in the first stage (``first-stage``, the default: they sit below
  block 0, so they freeze first), never (``frozen``), or in every stage (``always``; then the
  backward pass must run through every block to reach them and no compute is saved below).
  Only methods that train embeddings (full fine-tuning) are affected.
* boundaries: stage t spans epochs [tE/T, (t+1)E/T) (``epoch``, the paper's one stage per
  epoch when T = E) or the same fractions of the optimizer steps (``steps``).
* optimizer state: kept at a stage change (the default), or reset (all Adam moments dropped).
* order: depth, or ascending pilot score (``grad-norm``): the L2 norm of each block's gradient
  over the trainable parameters, averaged over a few training batches at the start weights
  (eval mode, no update, so the pilot changes nothing). Low-scoring blocks freeze first.

Compute saving: frozen parameters stop requiring grad, so no weight gradients are computed for
them, and every block below the lowest active one gets a forward pre-hook that detaches its
inputs; with nothing below requiring grad, autograd builds no graph there and the backward pass
stops at the lowest active block (activations below are not even kept). With a pilot order that
is not depth order, frozen blocks above the lowest active one still pass gradients through.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ailora.errors import AiloraError
from ailora.train.config import EMBEDDINGS, REMAINDERS, comparable
from ailora.train.runrecord import RunRecord

# Where the blocks are.


@dataclass(frozen=True)
class Blocks:
    """The transformer blocks: the ModuleList at ``path`` (``bert.encoder.layer``...) and its length.

    An encoder-decoder has two stacks, ``stacks`` = ((encoder path, Le), (decoder path, Ld)), numbered
    as one: encoder blocks 0..Le-1, then decoder blocks Le..Le+Ld-1 (``path`` joins them with "+")."""

    path: str
    count: int
    stacks: tuple[tuple[str, int], ...] = ()

    def _stacks(self) -> tuple[tuple[str, int], ...]:
        return self.stacks or ((self.path, self.count),)

    def index_of(self, param_name: str) -> int | None:
        """Block i holds ``<path>.<i>.*`` (offset by the encoder's count in the decoder); None outside every block."""
        base = 0
        for path, count in self._stacks():
            if param_name.startswith(path + "."):
                head = param_name[len(path) + 1:].split(".", 1)[0]
                return base + int(head) if head.isdigit() else None
            base += count
        return None

    def modules(self, model: nn.Module) -> list[nn.Module]:
        """The blocks in index order."""
        return [block for path, _ in self._stacks() for block in model.get_submodule(path)]


def find_blocks(model: nn.Module) -> Blocks:
    """The ModuleList of transformer layers: the list of same-typed modules holding most parameters.

    Lists nested inside it (experts, sub-layers) hold fewer. An encoder-decoder's two stacks are
    staged as one sequence, encoder then decoder (the encoder freezes first: the decoder reads it,
    it does not read the decoder); two comparable stacks in any other model are refused.
    """
    lists = []
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1:
            lists.append((sum(p.numel() for p in m.parameters()), name, len(m)))
    if not lists:
        raise AiloraError(f"Progtuning found no list of transformer blocks in {type(model).__name__}")
    size, path, count = max(lists)
    rivals = [n for s, n, _ in lists if n != path and s >= size / 2 and not n.startswith(path + ".")
              and not path.startswith(n + ".")]
    if len(rivals) == 1 and getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        order = [n for n, _ in model.named_modules()]
        stacks = sorted([(path, count), (rivals[0], len(model.get_submodule(rivals[0])))], key=lambda s: order.index(s[0]))
        return Blocks("+".join(p for p, _ in stacks), sum(c for _, c in stacks), tuple(stacks))
    if rivals:
        raise AiloraError(f"Progtuning needs one stack of blocks; {type(model).__name__} has {path} and "
                          f"{rivals[0]}")
    return Blocks(path, count)


def split_parts(order: Sequence[int], stages: int, remainder: str = "top") -> list[list[int]]:
    """``order`` (block indices, first to freeze first) cut into ``stages`` consecutive parts.

    With ``len(order) = q * stages + r`` the r parts of size q + 1 are the last ones (``top``) or
    the first ones (``bottom``): 6 blocks in 4 stages -> sizes 1,1,2,2 (top) or 2,2,1,1 (bottom).
    """
    if not 1 <= stages <= len(order):
        raise AiloraError(f"Progtuning cannot split {len(order)} blocks into {stages} stages")
    if remainder not in REMAINDERS:
        raise AiloraError(f"remainder must be one of {', '.join(REMAINDERS)}, got {remainder!r}")
    q, r = divmod(len(order), stages)
    sizes = [q + (i >= stages - r if remainder == "top" else i < r) for i in range(stages)]
    starts = [sum(sizes[:i]) for i in range(stages)]
    return [list(order[s:s + n]) for s, n in zip(starts, sizes)]


def stage_of(epoch: int, step: int, stages: int, epochs: int, total_steps: int, boundary: str = "epoch") -> int:
    """The 0-based stage of the optimizer step about to run (``step`` done so far, in ``epoch``)."""
    if stages <= 1:
        return 0
    if boundary == "epoch":
        return min(stages - 1, epoch * stages // epochs)
    return min(stages - 1, step * stages // max(1, total_steps))


# The schedule.


class Schedule:
    """Which of the model's trainable parameters each stage updates, and entering a stage.

    Built on the prepared model before training (it records the trainable set then); ``enter``
    switches ``requires_grad`` and the detaching hooks, ``close`` restores the trainable set.
    With ``stages <= 1`` it is the identity: one stage, every trainable parameter, no hooks.

    Args:
        model: the prepared (unwrapped) model, only its trained parameters requiring grad.
        stages: T; 0 or 1 is off.
        embeddings, remainder: see the module docstring.
        order: block indices, first to freeze first (default: depth order 0..L-1).
    """

    def __init__(self, model: nn.Module, stages: int, embeddings: str = "first-stage", remainder: str = "top",
                 order: Sequence[int] | None = None):
        if embeddings not in EMBEDDINGS:
            raise AiloraError(f"embeddings must be one of {', '.join(EMBEDDINGS)}, got {embeddings!r}")
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise AiloraError("the model has no trainable parameters")
        self.stages, self.embeddings, self.remainder = max(1, stages), embeddings, remainder
        self.current: int | None = None
        self._hooks: list = []
        self.blocks = find_blocks(model) if self.stages > 1 else None
        if self.blocks is None:
            self.order, self.parts, self.where = [], [[]], dict.fromkeys(self.params, "head")
            return
        self.order = list(range(self.blocks.count)) if order is None else [int(i) for i in order]
        if sorted(self.order) != list(range(self.blocks.count)):
            raise AiloraError(f"a block order must hold each of 0..{self.blocks.count - 1} once, got {self.order}")
        self.parts = split_parts(self.order, self.stages, remainder)
        self.modules = self.blocks.modules(model)
        self.where = _where(model, self.blocks, self.params)

    def active_blocks(self, stage: int) -> list[int]:
        return sorted(i for part in self.parts[stage:] for i in part)

    def embeddings_active(self, stage: int) -> bool:
        return self.embeddings == "always" or (self.embeddings == "first-stage" and stage == 0)

    def active(self, stage: int) -> set[str]:
        """Names of the parameters stage ``stage`` (0-based) updates."""
        if self.blocks is None:
            return set(self.params)
        blocks = set(self.active_blocks(stage))
        return {n for n, w in self.where.items()
                if w == "head" or (w == "embeddings" and self.embeddings_active(stage)) or w in blocks}

    def active_parameters(self, stage: int) -> int:
        """Scalars updated by one optimizer step of stage ``stage``."""
        return sum(self.params[n].numel() for n in self.active(stage))

    def stage_record(self, stage: int) -> dict:
        """The run record's entry for a stage, with its counters at zero (the loop adds to them)."""
        return {"stage": stage + 1, "blocks": self.active_blocks(stage) if self.blocks else None,
                "active_parameters": self.active_parameters(stage), "steps": 0, "updated_parameters": 0,
                "seconds": 0.0}

    def enter(self, stage: int) -> None:
        """Train only stage ``stage``'s parameters; detach the inputs of every block below the lowest active one."""
        active = self.active(stage)
        for name, p in self.params.items():
            p.requires_grad_(name in active)
        self._remove_hooks()
        if self.blocks is not None and not self.embeddings_active(stage):
            for i in range(min(self.active_blocks(stage))):
                self._hooks.append(self.modules[i].register_forward_pre_hook(_detach_inputs, with_kwargs=True))
        self.current = stage

    def close(self) -> None:
        """Back to the method's trainable set, no hooks (for saving and counting parameters)."""
        for p in self.params.values():
            p.requires_grad_(True)
        self._remove_hooks()
        self.current = None

    def describe(self) -> dict:
        """The schedule for the run record."""
        if self.blocks is None:
            return {"stages": 1}
        count = {"embeddings": 0, "head": 0, "blocks": [0] * self.blocks.count}
        for name, w in self.where.items():
            if isinstance(w, int):
                count["blocks"][w] += self.params[name].numel()
            else:
                count[w] += self.params[name].numel()
        return {"stages": self.stages, "blocks_path": self.blocks.path, "num_blocks": self.blocks.count,
                "order": self.order, "parts": self.parts, "embeddings": self.embeddings,
                "remainder": self.remainder, "trainable_parameters": count}

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def _where(model: nn.Module, blocks: Blocks, trainable: dict) -> dict[str, str | int]:
    """Trainable parameter -> its block index, "embeddings" (registered before the blocks) or "head" (after)."""
    out, seen_block = {}, False
    for name, _ in model.named_parameters():
        i = blocks.index_of(name)
        seen_block = seen_block or i is not None
        if name in trainable:
            out[name] = i if i is not None else ("head" if seen_block else "embeddings")
    return out


def _detach(x):
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, tuple | list):
        return type(x)(_detach(v) for v in x)
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return x


def _detach_inputs(module, args, kwargs):
    return _detach(args), _detach(kwargs)


# The pilot.


def gradient_scores(model: nn.Module, blocks: Blocks, batches: Iterable[dict]) -> list[float]:
    """Each block's contribution as the L2 norm of its trainable parameters' gradient, averaged over batches.

    Gradients come from ``torch.autograd.grad`` at the current weights in eval mode: nothing is
    updated, no ``.grad`` is written and no dropout randomness is drawn. Returns L floats.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and blocks.index_of(n) is not None]
    if not named:
        raise AiloraError("the pilot found no trainable parameters inside the blocks")
    index = [blocks.index_of(n) for n, _ in named]
    totals, n_batches = torch.zeros(blocks.count, dtype=torch.float64), 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            grads = torch.autograd.grad(model(**batch).loss, [p for _, p in named], allow_unused=True)
            sq = torch.zeros(blocks.count, dtype=torch.float64)
            for i, g in zip(index, grads):
                if g is not None:
                    sq[i] += g.detach().double().pow(2).sum().cpu()
            totals += sq.sqrt()
            n_batches += 1
    finally:
        model.train(was_training)
    if n_batches == 0:
        raise AiloraError("the pilot got no batches")
    return (totals / n_batches).tolist()


def order_from_scores(scores: Sequence[float]) -> list[int]:
    """Block indices by ascending score (ties by depth): the first ones freeze first."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))


# Comparing a Progtuning run with the same run without it.


def savings(run: RunRecord, baseline: RunRecord) -> dict:
    """What Progtuning saved in ``run`` against ``baseline`` (the same run without it).

    Savings are fractions of the baseline (0.25 = 25% fewer): updated parameters summed over
    optimizer steps, time inside optimizer steps (``train_seconds``) and the whole run's wall time
    (``wall_seconds``: setup and evaluations included). ``differs_in`` lists the config keys,
    besides the Progtuning ones, run control and record keys, in which the two runs differ (empty when fair).
    """
    out: dict = {}
    for key, saving in (("updated_parameters", "updated_parameter_saving"), ("train_seconds", "train_time_saving"),
                        ("wall_seconds", "wall_time_saving")):
        r, b = _amount(run, key), _amount(baseline, key)
        out[f"run_{key}"], out[f"baseline_{key}"] = r, b
        out[saving] = None if r is None or not b else round(1 - r / b, 6)
    main = run.main_metric
    r_test, b_test = run.test.get(main), baseline.test.get(main)
    out.update({"main_metric": main, "run_test": r_test, "baseline_test": b_test,
                "test_delta": None if r_test is None or b_test is None else r_test - b_test})
    a, b = comparable(run.config), comparable(baseline.config)
    out["differs_in"] = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return out


def _amount(rec: RunRecord, key: str):
    value = getattr(rec, key)
    if value is None and key == "updated_parameters":  # a record from before Progtuning: every step updated all
        return rec.parameters.trainable * rec.steps
    return value
