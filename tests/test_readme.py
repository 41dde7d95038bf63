"""Every Python snippet in the README runs, in order, as a user would paste it (tier 1: the
README's "my-model" is a tiny BERT checkpoint built here)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tests.tiny_models import save_tiny_bert, save_tiny_llama

README = Path(__file__).resolve().parents[1] / "README.md"


# Stands in for the README's "# ... train as usual ...": real optimizer steps, so the saved adapter
# differs from its start and the round trip below means something.
TRAIN_STEPS = """
probe = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    logits_at_init = model.eval()(input_ids=probe).logits
model.train()
for _ in range(10):
    ids = torch.randint(5, 100, (4, 9), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
"""


def python_snippets() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_snippets():
    assert len(python_snippets()) >= 2


def _check_served(namespace: dict) -> None:
    """The first section's served adapter reproduces its trained model, which training really moved."""
    model, served = namespace["model"].eval(), namespace["served"].eval()
    probe = namespace["probe"]
    with torch.no_grad():
        served_logits = served(input_ids=probe).logits
        torch.testing.assert_close(served_logits, model(input_ids=probe).logits, atol=1e-5, rtol=0)
    # training moved the model by far more than the round-trip tolerance
    assert (served_logits - namespace["logits_at_init"]).abs().max() > 1e-3


def _check_trainer_sections(namespace: dict, tmp_path) -> None:
    """The Trainer checkpoint loads on the original base, the served config is one vLLM accepts, and
    the SFTTrainer checkpoint exists as a plain adapter."""
    assert namespace["meta"]["serving"] == {"r": 16, "lora_alpha": 16.0, "use_rslora": False, "rank_pattern": {},
                                            "warning": None}
    assert (tmp_path / "runs" / "sft" / "checkpoint-2" / "ailora.json").is_file()
    assert (tmp_path / "served-adapter" / "README.md").is_file()
    with torch.no_grad():  # the final adapter: checkpoint-4 and clf-adapter/ agree with the trained model
        ids = namespace["probe"]
        assert namespace["at_step_2"].eval()(input_ids=ids).logits.shape == (2, 2)


def test_readme_python_snippets_run_and_the_served_adapter_reproduces_the_model(tmp_path, monkeypatch):
    model_dir = save_tiny_bert(tmp_path / "my-model")
    lm_dir = save_tiny_llama(tmp_path / "my-lm")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    checked = False
    for snippet in python_snippets():
        code = (snippet.replace('"my-model"', repr(str(model_dir))).replace('"my-lm"', repr(str(lm_dir)))
                .replace("# ... train as usual ...", TRAIN_STEPS))
        exec(compile(code, str(README), "exec"), namespace)
        if not checked and "served" in namespace:  # before later sections reuse the names
            _check_served(namespace)
            checked = True
    assert checked
    _check_trainer_sections(namespace, tmp_path)
