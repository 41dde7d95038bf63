"""Generation tasks: encoder-decoders (tiny BART and T5), prompt templates, truncation, chat templates,
decoding settings, predictions files and eval_before; tiny models built in code, seconds on a CPU."""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

import ailora
from ailora.core.models import load_model
from ailora.errors import AiloraError
from ailora.tasks import TaskSpec, get_task, register_task
from ailora.tasks.prompts import PromptTemplate, decoding_defaults, prompt_template
from ailora.train import RunConfig, train
from ailora.train.generation import PromptFormat, decoding, encode_seq2seq, prompt_format, prompt_ids
from ailora.train.loop import trainable_parameters
from tests.tiny_models import build, save_tiny_bert, save_tiny_seq2seq, word_tokenizer

WORDS = "red blue green gold pink grey teal navy lime plum".split()
XSUM = get_task("xsum")


def _docs(spec, data_dir, n=64):
    """xsum-format rows: a 6-word document, its 'summary' the first two words."""
    rng = random.Random(3)
    rows = [{"document": " ".join(rng.choice(WORDS) for _ in range(6))} for _ in range(n)]
    return {"all": [{"prompt": r["document"], "target": " ".join(r["document"].split()[:2])} for r in rows]}


register_task(TaskSpec("tiny-xsum", "first two words of six", "generation", ("rougeL", "rouge1"), _docs,
                       options=dict(XSUM.options), validation_size=8, test_size=8), replace=True)
VOCAB_TEXTS = [" ".join(WORDS), XSUM.options["prompt"]["template"]]


@pytest.fixture(scope="module", params=["bart", "t5"])
def seq2seq_dir(request, tmp_path_factory):
    return request.param, save_tiny_seq2seq(request.param, tmp_path_factory.mktemp(request.param), VOCAB_TEXTS)


def _cfg(model_dir, run_dir, *overrides):
    base = {"model": {"name": str(model_dir), "max_length": 48}, "task": {"name": "tiny-xsum"},
            "run_dir": str(run_dir), "method": {"name": "ailora", "rank": 4, "targets": ["query", "value"]},
            "generation": {"max_new_tokens": 6},
            "train": {"lr": 0.2, "epochs": 6, "batch_size": 8, "progress": False, "tensorboard": False,
                      "eval_before": True}}
    return RunConfig.from_dict(base, list(overrides))


def test_encoder_decoder_trains_on_the_target(seq2seq_dir, tmp_path):
    family, model_dir = seq2seq_dir
    res = train(_cfg(model_dir, tmp_path / "run"))
    run = tmp_path / "run"
    assert res["status"] == "complete"
    assert res["epochs"][-1]["train_loss"] < res["epochs"][0]["train_loss"] - 0.2
    # eval_before: the untrained model's scores on every evaluation split, as step 0.
    assert res["evaluations"][0]["step"] == 0 and res["before"]["validation"] == res["evaluations"][0]["validation"]
    assert set(res["before"]) == {"validation", "test"} and "rougeL" in res["before"]["test"]
    # Adapters on the encoder's and the decoder's layers (cross-attention included).
    keys = list(load_file(run / "adapter" / "adapter_model.safetensors"))
    assert any(".encoder." in k for k in keys) and any(".decoder." in k for k in keys)
    assert any(("encoder_attn" in k) or ("EncDecAttention" in k) for k in keys)
    # A predictions file per evaluated split: the model's input shows the template and the cue.
    rows = [json.loads(x) for x in (run / "predictions" / f"test-step{res['steps']}.jsonl").read_text().splitlines()]
    assert len(rows) == res["task"]["sizes"]["test"] and set(rows[0]) == {"input", "reference", "prediction"}
    assert "Summary:" in rows[0]["input"] and (run / "predictions" / "validation-step0.jsonl").is_file()
    # The adapter reproduces the trained model on the ORIGINAL base.
    base = load_model(model_dir, kind="seq2seq-lm")
    loaded = ailora.load(base, run / "adapter")
    trained = ailora.apply(load_model(model_dir, kind="seq2seq-lm"), method="ailora", rank=4,
                           targets=["query", "value"])
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["trainable"]
    for name, p in trainable_parameters(trained).items():
        p.data.copy_(ckpt[name])
    ids = torch.tensor([[5, 6, 7, 8, 2]])
    dec = torch.tensor([[0, 5, 6]])
    trained.eval(), loaded.eval()
    out_t = trained(input_ids=ids, decoder_input_ids=dec).logits
    assert torch.allclose(out_t, loaded(input_ids=ids, decoder_input_ids=dec).logits, atol=1e-4)
    untrained = load_model(model_dir, kind="seq2seq-lm").eval()
    assert not torch.allclose(out_t, untrained(input_ids=ids, decoder_input_ids=dec).logits, atol=1e-4)


def test_model_kind_must_fit_the_checkpoint(seq2seq_dir, tmp_path):
    _, model_dir = seq2seq_dir
    with pytest.raises(AiloraError, match="encoder-decoder"):
        train(_cfg(model_dir, tmp_path / "a", "model.kind=causal-lm"))
    with pytest.raises(AiloraError, match="seq2seq-lm"):
        load_model(model_dir, kind="causal-lm")
    assert not (tmp_path / "a" / "results.json").exists()


def test_an_encoder_checkpoint_is_refused_for_generation(tmp_path):
    """A BERT-like encoder would load as a causal LM with an untrained head: an error, nothing written."""
    bert_dir = save_tiny_bert(tmp_path / "bert")
    with pytest.raises(AiloraError, match=r"is an encoder \(bert, BertModel\); a generation task needs a decoder"):
        train(_cfg(bert_dir, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_classification_heads_on_encoder_decoders_pass_the_output_check():
    """BART's and T5's classification heads are found and trained in full, the output check runs and
    passes, and the adapted model's logits are the original model's."""
    for family, cls in (("bart", T.BartForSequenceClassification), ("t5", T.T5ForSequenceClassification)):
        model = build(family, cls, dropout=False).eval()
        eos = model.config.eos_token_id  # both heads read the hidden state at the end-of-sequence token
        ids = torch.tensor([[5, 6, 7, 8, eos], [9, 10, 11, 12, eos]])
        with torch.no_grad():
            before = model(input_ids=ids).logits
        adapted = ailora.apply(model, rank=4).eval()
        state = adapted.ailora_state
        assert state.check["passed"] and state.check["layers"]["count"] == len(state.targets) > 0, family
        assert state.check["untouched"]["passed"] and state.check["untouched"]["changed"] == [], family
        assert state.report()["head"] == ["classification_head"], family
        assert any(".classification_head.modules_to_save." in n for n in trainable_parameters(adapted)), family
        with torch.no_grad():
            torch.testing.assert_close(adapted(input_ids=ids).logits, before, atol=1e-5, rtol=0)


def test_prompt_truncation_keeps_instruction_and_cue():
    body = " ".join(WORDS * 5)
    tok = word_tokenizer([body, "Question: Answer:"], bos=False)
    for keep, kept_word in (("start", "red"), ("end", "plum")):
        fmt = PromptFormat("Question: ", "\nAnswer:", keep)
        ids = prompt_ids(tok, fmt, body, 12)
        words = tok.decode(ids, skip_special_tokens=True).split()
        assert len(ids) == 12 and words[0] == "Question:" and words[-1] == "Answer:"
        assert (words[1] if keep == "start" else words[-2]) == kept_word
    with pytest.raises(AiloraError, match="no room"):
        prompt_ids(tok, PromptFormat("Question: ", "\nAnswer:"), body, 2)


def test_templates_are_task_data_and_decoding_defaults_fit_the_task():
    assert prompt_template(XSUM).keep == "start" and prompt_template(get_task("asdiv")).tail == "\nAnswer:"
    assert decoding_defaults(XSUM)["max_new_tokens"] == 64 and decoding_defaults(get_task("asdiv"))["num_beams"] == 1
    with pytest.raises(AiloraError, match="exactly once"):
        PromptTemplate("no slot")
    cfg = RunConfig.from_dict({"task": {"name": "xsum"}, "run_dir": "x"},
                              ["generation.num_beams=4", "generation.length_penalty=0.8"])
    assert decoding(cfg, XSUM) == {"max_new_tokens": 64, "num_beams": 4, "length_penalty": 0.8,
                                   "no_repeat_ngram_size": 3}


def test_chat_template_wraps_the_prompt_unless_turned_off():
    tok = word_tokenizer(["Question: Answer: user assistant 1 2"], bos=False)
    tok.chat_template = "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s>{% endfor %}" \
                        "{% if add_generation_prompt %}<s> assistant{% endif %}"
    fmt = prompt_format(get_task("asdiv"), tok)
    assert fmt.chat and fmt.head.startswith("<s> user Question: ") and fmt.tail.endswith("</s><s> assistant")
    assert not prompt_format(get_task("asdiv"), tok, use_chat=False).chat
    assert not prompt_format(get_task("asdiv"), tok, seq2seq=True).chat


def test_seq2seq_labels_are_the_target():
    tok = word_tokenizer([" ".join(WORDS)])
    enc = encode_seq2seq(tok, [{"prompt": "red blue", "target": "gold"}], PromptFormat("", ""), 16, 8, False)
    assert enc[0].labels == tok(text_target="gold")["input_ids"] and enc[0].input_ids == tok("red blue")["input_ids"]


def test_progtuning_on_an_encoder_decoder(seq2seq_dir, tmp_path):
    _, model_dir = seq2seq_dir
    res = train(_cfg(model_dir, tmp_path / "p", "progressive.stages=2", "progressive.boundary=steps",
                     "train.epochs=2", "train.eval_before=false"))
    stages = res["progressive"]["per_stage"]
    assert res["progressive"]["num_blocks"] == 4 and [s["blocks"] for s in stages] == [[0, 1, 2, 3], [2, 3]]
    assert stages[1]["active_parameters"] < stages[0]["active_parameters"] and stages[1]["steps"] > 0
