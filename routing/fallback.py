"""Hop 7, call: walk a `RoutePlan`, one fresh `Attempt` per try, one CLIENT span each.

What a failure does depends on its class:
- timeout, connection, 5xx, the deployment's credentials: next deployment; where the plan has a
  single deployment, a few retries with jittered exponential backoff instead;
- 429: the deployment cools down for its Retry-After and the next one is tried at once;
- context length exceeded: the next deployment with a larger window;
- content-policy refusal: fail, or the next deployment (`routing.on_content_policy`);
- any other 4xx: the caller's error, so fail at once with no fallback.
When everything failed, the error keeps every attempt's failure. A stream moves on only while
nothing has been sent to the client. For a cascade, an answer that fails its checks escalates to
the next deployment; the cost of every attempt is counted.

Two words, used the same way by the headers, the metrics and the dashboard: an *attempt* is one
upstream call (`x-podium-attempts` counts them, failed ones included); an *escalation* is a
move to a later deployment because an answer failed a cascade check. `x-podium-escalations`
counts those moves within one request, so the first attempt is never one, and an answer that
failed its check but is delivered anyway (nothing later answered) adds none. A request with at
least one is an *escalated request*: answered by a later deployment than the first because a
check failed.

A plan of one deployment with no cascade check (most requests) makes its first attempt directly
(`_direct`, `_direct_stream`): the same steps in the same order as the walk, without its
generators and bookkeeping of a chain; a failure a retry may mend hands over to the walk, which
goes on from the first retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from gateway.errors import (
    AllAttemptsFailed,
    FailedAttempt,
    NoDeploymentAvailable,
    ProviderError,
    UpstreamRejected,
)
from gateway.observability import hops
from gateway.observability.telemetry import Telemetry
from routing.attempts import (
    CallEvents,
    OpenStream,
    aclose,
    bounded,
    classify_unexpected,
    end_failed,
    end_ok,
    request_attributes,
)
from routing.catalog import Deployment
from routing.health import Health
from routing.providers.base import Attempt, ChatAnswer, EmbeddingAnswer, Provider, Usage, Wire
from routing.router import RoutePlan, Scope
from routing.rules import RoutingConfig
from routing.schedule import backoff, billed, schedule

T = TypeVar("T")
Check = Callable[[ChatAnswer], str | None]  # None: the answer passes; else why it does not


class Guard(Scope, Protocol):
    """The request's permission scope, asked again right before every upstream call."""

    def check(self, dep: Deployment) -> None:
        """Raise PermissionDenied if `dep` may not receive this request."""
        ...

    def body_for(self, dep: Deployment, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """The body to send to `dep`: the original, or a pseudonymized copy."""
        ...

    def masks_for(self, dep: Deployment) -> bool:
        """Whether `body_for(dep, ...)` masks values that the answer must get back."""
        ...


@dataclass
class CallResult(Generic[T]):
    answer: T
    deployment: Deployment
    attempts: int
    failures: list[FailedAttempt] = field(default_factory=list)
    cost_usd: float = 0.0              # every successful attempt, escalated ones included
    usage: Usage = field(default_factory=Usage)
    escalations: list[str] = field(default_factory=list)  # "<deployment>: <failed check>"
    masked: bool = False               # the answer came from a pseudonymized request
    attempted: list[str] = field(default_factory=list)
    upstream_s: float = 0.0            # time spent waiting on upstreams, every attempt
    checks: list[tuple[str, bool]] = field(default_factory=list)  # (deployment, passed)


@dataclass
class _Walk:
    """The bookkeeping of one walk along a plan."""
    failures: list[FailedAttempt] = field(default_factory=list)
    number: int = 0
    cost_usd: float = 0.0
    usage: Usage = field(default_factory=Usage)
    escalations: list[str] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)  # each checked answer's verdict
    larger_than: int | None = None     # after a context-length error: only larger windows
    guard: Guard | None = None
    attempted: list[str] = field(default_factory=list)
    upstream_s: float = 0.0
    probe: str | None = None           # a half-open probe this walk owes a verdict on
    wire: Wire | None = None           # the request in its client's API, for pass-through


class Caller:
    def __init__(self, select: Callable[[Deployment], Provider], telemetry: Telemetry,
                 health: Health, events: CallEvents) -> None:
        self._select = select
        self._telemetry = telemetry
        self.health = health
        self._events = events

    async def chat(self, plan: RoutePlan, body: Mapping[str, Any], deadline: float,
                   routing: RoutingConfig, check: Check | None = None,
                   guard: Guard | None = None, wire: Wire | None = None,
                   ) -> CallResult[ChatAnswer]:
        return await self._walk(plan, body, deadline, routing, "chat",
                                lambda p, a: p.chat(a), check, _Walk(guard=guard, wire=wire))

    async def embed(self, plan: RoutePlan, body: Mapping[str, Any], deadline: float,
                    routing: RoutingConfig, guard: Guard | None = None,
                    ) -> CallResult[EmbeddingAnswer]:
        return await self._walk(plan, body, deadline, routing, "embeddings",
                                lambda p, a: p.embed(a), None, _Walk(guard=guard))

    async def _walk(self, plan: RoutePlan, body: Mapping[str, Any], deadline: float,
                    routing: RoutingConfig, operation: str,
                    send: Callable[[Provider, Attempt], Awaitable[Any]],
                    check: Check | None, walk: _Walk) -> CallResult[Any]:
        try:
            return await self._walk_plan(plan, body, deadline, routing, operation, send, check,
                                         walk)
        finally:
            self._release_probe(walk)

    async def _walk_plan(self, plan: RoutePlan, body: Mapping[str, Any], deadline: float,
                         routing: RoutingConfig, operation: str,
                         send: Callable[[Provider, Attempt], Awaitable[Any]],
                         check: Check | None, walk: _Walk) -> CallResult[Any]:
        if check is None and len(plan.chain) == 1:
            direct = await self._direct(plan.chain[0], body, deadline, routing, operation, send,
                                        walk)
            if direct is not None:
                return direct
        escalated = None
        async for dep, span, attempt in self._tries(plan, body, deadline, routing, walk,
                                                    operation):
            got = await self._sent(dep, span, attempt, walk, routing, operation, send)
            if got is None:
                continue
            answer, usage = got
            verdict = check(answer) if check else None
            if check is not None:
                walk.checks.append((dep.id, verdict is None))
            if verdict is not None:
                hops.note("cascade.escalate", {"deployment": dep.id, "reason": verdict,
                                               "attempt": walk.number})
                walk.escalations.append(f"{dep.id}: {verdict}")
            end_ok(span, usage, answer.response_model,
                    getattr(answer, "finish_reasons", ()))
            result = _result(answer, dep, walk)
            if verdict is None:
                return result
            escalated = result
        if escalated is not None:  # every answer failed its checks: the last is the best we have
            escalated.cost_usd, escalated.usage = walk.cost_usd, walk.usage
            escalated.upstream_s = walk.upstream_s
            # The delivered answer's own failed check moved the request nowhere.
            escalated.escalations = walk.escalations[:-1]
            return escalated
        raise _exhausted(walk)

    async def open_stream(self, plan: RoutePlan, body: Mapping[str, Any], deadline: float,
                          routing: RoutingConfig, guard: Guard | None = None,
                          wire: Wire | None = None) -> OpenStream:
        walk = _Walk(guard=guard, wire=wire)
        try:
            return await self._open_first(plan, body, deadline, routing, walk)
        finally:
            self._release_probe(walk)

    async def _open_first(self, plan: RoutePlan, body: Mapping[str, Any], deadline: float,
                          routing: RoutingConfig, walk: _Walk) -> OpenStream:
        if len(plan.chain) == 1:
            direct = await self._direct_stream(plan.chain[0], body, deadline, routing, walk)
            if direct is not None:
                return direct
        guard = walk.guard
        async for dep, span, attempt in self._tries(plan, body, deadline, routing, walk, "chat"):
            started = asyncio.get_running_loop().time()
            chunks = self._select(dep).chat_stream(attempt)
            try:
                first = await bounded(anext(chunks), attempt.timeout_s)
            except Exception as exc:  # any failure of an attempt is classified
                err = classify_unexpected(exc) if not isinstance(exc, StopAsyncIteration) else \
                    ProviderError("server", "the upstream closed the stream without sending "
                                  "anything")
                self._timed(walk, dep, "chat", started, err.kind, Usage(), None)
                await self._failed(dep, span, err, walk, routing)
                await aclose(chunks)
                continue
            await self._succeeded(dep, span, started, walk)
            return OpenStream(dep, walk.number, walk.failures, first, chunks, span,
                              masked=bool(guard and guard.masks_for(dep)),
                              attempted=walk.attempted, started=started,
                              upstream_s=walk.upstream_s, events=self._events,
                              request=attempt.body, deadline=deadline)
        raise _exhausted(walk)

    async def _tries(self, plan: RoutePlan, body: Mapping[str, Any], deadline: float,
                     routing: RoutingConfig, walk: _Walk, operation: str,
                     ) -> AsyncIterator[tuple[Deployment, trace.Span, Attempt]]:
        """Yield each attempt to make, skipping what became unusable since the plan was made."""
        for dep, retry in schedule(plan, routing, walk.number):
            if walk.larger_than is not None and (dep.max_input_tokens or 0) <= walk.larger_than:
                continue
            if walk.number and self.health.unavailable_reason(dep.id):
                continue
            if retry and not await backoff(retry, routing, deadline):
                return
            yield dep, *self._first_attempt(dep, body, deadline, walk, operation)

    def _first_attempt(self, dep: Deployment, body: Mapping[str, Any], deadline: float,
                       walk: _Walk, operation: str) -> tuple[trace.Span, Attempt]:
        """Begin an attempt once it is decided (for `_tries`, after its skips and backoff; for
        the direct path, a plan's first attempt): the final guard, the span, a probe."""
        if walk.guard is not None:
            walk.guard.check(dep)  # the final guard: nothing leaves for an uncleared model
        walk.number += 1
        walk.attempted.append(dep.id)
        span = self._start_span(operation, dep, body, walk.number)
        if self.health.begin(dep.id):
            walk.probe = dep.id
            hops.note("breaker.half_open", {"deployment": dep.id, "attempt": walk.number})
        sent = walk.guard.body_for(dep, body) if walk.guard is not None else body
        return span, self._attempt(dep, sent, deadline, walk.number, span, _wire_for(dep, walk))

    async def _direct(self, dep: Deployment, body: Mapping[str, Any], deadline: float,
                      routing: RoutingConfig, operation: str,
                      send: Callable[[Provider, Attempt], Awaitable[Any]],
                      walk: _Walk) -> CallResult[Any] | None:
        """The only deployment's first attempt, as `_walk_plan` makes it with no check; None
        when it failed and a retry may follow (a failure that ends the request raises)."""
        span, attempt = self._first_attempt(dep, body, deadline, walk, operation)
        got = await self._sent(dep, span, attempt, walk, routing, operation, send)
        if got is None:
            return None
        answer, usage = got
        end_ok(span, usage, answer.response_model, getattr(answer, "finish_reasons", ()))
        return _result(answer, dep, walk)

    async def _sent(self, dep: Deployment, span: trace.Span, attempt: Attempt, walk: _Walk,
                    routing: RoutingConfig, operation: str,
                    send: Callable[[Provider, Attempt], Awaitable[Any]],
                    ) -> tuple[Any, Usage] | None:
        """Make one attempt and account for it (time, health, spend); the answer and its usage,
        or None when it failed and the walk may go on (a failure that ends the request raises)."""
        started = asyncio.get_running_loop().time()
        try:
            answer = await bounded(send(self._select(dep), attempt), attempt.timeout_s)
        except Exception as exc:  # any failure of an attempt is classified
            err = classify_unexpected(exc)
            self._timed(walk, dep, operation, started, err.kind, Usage(), None)
            await self._failed(dep, span, err, walk, routing)
            return None
        usage = billed(operation, attempt, answer)
        self._timed(walk, dep, operation, started, "ok", usage, answer.response_model)
        await self._succeeded(dep, span, started, walk)
        walk.cost_usd += dep.cost(usage.prompt_tokens, usage.completion_tokens)
        walk.usage += usage
        return answer, usage

    async def _direct_stream(self, dep: Deployment, body: Mapping[str, Any], deadline: float,
                             routing: RoutingConfig, walk: _Walk) -> OpenStream | None:
        """The only deployment's first stream attempt, as `_open_first` makes it; None when it
        failed and a retry may follow."""
        span, attempt = self._first_attempt(dep, body, deadline, walk, "chat")
        started = asyncio.get_running_loop().time()
        chunks = self._select(dep).chat_stream(attempt)
        try:
            first = await bounded(anext(chunks), attempt.timeout_s)
        except Exception as exc:  # any failure of an attempt is classified
            err = classify_unexpected(exc) if not isinstance(exc, StopAsyncIteration) else \
                ProviderError("server", "the upstream closed the stream without sending anything")
            self._timed(walk, dep, "chat", started, err.kind, Usage(), None)
            await self._failed(dep, span, err, walk, routing)
            await aclose(chunks)
            return None
        await self._succeeded(dep, span, started, walk)
        return OpenStream(dep, walk.number, walk.failures, first, chunks, span,
                          masked=bool(walk.guard and walk.guard.masks_for(dep)),
                          attempted=walk.attempted, started=started,
                          upstream_s=walk.upstream_s, events=self._events,
                          request=attempt.body, deadline=deadline)

    def _release_probe(self, walk: _Walk) -> None:
        """A probe whose attempt ended without a verdict (cancelled, or an error raised past
        the loop) must not keep the deployment half-open for ever: let the next request probe."""
        if walk.probe is not None:
            self.health.abandon(walk.probe)

    async def _failed(self, dep: Deployment, span: trace.Span, err: ProviderError,
                      walk: _Walk, routing: RoutingConfig) -> None:
        walk.probe = None if walk.probe == dep.id else walk.probe
        change = self.health.failed(dep.id, err, routing.breaker)
        if change:
            hops.note(f"breaker.{change}", {"deployment": dep.id, "attempt": walk.number})
            await self._share(dep.id, change)
        end_failed(span, err)
        failed = FailedAttempt(dep.id, err)
        walk.failures.append(failed)
        if err.kind == "context_length":
            walk.larger_than = max(walk.larger_than or 0, dep.max_input_tokens or 0)
        if err.kind == "content_policy" and routing.on_content_policy == "next":
            return
        if not err.moves_on:
            raise UpstreamRejected(failed)

    async def _succeeded(self, dep: Deployment, span: trace.Span, started: float,
                         walk: _Walk) -> None:
        walk.probe = None if walk.probe == dep.id else walk.probe
        elapsed = asyncio.get_running_loop().time() - started
        change = self.health.succeeded(dep.id, elapsed)
        if change:
            hops.note(f"breaker.{change}", {"deployment": dep.id, "attempt": walk.number})
            await self._share(dep.id, change)

    async def _share(self, dep_id: str, state: str) -> None:
        await self._events.breaker_changed(dep_id, state, self.health.wall_open_until(dep_id))

    def _timed(self, walk: _Walk, dep: Deployment, operation: str, started: float,
               outcome: str, usage: Usage, model: str | None) -> None:
        seconds = asyncio.get_running_loop().time() - started
        walk.upstream_s += seconds
        self._events.attempt_done(dep, operation, seconds, outcome, usage, model)

    def _start_span(self, operation: str, dep: Deployment, body: Mapping[str, Any],
                    number: int) -> trace.Span:
        if not self._telemetry.enabled:
            return trace.INVALID_SPAN
        span = self._telemetry.tracer.start_span(
            f"{operation} {dep.upstream_model}", kind=SpanKind.CLIENT)
        if span.is_recording():
            span.set_attributes(request_attributes(operation, dep, body, number))
        return span

    def _attempt(self, dep: Deployment, body: Mapping[str, Any], deadline: float, number: int,
                 span: trace.Span, wire: Wire | None) -> Attempt:
        headers: dict[str, str] = {}
        if self._telemetry.enabled:
            self._telemetry.propagator.inject(headers, context=trace.set_span_in_context(span))
        remaining = max(0.001, deadline - asyncio.get_running_loop().time())
        if wire is not None:
            span.set_attribute("podium.wire", wire.api)
            wire = Wire(wire.api, {**wire.body, "model": dep.upstream_model})
        return Attempt(deployment=dep, body={**body, "model": dep.upstream_model},
                       headers=headers, timeout_s=min(dep.timeout_s, remaining), number=number,
                       wire=wire)


def _result(answer: Any, dep: Deployment, walk: _Walk) -> CallResult[Any]:
    return CallResult(answer, dep, walk.number, walk.failures, walk.cost_usd, walk.usage,
                      walk.escalations, masked=bool(walk.guard and walk.guard.masks_for(dep)),
                      attempted=walk.attempted, upstream_s=walk.upstream_s, checks=walk.checks)


def _wire_for(dep: Deployment, walk: _Walk) -> Wire | None:
    """The client's own request, for a deployment that speaks its API, unless the scope masks
    what this deployment receives: masking works on the chat translation, so that goes."""
    wire, guard = walk.wire, walk.guard
    if wire is None or wire.api not in dep.supports:
        return None
    return None if guard is not None and guard.masks_for(dep) else wire


def _exhausted(walk: _Walk) -> Exception:
    if not walk.failures:
        return NoDeploymentAvailable("Every deployment in the plan became unavailable "
                                     "(open circuit or rate limit) before it could be tried.")
    return AllAttemptsFailed(walk.failures)
