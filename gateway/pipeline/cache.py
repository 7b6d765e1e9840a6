"""Hop 6, cache: an exact response cache, scoped so that no answer crosses a permission line.

The key is a digest of the request in canonical form (JSON with sorted keys, minus fields that
do not change the answer: `stream`, `stream_options`, `user`) together with the routing result
(every deployment the caller may be routed to) and the caller's scope: the tenant (team, or
key when there is no team), the data class, and the allowed regions. A caller with another
tenant, a narrower allow-list (other candidates) or a lower clearance computes a different
key, so it can never read an answer it could not have received fresh.

The key also holds the quality the request required (`min_quality`, from a rule, the
`x-podium-min-quality` header or the learned router): a request that needs quality 70 never
gets an answer stored for a request that was content with quality 30.

Only complete, successful answers are stored, each with the id of the deployment that
produced it, so a hit still names it (`x-podium-deployment`). By default only requests that
are deterministic by their own parameters are cached: `temperature: 0`, or a `seed`. A request
without `temperature` is sampled (OpenAI's default is 1), so it is not cached unless a routing
rule opts in (`cache_any_temperature`). Request
controls: `Cache-Control: no-cache` (do not read), `no-store` (do not write),
`x-podium-cache-ttl: <s>`. After an exact miss, the semantic cache may find a near-identical
prompt's answer (`semantic_cache.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import BadRequest
from gateway.observability.hops import SpanFactory
from gateway.pipeline.cache_entry import CachedAnswer, cache_key
from gateway.pipeline.context import CacheResult, RequestContext
from gateway.pipeline.semantic_cache import SemanticCache, SemanticProbe
from gateway.storage.contracts import CacheStore
from routing.router import Router

TTL_HEADER = "x-podium-cache-ttl"


@dataclass
class CacheLookup:
    """One request's cache hop: what it found, and where a fresh answer is to be stored."""
    store: CacheStore
    policy: CachePolicy
    key: str
    hit: CachedAnswer | None = None
    semantic: SemanticProbe | None = None

    def result(self) -> CacheResult:
        if self.hit is not None:
            semantic = self.semantic is not None and self.semantic.hit is not None
            return CacheResult("hit", "semantic" if semantic else "exact",
                               self.semantic.similarity if semantic and self.semantic else None,
                               self.hit.deployment)
        return CacheResult("miss" if self.policy.read or self.policy.write else "bypass")

    async def keep(self, answer: dict[str, Any] | None, deployment: str | None) -> None:
        """Store a fresh, complete answer (when the policy allows and it was not a hit)."""
        if self.policy.write and answer is not None and self.hit is None:
            entry = CachedAnswer(answer, deployment).entry()
            await self.store.set(self.key, entry, self.policy.ttl_s)
            if self.semantic is not None:
                self.semantic.remember(self.key, self.policy.ttl_s)


class Cache:
    """The cache hop of one process: the exact cache in the shared state, and the semantic
    cache beside it."""

    def __init__(self, store: CacheStore, semantic: SemanticCache, span: SpanFactory) -> None:
        self.store = store
        self.semantic = semantic
        self._span = span

    async def look_up(self, ctx: RequestContext, headers: Mapping[str, str],
                      config: GatewayConfig, router: Router) -> CacheLookup:
        plan, scope, cfg = ctx.plan, ctx.scope, config.cache
        if plan is None or scope is None:
            raise RuntimeError("the cache hop needs the route hop's plan")
        with self._span("podium.cache") as span:
            pol = policy(headers, ctx.body, enabled=cfg.enabled,
                         default_ttl_s=plan.cache_ttl_s if plan.cache_ttl_s is not None
                         else cfg.ttl_s, nondeterministic_ok=plan.cache_any_temperature,
                         held=ctx.hold is not None)
            # Every candidate the caller may use, not the chain: breakers and cool-downs
            # reorder the chain, and must not change the key.
            candidates = tuple(c.deployment.id for c in plan.candidates)
            lookup = CacheLookup(self.store, pol, "")
            if pol.read or pol.write:
                lookup.key = cache_key(ctx.body, candidates, _tenant(ctx), scope.data_class,
                                       scope.regions, plan.min_quality)
            if pol.read:
                raw = await self.store.get(lookup.key)
                lookup.hit = CachedAnswer.from_entry(raw) if raw is not None else None
            if pol.read and lookup.hit is None and cfg.semantic.enabled:  # an embedding call
                lookup.semantic = await self.semantic.probe(ctx, router, config, candidates,
                                                            self.store)
                if lookup.semantic is not None:
                    ctx.outcome.cost_usd += lookup.semantic.cost_usd
                    lookup.hit = lookup.semantic.hit
            if span.is_recording():
                span.set_attribute("podium.cache", lookup.result().state)
            return lookup


def _tenant(ctx: RequestContext) -> str:
    return ctx.principal.team or ctx.principal.key_id


@dataclass(frozen=True, slots=True)
class CachePolicy:
    read: bool
    write: bool
    ttl_s: float
    reason: str          # why it is bypassed, or "" when it is used


def policy(headers: Mapping[str, str], body: Mapping[str, Any], *, enabled: bool,
           default_ttl_s: float, nondeterministic_ok: bool, held: bool) -> CachePolicy:
    ttl = _ttl(headers.get(TTL_HEADER), default_ttl_s)  # a bad value is refused, cache or not
    if not enabled:
        return CachePolicy(False, False, ttl, "cache disabled")
    control = {d.strip().lower() for d in headers.get("Cache-Control", "").split(",")}
    if held:
        return CachePolicy(False, False, ttl, "answer held for review")
    if not deterministic(body) and not nondeterministic_ok:
        return CachePolicy(False, False, ttl, "sampled (no temperature 0, no seed)")
    read, write = "no-cache" not in control, "no-store" not in control and ttl > 0
    return CachePolicy(read, write, ttl, "" if read or write else "Cache-Control")


def deterministic(body: Mapping[str, Any]) -> bool:
    """Whether the request asks for the same answer each time: `temperature: 0`, or a `seed`.
    An absent temperature means OpenAI's default, 1: sampled."""
    temperature = body.get("temperature")
    zero = isinstance(temperature, int | float) and not isinstance(temperature, bool) \
        and temperature == 0
    return zero or body.get("seed") is not None


def _ttl(value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        ttl = float(value)
    except ValueError:
        ttl = -1.0
    if ttl < 0:
        raise BadRequest(f"Header {TTL_HEADER} must be a number of seconds >= 0.",
                         param=TTL_HEADER)
    return ttl


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A streamed answer put back together as a `chat.completion`, to be stored; None if the
    stream did not finish every choice."""
    if not chunks:
        return None
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for c in chunk.get("choices") or ():
            _merge(choices.setdefault(c.get("index", 0), _empty(c.get("index", 0))), c)
    if not choices or any(c["finish_reason"] is None for c in choices.values()):
        return None
    first, usage = chunks[0], next((c["usage"] for c in chunks if c.get("usage")), None)
    out: dict[str, Any] = {k: first[k] for k in ("id", "created", "model", "system_fingerprint")
                           if k in first}
    out.update(object="chat.completion", choices=[_finish(choices[i]) for i in sorted(choices)])
    if usage:
        out["usage"] = usage
    return out


def _empty(index: int) -> dict[str, Any]:
    return {"index": index, "content": None, "tool_calls": {}, "finish_reason": None}


def _merge(acc: dict[str, Any], choice: Mapping[str, Any]) -> None:
    delta = choice.get("delta") or {}
    if delta.get("content"):
        acc["content"] = (acc["content"] or "") + delta["content"]
    for call in delta.get("tool_calls") or ():
        slot = acc["tool_calls"].setdefault(call.get("index", 0), {
            "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        slot["id"] = call.get("id") or slot["id"]
        fn = call.get("function") or {}
        slot["function"]["name"] += fn.get("name") or ""
        slot["function"]["arguments"] += fn.get("arguments") or ""
    acc["finish_reason"] = choice.get("finish_reason") or acc["finish_reason"]


def _finish(acc: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": acc["content"], "refusal": None}
    if acc["tool_calls"]:
        message["tool_calls"] = [acc["tool_calls"][i] for i in sorted(acc["tool_calls"])]
    return {"index": acc["index"], "message": message, "logprobs": None,
            "finish_reason": acc["finish_reason"]}
