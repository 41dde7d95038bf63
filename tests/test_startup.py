"""Start-up: `ailora --help`, `ailora COMMAND --help` and `ailora ls` import neither torch, transformers
nor PEFT (they are checked in a fresh interpreter), and what they print instead of the library's
objects (the ls catalog, analyze's defaults) is the library's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ailora
from ailora.cli import SUBCOMMANDS, main
from ailora.cli.ls import catalog_source

HEAVY = ("torch", "transformers", "peft")

# Runs each argv through ailora's CLI in one fresh interpreter; prints, per argv, its exit status and
# the heavy modules loaded so far.
RUNNER = """
import contextlib, io, json, sys
from ailora.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()) as text:
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
    out.append([argv, status, [m for m in json.loads(sys.argv[2]) if m in sys.modules], len(text.getvalue())])
print(json.dumps(out))
"""


def _run_light(argvs: list[list[str]]) -> list:
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(argvs), json.dumps(HEAVY)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


def test_help_and_ls_import_neither_torch_transformers_nor_peft():
    argvs = [["--help"], *([name, "--help"] for name in SUBCOMMANDS), ["analyze", "norms", "--help"],
             ["ls"], ["ls", "methods"], ["ls", "presets"]]
    for argv, status, heavy, printed in _run_light(argvs):
        assert status == 0 and printed > 0, argv
        assert heavy == [], f"ailora {' '.join(argv)} imported {heavy}"


def test_import_ailora_is_light_and_its_names_resolve_on_use():
    code = f"import sys, ailora; import ailora.train; print([m for m in {HEAVY!r} if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
    from ailora.core.adapters import save
    from ailora.core.apply import apply
    from ailora.train.loop import train

    assert ailora.apply is apply and ailora.save is save and {"apply", "state_of", "hf"} <= set(dir(ailora))
    from ailora.train import train as lazy_train

    assert lazy_train is train
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ailora.nope  # noqa: B018


def test_ls_catalog_is_the_live_registries(capsys):
    """`ailora ls` prints ailora/cli/catalog.py; after a registry changes, `python -m ailora.cli.ls` rewrites it."""
    from ailora.cli import catalog

    # In a fresh interpreter: tests in this worker may have registered toy tasks in the live registries.
    fresh = subprocess.run([sys.executable, "-c", "import json; from ailora.cli.ls import registry_rows; "
                            "print(json.dumps(registry_rows()))"], capture_output=True, text=True, check=True)
    live = {section: [tuple(row) for row in rows] for section, rows in json.loads(fresh.stdout).items()}
    assert catalog.SECTIONS == live, "ailora/cli/catalog.py is stale: run `python -m ailora.cli.ls`"
    assert open(catalog.__file__).read() == catalog_source(live)
    assert main(["ls", "solvers"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [f"  {n.ljust(5)}  {d}" for n, d in live["solvers"]]


def test_analyze_defaults_are_the_librarys():
    from ailora.analysis.commands import DEFAULT_OUT, DEFAULT_TARGETS
    from ailora.analysis.lm import OBJECTIVES
    from ailora.cli import analyze

    assert (analyze.DEFAULT_OUT, analyze.DEFAULT_TARGETS, analyze.OBJECTIVES) == (
        DEFAULT_OUT, DEFAULT_TARGETS, OBJECTIVES)
