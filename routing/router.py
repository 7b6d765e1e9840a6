"""Hop 5, route: a request's needs → a `RoutePlan` (primary deployment + fallback chain).

Candidates are the requested group, one deployment (by id), or, for `auto`, every deployment the
caller may use; then the rule's `fallbacks` groups. Each candidate is kept or dropped with a
recorded reason (capability, context window, quality, health); the kept ones are ordered by the
strategy, cheapest first by default, and that order is the fallback chain. The same function
serves live traffic and `--explain`, so the explanation is the decision.

Required quality, in increasing precedence: `routing.default.min_quality`, the first matching
rule's (for `strategy: learned`, the quality its difficulty score calls for; see
routing/learned/quality.py), the `x-podium-min-quality` header.

Plans are reused: a router (one per config, so a reload starts afresh) keeps recent plans by
everything a plan is made from: the matched rule, the requested model, mode, needs, prompt and
output sizes, the header's quality, the key's allow-list, the scope's clearance and regions, and
the health version (which moves with every breaker or cool-down change). Not reused: plans of the
`latency` strategy (live measurements), `weighted` (a random draw per request) and `learned` (a
score per request), plans that skipped a deployment for its health (that ends with the clock,
not with an event), and refusals.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from cachetools import LRUCache

from gateway.errors import (
    ModelNotFound,
    NoDeploymentAvailable,
    PermissionDenied,
    PodiumError,
    UnsupportedRequest,
)
from gateway.pipeline.identity import Principal
from routing.catalog import Catalog, Deployment
from routing.health import Health
from routing.learned.quality import Difficulty, LearnedDecision, decide
from routing.rules import (
    CascadeChecks,
    CompiledRule,
    LearnedSettings,
    RequestFacts,
    RouteSettings,
    RoutingConfig,
    ShadowTrial,
    Strategy,
)
from routing.tokens import TokenGauge

AUTO = "auto"
# A rule's fallback group the caller's allow-list excludes: listed, never tried.
NOT_ALLOWED = "not in this key's models allow-list"
# Plans kept per router: each a few hundred bytes; one per request shape in recent traffic.
PLAN_CACHE_SIZE = 1024
_REUSABLE: frozenset[Strategy] = frozenset({"cheapest", "cascade"})
_DEFAULT_MATCH: tuple[int, None] = (-1, None)


# The rule a request matched and its index in the config; (-1, None) for the default.
Matched = tuple[int, CompiledRule | None]


class Scope(Protocol):
    def refusal(self, dep: Deployment, extra_regions: frozenset[str] | None = None) -> str | None:
        """Why `dep` may not receive the request (data clearance, region), or None."""
        ...

    @property
    def routing_key(self) -> tuple[object, ...]:
        """Everything `refusal` depends on, hashable: plans are reused between equal keys."""
        ...


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the router needs to know about one request (and nothing else)."""
    model: str
    mode: str                         # "chat" | "embedding"
    needs: frozenset[str]             # capabilities: tools, json_schema, vision, streaming
    prompt_tokens: int
    max_output_tokens: int | None
    facts: RequestFacts | None = None
    header_min_quality: int | None = None
    scope: Scope | None = None
    difficulty: Difficulty | None = None  # the score, for a rule with strategy: learned


@dataclass(frozen=True, slots=True)
class Candidate:
    deployment: Deployment
    kept: bool
    reason: str
    estimated_cost_usd: float
    source: str = "group"             # "group" or "fallback:<group>"


@dataclass(frozen=True, slots=True)
class RoutePlan:
    rule: str
    strategy: Strategy
    chain: tuple[Deployment, ...]
    candidates: tuple[Candidate, ...]
    min_quality: int
    checks: CascadeChecks = CascadeChecks()  # noqa: RUF009 (frozen, so sharing it is safe)
    cache_ttl_s: float | None = None
    cache_any_temperature: bool = False
    learned: LearnedDecision | None = None   # score, threshold and decision of a learned rule
    shadow: ShadowTrial | None = None        # the rule's shadow trial, if it runs one
    # Why nothing can serve, when the chain is empty: only from `plan(strict=False)`, which
    # `--explain` uses to show every candidate; live traffic gets the error raised instead.
    refusal: PodiumError | None = None


class Router:
    def __init__(self, catalog: Catalog, config: RoutingConfig | None = None) -> None:
        self._catalog = catalog
        self._config = config or RoutingConfig()
        self._rules = tuple(CompiledRule.compile(r) for r in self._config.rules)
        self._random = random.Random()
        # Every number a prompt's size is compared with; below the smallest, an estimate will do.
        thresholds = [d.max_input_tokens for d in catalog.deployments
                      if d.max_input_tokens is not None]
        for r in self._config.rules:
            thresholds += [b for b in (r.match.min_prompt_tokens, r.match.max_prompt_tokens)
                           if b is not None]
        self.tokens = TokenGauge(min(thresholds) if thresholds else None)
        self._plans: LRUCache[tuple[object, ...], RoutePlan] = LRUCache(PLAN_CACHE_SIZE)

    def plan(self, req: RouteRequest, principal: Principal, health: Health, *,
             strict: bool = True, matched: Matched | None = None) -> RoutePlan:
        """The plan for `req`; when no candidate is kept, raises the error the caller gets
        (`strict`), or returns the plan with an empty chain and that error as `refusal`.
        `matched`: `match(req)` when the caller already has it (rules are matched once)."""
        index, rule = matched if matched is not None else self.match(req)
        settings = rule.settings if rule else self._config.default
        strategy = settings.strategy or self._config.default.strategy or "cheapest"
        key = _plan_key(req, principal, health, index) if strategy in _REUSABLE else None
        if key is not None:
            known = self._plans.get(key)
            if known is not None:
                return known
        plan = self._plan(req, principal, health, rule, strategy)
        if plan.refusal is not None and strict:
            raise plan.refusal
        if key is not None and plan.refusal is None and not _health_dropped(plan):
            self._plans[key] = plan
        return plan

    def _plan(self, req: RouteRequest, principal: Principal, health: Health,
              rule: CompiledRule | None, strategy: Strategy) -> RoutePlan:
        settings = rule.settings if rule else self._config.default
        default = self._config.default
        learned = (learned_decision(settings, req.difficulty, req.header_min_quality,
                                    default)
                   if strategy == "learned" and req.mode == "chat" else None)
        # Quality scores rank chat models; an embedding request only needs the right mode.
        min_quality = (_first(req.header_min_quality,
                              learned.min_quality if learned else settings.min_quality,
                              default.min_quality)
                       if req.mode == "chat" else 0)
        regions = settings.regions if settings.regions is not None else default.regions
        judge = _Judge(req, min_quality, health, self._config.expected_output_tokens,
                       frozenset(regions) if regions is not None else None)
        candidates = [judge(d, "group") for d in self._pool(req, principal)]
        for group in settings.fallbacks or default.fallbacks:
            candidates += [judge(d, f"fallback:{group}") if principal.may_use(d.group)
                           else judge.drop(d, f"fallback:{group}", NOT_ALLOWED)
                           for d in self._catalog.groups[group]]
        kept = self._order([c for c in candidates if c.kept], strategy, settings.weights, health)
        refusal = None if kept else nothing_kept(req, candidates)
        return RoutePlan(rule=rule.name if rule else "default", strategy=strategy,
                         chain=tuple(c.deployment for c in kept), candidates=tuple(candidates),
                         min_quality=min_quality, checks=settings.cascade,
                         cache_ttl_s=_pick(settings.cache_ttl_s, default.cache_ttl_s),
                         cache_any_temperature=bool(_pick(settings.cache_any_temperature,
                                                          default.cache_any_temperature)),
                         learned=learned, refusal=refusal,
                         shadow=settings.shadow or default.shadow)

    def learned_settings(self, req: RouteRequest) -> LearnedSettings | None:
        """The learned section of the rule this request matches, if its strategy is learned:
        tells the caller to score the request (off the event loop if costly) before `plan`."""
        found = self.learned_rule(req)
        return found[1] if found is not None else None

    def learned_rule(self, req: RouteRequest,
                     matched: Matched | None = None) -> tuple[str, LearnedSettings] | None:
        """The name ("default" when no rule matches) and learned section of the rule this
        chat request matches, if its strategy is learned; else None. `matched` as in `plan`."""
        if req.mode != "chat":
            return None
        rule = (matched if matched is not None else self.match(req))[1]
        settings = rule.settings if rule else self._config.default
        strategy = settings.strategy or self._config.default.strategy
        section = _learned_of(settings, self._config.default)
        if strategy != "learned" or section is None:
            return None
        return (rule.name if rule else "default"), section

    def visible_groups(self, principal: Principal) -> list[str]:
        return [g for g in self._catalog.groups if principal.may_use(g)]

    def match(self, req: RouteRequest) -> Matched:
        """The first matching rule and its index; (-1, None) for the default. It depends on
        `req.facts` only, so it holds for a copy of `req` with another `difficulty`."""
        if req.facts is not None:
            for i, rule in enumerate(self._rules):
                if rule.matches(req.facts):
                    return i, rule
        return _DEFAULT_MATCH

    def _pool(self, req: RouteRequest, principal: Principal) -> Iterable[Deployment]:
        if req.model == AUTO:
            pool = [d for d in self._catalog.deployments
                    if d.mode == req.mode and principal.may_use(d.group)]
            if not pool:
                raise PermissionDenied(f"No {req.mode} model is available to this key.")
            return pool
        group = self._catalog.groups.get(req.model)
        if group is None and req.model in self._catalog.by_id:
            group = (self._catalog.by_id[req.model],)
        if group is None:
            raise ModelNotFound(f"The model {req.model!r} does not exist.", param="model")
        if not principal.may_use(group[0].group):
            raise PermissionDenied(f"This key may not use the model {req.model!r}.",
                                   param="model")
        if group[0].mode != req.mode:
            raise UnsupportedRequest(f"The model {req.model!r} is a {group[0].mode} model and "
                                     f"cannot serve {req.mode} requests.", param="model")
        return group

    def _order(self, kept: list[Candidate], strategy: Strategy, weights: dict[str, float],
               health: Health) -> list[Candidate]:
        """Order within the group, then within each fallback group: fallbacks stay last."""
        sources = list(dict.fromkeys(c.source for c in kept))
        ordered: list[Candidate] = []
        for source in sources:
            part = [c for c in kept if c.source == source]
            ordered += self._order_part(part, strategy, weights, health)
        return ordered

    def _order_part(self, part: list[Candidate], strategy: Strategy,
                    weights: dict[str, float], health: Health) -> list[Candidate]:
        by_cost = sorted(part, key=lambda c: (c.estimated_cost_usd, -c.deployment.quality,
                                              c.deployment.id))
        if strategy == "latency":
            # Unmeasured deployments first (so they get measured), then the fastest.
            def latency(c: Candidate) -> float:
                seen = health.snapshot(c.deployment.id).latency_s
                return -1.0 if seen is None else seen
            return sorted(by_cost, key=latency)
        if strategy == "weighted":
            # Weighted sampling without replacement (Efraimidis-Spirakis keys).
            def key(c: Candidate) -> float:
                w = weights.get(c.deployment.id, 1.0)
                return self._random.random() ** (1.0 / w) if w > 0 else -1.0
            return sorted(by_cost, key=key, reverse=True)
        return by_cost  # cheapest and cascade: cheapest adequate first


@dataclass(frozen=True, slots=True)
class _Judge:
    """Keeps or drops one candidate, with the reason; the same for live traffic and explain."""
    req: RouteRequest
    min_quality: int
    health: Health
    expected_output_tokens: int
    regions: frozenset[str] | None

    def __call__(self, dep: Deployment, source: str) -> Candidate:
        req = self.req
        # Clearance first: when nothing is cleared, the caller must hear that, not a detail.
        reason = ((req.scope.refusal(dep, self.regions) if req.scope else None)
                  or _drop_reason(dep, req, self.min_quality)
                  or self.health.unavailable_reason(dep.id))
        if reason:
            return self.drop(dep, source, reason)
        cost = self._cost(dep)
        return Candidate(dep, True, f"eligible, estimated ${cost:.6f}", cost, source)

    def drop(self, dep: Deployment, source: str, reason: str) -> Candidate:
        return Candidate(dep, False, reason, self._cost(dep), source)

    def _cost(self, dep: Deployment) -> float:
        expected = self.req.max_output_tokens or self.expected_output_tokens
        return dep.cost(self.req.prompt_tokens, expected if self.req.mode == "chat" else 0)


def _plan_key(req: RouteRequest, principal: Principal, health: Health,
              rule_index: int) -> tuple[object, ...]:
    # Exact sizes, not buckets: each candidate's estimated cost, and so the order, moves with
    # them. `health` itself too, so that a router asked with another Health never mixes them.
    return (rule_index, req.model, req.mode, req.needs, req.prompt_tokens,
            req.max_output_tokens, req.header_min_quality, principal.allowed_models,
            req.scope.routing_key if req.scope is not None else None, health, health.version)


def _health_dropped(plan: RoutePlan) -> bool:
    return any(not c.kept and c.reason.startswith(_HEALTH_WORDS) for c in plan.candidates)


def _learned_of(settings: RouteSettings, default: RouteSettings) -> LearnedSettings | None:
    # A rule that inherits `strategy: learned` from the default inherits its section too.
    return settings.learned or default.learned


def learned_decision(settings: RouteSettings, difficulty: Difficulty | None,
                     header_min_quality: int | None = None,
                     default: RouteSettings | None = None) -> LearnedDecision:
    """The quality a learned rule requires for this score, and why (pure: no state)."""
    section = _learned_of(settings, default or settings)
    if section is None:
        raise ValueError("learned_decision needs a rule with a 'learned:' section")
    return decide(difficulty, section.floor, section.ceiling, header_min_quality)


def _pick(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _first(*values: int | None) -> int:
    return next((v for v in values if v is not None), 0)


def _drop_reason(dep: Deployment, req: RouteRequest, min_quality: int) -> str | None:
    missing = sorted(req.needs - dep.supports)
    if missing:
        return f"does not support {', '.join(missing)}"
    if dep.quality < min_quality:
        return f"quality {dep.quality} < required {min_quality}"
    window = dep.max_input_tokens
    needed = req.prompt_tokens + (req.max_output_tokens or 0)
    if window is not None and needed > window:
        return f"needs {needed} tokens, context window is {window}"
    return None


_HEALTH_WORDS = ("circuit", "rate-limited")
_CLEARANCE_WORDS = ("cleared for", "region")


def nothing_kept(req: RouteRequest, candidates: list[Candidate]) -> PodiumError:
    """The error for a request no candidate can serve, classed by why they were dropped (a
    fallback group the caller may not use says nothing about the request: left out)."""
    judged = [c for c in candidates if c.reason != NOT_ALLOWED]
    details = "; ".join(f"{c.deployment.id}: {c.reason}" for c in judged)
    if judged and all(c.reason.startswith(_CLEARANCE_WORDS) for c in judged):
        data_class = getattr(req.scope, "data_class", "this")
        return PermissionDenied(
            f"No deployment of {req.model!r} is cleared for {data_class} data: {details}",
            code="no_cleared_deployment")
    if any(c.reason.startswith(_HEALTH_WORDS) for c in judged):
        return NoDeploymentAvailable(
            f"No deployment of {req.model!r} is available right now: {details}")
    return UnsupportedRequest(f"No deployment of {req.model!r} can serve this request: "
                              f"{details}")
