"""The streaming init (``ailora init --residual-out``): sharded tiny checkpoints read tensor by tensor,
bit-identical to in-memory ``apply``; training from its directory; one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil

import pytest
import torch

import ailora
from ailora.cli import main
from ailora.core.apply import ApplyOptions, apply_with
from ailora.core.checkpoint import INDEX_FILE, Checkpoint
from ailora.core.initialised import MARKER_FILE, initialised_record, load_initialised, start_from_initialised
from ailora.core.models import load_model
from ailora.core.streaming import initialise_checkpoint
from ailora.errors import AiloraError
from ailora.train import RunConfig, train
from ailora.train.record import load_checkpoint
from tests.tiny_models import build, save_tiny, save_tiny_bert, tiny_tokenizer

SHARD = "20KB"  # splits every tiny model into several shards


def save_sharded(name: str, directory, **overrides):
    """A tiny ``name`` model (dropout off) with a word tokenizer, saved in several safetensors shards."""
    build(name, dropout=False, **overrides).save_pretrained(directory, max_shard_size=SHARD)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def _records(state) -> list[dict]:
    return [{k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in state.layers]


def assert_same_model(a, b) -> None:
    """Every tensor (factors, residuals, the rest), the starting factors and the state, bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert not [k for k in sa if not torch.equal(sa[k], sb[k])]
    x, y = ailora.state_of(a), ailora.state_of(b)
    assert x.initial.keys() == y.initial.keys()
    assert all(torch.equal(p, q) for n in x.initial for p, q in zip(x.initial[n], y.initial[n]))
    assert _records(x) == _records(y) and x.metadata() == y.metadata()
    assert a.peft_config["default"].to_dict() == b.peft_config["default"].to_dict()


# phi3: the fused qkv_proj and gate_up_proj; gpt2: the fused, transposed (Conv1D) c_attn
@pytest.mark.parametrize("name", ["llama", "gpt2", "phi3"])
@pytest.mark.parametrize("solver", ["exact", "fast"])
def test_streaming_init_is_bit_identical_to_apply(tmp_path, name, solver):
    src = save_sharded(name, tmp_path / "src")
    targets = ["query", "key", "value", "up"] if name == "phi3" else None
    options = ApplyOptions.of(method="ailora", rank=2, solver=solver, targets=targets, policy="key=lora" if targets else None,
                           progress=False)
    report = initialise_checkpoint(src, tmp_path / "out", options)
    assert report["output_check"]["passed"] and report["streaming"]["shards"] > 1
    in_memory = apply_with(load_model(src), options)
    streamed = load_initialised(tmp_path / "out")
    assert_same_model(in_memory, streamed)
    assert ailora.state_of(streamed).check == report["output_check"]
    # the same files and shards; every tensor but the adapted weights copied through byte for byte
    before, after = Checkpoint.open(src), Checkpoint.open(tmp_path / "out")
    assert [s.path.name for s in before.shards] == [s.path.name for s in after.shards]
    assert json.loads((tmp_path / "out" / INDEX_FILE).read_text())["weight_map"] == \
        json.loads((src / INDEX_FILE).read_text())["weight_map"]
    adapted = {f"{t}.weight" for t in ailora.state_of(streamed).targets}
    for key in before.where:
        assert torch.equal(before.tensor(key), after.tensor(key)) == (key not in adapted), key
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("residual_dtype", ["auto", "model", "float32"])
def test_half_precision_init_keeps_residuals_as_apply_does(tmp_path, residual_dtype):
    """bfloat16: "auto" keeps these residuals in bf16 (each one's rounding within the model's own rounding
    of the layer's output), "model" in bf16, "float32" in float32 (run in float32 inside the bf16 model);
    the streaming init makes apply's choice and records the same error and bound."""
    src = save_sharded("llama", tmp_path / "src")
    options = ApplyOptions.of(rank=2, solver="fast", residual_dtype=residual_dtype, progress=False)
    report = initialise_checkpoint(src, tmp_path / "out", options, dtype="bfloat16")
    assert {r["residual_dtype"] for r in report["layers"]} == {"float32" if residual_dtype == "float32" else "bfloat16"}
    measured = [r for r in report["layers"] if r["residual_error"] is not None]
    assert len(measured) == (0 if residual_dtype == "float32" else len(report["layers"]))
    assert all(0 < r["residual_error"] <= r["residual_bound"] for r in measured)
    in_memory = apply_with(load_model(src, dtype="bfloat16"), options)
    streamed = load_initialised(tmp_path / "out")
    assert_same_model(in_memory, streamed)
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(in_memory(input_ids=ids).logits, streamed(input_ids=ids).logits)


def test_saved_adapter_loads_on_the_original_base(tmp_path):
    """Trained from the residual directory, ``ailora.save`` writes the plain adapter for the ORIGINAL base."""
    src = save_sharded("llama", tmp_path / "src")
    initialise_checkpoint(src, tmp_path / "out", ApplyOptions.of(rank=2, progress=False))
    model = load_initialised(tmp_path / "out")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # stand-in for training
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    meta = ailora.save(model, tmp_path / "adapter")
    assert meta["base_model"] == str(src)  # provenance: the original checkpoint
    ids = torch.randint(0, 50, (2, 7), generator=g)
    reloaded = ailora.load(load_model(src), tmp_path / "adapter")
    with torch.no_grad():
        assert (reloaded(input_ids=ids).logits - model(input_ids=ids).logits).abs().max() < 1e-4


def _classification_task(tmp_path):
    rng = random.Random(0)
    words = (["bad", "awful", "poor", "sad"], ["good", "great", "fine", "nice"])
    rows = [{"text": f"it was {rng.choice(words[i % 2])} today", "label": i % 2} for i in range(32)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "task.json").write_text(json.dumps({"name": "st-sentiment", "kind": "classification",
                                                    "path": "data.jsonl", "label_names": ["0", "1"]}))
    return str(tmp_path / "task.json")


def test_train_from_the_residual_directory(tmp_path):
    src = save_tiny_bert(tmp_path / "bert", dropout=False)  # a BertModel: training adds the head (bert. prefix)
    assert main(["init", "--model", str(src), "--residual-out", str(tmp_path / "out"), "--rank", "4",
                 "--quiet"]) == 0
    task = _classification_task(tmp_path)
    over = [f"task.name={task}", "method.name=ailora", "method.rank=4", "train.epochs=1", "train.batch_size=8",
            "train.lr=2e-2", "train.tensorboard=false", "train.progress=false", "model.max_length=16"]
    runs = {d: train(RunConfig.from_dict({}, [f"model.name={tmp_path / d}", f"run_dir={tmp_path / ('run-' + d)}", *over]))
            for d in ("out", "bert")}
    with pytest.raises(AiloraError, match="method bitfit cannot start from it"):  # a baseline would train W_res
        train(RunConfig.from_dict({}, [f"model.name={tmp_path / 'out'}", f"run_dir={tmp_path / 'run-bitfit'}",
                                       *over[:1], "method.name=bitfit", *over[3:]]))
    # starting from the residual directory is starting from the original: same hash, same training
    assert runs["out"]["distributed"]["init_hashes"] == runs["bert"]["distributed"]["init_hashes"]
    assert runs["out"]["epochs"][0]["train_loss"] == pytest.approx(runs["bert"]["epochs"][0]["train_loss"], abs=1e-6)
    # the trained model (the residual directory plus the last checkpoint's weights) against its saved
    # adapter on the ORIGINAL base
    labels = {"num_labels": 2, "id2label": {0: "0", 1: "1"}, "label2id": {"0": 0, "1": 1}}
    trained = start_from_initialised(load_model(tmp_path / "out", kind="seq-cls", **labels), tmp_path / "out",
                                     ApplyOptions.of(method="ailora", rank=4))
    weights = load_checkpoint(tmp_path / "run-out" / "checkpoints" / "last.pt")["trainable"]
    with torch.no_grad():
        for n, p in trained.named_parameters():
            if n in weights:
                p.copy_(weights[n])
    reloaded = ailora.load(load_model(src, kind="seq-cls", **labels), tmp_path / "run-out" / "adapter")
    ids = torch.randint(100, 2000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (trained.eval()(input_ids=ids).logits - reloaded.eval()(input_ids=ids).logits).abs().max() < 1e-4
    three = load_initialised(tmp_path / "out", kind="seq-cls", num_labels=3)  # config overrides, as from_pretrained
    assert three.base_model.model.config.num_labels == 3


def _nothing_written(tmp_path, out) -> bool:
    return not out.exists() and not list(tmp_path.glob(f".{out.name}.*"))


def test_bad_input_is_one_line_before_any_work(tmp_path):
    options = ApplyOptions.of(rank=2, progress=False)
    src = save_sharded("llama", tmp_path / "src")
    pickle_only = save_tiny("llama", tmp_path / "pickle", safetensors=False)
    with pytest.raises(AiloraError, match="no .safetensors weights"):
        initialise_checkpoint(pickle_only, tmp_path / "o1", options)
    assert _nothing_written(tmp_path, tmp_path / "o1")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(AiloraError, match="already exists and is not empty"):
        initialise_checkpoint(src, tmp_path / "full", options)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "mystery-lm"}))
    with pytest.raises(AiloraError, match=r"config.json cannot be read") as err:
        initialise_checkpoint(src, tmp_path / "o2", options)
    assert "\n" not in str(err.value) and _nothing_written(tmp_path, tmp_path / "o2")
    (src / "config.json").write_text(json.dumps(config))
    (src / "model-00001-of-00005.safetensors").write_bytes(b"\x08\x00")
    with pytest.raises(AiloraError, match="not a safetensors file"):
        initialise_checkpoint(src, tmp_path / "o3", options)
    assert _nothing_written(tmp_path, tmp_path / "o3")


def test_initialised_directory_guards_its_start(tmp_path):
    src = save_sharded("llama", tmp_path / "src")
    out = tmp_path / "out"
    initialise_checkpoint(src, out, ApplyOptions.of(rank=2, progress=False))
    with pytest.raises(AiloraError, match="already holds residual weights"):
        initialise_checkpoint(out, tmp_path / "again", ApplyOptions.of(rank=2))
    assert main(["init", "--model", str(out), "--out", str(tmp_path / "again"), "--quiet"]) == 2  # in memory too
    with pytest.raises(AiloraError, match=r"was initialised with rank=2, this run asks for rank=4"):
        start_from_initialised(load_model(out), out, ApplyOptions.of(rank=4))
    with pytest.raises(AiloraError, match="was initialised for float32 weights"):
        start_from_initialised(load_model(out, dtype="bfloat16"), out)
    with pytest.raises(AiloraError, match=f"has no {re.escape(MARKER_FILE)}"):
        load_initialised(src)
    assert main(["init", "--model", str(src), "--out", str(tmp_path / "a"), "--residual-out", str(tmp_path / "b"),
                 "--quiet"]) == 2
    # a residual changed after the init is caught by its hash
    model = load_model(out)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] += 1
    with pytest.raises(AiloraError, match="is not the residual the init wrote"):
        start_from_initialised(model, out)


def test_a_residual_directory_missing_its_marker_or_report_is_refused(tmp_path):
    """Without its marker, a residual directory must not train as if its weights were the original
    model's (they are residuals); without its report it is incomplete. Both: one-line errors."""
    src = save_sharded("llama", tmp_path / "src")
    out = tmp_path / "out"
    initialise_checkpoint(src, out, ApplyOptions.of(rank=2, progress=False))
    no_marker, no_report = tmp_path / "no_marker", tmp_path / "no_report"
    shutil.copytree(out, no_marker)
    (no_marker / MARKER_FILE).unlink()
    shutil.copytree(out, no_report)
    (no_report / "report.json").unlink()
    with pytest.raises(AiloraError, match="its weights are residuals, not the original model"):
        load_initialised(no_marker)
    with pytest.raises(AiloraError, match="has no report.json"):
        load_initialised(no_report)
    assert initialised_record(src) is None  # an ordinary checkpoint is still just that


# --- the writer: dtypes decided when written, copies by the kernel, the decomposition thread --------


def test_a_dtype_decided_when_written_fits_the_reserved_header(tmp_path):
    """Candidates of different name lengths and sizes, chosen alternately: the header (written last)
    fits the space reserved for it, and safetensors reads every tensor back as written."""
    from safetensors.torch import load_file

    from ailora.core.checkpoint import tensor_writer, write_shard

    g = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(3, 5 + i, generator=g).to(torch.bfloat16 if i % 2 else torch.float32)
               for i in range(12)}
    items = [(n, ("BF16", "F32"), tuple(t.shape), tensor_writer(t)) for n, t in tensors.items()]
    items.insert(3, ("fixed", "F16", (2,), tensor_writer(torch.ones(2, dtype=torch.float16))))
    write_shard(tmp_path / "x.safetensors", items, {"format": "pt"})
    back = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(back[n], t) for n, t in tensors.items()) and torch.equal(back["fixed"], torch.ones(2).half())
    (tmp_path / "x.safetensors").rename(tmp_path / "model.safetensors")
    entries = Checkpoint.open(tmp_path).shards[0].entries  # our reader too: dtypes and offsets as written
    assert [entries[n].dtype for n in tensors] == ["F32", "BF16"] * 6
    with pytest.raises(AiloraError, match="was written as F32, not one of"):
        write_shard(tmp_path / "y.safetensors", [("a", ("BF16",), (2,), tensor_writer(torch.ones(2)))], None)


def test_partial_writes_and_copies_are_completed(tmp_path, monkeypatch):
    """A file whose write takes fewer bytes than given, and a kernel copy that moves a few bytes per
    call, or none at all (another file system): the output is the same bytes every way."""
    import errno
    import os

    from ailora.core import checkpoint as ck

    src = save_sharded("llama", tmp_path / "src")
    options = ApplyOptions.of(rank=2, solver="fast", progress=False)
    initialise_checkpoint(src, tmp_path / "kernel", options)
    real = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda i, o, n, off: real(i, o, min(n, 7), off))
    initialise_checkpoint(src, tmp_path / "trickle", options)

    def refuse(*_):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    monkeypatch.setattr(ck, "COPY_CHUNK", 1000)
    monkeypatch.setattr(ck, "_KERNEL_COPY", [True])  # a list of this test's own: the process's is left as it is
    initialise_checkpoint(src, tmp_path / "user", options)
    assert ck._KERNEL_COPY == [False]  # the refusal is remembered

    class Short:  # takes at most 5 bytes per write
        def __init__(self):
            self.data = bytearray()

        def write(self, b):
            self.data += bytes(b[:5])
            return min(5, len(b))

    f = Short()
    ck.write_all(f, torch.arange(100, dtype=torch.float32).numpy().data)
    assert bytes(f.data) == torch.arange(100, dtype=torch.float32).numpy().tobytes()
    for out in ("trickle", "user"):
        for shard in sorted((tmp_path / "kernel").glob("*.safetensors")):
            assert (tmp_path / out / shard.name).read_bytes() == shard.read_bytes()


def test_a_failure_on_either_side_stops_both_and_writes_nothing(tmp_path, monkeypatch):
    """NaN weights met by the decomposition thread, and a per-layer check failing in the writer: one
    error naming the layer, nothing written, and no decomposition thread left running."""
    import threading

    from safetensors.torch import load_file, save_file

    from ailora.core import streaming
    from ailora.errors import ExactnessError

    options = ApplyOptions.of(rank=2, solver="fast", progress=False)
    src = save_sharded("llama", tmp_path / "src")
    key = "model.layers.1.self_attn.v_proj.weight"
    shard = next(p for p in src.glob("*.safetensors") if key in load_file(p))
    tensors = load_file(shard)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(AiloraError, match=r"layer model\.layers\.1\.self_attn\.v_proj has NaN or Inf weights"):
        initialise_checkpoint(src, tmp_path / "o1", options)
    assert _nothing_written(tmp_path, tmp_path / "o1")
    assert not [t for t in threading.enumerate() if t.name.startswith("ailora-decompose")]

    clean = save_sharded("llama", tmp_path / "clean")

    def failing(w, res, t, *rest):
        raise ExactnessError(f"layer {t.name} changed its outputs (planted)")

    monkeypatch.setattr(streaming, "_check_layer", failing)
    with pytest.raises(ExactnessError, match="planted"):
        initialise_checkpoint(clean, tmp_path / "o2", options)
    assert _nothing_written(tmp_path, tmp_path / "o2")
    assert not [t for t in threading.enumerate() if t.name.startswith("ailora-decompose")]


def test_a_layer_whose_check_gives_nan_fails(tmp_path, monkeypatch):
    """NaN factors make the per-layer difference NaN, which is not above the tolerance either: the check
    fails on it all the same, and nothing is written."""
    from ailora.core import streaming
    from ailora.errors import ExactnessError

    real = streaming._check_layer

    def nan_factors(w, res, t, a, b, scaling, generator):
        return real(w, res, t, a, b * float("nan") if "layers.1.self_attn.v_proj" in t.name else b, scaling,
                    generator)

    monkeypatch.setattr(streaming, "_check_layer", nan_factors)
    src = save_sharded("llama", tmp_path / "src")
    with pytest.raises(ExactnessError, match=r"v_proj changed its outputs to non-finite values"):
        initialise_checkpoint(src, tmp_path / "out", ApplyOptions.of(rank=2, progress=False))
    assert _nothing_written(tmp_path, tmp_path / "out")


def test_a_start_that_keeps_w_copies_every_shard_through(tmp_path):
    """LoRA's start leaves W as it is: each target is decided 'unchanged' when its turn comes and copied
    through, so every shard comes out byte for byte the source's, and the model is apply's."""
    src = save_sharded("llama", tmp_path / "src")
    options = ApplyOptions.of(method="lora", rank=2, progress=False)
    report = initialise_checkpoint(src, tmp_path / "out", options)
    assert {layer["residual_dtype"] for layer in report["layers"]} == {"unchanged"}
    for shard in sorted(src.glob("*.safetensors")):
        assert (tmp_path / "out" / shard.name).read_bytes() == shard.read_bytes()
    assert_same_model(apply_with(load_model(src), options), load_initialised(tmp_path / "out"))
