"""The decompositions behind ``ailora.apply``: planned per target, batched, and split across processes.

A ``Plan`` holds one target's starting factors, stacked over its blocks, and reads its block weights
from a source: the module's weight in memory (``apply``) or a tensor read from a checkpoint
(``ailora.core.initialised``, the streaming init). ``batches`` orders the blocks: every non-SVD start
one by one in target order (so the seeded generator draws in a fixed order), then the SVD starts
grouped by shape, the fast solver stacking same-shape blocks into one batched call. The batches
depend only on the targets' shapes and starts, never on where the weights come from or how many
processes run, so every way of running them makes the same solver calls on the same inputs and
gets bit-identical factors.

Several processes (``torch.distributed`` initialised with world size P > 1, and ``distribute``):
every process forms the same batches; each SVD batch goes to one process, largest first to the
least-loaded one, its cost the sum over its blocks of rows * cols * min(rows, cols); every process
runs the non-SVD starts itself (cheap, and its generator then draws as in one process); then each
owner broadcasts the factors, singular values and seconds of its batches, so that every process
holds what one process would have computed. Every process must call it with the same targets and
options (a collective call): a mismatch or a failure in any process is an error in all of them.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ailora.core.inits import INITS, InitConfig, InitFn
from ailora.core.layouts import Block
from ailora.core.roles import Target, weight_of
from ailora.core.state import LayerRecord
from ailora.core.svd import UNBATCHED_ENTRIES
from ailora.errors import AiloraError

__all__ = ["MAX_BATCH_ELEMENTS", "Batch", "Plan", "batches", "decompose", "module_source", "owners",
           "quiet_progress", "run_batch"]

# Same-shape blocks with the same start are decomposed in one batched call (far fewer, larger
# LAPACK calls); a batch holds at most this many float32 weight entries (256 MB).
MAX_BATCH_ELEMENTS = 2**26
# Show a progress bar when there are at least this many layers to decompose.
PROGRESS_MIN_LAYERS = 24

# What ``progress=None`` means: True shows the bar from PROGRESS_MIN_LAYERS layers on; False never
# (``quiet_progress``: the training loop's ``train.progress=false`` reaches the decomposition so).
_SHOW_BY_DEFAULT = contextvars.ContextVar("ailora_show_decompose_progress", default=True)


@contextlib.contextmanager
def quiet_progress(quiet: bool = True):
    """Within it, a decomposition called with ``progress=None`` shows no progress bar (when ``quiet``)."""
    token = _SHOW_BY_DEFAULT.set(not quiet)
    try:
        yield
    finally:
        _SHOW_BY_DEFAULT.reset(token)


BlockSource = Callable[[Block], torch.Tensor]
"""A block's rows of a target's weight, (rows, in), in the weight's dtype."""


def module_source(module: torch.nn.Module) -> BlockSource:
    """The blocks of an in-memory module's weight (a view: nothing is copied)."""
    return lambda blk: blk.take(weight_of(module).detach())


@dataclass
class Plan:
    """Starting factors of one target, stacked over its blocks, filled in block by block."""

    target: Target
    source: BlockSource  # where its block weights come from
    device: torch.device  # where its decompositions run
    rank: int  # r per block
    A: torch.Tensor  # (k*r, in) float32
    B: torch.Tensor  # (out, k*r) float32, block-structured
    record: LayerRecord
    seconds: list[float]  # per block: its share of its batch's time

    @classmethod
    def empty(cls, t: Target, source: BlockSource, policy: dict[str, str], rank: int, device) -> Plan:
        dev = torch.device(device)
        k = len(t.blocks)
        record = LayerRecord(name=t.name, roles=list(t.roles), inits=[policy[r] for r in t.roles],
                             shape=[t.out_features, t.in_features], rank=k * rank, singular_values={},
                             residual_dtype="", seconds=0.0)
        return cls(t, source, dev, rank, torch.zeros(k * rank, t.in_features, device=dev),
                   torch.zeros(t.out_features, k * rank, device=dev), record, [0.0] * k)

    def block(self, j: int) -> torch.Tensor:
        """Block j's rows of the weight, in row order: (rows, in) float32 on the plan's device."""
        return self.source(self.target.blocks[j]).detach().to(device=self.device, dtype=torch.float32)

    def store(self, j: int, a: torch.Tensor, b: torch.Tensor, svals, seconds: float) -> None:
        """Put block j's factors A: (r, in), B: (rows, r) in place; record its singular values and time."""
        blk = self.target.blocks[j]
        cols = slice(j * self.rank, (j + 1) * self.rank)
        self.A[cols], self.B[blk.rows, cols] = a, b
        values = self.record.singular_values
        if svals is not None:
            values[blk.role] = svals.tolist()
        # block order, whichever order (or process) the blocks were decomposed in
        self.record.singular_values = {b.role: values[b.role] for b in self.target.blocks if b.role in values}
        self.seconds[j] = seconds
        self.record.seconds = sum(self.seconds)

    def factors(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block j's A: (r, in) and B: (rows, r)."""
        cols = slice(j * self.rank, (j + 1) * self.rank)
        return self.A[cols], self.B[self.target.blocks[j].rows, cols]


class InitConfigs:
    """InitConfigs whose generator is seeded once per device and shared by every init run there."""

    def __init__(self, solver: str, seed: int):
        self.solver, self.seed, self.generators = solver, seed, {}

    def on(self, device: torch.device) -> InitConfig:
        if device not in self.generators:
            self.generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return InitConfig(solver=self.solver, generator=self.generators[device])


@dataclass(frozen=True)
class Batch:
    """Blocks decomposed in one call: ``stacked`` SVD starts of one shape, or one non-SVD start."""

    init: InitFn
    members: list[tuple[Plan, int]]  # (plan, block index)
    stacked: bool

    def cost(self) -> int:
        """rows * cols * min(rows, cols) summed over the blocks: a full SVD's flop count, up to a constant."""
        return sum(b.size * p.target.in_features * min(b.size, p.target.in_features)
                   for p, j in self.members for b in [p.target.blocks[j]])


def batches(plans: list[Plan], policy: dict[str, str], solver: str) -> Iterator[Batch]:
    """The blocks in the order they are decomposed: every non-SVD start one by one (in target order,
    so the seeded generators draw in a fixed order), then the SVD starts grouped by shape."""
    groups: dict[tuple, list[tuple[Plan, int]]] = {}
    for plan in plans:
        for j, blk in enumerate(plan.target.blocks):
            init = INITS[policy[blk.role]]
            if init.uses_svd:
                key = (init.name, blk.size, plan.target.in_features, plan.device)
                groups.setdefault(key, []).append((plan, j))
            else:
                yield Batch(init, [(plan, j)], False)
    for (name, rows, cols, _), members in groups.items():
        # A batched full SVD is no faster than one matrix at a time (LAPACK runs them one by one) and
        # measured slower for large matrices, so only the fast solver's small factorisations batch.
        # Matrices over UNBATCHED_ENTRIES are decomposed one by one even in a stack, so stacking them
        # would only copy them.
        small = solver == "fast" and rows * cols <= UNBATCHED_ENTRIES
        per_batch = max(1, MAX_BATCH_ELEMENTS // (rows * cols)) if small else 1
        for start in range(0, len(members), per_batch):
            yield Batch(INITS[name], members[start:start + per_batch], True)


def run_batch(batch: Batch, rank: int, scaling: float, cfg: InitConfig) -> None:
    """Run one init on its blocks and store the factors; each block is charged its share of the time."""
    t0 = time.perf_counter()
    if not batch.stacked:
        ((plan, j),) = batch.members
        res = batch.init.fn(plan.block(j), rank, scaling, cfg)
        plan.store(j, res.A, res.B, None, time.perf_counter() - t0)
        return
    res = batch.init.fn(_stack(batch), rank, scaling, cfg)
    share = (time.perf_counter() - t0) / len(batch.members)
    for n, (plan, j) in enumerate(batch.members):
        plan.store(j, res.A[n], res.B[n], res.singular_values[n], share)


def _stack(batch: Batch) -> torch.Tensor:
    """The batch's blocks stacked: (n, rows, in) float32, filled one block at a time (never the blocks
    and the stack at once: the streaming init reads each block from disk just then)."""
    first_plan, first = batch.members[0]
    if len(batch.members) == 1:  # no copy: the solvers only read their input (a view of the weight)
        return first_plan.block(first).unsqueeze(0)
    rows = first_plan.target.blocks[first].size
    out = torch.empty(len(batch.members), rows, first_plan.target.in_features, device=first_plan.device)
    for n, (plan, j) in enumerate(batch.members):
        out[n] = plan.block(j)
    return out


def owners(work: list[Batch], world: int) -> list[int | None]:
    """The process that runs each batch: None (every process) for a non-SVD start; the SVD batches
    largest first, each to the least-loaded process (the lowest rank on a tie). The same in every process."""
    load = [0] * world
    out: list[int | None] = [None] * len(work)
    for i in sorted((i for i, b in enumerate(work) if b.stacked), key=lambda i: -work[i].cost()):
        out[i] = min(range(world), key=lambda p: (load[p], p))
        load[out[i]] += work[i].cost()
    return out


def _process_group(distribute: bool) -> tuple[int, int] | None:
    """(this process's rank, world size) when the work is to be split, else None."""
    if not (distribute and dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    return (dist.get_rank(), world) if world > 1 else None


def decompose(plans: list[Plan], policy: dict[str, str], solver: str, seed: int, scaling: float,
              progress: bool | None = None, distribute: bool = True,
              done: Callable[[Plan], None] | None = None) -> dict:
    """Fill every plan's factors. Returns how the work was split: {} in one process, else
    {"processes": P, "blocks": [SVD blocks decomposed by each process]}.

    ``done`` (one process only): called with each plan as soon as all its blocks are stored (the
    streaming init writes a layer's residual then, while the next batches run)."""
    work = list(batches(plans, policy, solver))
    left = {id(p): len(p.target.blocks) for p in plans}
    group = _process_group(distribute)
    if done is not None and group is not None:  # another process's batches are not in this one's plans yet
        raise ValueError("decompose(done=...) runs in one process only (distribute=False)")
    rank, world = group or (0, 1)
    who = owners(work, world) if group else [None] * len(work)
    configs = InitConfigs(solver, seed)
    show = progress if progress is not None else _SHOW_BY_DEFAULT.get() and len(plans) >= PROGRESS_MIN_LAYERS
    error = None
    with tqdm(total=sum(len(b.members) for b in work), desc="decompose", unit="block", disable=not show) as bar:
        for batch, owner in zip(work, who):
            if owner is None or owner == rank:
                try:
                    run_batch(batch, plans[0].rank, scaling, configs.on(batch.members[0][0].device))
                except Exception as exc:  # raised below in every process, after they have all stopped
                    if group is None:
                        raise
                    error = exc
                    break
            bar.update(len(batch.members))
            for plan, _ in batch.members:
                left[id(plan)] -= 1
                if done is not None and not left[id(plan)]:
                    done(plan)
    if group is None:
        return {}
    _agree(work, error, world)
    _share(work, who, rank, world)
    return {"processes": world, "blocks": [sum(len(b.members) for b, o in zip(work, who) if o == p)
                                           for p in range(world)]}


def _fingerprint(work: list[Batch]) -> str:
    text = repr([(b.init.name, b.stacked, [(p.target.name, j, p.rank) for p, j in b.members]) for b in work])
    return hashlib.sha256(text.encode()).hexdigest()


def _agree(work: list[Batch], error: BaseException | None, world: int) -> None:
    """Every process stops here: the same batches everywhere, and no failure anywhere, or an error in all."""
    reports = [None] * world
    dist.all_gather_object(reports, (_fingerprint(work), None if error is None else f"{type(error).__name__}: {error}"))
    if len({fp for fp, _ in reports}) > 1:
        raise AiloraError("the processes have different decompositions to run (different models or apply options); "
                          "every process must call ailora.apply with the same model and options")
    if error is not None:
        raise error
    failed = next(((p, msg) for p, (_, msg) in enumerate(reports) if msg is not None), None)
    if failed is not None:
        raise AiloraError(f"process {failed[0]} failed to decompose its share: {failed[1]}".splitlines()[0])


def _comm_device() -> torch.device:
    """Where broadcast buffers must live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _share(work: list[Batch], who: list[int | None], rank: int, world: int) -> None:
    """Broadcast each owner's factors, singular values and seconds to every other process.

    One float64 buffer per owner (float32 factors round-trip exactly), laid out in batch order,
    per block: A (r, in), B (rows, r), the r singular values, the block's seconds."""
    for src in range(world):
        members = [m for b, o in zip(work, who) if o == src for m in b.members]
        if not members:
            continue
        sizes = [p.rank * (p.target.in_features + p.target.blocks[j].size + 1) + 1 for p, j in members]
        buf = torch.zeros(sum(sizes), dtype=torch.float64, device=_comm_device())
        if src == rank:
            buf.copy_(torch.cat([_pack(p, j) for p, j in members]))
        dist.broadcast(buf, src=src)
        if src != rank:
            for (p, j), part in zip(members, torch.split(buf.cpu(), sizes)):
                _unpack(p, j, part)


def _pack(plan: Plan, j: int) -> torch.Tensor:
    a, b = plan.factors(j)
    svals = torch.tensor(plan.record.singular_values[plan.target.blocks[j].role], dtype=torch.float64)
    seconds = torch.tensor([plan.seconds[j]], dtype=torch.float64)
    return torch.cat([a.reshape(-1).double().cpu(), b.reshape(-1).double().cpu(), svals, seconds]).to(_comm_device())


def _unpack(plan: Plan, j: int, part: torch.Tensor) -> None:
    r, cols, rows = plan.rank, plan.target.in_features, plan.target.blocks[j].size
    a, b, svals, seconds = torch.split(part, [r * cols, rows * r, r, 1])
    plan.store(j, a.reshape(r, cols).float().to(plan.device), b.reshape(rows, r).float().to(plan.device),
               svals.float(), seconds.item())
