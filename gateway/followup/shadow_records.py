"""The records a shadow trial leaves: its comparison (`ShadowPair`) and its spend rows, ledgered
under the key `shadow` (never a team's or a key's), one per call: the candidate's and the
judge's, each with the request id and `:shadow` or `:judge`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from gateway.errors import PodiumError
from gateway.pipeline.context import RequestContext
from gateway.storage.records import ShadowPair, SpendRow
from routing.catalog import Catalog, Deployment
from routing.fallback import CallResult
from routing.learned.features import RecordedFeatures
from routing.providers.base import ChatAnswer

SHADOW_KEY = "shadow"       # the ledger's key id for shadow spend (real ones are key_<hex>)


def rule_of(ctx: RequestContext) -> str:
    return ctx.plan.rule if ctx.plan is not None else "default"


def spend_row(ctx: RequestContext, kind: str, dep: Deployment, status: int,
              result: CallResult[ChatAnswer] | None) -> SpendRow:
    """One shadow call (`kind`: shadow or judge) in the ledger, in no team."""
    usage = result.usage if result is not None else None
    return SpendRow(ts=time.time(), request_id=f"{ctx.request_id}:{kind}", key_id=SHADOW_KEY,
                    key_name=f"{kind} {rule_of(ctx)}", team=None, model=dep.group,
                    deployment=dep.id, status=status,
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=usage.completion_tokens if usage else 0,
                    cost_usd=result.cost_usd if result is not None else 0.0)


@dataclass(frozen=True)
class Verdict:
    """What the comparison found (checks, similarity, the judge), for the pair."""
    primary_check: str | None = None
    candidate_check: str | None = None
    similarity: float | None = None
    score: float | None = None
    judge_cost: float = 0.0
    agreed: bool | None = None


def shadow_pair(ctx: RequestContext, catalog: Catalog, tried: Deployment,
                answered: CallResult[ChatAnswer] | PodiumError, verdict: Verdict,
                features: RecordedFeatures | None) -> ShadowPair:
    """The comparison of a trial whose candidate answered, or failed (`answered`)."""
    outcome = ctx.outcome
    if isinstance(answered, CallResult):
        candidate, error = answered.deployment, None
        cost, latency = answered.cost_usd, answered.upstream_s
    else:
        candidate, error, cost, latency = tried, _kind(answered), 0.0, 0.0
    primary = catalog.by_id.get(outcome.deployment or "")
    return ShadowPair(
        ts=time.time(), request_id=ctx.request_id, rule=rule_of(ctx),
        primary=outcome.deployment or "", candidate=candidate.id,
        status="ok" if error is None else "error", error=error,
        primary_cost=round(outcome.cost_usd, 10), candidate_cost=round(cost, 10),
        judge_cost=round(verdict.judge_cost, 10),
        primary_latency_s=round(outcome.upstream_s, 6), candidate_latency_s=round(latency, 6),
        primary_passed=verdict.primary_check is None,
        candidate_passed=verdict.candidate_check is None if error is None else None,
        primary_check=verdict.primary_check, candidate_check=verdict.candidate_check,
        similarity=verdict.similarity, judge_score=verdict.score, agreed=verdict.agreed,
        candidate_cheaper=primary is not None and _price(candidate) < _price(primary),
        features=orjson.dumps(features.to_json()).decode() if features is not None else None,
        embedder=features.embedder if features is not None else None)


def _kind(err: PodiumError) -> str:
    """What went wrong with the candidate: its last attempt's error kind, or the code."""
    attempts = getattr(err, "attempts", None)
    if attempts:
        return str(attempts[-1].error.kind)
    return err.code or err.type


def _price(dep: Deployment) -> float:
    return dep.input_cost_per_token + dep.output_cost_per_token
