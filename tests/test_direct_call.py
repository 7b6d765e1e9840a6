"""A single-deployment plan is called directly, not walked (routing/fallback.py, `_direct`):
everything the walk produces must come out the same. Each case runs twice against the simulator
over loopback HTTP, through the real provider, telemetry and health: once as a plan of one
deployment (the direct path), once as a plan whose second deployment has an open breaker (the
walk, which skips it after the first attempt, so it makes the same one attempt). The answer or
error, the CLIENT spans, the attempt reports, breaker changes and health must be equal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import parse_config
from gateway.errors import PodiumError, ProviderError
from gateway.observability import telemetry
from routing.catalog import Catalog, Deployment
from routing.fallback import Caller
from routing.health import Health
from routing.providers.base import Usage
from routing.providers.openai import OpenAICompatibleProvider
from routing.router import RoutePlan
from routing.rules import BreakerConfig, RoutingConfig
from tests.conftest import Upstream, deployment

HI = [{"role": "user", "content": "hello there"}]
NO_RETRIES = RoutingConfig.model_validate({"retries": {"attempts": 0}})
# Attributes that differ between any two calls, whichever path made them.
_VARYING = {"gen_ai.response.id"}


@dataclass
class Reports:
    """The gateway's `CallEvents`, written down."""
    attempts: list[tuple[Any, ...]] = field(default_factory=list)
    breakers: list[tuple[str, str]] = field(default_factory=list)

    def attempt_done(self, dep: Deployment, operation: str, seconds: float, outcome: str,
                     usage: Usage, response_model: str | None) -> None:
        self.attempts.append((dep.id, operation, outcome, usage, response_model))

    async def breaker_changed(self, dep_id: str, state: str, open_until_wall: float) -> None:
        self.breakers.append((dep_id, state))


@pytest.fixture
async def provider() -> AsyncIterator[OpenAICompatibleProvider]:
    native = OpenAICompatibleProvider()
    yield native
    await native.close()


def deployments(url: str, model: str) -> tuple[Deployment, Deployment]:
    config = parse_config({"model_list": [deployment("solo", model, url, timeout=0.5),
                                          deployment("solo", "sim-blocked", url)]}, env={})
    solo, blocked = Catalog.from_config(config).deployments
    return solo, blocked


def plan(*chain: Deployment) -> RoutePlan:
    return RoutePlan(rule="default", strategy="cheapest", chain=chain, candidates=(),
                     min_quality=0)


def _error(err: PodiumError) -> tuple[Any, ...]:
    failures = [(f.deployment, f.error.kind, f.error.status)
                for f in getattr(err, "failures", ())]
    failed = getattr(err, "failed", None)
    if failed is not None:
        failures.append((failed.deployment, failed.error.kind, failed.error.status))
    return type(err).__name__, err.status, err.code, failures


async def run(the_plan: RoutePlan, provider: OpenAICompatibleProvider, *, stream: bool,
              routing: RoutingConfig = NO_RETRIES) -> dict[str, Any]:
    exporter = InMemorySpanExporter()
    health, reports = Health(), Reports()
    health.failed("sim-blocked", ProviderError("server", "down"), BreakerConfig(failures=1))
    caller = Caller(lambda d: provider, telemetry.with_exporter(exporter), health, reports)
    deadline = asyncio.get_running_loop().time() + 30
    body = {"model": "solo", "messages": HI}
    outcome: tuple[Any, ...]
    try:
        if stream:
            opened = await caller.open_stream(the_plan, body, deadline, routing)
            chunks = [c async for c in opened.chunks()]
            outcome = ("stream", opened.deployment.id, opened.attempts,
                       [(f.deployment, f.error.kind) for f in opened.failures],
                       opened.attempted, opened.masked, opened.usage, len(chunks),
                       [c["choices"] for c in chunks])
        else:
            result = await caller.chat(the_plan, body, deadline, routing)
            outcome = ("answer", result.deployment.id, result.attempts,
                       [(f.deployment, f.error.kind) for f in result.failures],
                       result.attempted, result.masked, result.usage, result.cost_usd,
                       result.escalations, result.checks, result.answer.body["choices"])
    except PodiumError as err:
        outcome = _error(err)
    spans = [(s.name, s.kind, {k: v for k, v in (s.attributes or {}).items()
                               if k not in _VARYING},
              s.status.status_code, s.status.description, [e.name for e in s.events])
             for s in exporter.get_finished_spans()]
    solo = health.snapshot(the_plan.chain[0].id)
    return {"outcome": outcome, "spans": spans, "attempts": reports.attempts,
            "breakers": reports.breakers,
            "health": (solo.state, solo.consecutive_failures, solo.cooling_until > 0)}


CASES = {
    "success": "sim-ok",
    "upstream 4xx": "sim-badreq",
    "upstream 5xx": "sim-error500",
    "upstream 429": "sim-rate429",
    "timeout": "sim-hang",
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("case", CASES)
async def test_the_direct_path_matches_the_walk(case: str, stream: bool, upstream: Upstream,
                                                provider: OpenAICompatibleProvider) -> None:
    solo, blocked = deployments(upstream.url, CASES[case])
    direct = await run(plan(solo), provider, stream=stream)
    walked = await run(plan(solo, blocked), provider, stream=stream)
    assert direct == walked
    assert len(direct["spans"]) == 1, "one attempt, one CLIENT span"
    if case == "success":
        assert direct["outcome"][0] == ("stream" if stream else "answer")
    else:
        assert direct["outcome"][0] != "answer"


async def test_a_failed_direct_attempt_hands_its_retries_to_the_walk(
        upstream: Upstream, provider: OpenAICompatibleProvider) -> None:
    """Two retries of the only deployment after a direct first attempt: three attempts, as a
    walk along the same deployment three times makes them (the walk without the backoff)."""
    solo, _ = deployments(upstream.url, "sim-e503")
    retries = RoutingConfig.model_validate({"retries": {"attempts": 2, "backoff_s": 0.001}})
    direct = await run(plan(solo), provider, stream=False, routing=retries)
    walked = await run(plan(solo, solo, solo), provider, stream=False)
    assert direct == walked
    assert [a[2] for a in direct["attempts"]] == ["server"] * 3
    assert len(direct["spans"]) == 3
