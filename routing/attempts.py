"""One upstream attempt, as the attempt loop (`fallback.py`) makes it: its CLIENT span with the
GenAI attributes, ended as the attempt succeeded or failed; its timeout, enforced; any failure
inside it classified; and a stream that has started (`OpenStream`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from gateway.errors import FailedAttempt, ProviderError, StreamInterrupted
from gateway.observability.scrub import scrub
from routing.catalog import Deployment
from routing.providers.base import Usage
from routing.tokens import count_or_estimate, unreported_usage

T = TypeVar("T")
# Sampling parameters recorded on attempt spans, by GenAI semantic-convention name.
_REQUEST_ATTRS = {"max_tokens": "gen_ai.request.max_tokens",
                  "temperature": "gen_ai.request.temperature", "top_p": "gen_ai.request.top_p",
                  "seed": "gen_ai.request.seed"}


class CallEvents(Protocol):
    """What the attempt loop reports as it goes (metrics, shared breaker state)."""

    def attempt_done(self, dep: Deployment, operation: str, seconds: float, outcome: str,
                     usage: Usage, response_model: str | None) -> None:
        """One attempt ended: outcome "ok" or the failure kind."""
        ...

    async def breaker_changed(self, dep_id: str, state: str, open_until_wall: float) -> None:
        """A breaker opened, went half-open or closed in this process."""
        ...


def classify_unexpected(exc: Exception) -> ProviderError:
    """Any failure inside an attempt as a ProviderError: a provider's own classification, or,
    for anything else (an answer Podium could not read), a `server` failure that falls back.
    The exception's text is left out: it may quote the upstream's answer."""
    if isinstance(exc, ProviderError):
        return exc
    return ProviderError("server", f"the upstream's answer could not be read "
                                   f"({type(exc).__name__})")


@dataclass
class OpenStream:
    """A stream whose first chunk has arrived; iterating it yields that chunk and the rest.

    The stream ends, with an error, once it has sent no chunk for the deployment's
    `stream_idle_s` or once the request's `deadline` (server.request_timeout_s) has passed: an
    upstream that drips a byte at a time never holds a connection for ever. What it produced
    until then is billed (`_count_if_unreported`)."""
    deployment: Deployment
    attempts: int
    failures: list[FailedAttempt]
    first: dict[str, Any]
    rest: AsyncIterator[dict[str, Any]]
    span: trace.Span
    masked: bool = False
    attempted: list[str] = field(default_factory=list)
    started: float = 0.0               # loop time when this attempt began
    upstream_s: float = 0.0            # failed attempts before it; the stream's own time added
    events: CallEvents | None = None
    usage: Usage = field(default_factory=lambda: Usage(reported=False))
    request: Mapping[str, Any] = field(default_factory=dict)  # the body this attempt sent
    # The answer's text and tool arguments as they arrived, to count them when the upstream
    # reports no usage, or the client leaves before it does.
    produced: list[str] = field(default_factory=list)
    finished: bool = False
    deadline: float = math.inf         # loop time by which the whole stream must be over

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        model, reasons = None, []
        try:
            chunk: dict[str, Any] | None = self.first
            while chunk is not None:
                model = chunk.get("model") or model
                reasons += [c["finish_reason"] for c in chunk.get("choices", ())
                            if c.get("finish_reason")]
                if chunk.get("usage"):
                    self.usage = Usage.from_openai(chunk["usage"])
                self._keep(chunk)
                yield chunk
                chunk = await self._next()
        except Exception as exc:  # a broken chunk, or a stalled stream, ends it with an error
            err = classify_unexpected(exc)
            self._count_if_unreported()
            self._done(err.kind, model)
            end_failed(self.span, err)
            await aclose(self.rest)
            raise StreamInterrupted(FailedAttempt(self.deployment.id, err)) from None
        except BaseException:
            await self.abandon()
            raise
        self._count_if_unreported()
        self._done("ok", model)
        end_ok(self.span, self.usage, model, tuple(reasons))

    async def _next(self) -> dict[str, Any] | None:
        """The next chunk, waited for no longer than the idle limit and the deadline allow."""
        loop = asyncio.get_running_loop()
        idle = self.deployment.stream_idle_s
        until = min(loop.time() + idle, self.deadline)
        try:
            async with asyncio.timeout_at(until) as waiting:
                return await anext(self.rest, None)
        except TimeoutError:
            if not waiting.expired():
                raise
        what = f"no chunk for {idle:g}s" if until < self.deadline else \
            "the request's time limit (server.request_timeout_s) was reached"
        raise ProviderError("timeout", f"the stream stalled: {what}") from None

    async def abandon(self) -> None:
        """The client went away (or the server is stopping) before the stream ended: close the
        upstream stream too, and bill what it produced so far (the upstream bills it to us).
        Idempotent; a stream that already ended is left as it is."""
        if self.finished:
            return
        self._count_if_unreported()
        self._done("cancelled", None)
        self.span.set_attribute("error.type", "cancelled")
        self.span.end()
        await aclose(self.rest)

    def _keep(self, chunk: Mapping[str, Any]) -> None:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self.produced.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                args = (call.get("function") or {}).get("arguments")
                if isinstance(args, str):
                    self.produced.append(args)

    def _count_if_unreported(self) -> None:
        if not self.usage.reported:
            prompt, _ = unreported_usage("chat", self.request, {})
            produced = sum(count_or_estimate(p) for p in self.produced)
            self.usage = Usage(prompt, produced, reported=False)

    def _done(self, outcome: str, model: str | None) -> None:
        self.finished = True
        seconds = asyncio.get_running_loop().time() - self.started
        self.upstream_s += seconds
        if self.events is not None:
            self.events.attempt_done(self.deployment, "chat", seconds, outcome, self.usage,
                                     model)

    @property
    def cost_usd(self) -> float:
        return self.deployment.cost(self.usage.prompt_tokens, self.usage.completion_tokens)


async def aclose(it: AsyncIterator[Any]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


async def bounded(awaitable: Awaitable[T], timeout_s: float) -> T:
    """Enforce the attempt's timeout even if the provider's own timeout does not fire."""
    try:
        async with asyncio.timeout(timeout_s + 0.5):
            return await awaitable
    except TimeoutError:
        raise ProviderError("timeout", f"no answer within {timeout_s:g}s") from None


def request_attributes(operation: str, dep: Deployment, body: Mapping[str, Any],
                        number: int) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation, "gen_ai.provider.name": dep.provider,
        "gen_ai.request.model": dep.upstream_model, "podium.deployment.id": dep.id,
        "podium.attempt": number,
    }
    if dep.server_address:
        attrs["server.address"] = dep.server_address
    if dep.server_port:
        attrs["server.port"] = dep.server_port
    for name, attr in _REQUEST_ATTRS.items():
        value = body.get(name)
        if name == "max_tokens" and value is None:
            # The newer name (and what the Responses and Messages front doors translate to).
            value = body.get("max_completion_tokens")
        if isinstance(value, int | float) and not isinstance(value, bool):
            attrs[attr] = value
    return attrs


def end_ok(span: trace.Span, usage: Usage, model: str | None,
            reasons: tuple[str, ...]) -> None:
    if span.is_recording():
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        if model:
            span.set_attribute("gen_ai.response.model", model)
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", list(reasons))
    span.end()


def end_failed(span: trace.Span, err: ProviderError) -> None:
    if span.is_recording():
        span.set_attribute("error.type", err.kind)
        if err.status:
            span.set_attribute("http.response.status_code", err.status)
        # The upstream's message can quote the prompt: the span gets it scrubbed.
        span.set_status(Status(StatusCode.ERROR, scrub(err.message)))
    span.end()
