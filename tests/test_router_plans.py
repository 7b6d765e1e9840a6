"""Reused routing plans (routing/router.py): a plan is reused only while nothing it was made
from has changed: the request's shape, the key's allow-list, the scope, the config, the health
of the deployments."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.errors import PodiumError, ProviderError
from gateway.pipeline.identity import Principal
from gateway.pipeline.permissions import DATA_CLASSES, PermissionScope
from gateway.simulator import start_simulator
from routing.catalog import Catalog
from routing.health import Health
from routing.router import RoutePlan, Router, RouteRequest
from routing.rules import BreakerConfig, RequestFacts
from tests.conftest import GatewayFactory, Upstream, base_config, deployment
from tests.support.asking import HI, answered_by
from tests.support.net import free_port

ANYONE = Principal(key_id="k", name="k", team=None, user=None, allowed_models=None)
ONE_FAILURE = BreakerConfig(failures=1, cooldown_s=5.0)
SERVER_ERROR = ProviderError("server", "boom", status=500)


def _dep(group: str, dep_id: str, quality: int, price: float, **info: Any) -> dict[str, Any]:
    return {"model_name": group, "litellm_params": {"model": f"openai/{dep_id}"},
            "model_info": {"id": dep_id, "quality": quality, "input_cost_per_token": price,
                           "output_cost_per_token": price * 3, "max_input_tokens": 4000,
                           **info}}


CONFIG = parse_config({
    "model_list": [
        _dep("g", "g-small", 40, 1e-7, supports=["tools", "streaming"], region="us"),
        _dep("g", "g-mid", 60, 5e-7, supports=["tools", "vision", "streaming"], region="eu",
             data_clearance="confidential"),
        _dep("g", "g-big", 90, 2e-6, supports=["tools", "vision", "json_schema", "streaming"],
             region="us", data_clearance="restricted", max_input_tokens=16000),
        _dep("f", "f-one", 70, 8e-7, supports=["tools", "streaming"], region="eu",
             data_clearance="internal"),
    ],
    "routing": {"rules": [
        {"name": "gold", "match": {"headers": {"x-tier": "gold"}}, "min_quality": 55,
         "strategy": "cascade", "fallbacks": ["f"]},
        {"name": "fast", "match": {"headers": {"x-tier": "fast"}}, "strategy": "latency"},
        {"name": "euro", "match": {"headers": {"x-tier": "euro"}}, "regions": ["eu"],
         "fallbacks": ["f"]},
    ]},
}, env={})
DEPLOYMENTS = [d.id for d in Catalog.from_config(CONFIG).deployments]


def router() -> Router:
    return Router(Catalog.from_config(CONFIG), CONFIG.routing)


def request(tier: str | None = None, *, tokens: int = 100, max_out: int | None = None,
            needs: frozenset[str] = frozenset(), quality: int | None = None,
            scope: PermissionScope | None = None) -> RouteRequest:
    headers = {"x-tier": tier} if tier else {}
    facts = RequestFacts(team=None, key="k", model="g", has_tools="tools" in needs,
                         prompt_tokens=tokens, headers=headers, last_user_message="hi")
    return RouteRequest(model="g", mode="chat", needs=needs, prompt_tokens=tokens,
                        max_output_tokens=max_out, facts=facts, header_min_quality=quality,
                        scope=scope)


def test_the_same_request_twice_gets_the_same_plan_object() -> None:
    r, health = router(), Health()
    first = r.plan(request(), ANYONE, health)
    assert r.plan(request(), ANYONE, health) is first, "the second request reuses the plan"
    # Anything the plan is made from, changed, makes another plan.
    assert r.plan(request(tokens=101), ANYONE, health) is not first
    assert r.plan(request(quality=50), ANYONE, health) is not first
    assert r.plan(request(needs=frozenset({"vision"})), ANYONE, health) is not first
    assert r.plan(request(scope=PermissionScope("internal", [])), ANYONE, health) is not first
    narrowed = replace(ANYONE, allowed_models=frozenset({"g"}))
    assert r.plan(request(), narrowed, health) is not first


def test_plans_that_decide_per_request_are_never_reused() -> None:
    r, health = router(), Health()
    assert r.plan(request("fast"), ANYONE, health) is not r.plan(request("fast"), ANYONE, health)
    assert r.plan(request("gold"), ANYONE, health) is r.plan(request("gold"), ANYONE, health)


def test_a_breaker_opening_changes_the_very_next_plan() -> None:
    r, health = router(), Health()
    assert r.plan(request(), ANYONE, health).chain[0].id == "g-small"
    health.failed("g-small", SERVER_ERROR, ONE_FAILURE)
    plan = r.plan(request(), ANYONE, health)
    assert plan.chain[0].id == "g-mid"
    assert r.plan(request(), ANYONE, health) is not plan, "a plan skipping a deployment for " \
        "its health ends with the clock, so it is not kept"


def test_a_cool_down_changes_the_very_next_plan() -> None:
    r, health = router(), Health()
    r.plan(request(), ANYONE, health)
    health.failed("g-small", ProviderError("rate_limit", "slow down", retry_after_s=9), ONE_FAILURE)
    assert r.plan(request(), ANYONE, health).chain[0].id == "g-mid"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _decided(r: Router, req: RouteRequest, principal: Principal,
             health: Health) -> tuple[RoutePlan | None, str | None]:
    """The plan without its refusal, and the refusal (or the error raised) as text."""
    try:
        plan = r.plan(req, principal, health, strict=False)
    except PodiumError as err:
        return None, f"{type(err).__name__}: {err.message}"
    refusal = plan.refusal
    return (replace(plan, refusal=None),
            None if refusal is None else f"{type(refusal).__name__}: {refusal.message}")


def _apply(event: tuple[str, str, float], health: Health, clock: Clock) -> None:
    what, dep, amount = event
    if what == "fail":
        health.failed(dep, SERVER_ERROR, BreakerConfig(failures=1, cooldown_s=amount))
    elif what == "throttle":
        health.failed(dep, ProviderError("rate_limit", "429", retry_after_s=amount),
                      ONE_FAILURE)
    elif what == "succeed":
        health.succeeded(dep, amount / 10)
    elif what == "probe":
        health.begin(dep)
    elif what == "abandon":
        health.abandon(dep)
    elif what == "remote":
        opened = amount > 2  # another process's breaker: open for `amount` seconds, or closed
        health.apply_remote(dep, "open" if opened else "closed", time.time() + amount)
    else:
        clock.now += amount


# Each change of health, from a state where the plan for `request()` is kept: (what led there,
# the change). After the change, the next plan must be the one a new router makes.
OPEN_THEN_EXPIRED = [("fail", "g-small", 1.0), ("wait", "", 2.0)]
CHANGES = {
    "breaker opens": ([], ("fail", "g-small", 5.0)),
    "cool-down starts": ([], ("throttle", "g-small", 5.0)),
    "breaker goes half-open (a probe)": (OPEN_THEN_EXPIRED, ("probe", "g-small", 0.0)),
    "breaker closes": ([*OPEN_THEN_EXPIRED, ("probe", "g-small", 0.0)],
                       ("succeed", "g-small", 1.0)),
    "probe abandoned": ([*OPEN_THEN_EXPIRED, ("probe", "g-small", 0.0)],
                        ("abandon", "g-small", 0.0)),
    "another process opens it": ([], ("remote", "g-small", 3.0)),
    "another process closes it": ([("remote", "g-small", 3.0)], ("remote", "g-small", 0.0)),
}


@pytest.mark.parametrize("change", CHANGES)
def test_every_health_change_is_seen_by_the_next_plan(change: str) -> None:
    before, event = CHANGES[change]
    clock = Clock()
    health, warm = Health(clock), router()
    for step in before:
        _apply(step, health, clock)
    warm.plan(request(), ANYONE, health, strict=False)
    _apply(event, health, clock)
    assert _decided(warm, request(), ANYONE, health) == _decided(router(), request(), ANYONE,
                                                                 health)


events = st.tuples(
    st.sampled_from(["fail", "throttle", "succeed", "probe", "abandon", "remote", "wait"]),
    st.sampled_from(["g-small", "g-small", *DEPLOYMENTS]), st.floats(0.1, 4.0))
requests = st.one_of(st.just(request()), st.just(request("gold")), st.builds(
    request, st.sampled_from([None, "gold", "fast", "euro", "none"]),
    tokens=st.sampled_from([10, 100, 3000, 9000]),
    max_out=st.sampled_from([None, 50, 2000]),
    needs=st.frozensets(st.sampled_from(["tools", "vision", "json_schema"]), max_size=2),
    quality=st.sampled_from([None, 0, 65, 95]),
    scope=st.one_of(st.none(), st.builds(
        PermissionScope, st.sampled_from(DATA_CLASSES), st.just([]),
        st.sampled_from([None, frozenset({"us"}), frozenset({"eu"})])))))
principals = st.sampled_from([ANYONE, replace(ANYONE, allowed_models=frozenset({"g"})),
                              replace(ANYONE, allowed_models=frozenset({"f"}))])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(requests, principals), min_size=1, max_size=3),
       st.lists(st.one_of(st.integers(0, 2), events), min_size=4, max_size=40))
def test_a_reused_plan_is_always_the_plan_made_afresh(
        shapes: list[tuple[RouteRequest, Principal]],
        steps: list[int | tuple[str, str, float]]) -> None:
    """A few request shapes, asked again and again between health changes and the passing of
    time: the warm router's answer is always the one a new router makes."""
    clock = Clock()
    health, warm = Health(clock), router()
    for step in steps:
        if isinstance(step, tuple):
            _apply(step, health, clock)
            continue
        req, principal = shapes[step % len(shapes)]
        assert _decided(warm, req, principal, health) == _decided(router(), req, principal,
                                                                  health)


async def test_over_http_an_opened_breaker_reroutes_the_next_request_at_once(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    port = free_port()
    config = base_config(upstream.url)
    config["model_list"][:2] = [
        deployment("chat", "sim-first", f"http://127.0.0.1:{port}/v1", input_cost_per_token=1e-8),
        deployment("chat", "sim-ok", upstream.url, input_cost_per_token=1e-7)]
    config["routing"] = {"breaker": {"failures": 1, "cooldown_s": 30}}
    config["cache"] = {"enabled": False}
    gw = await make_gateway(config)
    runner, _ = await start_simulator("127.0.0.1", port)
    try:
        for _ in range(2):  # the second request is served by the plan the first one made
            assert await answered_by(gw, model="chat") == "sim-first"
    finally:
        await runner.cleanup()
    # sim-first is gone: this request fails over, and its failure opens the breaker.
    raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=HI)
    assert raw.headers["x-podium-deployment"] == "sim-ok"
    assert raw.headers["x-podium-attempts"] == "2"
    # A kept plan would still start with sim-first: the open breaker must not be tried at all.
    raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=HI)
    assert raw.headers["x-podium-deployment"] == "sim-ok"
    assert raw.headers["x-podium-attempts"] == "1"


async def test_over_http_a_reload_replans_the_same_request(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    config = base_config(upstream.url)
    config["cache"] = {"enabled": False}
    gw = await make_gateway(config)
    for _ in range(2):
        assert await answered_by(gw, model="chat") == "sim-cheap"
    # The same request, after a reload that makes sim-cheap too weak for the group's default.
    config["routing"] = {"default": {"min_quality": 60}}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({**config, "key_store": {"path": ":memory:"},
                                    "storage": {"path": str(tmp_path / "s.sqlite3")}}))
    result = await gw.gateway.reload(path)
    assert result.ok, result
    assert await answered_by(gw, model="chat") == "sim-dear"
