"""Guardrails: block-lists, regexes and a prompt-injection heuristic, on input or output.

`block` stops the request (400 `guardrail_blocked`, naming the rule, never quoting the match);
`flag` lets it through and records the hit in the trace and the audit record. Output rules see
the answer's text and tool-call arguments; on a stream they see the text as it accumulates, and
a block cuts the stream with an error event.

No request may stall the gateway through its guardrails:
- a long input is searched in windows, yielding to the event loop between them (the windows
  overlap by `OVERLAP` characters, so a match up to that long is found wherever it falls);
- a stream is searched incrementally: each chunk's text (content, and each tool call's
  arguments, per choice) is searched together with the last `OVERLAP` characters before it,
  never the whole text again. A match longer than `OVERLAP` that spans chunks is not seen;
  patterns for streamed output should describe phrases, not pages.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from gateway.errors import GuardrailBlocked
from gateway.pipeline.messages import CARRIED, PROMPTED, request_strings, strings
from plugins.base import BasePlugin, Outcome, RequestContext
from plugins.settings import GuardrailConfig

WINDOW = 16 * 1024      # characters searched between two yields to the event loop
OVERLAP = 512           # the longest match found across a window or chunk boundary

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


def _reach(pattern: re.Pattern[str]) -> int:
    """The longest text the pattern can match, capped at OVERLAP. Uses the stdlib's own regex
    parser (re._parser, private but stable since 3.11; re-check on a Python upgrade): knowing
    that the injection phrases are at most ~40 characters makes each streamed chunk's search
    ~40 characters long instead of OVERLAP."""
    try:
        from re import _parser

        width = int(_parser.parse(pattern.pattern, pattern.flags).getwidth()[1])
    except Exception:  # an unknown parser: assume the worst
        return OVERLAP
    return max(1, min(width, OVERLAP))


@dataclass(frozen=True)
class Guardrail:
    name: str
    on: str
    action: str
    pattern: re.Pattern[str]
    reach: int = OVERLAP

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
        return cls(cfg.name, cfg.on, cfg.action, pattern, _reach(pattern))

    def hit(self, texts: Iterable[str]) -> bool:
        return any(self.pattern.search(t) for t in texts)

    async def hit_windowed(self, texts: Iterable[str]) -> bool:
        for text in texts:
            for start in range(0, max(len(text), 1), WINDOW):
                if self.pattern.search(text, start, start + WINDOW + OVERLAP):
                    return True
                if len(text) > WINDOW:
                    await asyncio.sleep(0)
        return False


def answer_texts(answer: Mapping[str, Any] | None) -> list[str]:
    """The answer's text and tool-call arguments, what output rules see."""
    return [t.value for choice in (answer or {}).get("choices") or ()
            for t in strings(choice.get("message"), CARRIED)]


def chunk_pieces(chunk: Mapping[str, Any]) -> Iterable[tuple[tuple[int, int], str]]:
    """The new text of a streamed chunk, keyed by (choice, -1 for content or the tool call's
    index), so that each piece is searched after its own earlier text."""
    for choice in chunk.get("choices") or ():
        index, delta = choice.get("index", 0), choice.get("delta") or {}
        if isinstance(delta.get("content"), str) and delta["content"]:
            yield (index, -1), delta["content"]
        for call in delta.get("tool_calls") or ():
            args = (call.get("function") or {}).get("arguments")
            if isinstance(args, str) and args:
                yield (index, int(call.get("index") or 0)), args


class GuardrailPlugin(BasePlugin):
    name = "guardrails"

    def __init__(self, rules: Iterable[GuardrailConfig]) -> None:
        compiled = [Guardrail.compile(r) for r in rules]
        self._input = [g for g in compiled if g.on == "input"]
        self._output = [g for g in compiled if g.on == "output"]
        # Per streaming request: the last OVERLAP characters of each piece's text.
        self._tails: dict[str, dict[tuple[int, int], str]] = {}

    async def on_request(self, ctx: RequestContext) -> None:
        texts = [t.value for t in request_strings(ctx.body, PROMPTED)]  # what the model reads
        for rule in self._input:
            if await rule.hit_windowed(texts):
                self._hit(ctx, rule, "input")

    async def on_response(self, ctx: RequestContext, outcome: Outcome) -> None:
        texts = answer_texts(outcome.answer)
        for rule in self._output:
            if await rule.hit_windowed(texts):
                self._hit(ctx, rule, "output")

    def on_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> None:
        if not self._output:
            return
        tails = self._tails.setdefault(ctx.request_id, {})
        for key, piece in chunk_pieces(chunk):
            tail = tails.get(key, "")
            window = tail + piece
            tails[key] = window[-OVERLAP:]
            for rule in self._output:
                # Only matches that reach into the new piece are new.
                if rule.pattern.search(window, max(0, len(tail) - rule.reach + 1)):
                    self._hit(ctx, rule, "output", quiet=True)

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        self._tails.pop(ctx.request_id, None)

    def _hit(self, ctx: RequestContext, rule: Guardrail, side: str,
             quiet: bool = False) -> None:
        already = any(d["detail"] == rule.name for d in ctx.decisions)
        if rule.action == "flag":
            if not already:
                ctx.decide(self.name, "flagged", rule.name)
                trace.get_current_span().add_event(
                    "guardrail.flagged", {"rule": rule.name, "side": side})
            return
        if not (quiet and already):
            ctx.decide(self.name, "blocked", rule.name)
        raise GuardrailBlocked(f"The {side} was blocked by guardrail {rule.name!r}.")
