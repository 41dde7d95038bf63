"""Prompt templates and decoding defaults of generation tasks: data in a task's ``options``.

A generation example is ``{"prompt": body, "target": text}``; the task's template puts the body
between an instruction and an answer cue, e.g. ``"Question: {input}\\nAnswer:"``, so the model
sees where its answer starts. ``keep`` says which end of an over-long body survives truncation
(``start``: a document's beginning, for summaries; ``end``: the question at the end of a word
problem); the instruction and the cue are never cut. In a spec::

    options={"prompt": {"template": "Summarize the article.\\n\\nArticle: {input}\\n\\nSummary:",
                        "keep": "start"},
             "decoding": {"max_new_tokens": 64, "no_repeat_ngram_size": 3}}

Tasks without a template get ``"{input}\\nAnswer:"``; decoding keys a task leaves out take
:data:`DECODING_DEFAULTS` (greedy, 32 new tokens).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ailora.errors import AiloraError

SLOT = "{input}"
DEFAULT_TEMPLATE = SLOT + "\nAnswer:"
KEEP = ("start", "end")
DECODING_DEFAULTS: dict[str, Any] = {"max_new_tokens": 32, "num_beams": 1, "length_penalty": 1.0,
                                     "no_repeat_ngram_size": 0}
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def template_problem(template: Any) -> str | None:
    """What is wrong with ``template`` as a prompt template (a phrase), or None when it is good:
    ``{input}`` exactly once and no other ``{...}`` placeholder."""
    if not isinstance(template, str):
        return f"must be a string, got {template!r}"
    unknown = [f for f in _PLACEHOLDER.findall(template) if "{" + f + "}" != SLOT]
    if unknown:
        return f"has an unknown placeholder {{{unknown[0]}}} (only {SLOT} is filled in)"
    if template.count(SLOT) != 1:
        return f"must hold {SLOT} exactly once, got {template!r}"
    return None


def decoding_problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for decoding setting ``key`` (a phrase), or None: counts are
    positive ints (``no_repeat_ngram_size`` may be 0, off), ``length_penalty`` a finite number."""
    if key not in DECODING_DEFAULTS:
        return f"is not a decoding setting (known: {', '.join(DECODING_DEFAULTS)})"
    if key == "length_penalty":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        return None
    least = 0 if key == "no_repeat_ngram_size" else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        return f"must be an integer >= {least}, got {value!r}"
    return None


@dataclass(frozen=True)
class PromptTemplate:
    """``head + body + tail``: ``template`` holds ``{input}`` once; ``keep`` is the end of the body kept."""

    template: str = DEFAULT_TEMPLATE
    keep: str = "start"

    def __post_init__(self) -> None:
        problem = template_problem(self.template)
        if problem:
            raise AiloraError(f"a prompt template {problem}")
        if self.keep not in KEEP:
            raise AiloraError(f"a prompt template's keep must be one of {', '.join(KEEP)}, got {self.keep!r}")

    @property
    def head(self) -> str:
        """The instruction before the body."""
        return self.template.split(SLOT)[0]

    @property
    def tail(self) -> str:
        """The answer cue after the body."""
        return self.template.split(SLOT)[1]

    def render(self, body: str) -> str:
        return self.head + body + self.tail


def prompt_template(spec) -> PromptTemplate:
    """The template of ``spec`` (a TaskSpec): its ``options["prompt"]``, or the default."""
    given = spec.options.get("prompt") or {}
    if isinstance(given, str):
        given = {"template": given}
    if not isinstance(given, Mapping) or set(given) - {"template", "keep"}:
        raise AiloraError(f"task {spec.name!r}: options['prompt'] must be a template string or "
                          f"{{'template': ..., 'keep': 'start' | 'end'}}, got {given!r}")
    return PromptTemplate(**given)


def decoding_defaults(spec) -> dict[str, Any]:
    """The decoding settings of ``spec``: :data:`DECODING_DEFAULTS` updated by ``options["decoding"]``."""
    given = dict(spec.options.get("decoding") or {})
    unknown = sorted(set(given) - set(DECODING_DEFAULTS))
    if unknown:
        raise AiloraError(f"task {spec.name!r}: unknown decoding key {unknown[0]!r} "
                          f"(known: {', '.join(DECODING_DEFAULTS)})")
    for key, value in given.items():
        problem = decoding_problem(key, value)
        if problem:
            raise AiloraError(f"task {spec.name!r}: decoding {key!r} {problem}")
    return {**DECODING_DEFAULTS, **given}
