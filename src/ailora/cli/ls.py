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
        "architectures": [(a, _architecture_row(arch)) for a, arch in sorted(ARCHITECTURES.items())]
        + [("(other)", "roles found by their usual module names (q_proj, query, wq, ...) where unambiguous, "
                       "with a warning; or modules=")],
        "tasks": [(name, getattr(spec, "description", "")) for name, spec in TASKS.items()],
        "presets": [(p.name, f"{p.description} ({run_count(p.spec())} runs; ailora sweep --preset {p.name})")
                    for p in PRESETS.values()],
    }


def _architecture_row(arch) -> str:
    """Its roles, each fused projection's roles and row layout after them: ``output, up, down; fused
    query_key_value = query,key,value (per head [q|k|v])``."""
    plain = [r for r in ROLES if r in arch.roles]
    fused = []
    for pattern, f in arch.fused_layouts().items():
        leaf = pattern.replace("\\", "").rsplit(".", 1)[-1]  # attn\.c_attn -> c_attn
        fused.append(f"{leaf} = {','.join(f.roles)} ({f.description})")
    return "; ".join([", ".join(plain)] + [f"fused {f}" for f in fused])


def run(args) -> int:
    sections = _registry_rows()
    wanted = [args.what] if args.what else list(sections)
    print("\n\n".join(_section(w, sections[w]) for w in wanted))
    return 0


def add_parser(sub) -> None:
    add_command(sub, "ls", run, [arg("what", nargs="?", choices=REGISTRIES, help="one registry only")],
                help="list methods, inits, solvers, roles, architectures, tasks and sweep presets",
                description="List what ailora's registries hold.")
