"""The plugin contract: a plugin is a small object with typed hooks.

`BasePlugin` gives no-op defaults, so a plugin implements only what it needs. The chain that
runs them in order is built once per config (`chain.py`, `registry.py`).

    on_request(ctx)            before the model is called; raise a PodiumError to stop the
                               request, or return a `Hold` to have its answer held for review
    on_chunk(ctx, chunk)       each streamed chunk, in order; raise to cut the stream
    on_response(ctx, outcome)  after a successful answer, before it is sent; raise to stop it
    on_complete(ctx, outcome)  exactly once at the end, success or failure; never raises

A plugin reads the request's context (`gateway/pipeline/context.py`) and answers with
decisions; the only thing it adds to the context is its entry in the record (`ctx.decide`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from gateway.pipeline.context import Hold, Outcome, RequestContext

# What a plugin works with, importable from here for plugin authors.
__all__ = ["BasePlugin", "Hold", "Outcome", "Plugin", "RequestContext"]


@runtime_checkable
class Plugin(Protocol):
    name: str

    async def on_request(self, ctx: RequestContext) -> Hold | None:
        """Inspect the request before any model call; raise a PodiumError to refuse it, or
        return a `Hold` to have the answer held for review (None: no objection)."""
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

    async def on_request(self, ctx: RequestContext) -> Hold | None:
        return None

    def on_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> None:
        return None

    async def on_response(self, ctx: RequestContext, outcome: Outcome) -> None:
        return None

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        return None
