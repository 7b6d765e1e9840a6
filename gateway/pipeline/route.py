"""The route hop's input and its explanation.

`chat_route_request` turns a validated chat request into what the router needs; the live
pipeline, `POST /v1/route/explain` and `podium route --explain` all call it and then the same
`Router.plan`, so an explanation is the decision itself, not a re-enactment of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import BadRequest
from gateway.pipeline.identity import Principal
from gateway.pipeline.ingress import ChatCompletionRequest, Message
from routing.health import Health
from routing.router import RoutePlan, RouteRequest, Scope
from routing.rules import RequestFacts
from routing.tokens import TokenGauge

MIN_QUALITY_HEADER = "x-podium-min-quality"


def chat_route_request(chat: ChatCompletionRequest, body: Mapping[str, Any],
                       principal: Principal, headers: Mapping[str, str],
                       tokens: TokenGauge, scope: Scope | None = None) -> RouteRequest:
    max_out = chat.max_completion_tokens or chat.max_tokens
    prompt_tokens = tokens.messages(body["messages"], headroom=max_out or 0).tokens
    lowered = {k.lower(): v for k, v in headers.items()}
    facts = RequestFacts(
        team=principal.team, key=principal.name, model=chat.model,
        has_tools=bool(chat.tools or chat.functions), prompt_tokens=prompt_tokens,
        headers=lowered, last_user_message=_last_user_text(chat.messages))
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


def _last_user_text(messages: list[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            if isinstance(message.content, str):
                return message.content
            return " ".join(p.text or "" for p in message.content or () if p.type == "text")
    return ""


def explain(plan: RoutePlan, req: RouteRequest, health: Health) -> dict[str, Any]:
    """The decision as data: the chain, and every candidate with why it was kept or dropped."""
    candidates = []
    for c in plan.candidates:
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
    scope = req.scope
    return {"object": "route.explanation", "model": req.model, "rule": plan.rule,
            "data_class": getattr(scope, "data_class", None),
            "data_class_reasons": getattr(scope, "reasons", []),
            "strategy": plan.strategy, "min_quality": plan.min_quality,
            "prompt_tokens": req.prompt_tokens, "needs": sorted(req.needs),
            "chain": [d.id for d in plan.chain], "candidates": candidates}


def render_text(decision: Mapping[str, Any]) -> str:
    lines = [
        f"model {decision['model']!r} -> rule {decision['rule']!r}, strategy "
        f"{decision['strategy']}, min quality {decision['min_quality']}, "
        f"~{decision['prompt_tokens']} prompt tokens, needs {decision['needs'] or 'nothing'}",
        "plan: " + " -> ".join(decision["chain"]),
        "candidates:",
    ]
    for c in decision["candidates"]:
        mark = "kept   " if c["kept"] else "dropped"
        lines.append(f"  {mark} {c['deployment']:<20} q={c['quality']:<3} "
                     f"${c['estimated_cost_usd']:.6f}  [{c['source']}] {c['reason']}")
    return "\n".join(lines)
