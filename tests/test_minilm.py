"""Tier 3: the real all-MiniLM-L6-v2 from its offline package, end to end."""

from __future__ import annotations

import copy

import peft
import pytest
import torch

import ailora
from ailora.core.models import load_model, minilm_dir
from ailora.core.probe import make_probe, run_probe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)  # the random classifier head: the same whatever ran before in this worker
    return load_model(minilm_dir(), kind="seq-cls", num_labels=2).eval()


@pytest.mark.parametrize("method, solver", [("ailora", "exact"), ("ailora", "fast"), ("pissa", "exact"),
                                            ("milora", "fast"), ("lora", "exact")])
def test_minilm_init_train_save_load(minilm, method, solver, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    batch = tok(["a gripping, funny film", "dull and far too long"], padding=True, return_tensors="pt")
    labels = torch.tensor([1, 0])
    model = ailora.apply(copy.deepcopy(minilm), method=method, rank=8, solver=solver)
    assert model.ailora_state.check["max_abs_diff"] <= 1e-4
    assert len(model.ailora_state.targets) == 12  # 6 layers x (query, value)
    opt = torch.optim.AdamW(ailora.param_groups(model, lr=1e-3))
    model.train()
    torch.manual_seed(0)  # dropout masks independent of test order
    for _ in range(3):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    probe = make_probe(model)
    trained = run_probe(model, probe)
    ailora.save(model, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(minilm), str(tmp_path / "adapter"))
    assert (run_probe(loaded, probe) - trained).abs().max() <= 1e-4
    assert (run_probe(minilm, probe) - trained).abs().max() > 1e-3
