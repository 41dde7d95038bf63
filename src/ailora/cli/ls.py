"""``ailora ls``: what the registries hold."""

from __future__ import annotations

from ailora.cli.common import add_command, arg
from ailora.core.inits import INITS
from ailora.core.policies import METHODS
from ailora.core.roles import ARCHITECTURES, ROLES
from ailora.core.svd import SOLVERS
from ailora.experiments.presets import PRESETS, run_count
from ailora.methods.registry import METHODS as TRAIN_METHODS
from ailora.tasks import TASKS

REGISTRIES = ["methods", "inits", "solvers", "roles", "architectures", "tasks", "presets"]


def _section(title: str, rows: list[tuple[str, str]]) -> str:
    width = max((len(n) for n, _ in rows), default=0)
    return "\n".join([f"{title}:"] + [f"  {n.ljust(width)}  {d}" for n, d in rows])


def _registry_rows() -> dict[str, list[tuple[str, str]]]:
    return {
        "methods": [(m.name, f"{m.description}; targets {','.join(m.targets)}") for m in METHODS.values()]
        + [(t.name, t.description) for t in TRAIN_METHODS.values() if t.name not in METHODS],
        "inits": [(i.name, i.description) for i in INITS.values()],
        "solvers": [(s.name, s.description) for s in SOLVERS.values()],
        "roles": [(r, "") for r in ROLES],
        "architectures": [(a, ", ".join(sorted(set(arch.roles) | {r for lay in arch.fused_layouts().values()
                                                                   for r, _ in lay(_Any())})))
                          for a, arch in sorted(ARCHITECTURES.items())],
        "tasks": [(name, getattr(spec, "description", "")) for name, spec in TASKS.items()],
        "presets": [(p.name, f"{p.description} ({run_count(p.spec())} runs; ailora sweep --preset {p.name})")
                    for p in PRESETS.values()],
    }


class _Any:
    """A stand-in config for listing the roles of fused layouts."""

    def __getattr__(self, name):
        return 1


def run(args) -> int:
    sections = _registry_rows()
    wanted = [args.what] if args.what else list(sections)
    print("\n\n".join(_section(w, sections[w]) for w in wanted))
    return 0


def add_parser(sub) -> None:
    add_command(sub, "ls", run, [arg("what", nargs="?", choices=REGISTRIES, help="one registry only")],
                help="list methods, inits, solvers, roles, architectures, tasks and sweep presets",
                description="List what ailora's registries hold.")
