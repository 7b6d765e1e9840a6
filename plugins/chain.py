"""The ordered chain of plugins: built once per config (see `registry.py`), it runs each hook
in order, each invocation a hop of the request's trace (`podium.hop.plugin.<name>.<hook>.ms`;
a span `podium.plugin.<name>` of its own with `telemetry.hop_spans`)."""

from __future__ import annotations

import logging
from typing import Any

from gateway.observability.hops import SpanFactory
from plugins.base import BasePlugin, Hold, Outcome, Plugin, RequestContext

log = logging.getLogger("podium.plugins")


class PluginChain:
    def __init__(self, plugins: list[Plugin], span: SpanFactory) -> None:
        self.plugins = plugins
        self._span = span
        # Only plugins that override a hook are called for it: most hooks are no-ops.
        self._chunk_hooks = [p for p in plugins if _overrides(p, "on_chunk")]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.plugins]

    async def on_request(self, ctx: RequestContext) -> Hold | None:
        """Every plugin's verdict on the request, in order; the first `Hold` is the chain's."""
        hold = None
        for plugin in self.plugins:
            if _overrides(plugin, "on_request"):
                with self._span(f"podium.plugin.{plugin.name}", "on_request") as span:
                    decided = await plugin.on_request(ctx)
                    if decided is not None:
                        span.add_event("hold", {"plugin": plugin.name, "rule": decided.rule})
                hold = hold or decided
        return hold

    def on_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> None:
        for plugin in self._chunk_hooks:
            plugin.on_chunk(ctx, chunk)

    async def on_response(self, ctx: RequestContext, outcome: Outcome) -> None:
        for plugin in self.plugins:
            if _overrides(plugin, "on_response"):
                with self._span(f"podium.plugin.{plugin.name}", "on_response"):
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
