"""The plugin contract and the ordered chain that runs it.

A plugin is a small object with typed hooks; `BasePlugin` gives no-op defaults, so a plugin
implements only what it needs. The chain is built once per config (see `registry.py`), runs the
hooks in order, and gives every invocation its own span `podium.plugin.<name>`.

    on_request(ctx)            before the model is called; raise a PodiumError to stop the request
    on_chunk(ctx, chunk)       each streamed chunk, in order; raise to cut the stream
    on_response(ctx, outcome)  after a successful answer, before it is sent; raise to stop it
    on_complete(ctx, outcome)  exactly once at the end, success or failure; never raises
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from opentelemetry import trace

from gateway.pipeline.identity import Principal
from gateway.storage.contracts import Reservation
from routing.providers.base import Usage
from routing.router import RoutePlan
from routing.rules import RequestFacts

log = logging.getLogger("podium.plugins")
SpanFactory = Callable[[str], AbstractContextManager[trace.Span]]


@dataclass
class RequestContext:
    """One request as the governance chain sees it; lives for the whole request."""
    request_id: str
    trace_id: str
    principal: Principal
    model: str
    body: Mapping[str, Any]
    stream: bool
    facts: RequestFacts | None
    data_class: str = "public"
    pii_counts: Mapping[str, int] = field(default_factory=dict)
    plan: RoutePlan | None = None
    prompt_tokens: int = 0
    reserve_tokens: int = 0            # what tpm limits reserve before the call
    reserve_usd: float = 0.0           # what budgets reserve before the call (the maximum)
    # Where the rate limits counted this request and what the budgets hold for it: settling
    # corrects exactly those buckets, so the state keeps no entry per request.
    window_bucket: int | None = None
    reservation: Reservation | None = None
    hold: str | None = None            # the approval rule holding this answer, if any
    decisions: list[dict[str, Any]] = field(default_factory=list)
    span_id: str = ""                  # the request's SERVER span, for links from feedback
    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)

    def decide(self, plugin: str, decision: str, detail: str = "") -> None:
        self.decisions.append({"plugin": plugin, "decision": decision, "detail": detail})


@dataclass
class Outcome:
    status: int
    error_code: str | None = None
    deployment: str | None = None
    attempted: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    answer: dict[str, Any] | None = None
    review_id: str | None = None
    cache: str | None = None
    upstream_s: float = 0.0            # time spent waiting on upstreams


@runtime_checkable
class Plugin(Protocol):
    name: str

    async def on_request(self, ctx: RequestContext) -> None:
        """Inspect the request before any model call; raise a PodiumError to refuse it."""
        ...

    def on_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> None:
        """Inspect one streamed chunk; raise a PodiumError to end the stream with an error."""
        ...

    async def on_response(self, ctx: RequestContext, outcome: Outcome) -> None:
        """Inspect a successful answer before it is sent; raise a PodiumError to withhold it."""
        ...

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        """Account for the finished request (spend, limits, audit); must not raise."""
        ...


class BasePlugin:
    name = "base"

    async def on_request(self, ctx: RequestContext) -> None:
        return None

    def on_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> None:
        return None

    async def on_response(self, ctx: RequestContext, outcome: Outcome) -> None:
        return None

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        return None


class PluginChain:
    def __init__(self, plugins: list[Plugin], span: SpanFactory) -> None:
        self.plugins = plugins
        self._span = span
        # Only plugins that override a hook are called for it: most hooks are no-ops.
        self._chunk_hooks = [p for p in plugins if _overrides(p, "on_chunk")]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.plugins]

    async def on_request(self, ctx: RequestContext) -> None:
        for plugin in self.plugins:
            if _overrides(plugin, "on_request"):
                with self._span(f"podium.plugin.{plugin.name}") as span:
                    span.set_attribute("podium.plugin.hook", "on_request")
                    await plugin.on_request(ctx)

    def on_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> None:
        for plugin in self._chunk_hooks:
            plugin.on_chunk(ctx, chunk)

    async def on_response(self, ctx: RequestContext, outcome: Outcome) -> None:
        for plugin in self.plugins:
            if _overrides(plugin, "on_response"):
                with self._span(f"podium.plugin.{plugin.name}") as span:
                    span.set_attribute("podium.plugin.hook", "on_response")
                    await plugin.on_response(ctx, outcome)

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        for plugin in self.plugins:
            if not _overrides(plugin, "on_complete"):
                continue
            try:
                await plugin.on_complete(ctx, outcome)
            except Exception:  # accounting must not turn a served answer into an error
                log.exception("plugin %s failed in on_complete (request %s)",
                              plugin.name, ctx.request_id)


def _overrides(plugin: object, hook: str) -> bool:
    method = getattr(type(plugin), hook, None)
    return method is not None and method is not getattr(BasePlugin, hook)
