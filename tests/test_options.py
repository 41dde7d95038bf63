"""One options dataclass per method family: declared once, its docstrings the help everywhere; the run
config's method section holds only the chosen method's; records written before still read and resume."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json

import pytest
import torch

import ailora
from ailora.cli.common import METHOD_ARGS, add_command, apply_options
from ailora.core.apply import ApplyOptions, apply, apply_with
from ailora.core.initialised import MARKER_FILE, load_initialised
from ailora.core.models import load_model
from ailora.core.options import (
    FAMILIES,
    HoulsbyOptions,
    LoraOptions,
    LoraTrainingOptions,
    NoOptions,
    VeraOptions,
    field_help,
)
from ailora.core.state import state_of
from ailora.core.streaming import initialise_checkpoint
from ailora.errors import AiloraError
from ailora.experiments.report import build_table
from ailora.experiments.sweep import summarize
from ailora.methods import METHODS, TrainMethod, get_method, register_method
from ailora.train import RunConfig, all_help
from ailora.train.config import comparable
from ailora.train.record import prepare_run_dir
from tests.test_report import _sweep
from tests.test_streaming import assert_same_model, save_sharded
from tests.tiny_models import tiny

# The method section exactly as ailora wrote it into config.json and results.json before each method had
# its own options: every option of every method, flat (this one: vera with vera_rank=64).
OLD_VERA_SECTION = {"name": "vera", "rank": 8, "alpha": None, "targets": None, "policy": None, "solver": "exact",
                    "dropout": 0.0, "use_rslora": False, "value_lr_ratio": None, "use_dora": False,
                    "loraplus_ratio": None, "bottleneck": 64, "vera_rank": 64}
OLD_DEFAULTS = {k: v for k, v in OLD_VERA_SECTION.items() if k not in ("name", "vera_rank")} | {"vera_rank": 256}


def _same_words(text: str) -> str:
    return " ".join(text.split())


def test_each_lora_option_has_one_help_text_shown_by_train_init_and_apply():
    docs = field_help(LoraTrainingOptions)
    keys = all_help()
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers(), "init", lambda a: 0, METHOD_ARGS, "", "")
    init = parser._subparsers._group_actions[0].choices["init"]
    init_help = {action.dest: action.help for action in init._actions}
    for name, doc in docs.items():
        assert keys[f"method.{name}"] == doc, name
        if name in {f.name for f in dataclasses.fields(LoraOptions)}:
            assert init_help[name].startswith(doc.rstrip(".")), name
            assert _same_words(f"{name}: {doc}") in _same_words(apply.__doc__), name
    for family in (VeraOptions, HoulsbyOptions):
        for name, doc in field_help(family).items():
            assert keys[f"method.{name}"] in (doc, docs.get(name)), name
    assert {"method.vera_rank", "method.bottleneck", "method.residual_dtype"} <= set(keys)
    assert "method.options" not in keys


def test_every_registered_method_names_a_family_and_its_config_holds_only_that_familys_options():
    for name, method in METHODS.items():
        cfg = RunConfig.from_dict({"task": {"name": "tiny-sentiment"}, "run_dir": "r", "method": {"name": name}})
        assert method.options in FAMILIES and type(cfg.method.options) is method.options, name
        fields = [f.name for f in dataclasses.fields(method.options)]
        assert list(cfg.to_dict()["method"]) == ["name", *fields], name
    assert get_method("bitfit").options is NoOptions and get_method("dora").options is LoraTrainingOptions


def test_option_values_are_checked_by_their_class_naming_the_key():
    for make, message in [(lambda: LoraOptions(rank=0), "rank must be a positive integer"),
                          (lambda: LoraOptions(alpha=float("nan")), "alpha must be a finite positive number"),
                          (lambda: LoraOptions(dropout=float("inf")), "dropout must be a finite number"),
                          (lambda: LoraOptions(residual_dtype="half"), "residual_dtype must be auto, model"),
                          (lambda: LoraTrainingOptions(loraplus_ratio=-1), "loraplus_ratio must be a finite positive"),
                          (lambda: VeraOptions(vera_rank=0), "vera_rank must be a positive integer"),
                          (lambda: HoulsbyOptions(bottleneck=2.5), "bottleneck must be a positive integer")]:
        with pytest.raises(AiloraError, match=message):
            make()
    with pytest.raises(AiloraError, match="^method.rank must be a positive integer, got 0$"):
        RunConfig.from_dict({"task": {"name": "t"}, "run_dir": "r"}, ["method.rank=0"])
    assert LoraOptions(targets="query, value").targets == ["query", "value"]  # as apply's targets= always read


def test_apply_takes_the_options_as_keywords_or_one_object_with_the_same_adapters_and_records_them():
    kw = {"rank": 2, "solver": "fast", "use_rslora": True, "targets": ["query", "value", "key"]}
    a = ailora.apply(tiny("gpt2"), method="pissa", seed=1, **kw)
    b = ailora.apply(tiny("gpt2"), method="pissa", seed=1, options=LoraOptions(**kw))
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb), na
    meta = state_of(a).metadata()
    assert meta["options"] == dataclasses.asdict(LoraOptions(**kw)) == state_of(b).metadata()["options"]
    assert (meta["rank"], meta["use_rslora"], meta["solver"], meta["use_dora"]) == (2, True, "fast", False)
    assert meta["alpha"] == 2.0 and meta["policy"] == {"query": "principal", "value": "principal", "key": "principal"}


def test_apply_refuses_an_unknown_or_training_keyword_in_one_line_and_leaves_the_model_alone():
    base = tiny("bert")
    before = copy.deepcopy(base.state_dict())
    for kwargs, message in [({"rnak": 2}, "unknown option 'rnak' of apply; options are: rank, alpha, targets"),
                            ({"loraplus_ratio": 16}, "loraplus_ratio is a training option"),
                            ({"options": LoraOptions(rank=2), "rank": 4}, "not both"),
                            ({"solver": "magic"}, "unknown solver 'magic'")]:
        with pytest.raises(AiloraError, match=message) as err:
            ailora.apply(base, **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(AiloraError, match="must be a LoraOptions"):
        ApplyOptions(lora=LoraTrainingOptions(value_lr_ratio=3.0))  # its lr ratio would be dropped silently
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    assert not any("lora_" in n for n, _ in base.named_modules())


def test_init_flags_keep_their_spellings_and_build_the_same_options():
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers(), "init", lambda a: 0, METHOD_ARGS, "", "")
    args = parser.parse_args(["init", "--rank", "4", "--alpha", "8", "--targets", "query,key", "--policy",
                              "key=minor", "--solver", "fast", "--rslora", "--seed", "3", "--no-head"])
    args.quiet, args.modules = True, None
    options = apply_options(args)
    assert options.lora == LoraOptions(rank=4, alpha=8.0, targets=["query", "key"], policy="key=minor",
                                       solver="fast", use_rslora=True)
    assert (options.seed, options.head) == (3, None)
    defaults = parser.parse_args(["init"])
    defaults.quiet, defaults.modules = True, None
    assert apply_options(defaults).lora == LoraOptions()


def _old_record(new: dict) -> dict:
    """``new`` (a config as this version writes it) with its method section as written before."""
    old = json.loads(json.dumps(new))
    old["method"] = {"name": new["method"]["name"], **OLD_DEFAULTS,
                     **{k: v for k, v in new["method"].items() if k != "name"}}
    return old


def test_a_run_dir_written_before_per_method_options_reads_and_resumes(tmp_path):
    new = RunConfig.from_dict({"task": {"name": "tiny-sentiment"}, "run_dir": str(tmp_path / "run"),
                               "method": {"name": "vera", "vera_rank": 64}})
    old = {**new.to_dict(), "method": OLD_VERA_SECTION}
    assert _old_record(new.to_dict()) == old
    assert RunConfig.from_dict(old).to_dict() == new.to_dict()  # the other methods' defaults dropped
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(old))
    assert prepare_run_dir(tmp_path / "run", True, False, new.identity()) is False  # resumable (no checkpoint)
    other = RunConfig.from_dict({**new.to_dict(), "method": {"name": "vera", "vera_rank": 32}})
    with pytest.raises(AiloraError, match="the config differs in method.vera_rank"):
        prepare_run_dir(tmp_path / "run", True, False, other.identity())
    assert comparable(old) == comparable(new.to_dict())


def test_an_old_record_with_a_non_default_option_of_another_method_is_refused_with_the_reason():
    with pytest.raises(AiloraError, match="method.rank=16 does not apply to method vera: VeRA's rank is"):
        RunConfig.from_dict({"task": {"name": "t"}, "run_dir": "r", "method": {**OLD_VERA_SECTION, "rank": 16}})


def test_report_reads_a_sweep_recorded_before_per_method_options(tmp_path):
    where = _sweep(tmp_path)
    table = build_table(summarize(where))
    for path in where.rglob("results.json"):
        results = json.loads(path.read_text())
        results["config"] = _old_record(results["config"])
        assert "bottleneck" in results["config"]["method"]
        path.write_text(json.dumps(results))
        (path.parent / "config.json").write_text(json.dumps(results["config"]))
    assert build_table(summarize(where)) == table


def test_a_streaming_init_marker_written_before_use_dora_was_recorded_still_starts(tmp_path):
    src = save_sharded("llama", tmp_path / "src")
    options = ApplyOptions.of(method="pissa", rank=2, targets=["query", "value", "key"], progress=False)
    initialise_checkpoint(src, tmp_path / "out", options)
    marker = json.loads((tmp_path / "out" / MARKER_FILE).read_text())
    assert marker["options"]["use_dora"] is False
    del marker["options"]["use_dora"]  # as written before: targets as given, no use_dora
    marker["options"]["targets"] = "query,value,key"
    (tmp_path / "out" / MARKER_FILE).write_text(json.dumps(marker))
    assert_same_model(load_initialised(tmp_path / "out"), apply_with(load_model(src), options))


@dataclasses.dataclass(frozen=True)
class WidthOptions:
    width: int = 3
    """How wide the toy method's thing is (toy only)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""


def test_a_registered_method_names_its_own_options_class_and_the_run_config_holds_it():
    seen = []

    def prepare(model, cfg, seed):
        seen.append(cfg.options)
        return get_method("full").prepare(model, cfg, seed)

    register_method(TrainMethod("toy-width", prepare, get_method("full").save, "a toy", WidthOptions), replace=True)
    cfg = RunConfig.from_dict({"task": {"name": "tiny-sentiment"}, "run_dir": "r", "method": {"name": "toy-width"}},
                              ["method.width=5"])
    assert cfg.method.options == WidthOptions(width=5) and cfg.to_dict()["method"] == {"name": "toy-width", "width": 5,
                                                                                       "dropout": 0.0}
    assert all_help()["method.width"] == "How wide the toy method's thing is (toy only)."
    get_method("toy-width").prepare(tiny("bert"), cfg.method, 0)
    assert seen == [WidthOptions(width=5)]
    with pytest.raises(AiloraError, match="method.width=5 does not apply to method ailora: width is how wide"):
        RunConfig.from_dict({"task": {"name": "t"}, "run_dir": "r"}, ["method.width=5"])

    @dataclasses.dataclass(frozen=True)
    class Clash:
        dropout: float = 0.5
        """Another default for a shared option."""

    with pytest.raises(AiloraError, match="option dropout of Clash differs in type or default"):
        register_method(TrainMethod("toy-clash", prepare, get_method("full").save, "", Clash))
    assert "toy-clash" not in METHODS
