"""FSDP2 (``fully_shard``, gloo) with two CPU processes: training from a residual directory, exact
resume, the consolidated adapter; and ``ailora.apply`` then ``shard_model`` in a user's own script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ailora
from ailora.cli import main as cli_main
from ailora.core.models import load_model
from ailora.errors import AiloraError
from ailora.train import load_config, train
from tests.test_multiprocess import _setup

pytestmark = pytest.mark.multiprocess

# Records, per process, the frozen parameters' elements it holds after sharding, then trains.
RUNNER = """import json, sys, torch
import ailora.train.loop as loop
from ailora.train import load_config, sharding, train
real = sharding.shard_model
def recording(model):
    out = real(model)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    held = sum(p.to_local().numel() for p in frozen)
    whole = sum(p.numel() for p in frozen)
    rank = torch.distributed.get_rank()
    open(f"{sys.argv[1]}.held{rank}.json", "w").write(json.dumps([held, whole]))
    return out
sharding.shard_model = recording
train(load_config(sys.argv[1], sys.argv[2:]))
"""


def _launch(tmp_path, script: Path, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _fsdp_run(tmp_path, config, name: str, *overrides: str) -> dict | None:
    """Results of a 2-process FSDP2 run (None when it stopped before the end)."""
    (tmp_path / "fsdp_runner.py").write_text(RUNNER)
    _launch(tmp_path, tmp_path / "fsdp_runner.py", str(config), f"run_dir={tmp_path / name}", "train.fsdp=true",
            *overrides)
    results = tmp_path / name / "results.json"
    return json.loads(results.read_text()) if results.is_file() else None


@pytest.fixture
def residual(tmp_path):
    config = _setup(tmp_path)
    assert cli_main(["init", "--model", str(tmp_path / "bert"), "--residual-out", str(tmp_path / "residual"),
                     "--rank", "4", "--quiet"]) == 0
    return config, [f"model.name={tmp_path / 'residual'}", "train.epochs=2"]


def test_fsdp_two_processes_match_one_and_the_adapter_reloads(tmp_path, residual):
    """Each process holds half the frozen parameters; the metrics match one process with the same global
    batch within 1e-3 on the loss (not bit-exact: the gradients are summed in another order, by a
    reduce-scatter over two halves of the batch, and float32 addition is not associative); the saved
    adapter reloads on the ORIGINAL base and gives the trained model's outputs."""
    config, overrides = residual
    two = _fsdp_run(tmp_path, config, "two", *overrides)
    one = train(load_config(config, [f"run_dir={tmp_path / 'one'}", "train.batch_size=16", *overrides]))
    for rank in (0, 1):
        held, whole = json.loads(Path(f"{config}.held{rank}.json").read_text())
        assert abs(held - whole / 2) <= 0.02 * whole, (held, whole)
    assert two["steps"] == one["steps"]
    for e1, e2 in zip(one["epochs"], two["epochs"], strict=True):
        assert e1["train_loss"] == pytest.approx(e2["train_loss"], abs=1e-3)
        assert e1["validation"]["accuracy"] == pytest.approx(e2["validation"]["accuracy"], abs=0.1)
    original = load_model(tmp_path / "bert", kind="seq-cls", num_labels=2)
    a = ailora.load(original, tmp_path / "two" / "adapter")
    b = ailora.load(load_model(tmp_path / "bert", kind="seq-cls", num_labels=2), tmp_path / "one" / "adapter")
    ids = torch.randint(5, 100, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        la, lb = a(input_ids=ids).logits, b(input_ids=ids).logits
    assert (la - lb).abs().max() < 1e-2 * max(1.0, lb.abs().max().item())


def test_fsdp_resume_equals_an_uninterrupted_run(tmp_path, residual):
    config, overrides = residual
    """Stopped after 5 optimizer steps (mid-epoch, after a checkpoint) and resumed: the same losses,
    validations and adapter, bit for bit, as the uninterrupted run."""
    full = _fsdp_run(tmp_path, config, "full", *overrides)
    assert _fsdp_run(tmp_path, config, "cut", *overrides, "train.stop_after_steps=5") is None
    resumed = _fsdp_run(tmp_path, config, "cut", *overrides, "resume=true")
    assert [e["train_loss"] for e in resumed["epochs"]] == [e["train_loss"] for e in full["epochs"]]
    assert [e["validation"] for e in resumed["epochs"]] == [e["validation"] for e in full["epochs"]]
    x = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    y = load_file(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


USER_SCRIPT = """import json, sys, torch, torch.distributed as dist
import ailora
from ailora.train.sharding import shard_model, unsharded_trainable
sys.path.insert(0, sys.argv[2])
from tests.tiny_models import tiny
dist.init_process_group("gloo")
rank = dist.get_rank()
model = ailora.apply(tiny("llama"), method="ailora", rank=4)   # decompositions split between the processes
shard_model(model)                                             # then shard: residuals and factors
frozen = [p for p in model.parameters() if not p.requires_grad]
held, whole = sum(p.to_local().numel() for p in frozen), sum(p.numel() for p in frozen)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
g = torch.Generator().manual_seed(rank)
for _ in range(3):
    ids = torch.randint(0, 50, (2, 8), generator=g)
    model(input_ids=ids, labels=ids).loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step(); opt.zero_grad()
probe = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(9))
with torch.no_grad():
    logits = model(input_ids=probe).logits
import transformers
real_generate, synced = transformers.GenerationMixin.generate, []
def recording(self, *args, **kwargs):
    synced.append(kwargs.get("synced_gpus"))
    return real_generate(self, *args, **kwargs)
transformers.GenerationMixin.generate = recording
new_tokens = 1 if rank == 0 else 4  # rank 0 stops first: the steps must still pair up
with torch.no_grad():
    tokens = model.generate(input_ids=probe, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                            pad_token_id=0).shape[1] - probe.shape[1]
with unsharded_trainable(model, rank == 0) as whole_model:
    if rank == 0:
        ailora.save(whole_model, sys.argv[1] + "/adapter")
if rank == 0:
    torch.save({"logits": logits, "held": held, "whole": whole, "tokens": tokens, "synced": synced},
               sys.argv[1] + "/out.pt")
dist.destroy_process_group()
"""


def test_apply_then_fully_shard_in_a_users_script(tmp_path):
    """``ailora.apply`` then ``shard_model`` under torchrun: trains, generates with uneven lengths across
    the processes, and the adapter saved from the sharded model reloads on the original model with the
    trained outputs."""
    (tmp_path / "user.py").write_text(USER_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    _launch(tmp_path, tmp_path / "user.py", str(tmp_path), str(root))
    out = torch.load(tmp_path / "out.pt")
    assert abs(out["held"] - out["whole"] / 2) <= 0.02 * out["whole"]
    # the user's generate (no synced_gpus given) decoded in step with the other process
    assert out["synced"] == [True] and out["tokens"] == 1
    from tests.tiny_models import tiny

    reloaded = ailora.load(tiny("llama"), tmp_path / "adapter")
    probe = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        logits = reloaded(input_ids=probe).logits
        untrained = tiny("llama")(input_ids=probe).logits
    assert (logits - out["logits"]).abs().max() < 1e-4
    assert (untrained - out["logits"]).abs().max() > 1e-3  # training moved it


def test_fsdp_in_one_process_is_a_one_line_error(tmp_path):
    config = _setup(tmp_path)
    with pytest.raises(AiloraError, match="train.fsdp=true needs several processes"):
        train(load_config(config, [f"run_dir={tmp_path / 'r'}", "train.fsdp=true"]))
    assert not (tmp_path / "r").exists()  # refused before anything was written


# Rank 0 stops decoding after one token, rank 1 decodes to the end: without synced steps the ranks'
# forward passes (each a collective under FSDP2) would no longer pair up and the run would hang.
GENERATION_RUNNER = """import sys, torch
import ailora.train.generation as generation
from ailora.train import load_config, train
real = generation.generate_kwargs
def uneven(settings, tokenizer):
    kw = real(settings, tokenizer)
    if torch.distributed.get_rank() == 0:
        kw["max_new_tokens"] = 1
    else:
        kw["min_new_tokens"] = kw["max_new_tokens"]  # no early EOS: every step taken
    return kw
generation.generate_kwargs = uneven
import transformers
real_generate = transformers.GenerationMixin.generate
def recording(self, *args, **kwargs):  # what each call was told about stepping in sync
    with open(f"{sys.argv[1]}.synced{torch.distributed.get_rank()}", "a") as f:
        f.write(f"{kwargs.get('synced_gpus')} ")
    return real_generate(self, *args, **kwargs)
transformers.GenerationMixin.generate = recording
train(load_config(sys.argv[1], sys.argv[2:]))
"""


def test_fsdp_generation_where_one_process_stops_decoding_first(tmp_path):
    """A generation task under FSDP2: the root's own parameters are gathered for ``generate`` (it calls
    the inner forward, past the root's hooks: before, a DTensor error), and the processes, whose
    decodings end at different steps, step in sync (``synced_gpus``) so that their forward passes,
    each a collective, pair up; the run ends with its test predictions."""
    from tests.tiny_models import save_tiny, tiny_tokenizer

    model_dir = save_tiny("llama", tmp_path / "llama")
    tiny_tokenizer().save_pretrained(model_dir)
    rows = [{"text": f"say {w}", "label": w} for w in ("good", "bad", "fine", "nice") * 8]
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "task.json").write_text(json.dumps({"name": "mp-gen", "kind": "generation", "path": "gen.jsonl",
                                                    "metrics": ["rougeL"]}))
    cfg = {"model": {"name": str(model_dir), "max_length": 16}, "task": {"name": str(tmp_path / "task.json")},
           "method": {"name": "ailora", "rank": 2}, "run_dir": "",
           "generation": {"max_new_tokens": 4, "max_target_length": 4},
           "train": {"lr": 1e-2, "epochs": 1, "batch_size": 8, "tensorboard": False, "progress": False}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "gen_runner.py").write_text(GENERATION_RUNNER)
    _launch(tmp_path, tmp_path / "gen_runner.py", str(tmp_path / "config.json"), f"run_dir={tmp_path / 'gen'}",
            "train.fsdp=true")
    results = json.loads((tmp_path / "gen" / "results.json").read_text())
    assert results["steps"] > 0 and "rougeL" in results["test"]
    for rank in (0, 1):  # every decoding of both processes stepped in sync
        calls = (tmp_path / f"config.json.synced{rank}").read_text().split()
        assert calls and set(calls) == {"True"}, (rank, calls)
    rows = [json.loads(line) for line in next((tmp_path / "gen" / "predictions").glob("test-*.jsonl")).open()]
    decoded = [len(r["prediction"].split()) for r in rows]
    assert rows and max(decoded) > 1  # rank 1 decoded several tokens while rank 0 stopped after one
