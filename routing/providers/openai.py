"""The native provider: OpenAI-compatible upstreams spoken to directly over pooled aiohttp.

Why: `litellm.acompletion` costs about 4 ms of CPU per call, a plain aiohttp request about
0.15 ms. For upstreams that already speak OpenAI's wire format (OpenAI itself, vLLM, LM Studio,
llamafile, another litellm proxy) there is nothing to translate, so the body goes out as the
client sent it (with `model` set to the upstream's name) and the answer comes back nearly as is.

What this path deliberately does not do, unlike litellm:
- `Deployment.extra_params` are litellm settings (and litellm-applied request defaults), so they
  are ignored here; `is_openai_compatible` keeps deployments that have any on the litellm path.
- No per-model parameter rewriting (litellm maps `max_tokens` to `max_completion_tokens` for
  OpenAI's reasoning models, strips `strict`/`additionalProperties` from tool schemas for vLLM):
  the upstream sees the client's request, and its own 400 is the answer.
- No environment variables (OPENAI_API_KEY, HOSTED_VLLM_API_BASE, ...): only the deployment's
  own `api_base` and `api_key` are used.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.errors import ErrorKind, ProviderError, parse_retry_after, redact
from routing.catalog import Deployment
from routing.providers import answer_shape
from routing.providers.base import Attempt, ChatAnswer, EmbeddingAnswer, Usage, finish_reasons
from routing.providers.reading import ByteBudget, EventSplitter, read_capped

__all__ = ["OpenAICompatibleProvider", "is_openai_compatible"]

OPENAI_API_BASE = "https://api.openai.com/v1"
# litellm prefixes whose chat and embeddings calls are plain OpenAI HTTP against `api_base`
# (litellm's config classes for them only resolve a base and key, or rewrite rarely used
# fields). Left out: providers with a fixed cloud base and their own parameter mapping (groq,
# together_ai, ...), `azure` (deployments in the URL, api-version, api-key header),
# `docker_model_runner` (appends `/v1` itself), `openai_like` (custom auth), and
# `text-completion-openai` (the legacy /completions API, not chat).
_NATIVE_PREFIXES = frozenset({"openai", "hosted_vllm", "lm_studio", "llamafile", "litellm_proxy"})
# Idle connections are dropped before common servers drop them (uvicorn, hence vLLM, closes
# after 5 s): reusing a connection the server is closing fails a POST, which is not retried.
_KEEPALIVE_S = 4.0
_POOL_LIMIT = 256               # concurrent connections per upstream base URL
_MAX_MESSAGE = 500
_STREAM_FIELDS = ("stream", "stream_options")
_STREAM_OPTIONS = {"include_usage": True}   # always: spend is settled from the usage chunk
_DONE = b"[DONE]"
# aiohttp's exceptions for a failed or dropped connection (the timeout ones are checked first).
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


def is_openai_compatible(deployment: Deployment) -> bool:
    """Whether `OpenAICompatibleProvider` can serve this deployment exactly as litellm would."""
    prefix, _, rest = deployment.litellm_model.partition("/")
    if not rest or prefix not in _NATIVE_PREFIXES or deployment.extra_params:
        return False
    if deployment.api_base:
        return True
    # Without a base only `openai/` has a fixed home (api.openai.com), and it needs a key.
    return prefix == "openai" and bool(deployment.api_key)


@dataclass(frozen=True, slots=True)
class _Upstream:
    session: aiohttp.ClientSession
    chat_url: str
    embeddings_url: str


class OpenAICompatibleProvider:
    def __init__(self) -> None:
        self._upstreams: dict[str, _Upstream] = {}
        self._base_headers: dict[str | None, dict[str, str]] = {}

    async def chat(self, attempt: Attempt) -> ChatAnswer:
        body = attempt.body
        if "stream" in body or "stream_options" in body:
            # A cascade may answer a streamed request with a plain call: drop the stream fields.
            body = {k: v for k, v in body.items() if k not in _STREAM_FIELDS}
        upstream = self._upstream(attempt.deployment)
        raw = await self._post(attempt, upstream.session, upstream.chat_url, body)
        answer = _clean_completion(_decode(raw, attempt))
        return ChatAnswer(body=answer, usage=Usage.from_openai(answer.get("usage")),
                          response_model=answer.get("model"), finish_reasons=finish_reasons(answer))

    async def chat_stream(self, attempt: Attempt) -> AsyncIterator[dict[str, Any]]:
        body = {**attempt.body, "stream": True, "stream_options": _STREAM_OPTIONS}
        resp = await self._open_stream(attempt, body)
        events = EventSplitter()
        budget = ByteBudget(attempt)
        try:
            async for piece in resp.content.iter_any():
                budget.spend(len(piece))  # a stream's total, a never-ending line included
                for data in events.feed(piece):
                    if data == _DONE:
                        return
                    yield _stream_chunk(data, attempt)
            for data in events.end():  # an unterminated last event: lenient, like the SDKs
                if data != _DONE:
                    yield _stream_chunk(data, attempt)
        except ProviderError:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise _transport_error(exc, attempt) from None
        finally:
            # Pools the connection when the body was read to its end, closes it otherwise.
            resp.release()

    async def embed(self, attempt: Attempt) -> EmbeddingAnswer:
        src = attempt.body
        # Always floats: Podium re-encodes to base64 itself when the client asks for it.
        body = {"model": src["model"], "input": src["input"], "encoding_format": "float"}
        for name in ("dimensions", "user"):
            if src.get(name) is not None:
                body[name] = src[name]
        upstream = self._upstream(attempt.deployment)
        raw = await self._post(attempt, upstream.session, upstream.embeddings_url, body)
        clean = _clean_embeddings(_decode(raw, attempt), src["model"])
        return EmbeddingAnswer(body=clean, usage=Usage.from_openai(clean["usage"]),
                               response_model=clean["model"])

    async def close(self) -> None:
        upstreams, self._upstreams = self._upstreams, {}
        for upstream in upstreams.values():
            await upstream.session.close()

    # ---- internals ------------------------------------------------------------------------

    def _upstream(self, dep: Deployment) -> _Upstream:
        base = (dep.api_base or OPENAI_API_BASE).rstrip("/")
        upstream = self._upstreams.get(base)
        if upstream is None:
            connector = aiohttp.TCPConnector(limit=_POOL_LIMIT, keepalive_timeout=_KEEPALIVE_S,
                                             ttl_dns_cache=300)
            # No cookies, no proxy settings from the environment: each request stands alone.
            session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                            cookie_jar=aiohttp.DummyCookieJar())
            upstream = _Upstream(session, f"{base}/chat/completions", f"{base}/embeddings")
            self._upstreams[base] = upstream
        return upstream

    def _headers(self, attempt: Attempt) -> Mapping[str, str]:
        key = attempt.deployment.api_key
        base = self._base_headers.get(key)
        if base is None:
            base = {"Content-Type": "application/json"}
            if key:
                base["Authorization"] = f"Bearer {key}"
            self._base_headers[key] = base
        # Podium's own headers (traceparent) first, so they can never replace the credentials.
        return {**attempt.headers, **base} if attempt.headers else base

    async def _post(self, attempt: Attempt, session: aiohttp.ClientSession, url: str,
                    body: Mapping[str, Any]) -> bytes:
        # Per request: an attempt's budget is what is left of the client's deadline.
        timeout = aiohttp.ClientTimeout(total=attempt.timeout_s)
        try:
            async with session.post(url, data=orjson.dumps(body), headers=self._headers(attempt),
                                    timeout=timeout, allow_redirects=False) as resp:
                raw = await read_capped(resp, attempt)
                if resp.status >= 300:
                    raise _http_error(resp, raw, attempt)
                return raw
        except ProviderError:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise _transport_error(exc, attempt) from None

    async def _open_stream(self, attempt: Attempt,
                           body: Mapping[str, Any]) -> aiohttp.ClientResponse:
        """POST and wait for the response head: connect and first byte share one deadline.
        After that the stream may last as long as it likes, but every wait for the next bytes
        is bounded by `sock_read`."""
        upstream = self._upstream(attempt.deployment)
        timeout = aiohttp.ClientTimeout(total=None, connect=attempt.timeout_s,
                                        sock_read=attempt.timeout_s)
        try:
            async with asyncio.timeout(attempt.timeout_s):
                resp = await upstream.session.post(
                    upstream.chat_url, data=orjson.dumps(body), headers=self._headers(attempt),
                    timeout=timeout, allow_redirects=False)
                if resp.status >= 300:
                    try:
                        raise _http_error(resp, await read_capped(resp, attempt), attempt)
                    finally:
                        resp.release()
        except ProviderError:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise _transport_error(exc, attempt) from None
        return resp


def _stream_chunk(data: bytes, attempt: Attempt) -> dict[str, Any]:
    chunk = _decode(data, attempt)  # raises on an `error` event (a failure after the 200 head)
    chunk["object"] = "chat.completion.chunk"
    choices = chunk.get("choices")
    if choices is None:  # the usage chunk, from a server that leaves the empty list out
        chunk["choices"] = []
        return answer_shape.check_chunk(chunk)
    for i, choice in enumerate(choices if isinstance(choices, list) else ()):
        if isinstance(choice, dict):
            choice.setdefault("index", i)
            if choice.get("delta") is None:
                choice["delta"] = {}
            choice.setdefault("finish_reason", None)
    return answer_shape.check_chunk(chunk)


def _decode(raw: bytes, attempt: Attempt) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProviderError("server", "the upstream sent malformed JSON") from None
    if not isinstance(body, dict):
        raise ProviderError("server", "the upstream sent JSON that is not an object")
    if "error" in body and "choices" not in body and "data" not in body:
        # An error after a 200 head (mid-stream), or in a 200 body as some servers send it.
        message, code = _error_fields(body)
        raise ProviderError("server", _message(message or "the upstream reported an error",
                                               attempt), code=code)
    return body


def _clean_completion(body: dict[str, Any]) -> dict[str, Any]:
    """The upstream's body nearly as is, with the fields OpenAI's SDKs expect made present."""
    body["object"] = "chat.completion"
    choices = body.get("choices") or []
    body["choices"] = choices
    for i, choice in enumerate(choices if isinstance(choices, list) else ()):
        if not isinstance(choice, dict):
            continue  # answer_shape refuses it below
        choice.setdefault("index", i)
        message = choice.get("message") or {}
        choice["message"] = message
        if isinstance(message, dict):
            message.setdefault("role", "assistant")
            message.setdefault("content", None)
            message.setdefault("refusal", None)
            if "tool_calls" in message and not message["tool_calls"]:
                del message["tool_calls"]  # vLLM sends `[]`; OpenAI leaves the field out
        choice.setdefault("logprobs", None)
        if not choice.get("finish_reason"):
            choice["finish_reason"] = "stop"
    return answer_shape.check_completion(body)


def _clean_embeddings(out: Mapping[str, Any], model: str) -> dict[str, Any]:
    data = [{"object": "embedding", "index": _index(d.get("index"), i),
             "embedding": _floats(d.get("embedding"))}
            for i, d in enumerate(answer_shape.check_embeddings(out.get("data") or []))]
    prompt = answer_shape.token_count((out.get("usage") or {}).get("prompt_tokens")) \
        if isinstance(out.get("usage"), dict) else None
    name = out.get("model")
    return {"object": "list", "data": data, "model": name if isinstance(name, str) else model,
            "usage": {"prompt_tokens": prompt or 0, "total_tokens": prompt or 0}}


def _index(value: Any, position: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else position


def _floats(embedding: Any) -> list[float]:
    # A server that ignores `encoding_format` may still send base64 (little-endian float32).
    if isinstance(embedding, str):
        try:
            raw = base64.b64decode(embedding, validate=True)
        except ValueError:
            raise answer_shape.malformed("an embedding is not valid base64") from None
        return list(struct.unpack(f"<{len(raw) // 4}f", raw[:len(raw) // 4 * 4]))
    return answer_shape.check_vector(embedding)


# ---- errors -------------------------------------------------------------------------------

def _http_error(resp: aiohttp.ClientResponse, raw: bytes, attempt: Attempt) -> ProviderError:
    message, code = _error_fields(_loads_or_none(raw))
    status = resp.status
    return ProviderError(_kind(status, code, message or ""),
                         _message(message or resp.reason or f"HTTP {status}", attempt),
                         status=status, code=code, retry_after_s=_retry_after(resp.headers))


def _transport_error(exc: BaseException, attempt: Attempt) -> ProviderError:
    # aiohttp's timeout errors are also connection errors: decide on timeout first.
    kind: ErrorKind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "connection"
    detail = str(exc) or type(exc).__name__
    if kind == "timeout":
        detail = f"no answer within {attempt.timeout_s:g}s"
    return ProviderError(kind, _message(detail, attempt))


def _loads_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # an HTML page from a proxy, an empty body: the status text will do


def _error_fields(body: Any) -> tuple[str | None, str | None]:
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


def _message(text: str, attempt: Attempt) -> str:
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
