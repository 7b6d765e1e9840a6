"""The litellm provider: the only module that imports litellm.

litellm is used as a library for what it is good at, translating one request to any provider's
API. Nothing here touches its globals (callbacks, cache, settings); its objects are converted to
plain OpenAI-shaped dicts and its exceptions to `ProviderError` before anything leaves this module.
The import is lazy (it costs seconds) and happens off the event loop: see `preload`.

What litellm cannot bound: it has no limit on an answer's size, and reads a whole (unstreamed)
answer, or one streamed event, into memory before Podium sees it. Podium counts a stream's
total chunk by chunk and ends it past `server.max_response_bytes`, and refuses a whole answer
past it (the attempt falls back); the memory one oversized answer takes on its way in is
bounded only by the attempt's timeout. Deployments that speak OpenAI's wire format take the
native path, which reads every answer with the limit (`routing/providers/reading.py`).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Mapping
from types import ModuleType
from typing import Any

import orjson

from gateway.errors import ErrorKind, ProviderError, parse_retry_after, redact
from routing.providers import answer_shape
from routing.providers.base import Attempt, ChatAnswer, EmbeddingAnswer, Usage, finish_reasons
from routing.providers.reading import ByteBudget

# Fields of an OpenAI message/delta that may be null in the spec; every other null is dropped.
_NULLABLE_MESSAGE_FIELDS = ("content", "refusal")
_MESSAGE_FIELDS = ("role", "content", "refusal", "tool_calls", "function_call", "audio",
                   "annotations")
# The OpenAI chat parameters litellm may receive from a request body: an explicit allow-list,
# because litellm reads every keyword argument as a possible setting (`api_base`, `api_key`,
# `extra_headers`, ...), and those must come from the config alone. `model`, `messages` and the
# stream fields are set by Podium itself; `metadata` is litellm's logging channel, not a
# provider parameter, so it stays out too. Anything else in the body is not sent on this path.
_CHAT_PARAMS = frozenset({
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "modalities", "n", "parallel_tool_calls",
    "prediction", "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format",
    "safety_identifier", "seed", "service_tier", "stop", "store", "temperature", "tool_choice",
    "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})


class LiteLLMProvider:
    def __init__(self) -> None:
        self._litellm: ModuleType | None = None
        self._lock = asyncio.Lock()

    async def preload(self) -> None:
        """Import litellm in a worker thread, so the event loop keeps serving meanwhile."""
        async with self._lock:
            if self._litellm is None:
                self._litellm = await asyncio.to_thread(importlib.import_module, "litellm")

    async def _lib(self) -> ModuleType:
        if self._litellm is None:
            await self.preload()
        if self._litellm is None:  # preload sets it or raises
            raise RuntimeError("litellm is not loaded")
        return self._litellm

    async def chat(self, attempt: Attempt) -> ChatAnswer:
        lib = await self._lib()
        try:
            resp = await lib.acompletion(**_chat_kwargs(attempt, stream=False))
        except Exception as exc:
            raise _classify(lib, exc, attempt) from None
        body = answer_shape.check_completion(_clean_completion(resp.model_dump()))
        ByteBudget(attempt).spend(len(orjson.dumps(body)))  # see "What litellm cannot bound"
        return ChatAnswer(body=body, usage=Usage.from_openai(body.get("usage")),
                          response_model=body.get("model"), finish_reasons=finish_reasons(body))

    async def chat_stream(self, attempt: Attempt) -> AsyncIterator[dict[str, Any]]:
        lib = await self._lib()
        budget, stream = ByteBudget(attempt), None
        try:
            stream = await lib.acompletion(**_chat_kwargs(attempt, stream=True))
            async for chunk in stream:
                clean = answer_shape.check_chunk(_clean_chunk(chunk.model_dump()))
                budget.spend(len(orjson.dumps(clean)))
                yield clean
        except ProviderError:
            raise
        except Exception as exc:
            raise _classify(lib, exc, attempt) from None
        finally:
            # A stream left before its end (cut by a limit, or its client gone) must release
            # its upstream connection now, not whenever it is collected.
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    async def embed(self, attempt: Attempt) -> EmbeddingAnswer:
        lib = await self._lib()
        body = attempt.body
        kwargs = _base_kwargs(attempt)
        kwargs.update(input=body["input"], encoding_format="float")
        if body.get("dimensions") is not None:
            # litellm refuses `dimensions` for model names it does not know to support it;
            # the upstream is the judge of that.
            kwargs.update(dimensions=body["dimensions"], allowed_openai_params=["dimensions"])
        try:
            resp = await lib.aembedding(**kwargs)
        except Exception as exc:
            raise _classify(lib, exc, attempt) from None
        out = resp.model_dump()
        data = [{"object": "embedding", "index": i,
                 "embedding": answer_shape.check_vector(d.get("embedding"))}
                for i, d in enumerate(answer_shape.check_embeddings(out.get("data") or []))]
        usage = out.get("usage") or {}
        prompt = answer_shape.token_count(usage.get("prompt_tokens")) or 0
        clean = {"object": "list", "data": data, "model": out.get("model") or body["model"],
                 "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}
        return EmbeddingAnswer(body=clean, usage=Usage(prompt, 0),
                               response_model=clean["model"])

    async def close(self) -> None:
        # litellm pools its HTTP clients in its own module-level cache; closing them would touch
        # its globals, and the process is exiting anyway.
        return None


def _base_kwargs(attempt: Attempt) -> dict[str, Any]:
    dep = attempt.deployment
    kwargs: dict[str, Any] = dict(dep.extra_params)
    kwargs.update(model=dep.litellm_model, timeout=attempt.timeout_s, max_retries=0)
    if dep.api_base:
        kwargs["api_base"] = dep.api_base
    if dep.api_key:
        kwargs["api_key"] = dep.api_key
    if attempt.headers:
        kwargs["extra_headers"] = dict(attempt.headers)
    return kwargs


def _chat_kwargs(attempt: Attempt, *, stream: bool) -> dict[str, Any]:
    kwargs = _base_kwargs(attempt)
    # Only allow-listed request parameters: they may override a config default such as
    # `temperature`, never a connection setting.
    kwargs.update((k, v) for k, v in attempt.body.items() if k in _CHAT_PARAMS)
    kwargs["messages"] = attempt.body["messages"]
    # With `tools`, litellm 1.106 routes the call through its MCP bridge, which imports the
    # optional `mcp` package and fails without it. Podium forwards tools as they are, so the
    # bridge is skipped (a private flag of the pinned version; re-check it on upgrade).
    kwargs["_skip_mcp_handler"] = True
    if stream:
        # Always ask for usage: spend is settled from it even when the client did not ask.
        kwargs.update(stream=True, stream_options={"include_usage": True})
    return kwargs


def _clean_message(message: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: message[k] for k in _MESSAGE_FIELDS if message.get(k) is not None}
    for k in _NULLABLE_MESSAGE_FIELDS:
        out.setdefault(k, None)
    if not out.get("tool_calls"):
        out.pop("tool_calls", None)
    else:
        out["tool_calls"] = [_clean_tool_call(c) for c in out["tool_calls"]]
    out.setdefault("role", "assistant")
    return out


def _clean_tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    out: dict[str, Any] = {k: call[k] for k in ("index", "id", "type") if call.get(k) is not None}
    func = {k: fn[k] for k in ("name", "arguments") if fn.get(k) is not None}
    if func or "function" in call:
        out["function"] = func
    return out


def _clean_completion(raw: Mapping[str, Any]) -> dict[str, Any]:
    choices = [{"index": c.get("index", i), "message": _clean_message(c.get("message") or {}),
                "logprobs": c.get("logprobs"), "finish_reason": c.get("finish_reason") or "stop"}
               for i, c in enumerate(raw.get("choices") or ())]
    out = {k: raw[k] for k in ("id", "object", "created", "model", "system_fingerprint",
                               "service_tier") if raw.get(k) is not None}
    out["object"] = "chat.completion"
    out["choices"] = choices
    if raw.get("usage"):
        out["usage"] = _clean_usage(raw["usage"])
    return out


def _clean_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    # Sanity of the numbers is answer_shape's job; this only picks OpenAI's fields.
    return {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def _clean_chunk(raw: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: raw[k] for k in ("id", "created", "model", "system_fingerprint")
           if raw.get(k) is not None}
    out["object"] = "chat.completion.chunk"
    choices = [_clean_chunk_choice(c, i) for i, c in enumerate(raw.get("choices") or ())]
    if raw.get("usage"):
        out["usage"] = _clean_usage(raw["usage"])
        # litellm hangs an empty choice on the usage chunk; OpenAI's has `choices: []`.
        if all(not c["delta"] and not c["finish_reason"] for c in choices):
            choices = []
    out["choices"] = choices
    return out


def _clean_chunk_choice(choice: Mapping[str, Any], i: int) -> dict[str, Any]:
    delta = choice.get("delta") or {}
    clean = {k: delta[k] for k in ("role", "content", "refusal") if delta.get(k) is not None}
    if delta.get("tool_calls"):
        clean["tool_calls"] = [_clean_tool_call(c) for c in delta["tool_calls"]]
    return {"index": choice.get("index", i), "delta": clean,
            "logprobs": choice.get("logprobs"), "finish_reason": choice.get("finish_reason")}


# Most specific first: ContextWindowExceeded and ContentPolicyViolation subclass BadRequest.
_EXCEPTION_KINDS: tuple[tuple[str, ErrorKind], ...] = (
    ("ContextWindowExceededError", "context_length"),
    ("ContentPolicyViolationError", "content_policy"),
    ("Timeout", "timeout"),
    ("RateLimitError", "rate_limit"),
    ("AuthenticationError", "auth"),
    ("PermissionDeniedError", "auth"),
    ("NotFoundError", "not_found"),
    ("APIConnectionError", "connection"),
    ("BadRequestError", "bad_request"),
    ("UnprocessableEntityError", "bad_request"),
    ("ServiceUnavailableError", "server"),
    ("InternalServerError", "server"),
    ("BadGatewayError", "server"),
)


def _classify(lib: ModuleType, exc: BaseException, attempt: Attempt) -> ProviderError:
    # A stream cut mid-way arrives wrapped (MidStreamFallbackError); judge what it wraps.
    exc = getattr(exc, "original_exception", None) or exc
    status = getattr(exc, "status_code", None)
    kind = _kind(lib, exc)
    secrets = [attempt.deployment.api_key or ""]
    message = redact(_short_message(exc), secrets)
    code = _code(exc) or ("context_length_exceeded" if kind == "context_length" else None)
    return ProviderError(kind, message, status=status if isinstance(status, int) else None,
                         code=code, retry_after_s=_retry_after(exc))


def _kind(lib: ModuleType, exc: BaseException) -> ErrorKind:
    kind: ErrorKind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "server"
    for name, candidate in _EXCEPTION_KINDS:
        cls = getattr(lib.exceptions, name, None)
        if cls is not None and isinstance(exc, cls):
            kind = candidate
            break
    # litellm's labels blur two cases that matter for fallback and for the record; the openai
    # client's exception underneath says which it was.
    underneath = [type(e).__name__ for e in _causes(exc) if type(e).__module__.startswith("openai")]
    if kind == "server" and "APIConnectionError" in underneath:
        return "connection"  # a refused connection, reported by litellm as a 500
    if kind == "connection" and underneath and underneath[0] == "APIError":
        return "server"  # an error event from the upstream, reported as a connection error
    return kind


def _causes(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen = exc.__cause__ or exc.__context__
    while seen is not None and len(out) < 8:  # the chain is short; bound it anyway
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


def _short_message(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc) or type(exc).__name__
    # litellm prefixes messages with its own exception path; the client needs the provider's text.
    for marker in ("Exception - ", "Error - "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip()[:500]


def _code(exc: BaseException) -> str | None:
    # litellm's own `code` is the HTTP status as text; the provider's code is in the body.
    body = getattr(exc, "body", None)
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    return parse_retry_after(value) if value is not None else None
