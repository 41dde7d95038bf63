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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ailora.errors import AiloraError

SLOT = "{input}"
DEFAULT_TEMPLATE = SLOT + "\nAnswer:"
KEEP = ("start", "end")
DECODING_DEFAULTS: dict[str, Any] = {"max_new_tokens": 32, "num_beams": 1, "length_penalty": 1.0,
                                     "no_repeat_ngram_size": 0}


@dataclass(frozen=True)
class PromptTemplate:
    """``head + body + tail``: ``template`` holds ``{input}`` once; ``keep`` is the end of the body kept."""

    template: str = DEFAULT_TEMPLATE
    keep: str = "start"

    def __post_init__(self) -> None:
        if self.template.count(SLOT) != 1:
            raise AiloraError(f"a prompt template must hold {SLOT} exactly once, got {self.template!r}")
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
    return {**DECODING_DEFAULTS, **given}
