"""Scale: half-precision residuals chosen on the layer's output, and apply's memory."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ailora
import ailora.core.apply as apply_module
from ailora.core.apply import ApplyOptions, apply_with, residual_weight
from ailora.core.initialised import load_initialised
from ailora.core.models import load_model
from ailora.core.probe import make_probe, run_probe
from ailora.core.roles import find_targets
from ailora.core.rounding import ROUNDING_ROWS, keep_residual, rounding_rows, unit_roundoff
from ailora.core.streaming import initialise_checkpoint
from tests.test_streaming import assert_same_model, save_sharded
from tests.tiny_models import tiny


def _square(out: int, inp: int) -> object:
    """A plain (out, in) target, as ``residual_weight`` sees a Linear."""
    return find_targets(torch.nn.Sequential(torch.nn.Linear(inp, out)), ["query"], {"query": [r"^0$"]})[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_auto_keeps_half_precision_residuals_whose_rounding_is_within_the_models_own(dtype):
    """"auto" on a half-precision model: every residual stays in the model's dtype (none doubles its
    memory), each layer's error is recorded with its bound, and the bound is u * max |W x|."""
    original = tiny("llama").to(dtype)
    model = ailora.apply(copy.deepcopy(original), method="ailora", rank=2)
    layers = model.ailora_state.layers
    assert {r.residual_dtype for r in layers} == {str(dtype).removeprefix("torch.")}
    assert all(0 < r.residual_error <= r.residual_bound for r in layers)
    name = layers[0].name
    w = original.get_submodule(name).weight
    x = rounding_rows(w.shape[1], "cpu")
    assert layers[0].residual_bound == pytest.approx(unit_roundoff(dtype) * (x @ w.float().T).abs().max().item())
    assert x.shape == (ROUNDING_ROWS, w.shape[1])
    base = model.base_model.model.get_submodule(name).get_base_layer()
    assert base.weight.dtype == dtype and not base._forward_pre_hooks  # runs as the model does
    assert model.ailora_state.check["passed"]


def test_a_residual_whose_rounding_exceeds_the_bound_is_kept_in_float32():
    """A residual far larger than its weight (factors that cancel a large part): rounding it moves the
    output by far more than the model rounds W x, so "auto" keeps float32; "model" keeps bf16 and still
    reports the error; "float32" measures nothing."""
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(64, 32, generator=g) * 1e-3).to(torch.bfloat16)
    a, b = torch.randn(2, 32, generator=g) * 10, torch.randn(64, 2, generator=g) * 10
    t = _square(64, 32)
    res, auto = residual_weight(w, t, a, b, 1.0, "auto")
    assert auto.dtype == res.dtype == torch.float32 and auto.error > 10 * auto.bound
    assert torch.equal(res, w.float().addmm(b, a, alpha=-1.0))  # the float32 residual itself
    res, forced = residual_weight(w, t, a, b, 1.0, "model")
    assert res.dtype == forced.dtype == torch.bfloat16 and forced.error == auto.error
    res, none = residual_weight(w, t, a, b, 1.0, "float32")
    assert res.dtype == torch.float32 and none.error is None and none.bound is None


def test_a_float16_residual_that_would_overflow_is_kept_in_float32():
    w = torch.ones(8, 8, dtype=torch.float16)
    res = torch.full((8, 8), 1e5)  # past float16's largest value: rounding gives inf
    choice = keep_residual(w, res, "auto")
    assert choice.dtype == torch.float32 and choice.error == float("inf")


def test_a_float32_model_measures_nothing_and_keeps_float32():
    choice = keep_residual(torch.ones(4, 4), torch.ones(4, 4), "auto")
    assert choice.dtype == torch.float32 and choice.error is None


def test_the_choice_is_per_layer_and_the_streaming_init_makes_the_same(tmp_path, monkeypatch):
    """One layer failing the criterion keeps float32 (and runs in float32), the others bf16; the model
    still passes the check, its adapter reloads on the original, and the streaming init chooses alike."""
    src = save_sharded("llama", tmp_path / "src")
    victim = "model.layers.1.self_attn.v_proj"
    real = apply_module.keep_residual
    seen = {}

    def tight(w, res, residual_dtype):  # the victim's weight is recognised by its values
        key = w.float().sum().item()
        if seen.get("victim") == key:
            return real(w * 1e-3, res, residual_dtype)
        return real(w, res, residual_dtype)

    original = load_model(src, dtype="bfloat16")
    seen["victim"] = original.get_submodule(victim).weight.float().sum().item()
    monkeypatch.setattr(apply_module, "keep_residual", tight)
    options = ApplyOptions.of(rank=2, solver="fast", progress=False)
    model = apply_with(copy.deepcopy(original), options)
    kept = {r.name: r.residual_dtype for r in model.ailora_state.layers}
    assert kept.pop(victim) == "float32" and set(kept.values()) == {"bfloat16"}
    assert model.ailora_state.check["passed"]
    initialise_checkpoint(src, tmp_path / "out", options, dtype="bfloat16")
    assert_same_model(model, load_initialised(tmp_path / "out"))
    ailora.save(model, tmp_path / "adapter")
    reloaded = ailora.load(load_model(src, dtype="bfloat16"), tmp_path / "adapter")
    probe = make_probe(model)
    assert (run_probe(reloaded, probe) - run_probe(model, probe)).abs().max() <= 2e-2 * run_probe(model, probe).abs().max()


def test_bf16_residuals_take_the_models_memory_not_twice_it():
    """Adapted bf16 model: its parameters take the original's bytes plus the adapters' (float32 factors),
    not a float32 copy of the adapted weights."""
    original = tiny("llama").to(torch.bfloat16)
    before = sum(p.numel() * p.element_size() for p in original.parameters())
    model = ailora.apply(original, method="ailora", rank=2)
    after = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n)
    assert after == before


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="resets the kernel's high-water mark (Linux)")
def test_apply_holds_no_copy_of_the_model():
    """``benchmarks/apply_memory.py`` on a 100 MB bf16 LLaMA (1024 wide, 4 layers): the resident memory
    apply adds at its peak stays under half the model (a full copy would add the model's size, a
    float32 copy twice it); what it adds is one layer's workspace and the decompositions' batch."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "apply_memory.py"
    out = subprocess.run([sys.executable, str(script), "--child", "--model", "llama-1024x4", "--rank", "8"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["passed"] and result["residual_dtypes"] == ["bfloat16"]
    assert result["model_bytes"] > 90 * 2**20  # big enough that the process's own noise is small beside it
    assert result["added_peak_bytes"] < 0.5 * result["model_bytes"], result


def test_gpu_check_dry_run_runs_every_part(tmp_path):
    """``benchmarks/gpu_check.sh --dry-run`` (tiny shapes on the CPU) runs its tests, the bf16 exactness and
    save/reload checks, the apply timings against PEFT and the training-step timings, and says it passed."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("| passed | bfloat16 |") == 6  # 3 architectures x 2 solvers, residuals kept in bf16
    for row in ("| ailora pissa, exact |", "| ailora pissa, fast |", "| PEFT pissa |", "| PEFT pissa_niter_4 |",
                "| ailora |", "| hand PEFT |"):
        assert row in table
    assert "exactness on device: passed" in table


def test_scale_7b_script_smoke_run_checks_and_cleans_up(tmp_path):
    """``benchmarks/scale_7b.py --small`` (2 layers, hidden 1024, a 1000-token vocabulary): the streaming
    init passes its per-layer check, the residual loads with from_pretrained and the saved adapter on the
    original weights matches the trained layers (the step moved them far more), PEFT runs beside it, and
    the temporary checkpoint is gone afterwards. Its times are not asserted."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "scale_7b.py"
    out = subprocess.run([sys.executable, str(script), "--small", "--vocab", "1000", "--tmp", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| ailora |" in out.stdout and "per-layer check passed, 4 bf16 residuals" in out.stdout
    assert "from_pretrained ok" in out.stdout and "| PEFT pissa_niter_4 |" in out.stdout
    assert re.search(r"\| decompose \|.*the 4 decompositions alone [\d.]+ s; .* the 2 v_proj LU", out.stdout)
    assert "checks: True" in out.stdout
    assert list(tmp_path.iterdir()) == []  # the checkpoint and outputs deleted
