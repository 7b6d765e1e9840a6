"""Hop 7, call: walk a `RoutePlan`, one fresh `Attempt` per deployment, one CLIENT span each.

A failure that belongs to the deployment (timeout, connection, 429, 5xx, its credentials or
window) moves on to the next deployment; a failure that belongs to the request (a 4xx such as a
malformed parameter) stops at once, because every other deployment would refuse it too. When the
chain is exhausted, the error keeps every attempt's failure. A stream moves on only while nothing
has been sent to the client: `open_stream` returns once the first chunk has arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.errors import (
    AllAttemptsFailed,
    FailedAttempt,
    ProviderError,
    StreamInterrupted,
    UpstreamRejected,
)
from gateway.provider import Attempt, ChatAnswer, EmbeddingAnswer, Provider, Usage
from gateway.telemetry import Telemetry
from routing.catalog import Deployment
from routing.router import RoutePlan

A = TypeVar("A", ChatAnswer, EmbeddingAnswer)
# Sampling parameters recorded on attempt spans, by GenAI semantic-convention name.
_REQUEST_ATTRS = {"max_tokens": "gen_ai.request.max_tokens",
                  "temperature": "gen_ai.request.temperature", "top_p": "gen_ai.request.top_p",
                  "seed": "gen_ai.request.seed"}


@dataclass
class CallResult(Generic[A]):
    answer: A
    deployment: Deployment
    attempts: int
    failures: list[FailedAttempt] = field(default_factory=list)


class Caller:
    def __init__(self, select: Callable[[Deployment], Provider], telemetry: Telemetry) -> None:
        self._select = select
        self._telemetry = telemetry

    async def chat(self, plan: RoutePlan, body: Mapping[str, Any],
                   deadline: float) -> CallResult[ChatAnswer]:
        return await self._walk(plan, body, deadline, "chat",
                                lambda p, a: p.chat(a))

    async def embed(self, plan: RoutePlan, body: Mapping[str, Any],
                    deadline: float) -> CallResult[EmbeddingAnswer]:
        return await self._walk(plan, body, deadline, "embeddings",
                                lambda p, a: p.embed(a))

    async def _walk(self, plan: RoutePlan, body: Mapping[str, Any], deadline: float,
                    operation: str, send: Callable[[Provider, Attempt], Awaitable[A]],
                    ) -> CallResult[A]:
        failures: list[FailedAttempt] = []
        for number, dep in enumerate(plan.chain, start=1):
            span = self._start_span(operation, dep, body, number)
            attempt = self._attempt(dep, body, deadline, number, span)
            try:
                answer = await _bounded(send(self._select(dep), attempt), attempt.timeout_s)
            except ProviderError as err:
                _end_failed(span, err)
                _stop_or_continue(failures, FailedAttempt(dep.id, err))
                continue
            _end_ok(span, answer.usage, answer.response_model,
                    getattr(answer, "finish_reasons", ()))
            return CallResult(answer, dep, number, failures)
        raise AllAttemptsFailed(failures)

    async def open_stream(self, plan: RoutePlan, body: Mapping[str, Any],
                          deadline: float) -> OpenStream:
        failures: list[FailedAttempt] = []
        for number, dep in enumerate(plan.chain, start=1):
            span = self._start_span("chat", dep, body, number)
            attempt = self._attempt(dep, body, deadline, number, span)
            chunks = self._select(dep).chat_stream(attempt)
            try:
                first = await _bounded(anext(chunks), attempt.timeout_s)
            except (ProviderError, StopAsyncIteration) as exc:
                err = exc if isinstance(exc, ProviderError) else ProviderError(
                    "server", "the upstream closed the stream without sending anything")
                _end_failed(span, err)
                _stop_or_continue(failures, FailedAttempt(dep.id, err))
                continue
            return OpenStream(dep, number, failures, first, chunks, span)
        raise AllAttemptsFailed(failures)

    def _start_span(self, operation: str, dep: Deployment, body: Mapping[str, Any],
                    number: int) -> trace.Span:
        span = self._telemetry.tracer.start_span(
            f"{operation} {dep.upstream_model}", kind=SpanKind.CLIENT)
        if span.is_recording():
            span.set_attributes(_request_attributes(operation, dep, body, number))
        return span

    def _attempt(self, dep: Deployment, body: Mapping[str, Any], deadline: float, number: int,
                 span: trace.Span) -> Attempt:
        headers: dict[str, str] = {}
        self._telemetry.propagator.inject(headers, context=trace.set_span_in_context(span))
        remaining = max(0.001, deadline - asyncio.get_running_loop().time())
        return Attempt(deployment=dep, body={**body, "model": dep.upstream_model},
                       headers=headers, timeout_s=min(dep.timeout_s, remaining), number=number)


@dataclass
class OpenStream:
    """A stream whose first chunk has arrived; iterating it yields that chunk and the rest."""
    deployment: Deployment
    attempts: int
    failures: list[FailedAttempt]
    first: dict[str, Any]
    rest: AsyncIterator[dict[str, Any]]
    span: trace.Span
    usage: Usage = field(default_factory=Usage)

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
                yield chunk
                chunk = await anext(self.rest, None)
        except ProviderError as err:
            _end_failed(self.span, err)
            raise StreamInterrupted(FailedAttempt(self.deployment.id, err)) from None
        except BaseException:
            # The client went away (or the server is stopping): close the upstream stream too.
            self.span.set_attribute("error.type", "cancelled")
            self.span.end()
            await _aclose(self.rest)
            raise
        _end_ok(self.span, self.usage, model, tuple(reasons))


async def _aclose(it: AsyncIterator[Any]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


async def _bounded(awaitable: Awaitable[A], timeout_s: float) -> A:
    """Enforce the attempt's timeout even if the provider's own timeout does not fire."""
    try:
        async with asyncio.timeout(timeout_s + 0.5):
            return await awaitable
    except TimeoutError:
        raise ProviderError("timeout", f"no answer within {timeout_s:g}s") from None


def _stop_or_continue(failures: list[FailedAttempt], failed: FailedAttempt) -> None:
    failures.append(failed)
    if not failed.error.moves_on:
        raise UpstreamRejected(failed)


def _request_attributes(operation: str, dep: Deployment, body: Mapping[str, Any],
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
        if isinstance(value, int | float) and not isinstance(value, bool):
            attrs[attr] = value
    return attrs


def _end_ok(span: trace.Span, usage: Usage, model: str | None,
            reasons: tuple[str, ...]) -> None:
    if span.is_recording():
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        if model:
            span.set_attribute("gen_ai.response.model", model)
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", list(reasons))
    span.end()


def _end_failed(span: trace.Span, err: ProviderError) -> None:
    if span.is_recording():
        span.set_attribute("error.type", err.kind)
        if err.status:
            span.set_attribute("http.response.status_code", err.status)
        span.set_status(Status(StatusCode.ERROR, err.message[:200]))
    span.end()
