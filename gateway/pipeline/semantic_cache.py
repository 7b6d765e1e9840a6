"""The semantic cache: reuse an answer for a near-identical prompt (optional, off by default).

After an exact-cache miss on a request the exact cache may read, the conversation's text is
embedded by the configured embedding model group (`cache.semantic.embedding_model`), through
the gateway's own router and attempt loop, as the caller: a caller who may not use that model,
or whose data class or regions no deployment of it is cleared for, simply gets no semantic
lookup. The text embedded is the messages flattened, one line each, `role: text` (text parts
joined by spaces; images, tool calls and parameters are not embedded: they are in the scope).

The vector is compared (cosine similarity: dot product of unit vectors) with the entries of the
same scope: a digest of everything in the exact cache key except the messages' text, plus the
embedding model and dimensions. So a near-identical prompt matches only for the same key (or
team, with `scope: team`), required quality, data class, regions and candidates, with the same
parameters (model, tools, response_format, temperature, max_tokens, ...), images and tool
calls. The best match at or above
`threshold` is a hit, served from the exact cache under the matched request's key; on a miss
the vector is kept, and indexed when the answer is stored, with the same TTL.

Requests in which PII was detected skip the semantic cache: the same question about someone
else must not match. Each lookup costs one embedding call, whose cost is added to the
request's. The index lives in this process's memory, bounded by `max_entries` (expired, then
oldest, entries go first); with `state.backend: redis` the exact cache is shared but each
process keeps its own semantic index.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig, SemanticCacheConfig
from gateway.errors import PermissionDenied, PodiumError
from gateway.observability.hops import HopRecord, SpanFactory
from gateway.observability.scrub import scrub
from gateway.pipeline.cache_entry import CachedAnswer, scope_key
from gateway.pipeline.context import RequestContext
from gateway.pipeline.messages import text_of
from gateway.pipeline.permissions import PermissionScope
from gateway.storage.contracts import CacheStore
from routing.fallback import Caller
from routing.health import Health
from routing.router import Router, RouteRequest

log = logging.getLogger("podium.cache")
# Comparisons (entries x dimensions) done on the event loop; more go to a thread (~3 ms here).
_INLINE_WORK = 200_000


@dataclass(frozen=True, slots=True)
class _Entry:
    scope: str
    vector: tuple[float, ...]   # unit length
    key: str                    # the exact cache's key: the answer itself lives there
    expires_at: float


class SemanticIndex:
    """Per-process: entries by scope, bounded by count; oldest first out."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._order: OrderedDict[str, _Entry] = OrderedDict()   # by key, oldest first
        self._scopes: dict[str, dict[str, _Entry]] = {}

    def add(self, scope: str, vector: Sequence[float], key: str, ttl_s: float) -> None:
        self.discard(key)
        now = time.monotonic()
        if len(self._order) >= self.max_entries:
            for old in [e for e in self._order.values() if e.expires_at <= now]:
                self.discard(old.key)
        while len(self._order) >= self.max_entries:
            self.discard(next(iter(self._order)))
        entry = _Entry(scope, tuple(vector), key, now + ttl_s)
        self._order[key] = entry
        self._scopes.setdefault(scope, {})[key] = entry

    def live(self, scope: str) -> list[_Entry]:
        """The unexpired entries of `scope` (a snapshot; expired ones are dropped)."""
        now, out = time.monotonic(), []
        for entry in list(self._scopes.get(scope, {}).values()):
            if entry.expires_at <= now:
                self.discard(entry.key)
            else:
                out.append(entry)
        return out

    def nearest(self, scope: str, vector: Sequence[float]) -> tuple[str, float] | None:
        return nearest(self.live(scope), vector)

    def discard(self, key: str) -> None:
        entry = self._order.pop(key, None)
        if entry is not None:
            entries = self._scopes[entry.scope]
            del entries[key]
            if not entries:
                del self._scopes[entry.scope]

    def __len__(self) -> int:
        return len(self._order)


def nearest(entries: Sequence[_Entry], vector: Sequence[float]) -> tuple[str, float] | None:
    """The key of the most similar entry, with its cosine similarity. Both are unit vectors,
    so it is 1 - |a - b|^2 / 2, and `math.dist` computes that in C: ~15 ns a dimension."""
    best = None
    for entry in entries:
        if len(entry.vector) == len(vector):
            similarity = 1.0 - math.dist(entry.vector, vector) ** 2 / 2
            if best is None or similarity > best[1]:
                best = (entry.key, similarity)
    return best


def conversation_text(messages: Sequence[Any]) -> str:
    """What is embedded: one `role: text` line per message."""
    return "\n".join(f"{m.get('role')}: {text_of(m)}" for m in messages
                     if isinstance(m, Mapping))


def unit(vector: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in vector)
    norm = math.sqrt(math.fsum(v * v for v in values))
    if not values or norm == 0 or not math.isfinite(norm):
        raise ValueError("not a usable embedding")
    return tuple(v / norm for v in values)


@dataclass
class SemanticProbe:
    """One request's semantic lookup: the cost paid, the hit, or what to index on a store."""
    index: SemanticIndex
    scope: str
    vector: tuple[float, ...]   # empty: nothing to look up or to index
    cost_usd: float
    similarity: float | None = None
    hit: CachedAnswer | None = None

    def remember(self, key: str, ttl_s: float) -> None:
        if self.hit is None and self.vector:
            self.index.add(self.scope, self.vector, key, ttl_s)


class SemanticCache:
    """The semantic cache of one process: its index, and the embedding calls it makes through
    the gateway's own router and attempt loop."""

    def __init__(self, caller: Caller, health: Health, span: SpanFactory) -> None:
        self._caller = caller
        self._health = health
        self._span = span
        self._index: SemanticIndex | None = None

    def index(self, max_entries: int) -> SemanticIndex:
        """Made on first use; it outlives config reloads (a reload may change its bound)."""
        if self._index is None:
            self._index = SemanticIndex(max_entries)
        self._index.max_entries = max_entries
        return self._index

    async def probe(self, ctx: RequestContext, router: Router, config: GatewayConfig,
                    candidates: tuple[str, ...], store: CacheStore) -> SemanticProbe | None:
        """Embed the prompt and look it up; None when PII was found. A probe without a vector
        when the embedding was not possible (a failure is logged: the request carries on)."""
        cfg, scope = config.cache.semantic, ctx.scope
        if scope is None:
            raise RuntimeError("the semantic cache needs the permissions hop's scope")
        with self._span("podium.cache.semantic") as span:
            if scope.findings:
                span.set_attribute("podium.cache.semantic", "skipped: pii")
                return None
            text = conversation_text(ctx.body.get("messages") or ())
            vector, cost = await self._embed(ctx, scope, router, config, text)
            found = SemanticProbe(
                self.index(cfg.max_entries),
                scope_key(ctx.body, candidates, _semantic_tenant(ctx, cfg), scope.data_class,
                          scope.regions, _min_quality(ctx), _embedding_scope(cfg)),
                vector, cost)
            if found.vector:
                await self._find(found, cfg, store, span)
            else:
                span.set_attribute("podium.cache.semantic", "skipped")
            span.set_attribute("podium.cache.semantic.cost_usd", found.cost_usd)
            return found

    async def _find(self, found: SemanticProbe, cfg: SemanticCacheConfig, store: CacheStore,
                    span: HopRecord) -> None:
        entries = found.index.live(found.scope)
        best = (await asyncio.to_thread(nearest, entries, found.vector)
                if len(entries) * len(found.vector) > _INLINE_WORK
                else nearest(entries, found.vector))
        if best is not None:
            found.similarity = best[1]
            span.set_attribute("podium.cache.similarity", round(best[1], 6))
            if best[1] >= cfg.threshold:
                raw = await store.get(best[0])
                if raw is None:  # the exact cache let it go first
                    found.index.discard(best[0])
                else:
                    found.hit = CachedAnswer.from_entry(raw)
        span.set_attribute("podium.cache.semantic", "hit" if found.hit else "miss")

    async def _embed(self, ctx: RequestContext, scope: PermissionScope, router: Router,
                     config: GatewayConfig, text: str) -> tuple[tuple[float, ...], float]:
        """The text's unit vector and what it cost, through the gateway's router and attempt
        loop; no vector when the caller may not use the model or the call failed."""
        cfg = config.cache.semantic
        model = cfg.embedding_model
        if model is None:
            raise RuntimeError("the semantic cache is enabled without an embedding model")
        try:
            tokens = router.tokens.texts([text]).tokens
            plan = router.plan(RouteRequest(
                model=model, mode="embedding", needs=frozenset(), prompt_tokens=tokens,
                max_output_tokens=None, scope=scope), ctx.principal, self._health)
        except PermissionDenied:
            return (), 0.0  # not this caller's to use: no semantic lookup, silently
        except PodiumError as err:
            log.warning("semantic cache: cannot route to %r: %s", model, scrub(err.message))
            return (), 0.0
        request: dict[str, Any] = {"model": model, "input": text}
        if cfg.dimensions is not None:
            request["dimensions"] = cfg.dimensions
        deadline = min(ctx.deadline(), asyncio.get_running_loop().time() + cfg.timeout_s)
        try:
            result = await self._caller.embed(plan, request, deadline, config.routing)
        except PodiumError as err:
            log.warning("semantic cache: embedding with %r failed, carrying on without: %s",
                        model, scrub(err.message))
            return (), 0.0
        except Exception:  # never the request's failure
            log.warning("semantic cache: embedding with %r failed, carrying on without",
                        model, exc_info=True)
            return (), 0.0
        try:
            return unit(result.answer.body["data"][0]["embedding"]), result.cost_usd
        except (KeyError, IndexError, TypeError, ValueError) as err:
            log.warning("semantic cache: %r returned no usable embedding: %r", model, err)
            return (), result.cost_usd


def _embedding_scope(cfg: SemanticCacheConfig) -> dict[str, Any]:
    return {"model": cfg.embedding_model, "dimensions": cfg.dimensions}


def _semantic_tenant(ctx: RequestContext, cfg: SemanticCacheConfig) -> str:
    """Whose answers a near-identical prompt may reuse: the same key's by default; the whole
    team's only when the config says `scope: team` (and never for a prompt with PII, which
    skips the semantic cache altogether)."""
    if cfg.scope == "team" and ctx.principal.team:
        return f"team:{ctx.principal.team}"
    return f"key:{ctx.principal.key_id}"


def _min_quality(ctx: RequestContext) -> int:
    return ctx.plan.min_quality if ctx.plan is not None else 0
