"""Prompt sizes for routing decisions (context-window filter, rule bounds, cost estimate).

Counting a prompt exactly (tiktoken, with the encoding litellm ships, so nothing is downloaded
and litellm itself need not be imported) costs about 100 µs per request and 40 MB of memory.
Most prompts are far from every threshold a decision compares them with, so `TokenGauge` counts
exactly only when it could matter: every BPE token is at least one byte, so a prompt's UTF-8 size
bounds its token count from above, and when that bound stays under the smallest context window
and rule bound in the config, an estimate decides exactly as the exact count would. The estimate
is also what limits and budgets reserve before the call; billing always settles to the
upstream's reported usage.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, NamedTuple

from gateway.pipeline.messages import Kind, strings
from routing.pricemap import litellm_package_dir

# OpenAI's documented overhead per message and per reply in chat formatting.
_PER_MESSAGE = 3
_PER_REPLY = 3
# OpenAI bills a low-detail image at 85 tokens; routing uses it as a floor for any image part.
_PER_IMAGE = 85
# Bytes per token for the estimate: OpenAI's rule of thumb for English text. Reservations made
# with it are settled to the upstream's reported usage after the call.
_BYTES_PER_TOKEN = 4
# A prompt whose bound is within this factor of a threshold starts loading the tokenizer.
_PREFETCH_AT = 4
# What a prompt is counted from: its text, its tool calls, its images (a fixed cost each).
_COUNTED: frozenset[Kind] = frozenset({"content", "text", "tool_name", "tool_arguments", "image"})
# What an answer produced: its text, refusals and tool calls.
_ANSWERED: frozenset[Kind] = frozenset({"content", "text", "refusal", "tool_name",
                                        "tool_arguments"})


_load_lock = threading.Lock()
_prefetching = False


@lru_cache(maxsize=1)
def _encoding() -> Any:
    with _load_lock:  # one load, whether a prefetch or a request gets here first
        import tiktoken  # ~40 MB once loaded: only when some prompt nears a threshold

        pkg = litellm_package_dir()
        if pkg is not None:
            # tiktoken looks for its cached BPE files here; litellm bundles cl100k_base's.
            os.environ.setdefault("TIKTOKEN_CACHE_DIR",
                                  str(pkg / "litellm_core_utils" / "tokenizers"))
        return tiktoken.get_encoding("cl100k_base")


def loaded() -> bool:
    return _encoding.cache_info().currsize > 0


def _prefetch() -> None:
    """Loads the encoding (~0.2 s) on a thread, before a request has to wait for it."""
    global _prefetching
    if _prefetching or loaded():
        return
    _prefetching = True
    threading.Thread(target=_encoding, name="podium-tiktoken-load", daemon=True).start()


def count_text(text: str) -> int:
    """The exact token count (cl100k_base)."""
    return len(_encoding().encode_ordinary(text)) if text else 0


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class Size(NamedTuple):
    tokens: int
    exact: bool


class TokenGauge:
    """Token counts that are exact wherever a routing decision could depend on them.

    `exact_from` is the smallest number a decision compares a prompt with (a deployment's
    context window, a rule's token bound); None when nothing compares, so nothing is counted.
    """

    def __init__(self, exact_from: int | None) -> None:
        self.exact_from = exact_from

    def messages(self, messages: Iterable[Mapping[str, Any]], headroom: int = 0) -> Size:
        """A chat prompt's size; `headroom` is added to the bound before comparing (the output
        tokens asked for, which share the context window)."""
        texts, fixed = _message_texts(messages)
        return self._size(texts, fixed, headroom)

    def texts(self, texts: Iterable[str]) -> Size:
        return self._size(list(texts), 0, 0)

    def _size(self, texts: list[str], fixed: int, headroom: int) -> Size:
        bound = estimate = fixed   # the bytes (a bound on the tokens), and the estimate
        for t in texts:
            n = len(t) if t.isascii() else len(t.encode("utf-8", "surrogatepass"))  # _utf8_len
            bound += n
            estimate += -(-n // _BYTES_PER_TOKEN)
        limit = self.exact_from
        if limit is None or bound + headroom < limit:
            if limit is not None and _PREFETCH_AT * bound + headroom >= limit:
                _prefetch()  # conversations grow: the next prompt may need an exact count
            return Size(estimate, False)
        return Size(fixed + sum(count_text(t) for t in texts), True)


def _message_texts(messages: Iterable[Mapping[str, Any]]) -> tuple[list[str], int]:
    """The prompt's strings, and the tokens it costs besides them (message framing, images)."""
    texts: list[str] = []
    fixed = _PER_REPLY
    for message in messages:
        fixed += _PER_MESSAGE
        if isinstance(message, dict):
            content = message.get("content")
            # The usual message, text and no tool calls: its content is its only counted string.
            if isinstance(content, str) and not isinstance(message.get("tool_calls"), list):
                texts.append(content)
                continue
        for text in strings(message, _COUNTED):
            if text.kind == "image":
                fixed += _PER_IMAGE
            else:
                texts.append(text.value)
    return texts, fixed


# ---- counting what an upstream did not report ---------------------------------------------

def count_or_estimate(text: str) -> int:
    """Tokens in `text` for billing an answer whose upstream reported no usage: exact when the
    tokenizer is loaded, else estimated at 4 bytes per token (and the tokenizer starts loading
    on a thread, so the event loop never waits for it)."""
    if loaded():
        return count_text(text)
    _prefetch()
    return -(-_utf8_len(text) // _BYTES_PER_TOKEN)


def prompt_usage(messages: Iterable[Mapping[str, Any]]) -> int:
    """A prompt's tokens, for the same purpose: its texts plus the chat format's overhead."""
    texts, fixed = _message_texts(messages)
    return fixed + sum(count_or_estimate(t) for t in texts)


def unreported_usage(operation: str, request: Mapping[str, Any],
                     answer: Mapping[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens counted locally, for an answer that came without a sane
    usage: an upstream must not make a call free by leaving usage out."""
    if operation == "embeddings":
        given = request.get("input")
        inputs = given if isinstance(given, list) else [given]
        return sum(count_or_estimate(i) if isinstance(i, str) else
                   len(i) if isinstance(i, list) else 1 for i in inputs), 0
    messages = request.get("messages")
    prompt = prompt_usage(messages if isinstance(messages, list) else [])
    choices = answer.get("choices")
    produced = [t.value for c in (choices if isinstance(choices, list) else ())
                if isinstance(c, Mapping) for t in strings(c.get("message"), _ANSWERED)]
    return prompt, sum(count_or_estimate(t) for t in produced)
