"""README.md and docs/*.md: every Python snippet runs, in order, as a user would paste it, and each
is followed by a check of what it claims; what a snippet prints is the comment written under it (or
beside it). Also: the relative links resolve, the set-up commands are the ones CI runs, the CLI
synopsis names every subcommand, the test tiers of tests/conftest.py name real tests, and no text
narrates the project's history. Tier 1: the docs' "my-model" is a tiny BERT classifier saved here,
"my-lm" a tiny LLaMA."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import peft
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
)

import ailora
import ailora.hf
from ailora.cli import SUBCOMMANDS, main
from tests.conftest import TIERS
from tests.tiny_models import save_tiny_bert, save_tiny_llama, tiny_architecture

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROBE = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(0))

# Stands in for the README's "# ... train as usual ...": real optimizer steps, so the saved adapter
# differs from its start and the round trip means something; the logits at init are kept first.
TRAIN_STEPS = """
with torch.no_grad():
    logits_at_init = model.eval()(input_ids=PROBE).logits
model.train()
for _ in range(10):
    ids = torch.randint(5, 100, (4, 9), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
"""


def blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.S | re.M)


@dataclass
class Sandbox:
    """Where the snippets run: tiny models standing in for the docs' model names, in ``root``."""

    root: Path
    model: Path
    lm: Path
    saved_logits: dict[int, torch.Tensor] = field(default_factory=dict)  # Trainer step -> model logits

    def code(self, snippet: str) -> str:
        return (snippet.replace('"my-model"', repr(str(self.model))).replace('"my-lm"', repr(str(self.lm)))
                .replace("# ... train as usual ...", TRAIN_STEPS))

    def printed(self, snippet: str) -> list[str]:
        """What the snippet says it prints: the comment beside a print, or the comment lines under it."""
        out, lines = [], snippet.splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("print("):
                continue
            if "  # " in line:
                out.append(line.split("  # ", 1)[1].strip())
            for below in lines[i + 1:]:
                if not below.startswith("# "):
                    break
                out.append(below[2:])
        return [s.replace("my-model", str(self.model)) for s in out]

    def base(self, kind: str = "seq-cls") -> torch.nn.Module:
        if kind == "causal-lm":
            return AutoModelForCausalLM.from_pretrained(self.lm)
        return AutoModelForSequenceClassification.from_pretrained(self.model, num_labels=2)

    def loaded(self, adapter: str, kind: str = "seq-cls") -> torch.nn.Module:
        """``adapter`` (relative to ``root``) loaded by plain PEFT on a fresh copy of the original base."""
        return peft.PeftModel.from_pretrained(self.base(kind), str(self.root / adapter)).eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    was_training = model.training
    ids = PROBE % model.get_input_embeddings().num_embeddings  # the tiny LLaMA's vocabulary is smaller
    with torch.no_grad():
        out = model.eval()(input_ids=ids).logits
    model.train(was_training)
    return out


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def moved(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Far more than the round-trip tolerance apart: training really changed the model."""
    return (a - b).abs().max().item() > 1e-4


# ---- README.md -------------------------------------------------------------------------------------------


def _three_lines(ns: dict, box: Sandbox) -> None:
    """apply returns a PeftModel with unchanged outputs; the groups are per role + head, value lr x2."""
    assert isinstance(ns["model"], peft.PeftModel)
    same(ns["logits_at_init"], logits(box.base()))
    lrs: dict[str, set] = {}  # role -> its groups' lrs (a role's biases are a group of their own: "head.no_decay")
    for group in ns["optimizer"].param_groups:
        lrs.setdefault(group["name"].split(".")[0], set()).add(group["lr"])
    assert lrs == {"query": {2e-4}, "value": {4e-4}, "head": {2e-4}}
    assert (box.root / "my-adapter" / "adapter_config.json").is_file()


def _served(ns: dict, box: Sandbox) -> None:
    """The adapter, loaded by plain PEFT on the unmodified base, computes what the trained model does."""
    trained = logits(ns["model"])
    same(logits(ns["served"]), trained)
    assert moved(trained, ns["logits_at_init"])


def _trainer(ns: dict, box: Sandbox) -> None:
    """checkpoint-2 reproduces the model as it was at step 2, the final checkpoint and clf-adapter/ the
    trained model; a run resumed from checkpoint-2 ends where the uninterrupted one did."""
    final = logits(ns["clf"])
    assert sorted(box.saved_logits) == [2, 4] and moved(box.saved_logits[2], final)
    same(logits(ns["at_step_2"]), box.saved_logits[2])
    same(box.saved_logits[4], final)
    same(logits(box.loaded("runs/clf/checkpoint-4")), final)
    same(logits(box.loaded("clf-adapter")), final)
    resumed = _resume_trainer_snippet(box)
    same(logits(resumed), final)


def _resume_trainer_snippet(box: Sandbox) -> torch.nn.Module:
    """The README's Trainer snippet again, in another directory, resumed from the first run's checkpoint-2."""
    snippet = next(s for s in blocks(PAGES[0], "python") if "Trainer(" in s and "SFT" not in s)
    snippet = snippet.replace('TrainingArguments("runs/clf"', 'TrainingArguments("runs/clf-resumed"').replace(
        "trainer.train()", 'trainer.train(resume_from_checkpoint="runs/clf/checkpoint-2")').replace(
        '"clf-adapter/"', '"clf-resumed-adapter/"')
    ns = {"PROBE": PROBE}
    exec(compile("import ailora, torch\nfrom transformers import AutoModelForSequenceClassification\n"
                 + box.code(snippet), "README.md (resumed)", "exec"), ns)
    assert not (box.root / "runs" / "clf-resumed" / "checkpoint-2").exists()  # it started from step 2
    return ns["clf"]


def _sft(ns: dict, box: Sandbox) -> None:
    """The SFTTrainer checkpoint is plain LoRA that loads on the original LM and reproduces the trained one."""
    trained = logits(ns["lm"])
    assert moved(trained, logits(box.base("causal-lm")))
    same(logits(box.loaded("runs/sft/checkpoint-2", "causal-lm")), trained)


def _serve(ns: dict, box: Sandbox) -> None:
    """The rank-16 save (2r for rank 8: nothing compressed) still reproduces the model, with its model card."""
    assert (box.root / "served-adapter" / "README.md").is_file()
    same(logits(box.loaded("served-adapter")), logits(ns["clf"]))


# ---- docs/*.md -------------------------------------------------------------------------------------------


def _accelerate(ns: dict, box: Sandbox) -> None:
    """One optimizer step moved the model, and the saved adapter reproduces it on the original base."""
    trained = logits(ns["accelerator"].unwrap_model(ns["acc_model"]))
    same(logits(box.loaded("acc-adapter")), trained)
    assert moved(trained, logits(box.base()))


def _serving_ranks(ns: dict, box: Sandbox) -> None:
    """Both saves (rank 2r, and zero-padded to 12) are exact; the padded one has r = 12."""
    model = logits(ns["model"])
    for adapter, rank in (("adapter-r8", 8), ("adapter-r12", 12)):
        loaded = box.loaded(adapter)
        assert loaded.peft_config["default"].r == rank
        same(logits(loaded), model)


def _quantised(ns: dict, box: Sandbox) -> None:
    """PEFT's bitsandbytes LoRA layers; the per-role report; the saved adapter loads on the original base
    and records its error there."""
    from peft.tuners.lora import bnb as peft_bnb

    state = ns["model"].ailora_state
    assert all(isinstance(ns["model"].base_model.model.get_submodule(r.name), peft_bnb.Linear4bit) for r in state.layers)
    assert set(ns["roles"]) == {"query", "value"} and all(r["mean_ratio"] > 0 for r in ns["roles"].values())
    assert ns["per_layer"]["by_role"] and state.check["layers"]["passed"]
    meta = json.loads((box.root / "qadapter" / "ailora.json").read_text())
    assert meta["quantization"]["saved_adapter"]["on_original_base"]["max_weight_rel_error"] > 0
    assert isinstance(box.loaded("qadapter", "causal-lm"), peft.PeftModel)


def _quantised_trainer(ns: dict, box: Sandbox) -> None:
    """The Trainer trains the nf4 model; its checkpoint is plain LoRA for the original base, error recorded."""
    checkpoint = box.root / "runs" / "qclf" / "checkpoint-4"
    assert json.loads((checkpoint / "ailora.json").read_text())["quantization"]["type"] == "nf4"
    trained = [p for n, p in ns["clf"].named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in trained)
    moved_from_base = moved(logits(box.loaded("runs/qclf/checkpoint-4")), logits(box.base()))
    assert moved_from_base


def _tracked(ns: dict, box: Sandbox) -> None:
    """MLflow got the run: its id kept for --resume, every validation, the adapter as artifacts; TensorBoard too."""
    run_dir = box.root / "runs" / "tracked"
    run = ns["run"]
    assert json.loads((run_dir / "trackers.json").read_text()) == {"mlflow": run.info.run_id}
    history = ns["mlflow"].MlflowClient().get_metric_history(run.info.run_id, "validation/accuracy")
    assert [(m.step, m.value) for m in history] == [
        (e["step"], e["validation"]["accuracy"]) for e in ns["results"]["evaluations"]]
    artifacts = ns["mlflow"].MlflowClient().list_artifacts(run.info.run_id, "adapter")
    assert sorted(Path(a.path).name for a in artifacts) == sorted(p.name for p in (run_dir / "adapter").iterdir())
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


CHECKS = {  # page -> one check per Python snippet, in order
    "README.md": [_three_lines, _served, _trainer, _sft, _serve],
    "python.md": [_accelerate],
    "quantization.md": [_quantised, _quantised_trainer],
    "serving.md": [_serving_ranks],
    "training.md": [_tracked],
}


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Sandbox:
    model_dir = save_tiny_bert(tmp_path / "my-model")
    torch.manual_seed(0)  # the classifier is saved with the checkpoint, so every load of it is the same model
    BertForSequenceClassification.from_pretrained(model_dir, num_labels=2).save_pretrained(model_dir)
    box = Sandbox(tmp_path, model_dir, save_tiny_llama(tmp_path / "my-lm"))

    class RecordingCallback(ailora.hf.AiloraCallback):
        """AiloraCallback that also keeps the classifier's logits at each save."""

        def on_save(self, args, state, control, model=None, **kwargs):
            if Path(args.output_dir).name == "clf":  # the README's Trainer run (not TRL's, nor a resumed one)
                box.saved_logits[state.global_step] = logits(model)
            return super().on_save(args, state, control, model=model, **kwargs)

    monkeypatch.setattr(ailora.hf, "AiloraCallback", RecordingCallback)
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):  # what a snippet sets is undone after it
        monkeypatch.delenv(name, raising=False)
    return box


def test_every_page_with_python_snippets_has_one_check_per_snippet():
    have = {page.name: len(blocks(page, "python")) for page in PAGES if blocks(page, "python")}
    assert have == {name: len(checks) for name, checks in CHECKS.items()}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_snippets_run_print_what_they_say_and_do_what_they_claim(name, sandbox):
    page = next(p for p in PAGES if p.name == name)
    printed: list[str] = []  # what the snippets' own print calls write (not what the libraries print)

    def snippet_print(*args, **kwargs):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            print(*args, **kwargs)
        printed.extend(out.getvalue().splitlines())

    namespace: dict = {"PROBE": PROBE, "print": snippet_print}
    for snippet, check in zip(blocks(page, "python"), CHECKS[name], strict=True):
        printed.clear()
        exec(compile(sandbox.code(snippet), str(page), "exec"), namespace)
        assert printed == sandbox.printed(snippet), check.__name__
        check(namespace, sandbox)


def test_the_module_patterns_example_adapts_the_rows_it_names(tmp_path):
    """docs/architectures.md's fused-layer command: query and value are head slots 0 and 2 of 3."""
    neox = tiny_architecture("gpt_neox", num_attention_heads=16)
    neox.save_pretrained(tmp_path / "my-neox-like")
    command = next(c for c in blocks(ROOT / "docs" / "architectures.md", "bash")[0].split("ailora ")
                   if "my-neox-like" in c)
    argv = shlex.split(command.replace("\\\n", " ").replace("my-neox-like", str(tmp_path / "my-neox-like"))
                       .replace("--out adapter", f"--out {tmp_path / 'adapter'}")) + ["--quiet"]
    assert main(argv) == 0
    loaded = peft.PeftModel.from_pretrained(tiny_architecture("gpt_neox", num_attention_heads=16),
                                            str(tmp_path / "adapter"))
    ids = PROBE % neox.config.vocab_size
    with torch.no_grad():
        same(loaded(input_ids=ids).logits, neox(input_ids=ids).logits)
    report = json.loads((tmp_path / "adapter" / "report.json").read_text())
    assert report["roles_source"] == "modules" and len(report["targets"]) == neox.config.num_hidden_layers
    head = 3 * 2  # each head's [q|k|v] rows: hidden 32 over 16 heads, 2 rows per role
    for spans in report["targets"].values():
        assert spans == [{"role": "query", "rows": [[head * h, head * h + 2] for h in range(16)]},
                         {"role": "value", "rows": [[head * h + 4, head * h + 6] for h in range(16)]}]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_and_their_anchors_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name} links to {target}"
            if anchor:
                headings = re.findall(r"^#+ (.*)$", linked.read_text(), flags=re.M)
                assert anchor in {_slug(h) for h in headings}, f"{page.name} links to {target}"


def test_the_readme_set_up_commands_are_the_ones_ci_runs():
    setup = blocks(PAGES[0], "bash")[0]
    commands = [line.split("#")[0].strip() for line in setup.splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert all((ROOT / c.split()[1]).is_file() for c in commands)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci and set(ci) <= set(commands)


def test_the_cli_synopsis_names_every_subcommand():
    for page in (PAGES[0], ROOT / "docs" / "cli.md"):
        synopsis = re.search(r"^```\n(ailora ls .*?)^```", page.read_text(), flags=re.S | re.M).group(1)
        assert {line.split()[1] for line in synopsis.splitlines() if line.startswith("ailora ")} == set(SUBCOMMANDS)


def test_the_test_tiers_name_tests_that_exist():
    for marker, files in TIERS.items():
        for file, names in files.items():
            path = ROOT / "tests" / file
            assert path.is_file(), f"{marker}: {file}"
            defined = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
            assert set(names or []) <= defined, f"{marker}: {file} has no {set(names) - defined}"


HISTORY = [r"\bno longer\b", r"\bfinal code\b", r"\bolder\b", r"\bwent from\b", r"\bnot yet\b", r"\bminutes before\b",
           r"\bpreviously\b", r"\bused to\b", r"\bwas [^.|]*\bbefore\b", r"\bas of (now|today)\b"]


def test_no_text_narrates_history():
    for page in PAGES:
        for pattern in HISTORY:
            found = re.search(pattern, page.read_text(), flags=re.I)
            assert found is None, f"{page.name}: {found.group(0)!r}"
