"""The HTTP side of an OpenAI-compatible upstream, shared by every API it speaks (chat
completions, embeddings, responses): server-sent events split as they arrive, and failed
requests classified into `ProviderError`s, with secrets removed from their text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from gateway.errors import ErrorKind, ProviderError, parse_retry_after, redact
from routing.providers.base import Attempt

_MAX_MESSAGE = 500


class EventSplitter:
    """Incremental server-sent events: bytes as they arrive in, each event's `data` out.

    Lines may end in \\n or \\r\\n and arrive split across reads; comments (`:`) and the other
    fields (`event:`, `id:`, `retry:`) are ignored; a blank line ends an event. A line still
    arriving is kept as its pieces and joined once, when it ends: re-joining it on every read
    would cost time quadratic in its length."""

    __slots__ = ("_data", "_tail")

    def __init__(self) -> None:
        self._tail: list[bytes] = []
        self._data: list[bytes] = []

    def feed(self, piece: bytes) -> list[bytes]:
        if b"\n" not in piece:
            if piece:
                self._tail.append(piece)
            return []
        if self._tail:
            self._tail.append(piece)
            piece, self._tail = b"".join(self._tail), []
        lines = piece.split(b"\n")
        last = lines.pop()
        if last:
            self._tail.append(last)
        events: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
        return events

    def end(self) -> list[bytes]:
        return self.feed(b"\n\n") if self._tail or self._data else []


def http_error(resp: aiohttp.ClientResponse, raw: bytes, attempt: Attempt) -> ProviderError:
    message, code = error_fields(_loads_or_none(raw))
    status = resp.status
    return ProviderError(_kind(status, code, message or ""),
                         message_for(message or resp.reason or f"HTTP {status}", attempt),
                         status=status, code=code, retry_after_s=_retry_after(resp.headers))


def transport_error(exc: BaseException, attempt: Attempt) -> ProviderError:
    # aiohttp's timeout errors are also connection errors: decide on timeout first.
    kind: ErrorKind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "connection"
    detail = str(exc) or type(exc).__name__
    if kind == "timeout":
        detail = f"no answer within {attempt.timeout_s:g}s"
    return ProviderError(kind, message_for(detail, attempt))


def _loads_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # an HTML page from a proxy, an empty body: the status text will do


def error_fields(body: Any) -> tuple[str | None, str | None]:
    """(message, code) from OpenAI's `{"error": {...}}`, a bare `{"error": "..."}`, or vLLM's
    older top-level `{"object": "error", "message": ...}`."""
    if not isinstance(body, dict):
        return None, None
    err = body.get("error", body)
    if isinstance(err, str):
        return err, None
    if not isinstance(err, dict):
        return None, None
    message, code = err.get("message"), err.get("code")
    return (message if isinstance(message, str) else None,
            code if isinstance(code, str) else None)


def _kind(status: int, code: str | None, message: str) -> ErrorKind:
    if status == 429:
        return "rate_limit"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status in (400, 422) and (code == "context_length_exceeded" or _about_context(message)):
        return "context_length"
    if status == 400 and code in ("content_policy_violation", "content_filter"):
        return "content_policy"
    return "bad_request" if 400 <= status < 500 else "server"


def _about_context(message: str) -> bool:
    lowered = message.lower()
    return "context length" in lowered or "maximum context" in lowered


def message_for(text: str, attempt: Attempt) -> str:
    return redact(text.strip()[:_MAX_MESSAGE], [attempt.deployment.api_key or ""])


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait: `retry-after-ms` (OpenAI), else `Retry-After` as seconds or a date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    return parse_retry_after(value) if value else None
