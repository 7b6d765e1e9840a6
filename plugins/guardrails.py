"""Guardrails: block-lists, regexes and a prompt-injection heuristic, on input or output.

`block` stops the request (400 `guardrail_blocked`, naming the rule, never quoting the match);
`flag` lets it through and records the hit in the trace and the audit record. Output rules see
the answer's text and tool-call arguments; on a stream they see the text as it accumulates, and
a block cuts the stream with an error event.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from gateway.errors import GuardrailBlocked
from gateway.pipeline.messages import CARRIED, conversation, strings
from plugins.base import BasePlugin, Outcome, RequestContext
from plugins.settings import GuardrailConfig

# Phrases of the well-known injection and jailbreak families; a heuristic, not a classifier.
PROMPT_INJECTION = (
    r"ignore (all |any |the )?(previous|prior|above|earlier) (instructions|prompts|rules)",
    r"disregard (all |any |the )?(previous|prior|above|your) (instructions|rules|guidelines)",
    r"forget (all |everything )?(you were told|your instructions|previous instructions)",
    r"you are now (DAN|in developer mode|an unrestricted|jailbroken)",
    r"\bDAN mode\b|\bdeveloper mode (enabled|on)\b|\bjailbreak(ed)?\b",
    r"pretend (you are|to be) (an? )?(unfiltered|unrestricted|evil)",
    r"(reveal|print|show|repeat) (your|the) (system prompt|hidden instructions|initial prompt)",
    r"act as (an? )?(unfiltered|unrestricted|uncensored) (ai|assistant|model)",
)


@dataclass(frozen=True)
class Guardrail:
    name: str
    on: str
    action: str
    pattern: re.Pattern[str]

    @classmethod
    def compile(cls, cfg: GuardrailConfig) -> Guardrail:
        if cfg.type == "regex":
            if cfg.pattern is None:  # the config's own check refuses this first
                raise ValueError(f"guardrail {cfg.name!r}: a regex guardrail needs 'pattern'")
            pattern = re.compile(cfg.pattern)
        elif cfg.type == "blocklist":
            pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in cfg.words) + r")\b",
                                 re.IGNORECASE)
        else:
            pattern = re.compile("|".join(PROMPT_INJECTION), re.IGNORECASE)
        return cls(cfg.name, cfg.on, cfg.action, pattern)

    def hit(self, texts: Iterable[str]) -> bool:
        return any(self.pattern.search(t) for t in texts)


def answer_texts(answer: Mapping[str, Any] | None) -> list[str]:
    """The answer's text and tool-call arguments, what output rules see."""
    return [t.value for choice in (answer or {}).get("choices") or ()
            for t in strings(choice.get("message"), CARRIED)]


class GuardrailPlugin(BasePlugin):
    name = "guardrails"

    def __init__(self, rules: Iterable[GuardrailConfig]) -> None:
        compiled = [Guardrail.compile(r) for r in rules]
        self._input = [g for g in compiled if g.on == "input"]
        self._output = [g for g in compiled if g.on == "output"]
        self._streamed: dict[str, str] = {}

    async def on_request(self, ctx: RequestContext) -> None:
        texts = [t.value for t in conversation(ctx.body.get("messages"), CARRIED)]
        self._apply(ctx, self._input, texts, "input")

    async def on_response(self, ctx: RequestContext, outcome: Outcome) -> None:
        self._apply(ctx, self._output, answer_texts(outcome.answer), "output")

    def on_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> None:
        if not self._output:
            return
        text = "".join(c.get("delta", {}).get("content") or "" for c in chunk.get("choices", ()))
        if not text:
            return
        seen = self._streamed.get(ctx.request_id, "") + text
        self._streamed[ctx.request_id] = seen
        self._apply(ctx, self._output, [seen], "output", quiet=True)

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        self._streamed.pop(ctx.request_id, None)

    def _apply(self, ctx: RequestContext, rules: list[Guardrail], texts: list[str], side: str,
               quiet: bool = False) -> None:
        for rule in rules:
            if not rule.hit(texts):
                continue
            already = any(d["detail"] == rule.name for d in ctx.decisions)
            if rule.action == "flag":
                if not already:
                    ctx.decide(self.name, "flagged", rule.name)
                    trace.get_current_span().add_event(
                        "guardrail.flagged", {"rule": rule.name, "side": side})
                continue
            if not (quiet and already):
                ctx.decide(self.name, "blocked", rule.name)
            raise GuardrailBlocked(f"The {side} was blocked by guardrail {rule.name!r}.")
