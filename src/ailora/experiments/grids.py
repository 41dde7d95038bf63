"""Learning-rate grids that bracket the optimum: extend a grid past the edge its best point sits on.

A method compared at the top (or bottom) of its grid may do better further out, so a comparison
of methods all selected at an edge says little about which one is better at its best. With the
sweep option ``bracket: N``, whenever the lr selected on validation (the same rule as the
sweep's: best mean over seeds, NaN never wins, ties keep the earlier grid point) is the largest
of the grid, one lr above it is added; the smallest, one below it; and so on until the selection
is interior or N points were added. The step is the grid's own ratio at that edge (largest over
second largest, or second smallest over smallest), or 2 for a one-point grid.
"""

from __future__ import annotations

from collections.abc import Callable

from ailora.tasks.metrics import is_better

DEFAULT_RATIO = 2.0


def fmt_lr(lr: float | None) -> str:
    """``lr`` as the reports print it: 5e-4, 2.5e-4; "-" for none."""
    if lr is None:
        return "-"
    mant, exp = f"{lr:.2e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def _round(lr: float) -> float:
    """``lr`` to 6 significant digits, so that 4e-3 x 2.5 is 0.01 and not 0.010000000000000002."""
    return float(f"{lr:.6g}")


def best_index(scores: list[float | None], higher: bool) -> int | None:
    """Index of the best score (NaN/None never win; ties keep the first), or None when none counts."""
    best = None
    for i, s in enumerate(scores):
        if is_better(s, best if best is None else scores[best], higher):
            best = i
    return best


def next_lr(lrs: list[float], scores: list[float | None], higher: bool) -> float | None:
    """The lr to add to a grid whose best point (``scores[i]`` is the validation mean at ``lrs[i]``)
    is at an edge; None when it is interior or nothing was selected."""
    best = best_index(scores, higher)
    if best is None:
        return None
    ordered = sorted(lrs)
    if lrs[best] == ordered[-1]:
        ratio = ordered[-1] / ordered[-2] if len(ordered) > 1 else DEFAULT_RATIO
        return _round(ordered[-1] * ratio)
    if lrs[best] == ordered[0]:
        return _round(ordered[0] / (ordered[1] / ordered[0]))
    return None


def bracketed(base: tuple[float, ...], bound: int, score: Callable[[float], float | None | bool]) -> tuple[float, ...]:
    """``base`` and the points ``bound`` extensions at most add. ``score(lr)`` is the validation mean
    at ``lr`` signed so that higher is better (None for NaN), or False while its runs are not all
    complete: no extension is decided on partial results (the sweep runs them and asks again)."""
    lrs = list(base)
    for _ in range(bound):
        scores = [score(lr) for lr in lrs]
        if any(s is False for s in scores):
            break
        new = next_lr(lrs, scores, higher=True)
        if new is None or new in lrs:
            break
        lrs.append(new)
    return tuple(lrs)


def at_edge(lrs: list[float], selected: float | None) -> bool:
    """Whether ``selected`` is the smallest or largest of a grid of two or more lrs."""
    return selected is not None and len(lrs) > 1 and selected in (min(lrs), max(lrs))
