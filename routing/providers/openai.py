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
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson

from gateway.errors import ProviderError
from routing.catalog import Deployment
from routing.providers import answer_shape, responses_wire
from routing.providers.base import Attempt, ChatAnswer, EmbeddingAnswer, Usage, finish_reasons
from routing.providers.http_wire import (
    EventSplitter,
    error_fields,
    http_error,
    message_for,
    transport_error,
)
from routing.providers.reading import ByteBudget, read_capped

__all__ = ["OpenAICompatibleProvider", "is_openai_compatible"]
T = TypeVar("T")

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
    responses_url: str


class OpenAICompatibleProvider:
    def __init__(self) -> None:
        self._upstreams: dict[str, _Upstream] = {}
        self._base_headers: dict[str | None, dict[str, str]] = {}

    async def chat(self, attempt: Attempt) -> ChatAnswer:
        if attempt.wire is not None and attempt.wire.api == "responses":
            return await self._respond(attempt, attempt.wire.body)
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
        wire = attempt.wire if attempt.wire is not None and attempt.wire.api == "responses" \
            else None
        if wire is not None:
            body, url = {**wire.body, "stream": True}, self._upstream(attempt.deployment)
            resp = await self._open_stream(attempt, body, url.responses_url)
        else:
            body = {**attempt.body, "stream": True, "stream_options": _STREAM_OPTIONS}
            resp = await self._open_stream(attempt, body)
        read = _Reader(attempt, responses_wire.StreamBridge() if wire is not None else None)
        events = EventSplitter()
        budget = ByteBudget(attempt)
        try:
            async for piece in resp.content.iter_any():
                budget.spend(len(piece))  # a stream's total, a never-ending line included
                for data in events.feed(piece):
                    if data == _DONE:
                        return
                    for chunk in read(data):
                        yield chunk
            for data in events.end():  # an unterminated last event: lenient, like the SDKs
                if data != _DONE:
                    for chunk in read(data):
                        yield chunk
        except ProviderError:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise transport_error(exc, attempt) from None
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

    async def _respond(self, attempt: Attempt, wire: Mapping[str, Any]) -> ChatAnswer:
        """One non-streamed Responses request, to a deployment that speaks the API."""
        body = {k: v for k, v in wire.items() if k not in _STREAM_FIELDS}
        upstream = self._upstream(attempt.deployment)
        native = _loads_object(await self._post(attempt, upstream.session,
                                                upstream.responses_url, body))
        answer = answer_shape.check_completion(_redacted(responses_wire.completion_of, native,
                                                         attempt))
        return ChatAnswer(body=answer, usage=Usage.from_openai(answer.get("usage")),
                          response_model=answer.get("model"),
                          finish_reasons=finish_reasons(answer), native=native)

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
            upstream = _Upstream(session, f"{base}/chat/completions", f"{base}/embeddings",
                                 f"{base}/responses")
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
                    raise http_error(resp, raw, attempt)
                return raw
        except ProviderError:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise transport_error(exc, attempt) from None

    async def _open_stream(self, attempt: Attempt, body: Mapping[str, Any],
                           url: str | None = None) -> aiohttp.ClientResponse:
        """POST and wait for the response head: connect and first byte share one deadline.
        After that the stream may last as long as it likes, but every wait for the next bytes
        is bounded by `sock_read`."""
        upstream = self._upstream(attempt.deployment)
        timeout = aiohttp.ClientTimeout(total=None, connect=attempt.timeout_s,
                                        sock_read=attempt.timeout_s)
        try:
            async with asyncio.timeout(attempt.timeout_s):
                resp = await upstream.session.post(
                    url or upstream.chat_url, data=orjson.dumps(body),
                    headers=self._headers(attempt),
                    timeout=timeout, allow_redirects=False)
                if resp.status >= 300:
                    try:
                        raise http_error(resp, await read_capped(resp, attempt), attempt)
                    finally:
                        resp.release()
        except ProviderError:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise transport_error(exc, attempt) from None
        return resp


@dataclass(frozen=True, slots=True)
class _Reader:
    """One event's data → the chunks it carries: a chat chunk as it is, or, from a deployment
    that speaks Responses, what its typed event means in chat's terms."""
    attempt: Attempt
    bridge: responses_wire.StreamBridge | None

    def __call__(self, data: bytes) -> list[dict[str, Any]]:
        if self.bridge is None:
            return [_stream_chunk(data, self.attempt)]
        chunks = _redacted(self.bridge.feed, _loads_object(data), self.attempt)
        return [answer_shape.check_chunk(chunk) for chunk in chunks]


def _loads_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProviderError("server", "the upstream sent malformed JSON") from None
    if not isinstance(body, dict):
        raise ProviderError("server", "the upstream sent JSON that is not an object")
    return body


def _redacted(read: Callable[[dict[str, Any]], T], body: dict[str, Any], attempt: Attempt) -> T:
    """`read(body)`, with the deployment's key removed from any failure it reports."""
    try:
        return read(body)
    except ProviderError as err:
        err.message = message_for(err.message, attempt)
        raise


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
        message, code = error_fields(body)
        raise ProviderError("server", message_for(message or "the upstream reported an error",
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
