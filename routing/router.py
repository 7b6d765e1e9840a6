"""Hop 5, route: a request's needs → a `RoutePlan` (primary deployment + fallback chain).

Candidates are the requested group, one deployment (by id), or, for `auto`, every deployment the
caller may use. Each candidate is kept or dropped with a recorded reason; the kept ones that meet
the required quality are ordered by estimated cost, cheapest first, and that order is the
fallback chain. The reasons feed the trace and the response headers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import ModelNotFound, PermissionDenied, UnsupportedRequest
from gateway.identity import Principal
from routing.catalog import Catalog, Deployment

AUTO = "auto"
# When the caller sets no max_tokens, cost estimates assume an answer of this many tokens.
DEFAULT_EXPECTED_OUTPUT_TOKENS = 256


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the router needs to know about one request (and nothing else)."""
    model: str
    mode: str                         # "chat" | "embedding"
    needs: frozenset[str]             # capabilities: tools, json_schema, vision, streaming
    prompt_tokens: int
    max_output_tokens: int | None
    min_quality: int


@dataclass(frozen=True, slots=True)
class Candidate:
    deployment: Deployment
    kept: bool
    reason: str
    estimated_cost_usd: float


@dataclass(frozen=True, slots=True)
class RoutePlan:
    rule: str
    chain: tuple[Deployment, ...]
    candidates: tuple[Candidate, ...]
    min_quality: int


class Router:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def plan(self, req: RouteRequest, principal: Principal) -> RoutePlan:
        pool = self._pool(req, principal)
        candidates = [self._judge(dep, req) for dep in pool]
        kept = sorted((c for c in candidates if c.kept),
                      key=lambda c: (c.estimated_cost_usd, -c.deployment.quality, c.deployment.id))
        if not kept:
            raise UnsupportedRequest(
                f"No deployment of {req.model!r} can serve this request: "
                + "; ".join(f"{c.deployment.id}: {c.reason}" for c in candidates))
        return RoutePlan(rule="default", chain=tuple(c.deployment for c in kept),
                         candidates=tuple(candidates), min_quality=req.min_quality)

    def visible_groups(self, principal: Principal) -> list[str]:
        return [g for g in self._catalog.groups if principal.may_use(g)]

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

    def _judge(self, dep: Deployment, req: RouteRequest) -> Candidate:
        expected_out = req.max_output_tokens or DEFAULT_EXPECTED_OUTPUT_TOKENS
        cost = dep.cost(req.prompt_tokens, expected_out if req.mode == "chat" else 0)
        missing = sorted(req.needs - dep.supports)
        if missing:
            return Candidate(dep, False, f"does not support {', '.join(missing)}", cost)
        if dep.quality < req.min_quality:
            return Candidate(dep, False, f"quality {dep.quality} < required {req.min_quality}",
                             cost)
        window = dep.max_input_tokens
        needed = req.prompt_tokens + (req.max_output_tokens or 0)
        if window is not None and needed > window:
            return Candidate(dep, False, f"needs {needed} tokens, context window is {window}",
                             cost)
        return Candidate(dep, True, f"eligible, estimated ${cost:.6f}", cost)
