"""Row layouts of fused projections: which rows of a weight (out, in) carry which role.

A fused layer computes several projections at once: GPT-2's ``c_attn`` holds [Q; K; V] one after
the other, GPT-NeoX's and BLOOM's ``query_key_value`` hold [q_h; k_h; v_h] for every head h in
turn, Falcon's new decoder holds [q heads of group g; k_g; v_g] for every key/value group g. A
``Block`` is the set of rows of one role, kept as sorted ``(start, stop)`` spans: one span for a
contiguous layout (read as a cheap slice), one span per head for an interleaved one.

Both kinds are built by ``periodic``: the weight is ``groups`` equal groups, each made of the same
row slices in the same order (groups = 1 for a contiguous layout). A user describes the rows of a
role in a module the same way, as a short string (``parse_rows``)::

    rows:START:STOP[,START:STOP...]   explicit row spans, e.g. rows:0:64 or rows:0:8,24:32
    block:I/K                         the I-th (0-based) of K equal consecutive blocks ([Q; K; V]: query is block:0/3)
    heads:I/K:G                       G equal groups (one per head), each K equal slots; slot I of every group
                                      (GPT-NeoX query_key_value with 16 heads: query heads:0/3:16, value heads:2/3:16)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ailora.errors import AiloraError

Spans = tuple[tuple[int, int], ...]


def normalise(spans) -> Spans:
    """Sorted spans with empty ones dropped and touching ones merged."""
    out: list[list[int]] = []
    for start, stop in sorted((int(a), int(b)) for a, b in spans if b > a):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([start, stop])
    return tuple((a, b) for a, b in out)


@dataclass(frozen=True)
class Block:
    """The rows of a weight (out, in) that carry one role: the union of sorted, disjoint ``spans``."""

    role: str
    spans: Spans

    @classmethod
    def span(cls, role: str, start: int, stop: int) -> Block:
        """Rows [start, stop)."""
        return cls(role, ((start, stop),))

    @property
    def contiguous(self) -> bool:
        return len(self.spans) == 1

    @property
    def size(self) -> int:
        """How many rows the block holds."""
        return sum(b - a for a, b in self.spans)

    @property
    def start(self) -> int:
        """First row of a contiguous block (a per-head block has no single range: use ``rows``)."""
        return self._range()[0]

    @property
    def stop(self) -> int:
        return self._range()[1]

    def _range(self) -> tuple[int, int]:
        if not self.contiguous:
            raise ValueError(f"the {self.role} block spans {len(self.spans)} row ranges; index with .rows")
        return self.spans[0]

    @property
    def rows(self) -> slice | torch.Tensor:
        """An index of the block's rows: a slice when contiguous, else a LongTensor (in row order)."""
        if self.contiguous:
            return slice(*self.spans[0])
        return torch.cat([torch.arange(a, b) for a, b in self.spans])

    def take(self, w: torch.Tensor) -> torch.Tensor:
        """The block's rows of ``w`` (out, ...), stacked in row order: (size, ...)."""
        return w[self.rows]

    def describe(self) -> dict:
        """JSON form: ``{role, start, stop}`` for a contiguous block, ``{role, rows: [[start, stop], ...]}``."""
        if self.contiguous:
            return {"role": self.role, "start": self.start, "stop": self.stop}
        return {"role": self.role, "rows": [list(s) for s in self.spans]}


# A layout: (total rows of the fused weight, {role: spans}).
Layout = tuple[int, dict[str, Spans]]


def periodic(groups: int, parts: list[tuple[str, int]]) -> Layout:
    """``groups`` equal groups of rows, each the slices ``parts`` = [(role, rows), ...] in order.

    ``periodic(1, [("query", 32), ("key", 16), ("value", 16)])`` is a contiguous [Q; K; V];
    ``periodic(4, [("query", 8), ("key", 8), ("value", 8)])`` is GPT-NeoX's per-head layout.
    """
    period = sum(n for _, n in parts)
    roles: dict[str, Spans] = {}
    offset = 0
    for role, n in parts:
        roles[role] = normalise((g * period + offset, g * period + offset + n) for g in range(groups))
        offset += n
    return groups * period, roles


@dataclass(frozen=True)
class Fused:
    """A fused projection of an architecture: its roles, in row order, and their rows from a model config."""

    roles: tuple[str, ...]
    layout: Callable[[object], Layout]
    description: str  # for ``ailora ls architectures``, e.g. "per head [q|k|v]"

    def spans(self, cfg, role: str, name: str, out_features: int) -> Spans:
        total, roles = self.layout(cfg)
        if total != out_features:
            raise AiloraError(f"fused module {name} has {out_features} rows but its config implies {total} "
                              f"({self.description}); name its rows with modules=")
        return roles[role]


ROW_FORMS = "rows:START:STOP[,START:STOP...], block:I/K or heads:I/K:G"
_INT = r"(\d+)"
_FORMS = {
    "rows": re.compile(rf"rows:{_INT}:{_INT}((?:,{_INT}:{_INT})*)"),
    "block": re.compile(rf"block:{_INT}/{_INT}"),
    "heads": re.compile(rf"heads:{_INT}/{_INT}:{_INT}"),
}


@dataclass(frozen=True)
class RowSpec:
    """A user's description of a role's rows in a module (see the module docstring), checked against
    the module's row count when a module matches."""

    text: str

    def __post_init__(self) -> None:
        form = self.text.split(":", 1)[0]
        if form not in _FORMS or not _FORMS[form].fullmatch(self.text):
            raise AiloraError(f"bad row description {self.text!r}; expected {ROW_FORMS}")
        nums = [int(n) for n in re.findall(r"\d+", self.text)]
        if form == "rows" and any(a >= b for a, b in zip(nums[::2], nums[1::2])):
            raise AiloraError(f"bad row description {self.text!r}: every span needs START < STOP")
        if form != "rows" and (nums[1] == 0 or nums[0] >= nums[1] or (form == "heads" and nums[2] == 0)):
            raise AiloraError(f"bad row description {self.text!r}: needs 0 <= I < K (and G > 0)")

    def spans(self, name: str, out_features: int) -> Spans:
        form = self.text.split(":", 1)[0]
        nums = [int(n) for n in re.findall(r"\d+", self.text)]
        if form == "rows":
            spans = normalise(zip(nums[::2], nums[1::2]))
            if spans[-1][1] > out_features:
                raise AiloraError(f"rows {self.text!r} run past the {out_features} rows of module {name}")
            if sum(b - a for a, b in spans) != sum(b - a for a, b in zip(nums[::2], nums[1::2])):
                raise AiloraError(f"rows {self.text!r} overlap")
            return spans
        slot, slots, groups = nums[0], nums[1], (nums[2] if form == "heads" else 1)
        if out_features % (slots * groups):
            raise AiloraError(f"module {name} has {out_features} rows, not divisible into {groups} x {slots} "
                              f"equal parts ({self.text!r})")
        n = out_features // (slots * groups)
        return periodic(groups, [(str(i), n) for i in range(slots)])[1][str(slot)]


def module_entries(value) -> list:
    """The entries of one role in ``modules=``: a pattern, a (PATTERN, ROWS) pair, or a list of either."""
    if isinstance(value, str):
        return [value]
    pair = isinstance(value, tuple) and len(value) == 2 and all(isinstance(x, str) for x in value)
    if pair and value[1].split(":", 1)[0] in _FORMS:
        return [value]
    return list(value)


def _checked_regex(pattern: str) -> str:
    """``pattern`` if it is a valid regular expression, else a one-line error naming it."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise AiloraError(f"modules pattern {pattern!r} is not a valid regular expression: {exc}") from None
    return pattern


def split_pattern(entry) -> tuple[str, RowSpec | None]:
    """A ``modules=`` entry: ``PATTERN``, ``PATTERN@ROWS`` or ``(PATTERN, ROWS)`` -> (pattern, rows or None)."""
    if isinstance(entry, str):
        pattern, sep, rows = entry.rpartition("@") if "@" in entry else (entry, "", "")
        return _checked_regex(pattern), (RowSpec(rows) if sep else None)
    if isinstance(entry, (tuple, list)) and len(entry) == 2 and all(isinstance(x, str) for x in entry):
        return _checked_regex(entry[0]), RowSpec(entry[1])
    raise AiloraError(f"bad modules entry {entry!r}: expected a pattern, 'PATTERN@ROWS' or (PATTERN, ROWS) "
                      f"with ROWS one of {ROW_FORMS}")


def check_disjoint(name: str, blocks: list[Block]) -> None:
    """Raise when two roles claim the same row (or a role is claimed twice) in module ``name``."""
    roles = [b.role for b in blocks]
    spans = sorted((a, b) for blk in blocks for a, b in blk.spans)
    if len(set(roles)) != len(roles) or any(p[1] > q[0] for p, q in zip(spans, spans[1:])):
        raise AiloraError(f"module {name} is claimed twice by roles {roles}")
