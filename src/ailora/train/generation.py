"""Generation tasks: prompts (template, chat template, truncation), tokenised examples, decoding settings.

A prompt is the task's template around the example's body (``ailora.tasks.prompts``); for a
causal LM whose tokenizer has a chat template (and ``generation.chat_template`` on) the rendered
prompt is the user turn and the answer is the assistant turn. An over-long prompt loses tokens
from its body only, at the end the template does not keep, so the instruction and the answer
cue always survive.

Causal LMs train on ``prompt + target + eos`` with the loss on the target; encoder-decoders take
the prompt as encoder input and the target as labels (the model shifts them into decoder inputs),
so the loss is on the target there too. :class:`Generation` is the task kind (``ailora.train.kinds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ailora.core.models import is_encoder_decoder
from ailora.errors import AiloraError
from ailora.tasks.prompts import decoding_defaults, prompt_template
from ailora.train.data import IGNORE_INDEX, Encoded, collate, eval_batch
from ailora.train.evaluate import Evaluation, score_targets

_SLOT = "\x00ailora-slot\x00"


@dataclass(frozen=True)
class PromptFormat:
    """Text before and after an example's body, which end of the body to keep, and whether the
    text carries its own special tokens (a chat template) or the tokenizer adds them."""

    head: str
    tail: str
    keep: str = "start"
    chat: bool = False

    def render(self, body: str) -> str:
        return self.head + body + self.tail


def prompt_format(spec, tokenizer, use_chat: bool = True, seq2seq: bool = False) -> PromptFormat:
    """The prompt format of task ``spec`` for ``tokenizer``: the chat template's user turn around the
    task's template when the tokenizer has one, ``use_chat`` is on and the model is a causal LM."""
    t = prompt_template(spec)
    if use_chat and not seq2seq and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": _SLOT}], tokenize=False,
                                             add_generation_prompt=True)
        if text.count(_SLOT) == 1:
            pre, post = text.split(_SLOT)
            return PromptFormat(pre + t.head, t.tail + post, t.keep, chat=True)
    return PromptFormat(t.head, t.tail, t.keep)


def prompt_ids(tokenizer, fmt: PromptFormat, body: str, room: int) -> list[int]:
    """Token ids of ``fmt.render(body)``, at most ``room``: the body is cut, never the head or the tail."""
    specials = not fmt.chat

    def ids_of(text: str) -> list[int]:
        return tokenizer(fmt.render(text), add_special_tokens=specials)["input_ids"]

    ids = ids_of(body)
    if len(ids) <= room:
        return ids
    body_ids = tokenizer(body, add_special_tokens=False)["input_ids"]
    excess = len(ids) - room
    for _ in range(4):  # re-tokenising the cut text can merge tokens differently at its edges
        n = max(0, len(body_ids) - excess)
        kept = body_ids[:n] if fmt.keep == "start" else body_ids[len(body_ids) - n:]
        ids = ids_of(tokenizer.decode(kept, skip_special_tokens=True) if kept else "")
        if len(ids) <= room:
            return ids
        if not kept:
            break
        excess += len(ids) - room
    raise AiloraError(f"{room} tokens leave no room for the prompt's instruction and answer cue "
                      f"({len(ids)} tokens without the input); raise model.max_length")


def _target_ids(tokenizer, fmt: PromptFormat, target: str, limit: int) -> list[int]:
    # Without a chat template the answer follows a cue such as "Answer:": a space keeps its first
    # word the token it is in running text.
    text = target if fmt.chat or not fmt.tail or fmt.tail[-1].isspace() else " " + target
    return tokenizer(text, add_special_tokens=False)["input_ids"][:max(1, limit - 1)] + [tokenizer.eos_token_id]


def encode_causal_lm(tokenizer, examples: list[dict], fmt: PromptFormat, max_length: int, max_target: int,
                     for_generation: bool, max_new_tokens: int) -> list[Encoded]:
    """Prompt + target + eos, labels -100 on the prompt (training); the prompt alone (generation)."""
    if tokenizer.eos_token_id is None:
        raise AiloraError("the tokenizer has no eos token; a causal LM needs one to end its answers")
    out = []
    for ex in examples:
        if for_generation:
            out.append(Encoded(prompt_ids(tokenizer, fmt, ex["prompt"], max(1, max_length - max_new_tokens)),
                               ex["target"]))
            continue
        target = _target_ids(tokenizer, fmt, ex["target"], min(max_target, max(2, max_length // 2)))
        prompt = prompt_ids(tokenizer, fmt, ex["prompt"], max_length - len(target))
        out.append(Encoded(prompt + target, ex["target"], labels=[IGNORE_INDEX] * len(prompt) + target))
    return out


def encode_seq2seq(tokenizer, examples: list[dict], fmt: PromptFormat, max_length: int, max_target: int,
                   for_generation: bool) -> list[Encoded]:
    """Encoder input = the prompt; labels = the target's ids with the tokenizer's specials (training)."""
    out = []
    for ex in examples:
        ids = prompt_ids(tokenizer, fmt, ex["prompt"], max_length)
        labels = None
        if not for_generation:
            labels = tokenizer(text_target=ex["target"], truncation=True, max_length=max_target)["input_ids"]
        out.append(Encoded(ids, ex["target"], labels=labels))
    return out


def decoding(cfg, spec) -> dict:
    """``generate`` settings: the config's ``generation`` keys where set, else the task's defaults."""
    g = cfg.generation
    out = decoding_defaults(spec)
    for key in out:
        if getattr(g, key) is not None:
            out[key] = getattr(g, key)
    return out


def generate_kwargs(settings: dict, tokenizer) -> dict:
    """Keyword arguments of ``model.generate``: greedy when ``num_beams`` is 1, beam search otherwise."""
    kw = {"max_new_tokens": settings["max_new_tokens"], "num_beams": settings["num_beams"], "do_sample": False,
          "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if settings["num_beams"] > 1:
        kw.update(length_penalty=settings["length_penalty"], early_stopping=True)
    if settings["no_repeat_ngram_size"]:
        kw["no_repeat_ngram_size"] = settings["no_repeat_ngram_size"]
    return kw


def encode_generation(cfg, spec, tokenizer, examples: list[dict], seq2seq: bool, train_split: bool) -> list[Encoded]:
    """One split of a generation task, for the model kind at hand."""
    fmt = prompt_format(spec, tokenizer, cfg.generation.chat_template, seq2seq)
    m, g = cfg.model, cfg.generation
    if seq2seq:
        return encode_seq2seq(tokenizer, examples, fmt, m.max_length, g.max_target_length, not train_split)
    return encode_causal_lm(tokenizer, examples, fmt, m.max_length, g.max_target_length, not train_split,
                            decoding(cfg, spec)["max_new_tokens"])


class Generation:
    """The generation task kind: a causal LM, or a seq2seq LM on an encoder-decoder checkpoint,
    trained on the answer tokens; its prediction is the decoding of the prompt."""

    calibrates: ClassVar[bool] = False

    def __init__(self, cfg, spec) -> None:
        self.cfg, self.spec = cfg, spec

    @classmethod
    def for_run(cls, cfg, data) -> Generation:
        return cls(cfg, data.spec)

    def model_kind(self, seq2seq: bool) -> str:
        return "seq2seq-lm" if seq2seq else "causal-lm"

    def check_checkpoint(self, path: Path, config) -> None:
        """An encoder-only checkpoint (BERT, MiniLM, RoBERTa...: a masked LM that was not trained as a
        decoder) is an error: transformers would build it as a causal LM with a fresh, untrained
        head, which generates nothing meaningful."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

        archs = " ".join(getattr(config, "architectures", None) or [])
        if (not is_encoder_decoder(config) and not getattr(config, "is_decoder", False)
                and config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
                and "CausalLM" not in archs and "LMHeadModel" not in archs):
            raise AiloraError(f"{path} is an encoder ({config.model_type}, {archs or 'no architecture'}); a generation "
                              "task needs a decoder (causal LM) or an encoder-decoder checkpoint")

    def head(self) -> dict[str, Any]:
        return {}

    def encode(self, split: str, examples: list[dict], model) -> list[Encoded]:
        return encode_generation(self.cfg, self.spec, model.tokenizer, examples, model.is_seq2seq, split == "train")

    def batch(self, items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        batch = collate(items, pad_id)
        if not (batch["labels"] != IGNORE_INDEX).any():
            raise AiloraError("a training batch has no answer tokens; raise model.max_length")
        return batch

    def predict(self, acc, net, items: list[Encoded], model) -> list[str]:
        """The decoded answers; a causal LM's prompts are left-padded so that each ends where its answer starts.
        Under FSDP2 the processes decode in step (``synced_gpus``: the default of a model sharded by
        ``ailora.train.sharding.shard_model``)."""
        tok = model.tokenizer
        batch = eval_batch(items, tok.pad_token_id, acc.device, left=not model.is_seq2seq)
        kw = generate_kwargs(decoding(self.cfg, self.spec), tok)
        out = acc.unwrap_model(net).generate(**batch, **kw)
        new = out if model.is_seq2seq else out[:, batch["input_ids"].shape[1]:]  # a causal LM returns the prompt too
        return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]

    def score(self, predictions: list, items: list[Encoded], examples: list[dict], calibration) -> Evaluation:
        return score_targets(self.spec, predictions, items)

    def rows(self, examples: list[dict], items: list[Encoded], predictions: list, model) -> list[dict]:
        """The input as the model saw it (template, chat template, truncation)."""
        return [{"input": model.tokenizer.decode(e.input_ids), "reference": e.target, "prediction": p}
                for e, p in zip(items, predictions)]
