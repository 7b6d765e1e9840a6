"""Hops 3 and 5, permissions and route: a request → its scope, the router's input, its plan.

`Planner` runs the two hops in order, each recorded on the request's trace: the permission
scope (data class, regions, PII), then the `RouteRequest` built from the request and the scope,
then `Router.plan`. Live traffic, `POST /v1/route/explain` and `podium route --explain` all call it,
so an explanation is the decision itself, not a re-enactment of it; `explain` turns a decision
into data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.config import PIIConfig
from gateway.errors import BadRequest
from gateway.observability.hops import HopRecord, SpanFactory
from gateway.pipeline.context import Reservation
from gateway.pipeline.identity import Principal
from gateway.pipeline.ingress import ChatCompletionRequest, EmbeddingRequest, Parsed
from gateway.pipeline.messages import text_of
from gateway.pipeline.permissions import (
    RANK,
    PermissionScope,
    resolve_embedding_scope,
    resolve_scope,
    scope_attributes,
)
from routing.catalog import Deployment
from routing.health import Health
from routing.learned.features import RecordedFeatures
from routing.learned.live import LearnedRules
from routing.learned.quality import LearnedDecision
from routing.router import NOT_ALLOWED, RoutePlan, Router, RouteRequest
from routing.rules import RequestFacts
from routing.tokens import TokenGauge

MIN_QUALITY_HEADER = "x-podium-min-quality"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    scope: PermissionScope
    request: RouteRequest
    plan: RoutePlan
    features: RecordedFeatures | None = None   # the prompt's features, for the audit trail


@dataclass(frozen=True, slots=True)
class FeaturePolicy:
    """Whether a cascade or learned request's prompt features go into its audit record. They
    are hashed n-grams, not text, but a dictionary of likely words can recover much of a
    prompt from them: so never where PII was found or for confidential and restricted data,
    unless the trail keeps the text itself anyway (`audit.include_content`)."""
    enabled: bool = False
    any_data: bool = False

    def allows(self, scope: PermissionScope) -> bool:
        if not self.enabled:
            return False
        return self.any_data or (not scope.findings and RANK[scope.data_class] <= _INTERNAL)


_INTERNAL = RANK["internal"]


@dataclass(frozen=True)
class Planner:
    """What the two hops run on: one config's router, learned rules and PII settings, the
    process's health, and where their spans go. Not `strict` (for `--explain`): a request
    nothing can serve gets a plan with every candidate and the error as `plan.refusal`, instead
    of the error."""
    router: Router
    pii: PIIConfig
    health: Health
    span: SpanFactory
    learned: LearnedRules = field(default_factory=LearnedRules)
    features: FeaturePolicy = FeaturePolicy()
    strict: bool = True

    async def chat(self, principal: Principal, parsed: Parsed[ChatCompletionRequest],
                   headers: Mapping[str, str]) -> RouteDecision:
        """Both hops for a chat request, as an explanation (live traffic sequences them
        itself, `permit_chat` then `route_chat`)."""
        scope = await self.permit_chat(principal, parsed, headers)
        return await self.route_chat(principal, parsed, headers, scope, live=False)

    async def permit_chat(self, principal: Principal, parsed: Parsed[ChatCompletionRequest],
                          headers: Mapping[str, str]) -> PermissionScope:
        with self.span("podium.permissions") as span:
            scope = await resolve_scope(principal, parsed.typed, parsed.body, headers,
                                        self.pii)
            scope_attributes(span, scope)
            return scope

    async def route_chat(self, principal: Principal, parsed: Parsed[ChatCompletionRequest],
                         headers: Mapping[str, str], scope: PermissionScope,
                         live: bool = True) -> RouteDecision:
        """The route hop for a chat request: under a learned rule the prompt is scored first
        (its difficulty sets the required quality), then planned like any other. An
        explanation (`live` false) decides alike but is not traffic: it does not move the
        calibration and keeps no features."""
        req = chat_route_request(parsed.typed, parsed.body, principal, headers,
                                 self.router.tokens, scope)
        record = live and self.features.allows(scope)
        messages = parsed.body["messages"]
        with self.span("podium.route") as span:
            matched = self.router.match(req)  # once: the learned check and the plan share it
            learned = self.router.learned_rule(req, matched)
            assessed = (await self.learned.assess(learned[0], messages, record, live)
                        if learned is not None else None)
            if assessed is not None:
                req = replace(req, difficulty=assessed.difficulty)
            plan = self.router.plan(req, principal, self.health, strict=self.strict,
                                    matched=matched)
            _plan_attributes(span, req, plan)
        kept = assessed.features if assessed is not None else None
        if kept is None and record and plan.strategy == "cascade":
            kept = self.learned.record(messages)
        return RouteDecision(scope, req, plan, kept)

    async def embedding(self, principal: Principal, emb: EmbeddingRequest,
                        headers: Mapping[str, str]) -> RouteDecision:
        """Both hops for an embeddings request."""
        scope = await self.permit_embedding(principal, emb, headers)
        return self.route_embedding(principal, emb, scope)

    async def permit_embedding(self, principal: Principal, emb: EmbeddingRequest,
                               headers: Mapping[str, str]) -> PermissionScope:
        with self.span("podium.permissions") as span:
            scope = await resolve_embedding_scope(principal, _texts(emb), headers, self.pii)
            scope_attributes(span, scope)
            return scope

    def route_embedding(self, principal: Principal, emb: EmbeddingRequest,
                        scope: PermissionScope) -> RouteDecision:
        inputs = emb.input if isinstance(emb.input, list) else [emb.input]
        tokens = self.router.tokens.texts(_texts(emb)).tokens + sum(
            len(i) if isinstance(i, list) else 1 for i in inputs if not isinstance(i, str))
        req = RouteRequest(model=emb.model, mode="embedding", needs=frozenset(),
                           prompt_tokens=tokens, max_output_tokens=None, scope=scope)
        return RouteDecision(scope, req, self._plan(req, principal))

    def _plan(self, req: RouteRequest, principal: Principal) -> RoutePlan:
        with self.span("podium.route") as span:
            plan = self.router.plan(req, principal, self.health, strict=self.strict)
            _plan_attributes(span, req, plan)
            return plan


def _texts(emb: EmbeddingRequest) -> list[str]:
    inputs = emb.input if isinstance(emb.input, list) else [emb.input]
    return [i for i in inputs if isinstance(i, str)]


def chat_reservation(decision: RouteDecision, chat: ChatCompletionRequest,
                     expected_output_tokens: int) -> Reservation:
    """The most a chat call can use and cost: every choice at its output limit (`max_tokens`,
    else the deployment's, else the expected output), at its dearest deployment."""
    req, plan, n = decision.request, decision.plan, chat.n or 1
    max_out = chat.max_completion_tokens or chat.max_tokens
    usd = most_cost(plan, req.prompt_tokens, lambda d: (
        max_out or d.max_output_tokens or expected_output_tokens) * n)
    return Reservation(req.prompt_tokens + (max_out or expected_output_tokens) * n, usd)


def most_cost(plan: RoutePlan, prompt_tokens: int,
              output_tokens: Callable[[Deployment], int]) -> float:
    """The most a call along `plan` can cost: its dearest deployment's price, or for a cascade,
    which may pay for every deployment in its chain, the sum."""
    costs = [d.cost(prompt_tokens, output_tokens(d)) for d in plan.chain]
    return sum(costs) if plan.strategy == "cascade" else max(costs, default=0.0)


def embedding_reservation(decision: RouteDecision) -> Reservation:
    tokens = decision.request.prompt_tokens
    return Reservation(tokens, max(d.cost(tokens, 0) for d in decision.plan.chain))


def _plan_attributes(span: HopRecord, req: RouteRequest, plan: RoutePlan) -> None:
    if not span.is_recording():
        return
    span.set_attributes({
        "podium.route.rule": plan.rule, "podium.route.strategy": plan.strategy,
        "podium.route.requested_model": req.model,
        "podium.route.min_quality": plan.min_quality,
        "podium.route.chain": [d.id for d in plan.chain],
        "podium.route.prompt_tokens": req.prompt_tokens})
    if plan.learned is not None:
        span.set_attributes({f"podium.route.learned.{k}": v
                             for k, v in learned_fields(plan.learned).items()
                             if v is not None and k != "reason"})
    for c in plan.candidates:  # the kept ones are the chain
        if not c.kept:
            span.add_event("candidate.dropped", {"deployment": c.deployment.id,
                                                 "reason": c.reason, "source": c.source})


def chat_route_request(chat: ChatCompletionRequest, body: Mapping[str, Any],
                       principal: Principal, headers: Mapping[str, str],
                       tokens: TokenGauge, scope: PermissionScope | None = None) -> RouteRequest:
    max_out = chat.max_completion_tokens or chat.max_tokens
    prompt_tokens = tokens.messages(body["messages"], headroom=max_out or 0).tokens
    lowered = {k.lower(): v for k, v in headers.items()}
    facts = RequestFacts(
        team=principal.team, key=principal.name, model=chat.model,
        has_tools=bool(chat.tools or chat.functions), prompt_tokens=prompt_tokens,
        headers=lowered, last_user_message=_last_user_text(body["messages"]))
    return RouteRequest(
        model=chat.model, mode="chat", needs=chat.capabilities_needed(),
        prompt_tokens=prompt_tokens,
        max_output_tokens=max_out,
        facts=facts, header_min_quality=_header_quality(lowered.get(MIN_QUALITY_HEADER)),
        scope=scope)


def _header_quality(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit() or not 0 <= int(value) <= 100:
        raise BadRequest(f"Header {MIN_QUALITY_HEADER} must be an integer from 0 to 100.",
                         param=MIN_QUALITY_HEADER)
    return int(value)


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return text_of(message)
    return ""


def explain(decision: RouteDecision, health: Health, *,
            callers_view: bool = False) -> dict[str, Any]:
    """The decision as data: the chain, and every candidate with why it was kept or dropped
    (in the `callers_view`, not the deployments of groups the caller may not use); `error` when
    nothing can serve it."""
    plan, req, scope = decision.plan, decision.request, decision.scope
    candidates = []
    for c in plan.candidates:
        if callers_view and c.reason == NOT_ALLOWED:
            continue
        h = health.snapshot(c.deployment.id)
        candidates.append({
            "deployment": c.deployment.id, "group": c.deployment.group, "source": c.source,
            "kept": c.kept, "reason": c.reason, "quality": c.deployment.quality,
            "estimated_cost_usd": round(c.estimated_cost_usd, 10),
            "max_input_tokens": c.deployment.max_input_tokens,
            "supports": sorted(c.deployment.supports),
            "health": {"breaker": h.state, "consecutive_failures": h.consecutive_failures,
                       "latency_ms": None if h.latency_s is None else round(h.latency_s * 1e3, 2)},
        })
    return {"object": "route.explanation", "model": req.model, "rule": plan.rule,
            "data_class": scope.data_class, "data_class_reasons": scope.reasons,
            "strategy": plan.strategy, "min_quality": plan.min_quality,
            "learned": learned_fields(plan.learned) if plan.learned is not None else None,
            "prompt_tokens": req.prompt_tokens, "needs": sorted(req.needs),
            "chain": [d.id for d in plan.chain], "candidates": candidates,
            **({"error": plan.refusal.fields()} if plan.refusal is not None else {})}


def learned_fields(d: LearnedDecision) -> dict[str, Any]:
    """A learned rule's decision as explain, the span and the audit record show it."""
    return {"decision": d.decision, "score": _rounded(d.score),
            "threshold": _rounded(d.threshold), "threshold_source": d.source or None,
            "quality": d.min_quality, "header_min_quality": d.header_override,
            "reason": d.reason}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def render_text(decision: Mapping[str, Any]) -> str:
    lines = [
        f"model {decision['model']!r} -> rule {decision['rule']!r}, strategy "
        f"{decision['strategy']}, min quality {decision['min_quality']}, "
        f"~{decision['prompt_tokens']} prompt tokens, needs {decision['needs'] or 'nothing'}",
        "plan: " + (" -> ".join(decision["chain"]) or "none: nothing can serve this request"),
        "candidates:",
    ]
    if decision.get("learned"):
        lines.insert(1, f"learned: {decision['learned']['reason']}")
    for c in decision["candidates"]:
        mark = "kept   " if c["kept"] else "dropped"
        lines.append(f"  {mark} {c['deployment']:<20} q={c['quality']:<3} "
                     f"${c['estimated_cost_usd']:.6f}  [{c['source']}] {c['reason']}")
    return "\n".join(lines)
