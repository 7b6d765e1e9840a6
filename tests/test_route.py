"""The route hop end to end (pipeline/route.py, routing/router.py): the openai SDK → gateway →
simulator, decisions read from headers, from the upstream's log, from /v1/route/explain and
from `podium route --explain`. What happens when an attempt fails is in test_fallback.py,
cascades in test_cascade.py, the router's ordering as properties in test_router_properties.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.conftest import (
    APP_KEY,
    GatewayFactory,
    RunningGateway,
    Upstream,
    base_config,
    deployment,
)
from tests.support.asking import HI, answered_by, explain

ROOT = Path(__file__).resolve().parents[1]


def catalog(url: str) -> dict[str, Any]:
    """Four chat deployments with distinct prices, qualities, capabilities and windows."""
    config = base_config(url)
    config["model_list"] = [
        deployment("chat", "sim-tiny", url, quality=30, input_cost_per_token=1e-8,
                   output_cost_per_token=1e-8, supports=["streaming"], max_input_tokens=50),
        deployment("chat", "sim-cheap", url, quality=40, input_cost_per_token=1e-7,
                   output_cost_per_token=2e-7, supports=["tools", "json_schema", "streaming"]),
        deployment("chat", "sim-dear", url, quality=80, input_cost_per_token=1e-6,
                   output_cost_per_token=2e-6,
                   supports=["tools", "json_schema", "vision", "streaming"]),
        deployment("premium", "sim-premium", url, quality=95, input_cost_per_token=5e-6,
                   output_cost_per_token=1e-5),
        deployment("embed", "sim-embed", url, mode="embedding"),
    ]
    config["keys"].append({"key": "sk-test-ops-0123456789", "name": "ops", "team": "ops"})
    config["routing"] = {"rules": [
        {"name": "ops-needs-quality", "match": {"team": "ops"}, "min_quality": 70},
        {"name": "escalate-to-premium", "match": {"headers": {"x-tier": "gold"}},
         "min_quality": 90, "fallbacks": ["premium"]},
    ]}
    return config


@pytest.fixture
async def routed(upstream: Upstream, make_gateway: GatewayFactory) -> RunningGateway:
    return await make_gateway(catalog(upstream.url))


async def test_auto_picks_the_cheapest_and_explain_agrees(routed: RunningGateway) -> None:
    assert await answered_by(routed, model="auto") == "sim-tiny"
    decision = await explain(routed, {"model": "auto", "messages": HI})
    assert decision["chain"][0] == "sim-tiny"
    assert decision["chain"] == ["sim-tiny", "sim-cheap", "sim-dear", "sim-premium"]


async def test_min_quality_by_header_and_by_team_rule(routed: RunningGateway) -> None:
    by_header = await routed.client().chat.completions.with_raw_response.create(
        model="chat", messages=HI, extra_headers={"x-podium-min-quality": "60"})
    assert by_header.headers["x-podium-deployment"] == "sim-dear"
    assert by_header.headers["x-podium-route"] == "default"
    ops = await routed.client("sk-test-ops-0123456789").chat.completions.with_raw_response.create(
        model="chat", messages=HI)
    assert ops.headers["x-podium-deployment"] == "sim-dear"
    assert ops.headers["x-podium-route"] == "ops-needs-quality"
    # The header outranks the rule.
    decision = await explain(routed, {"model": "chat", "messages": HI},
                             key="sk-test-ops-0123456789",
                             headers={"x-podium-min-quality": "20"})
    assert decision["min_quality"] == 20 and decision["chain"][0] == "sim-tiny"


async def test_bad_quality_header_is_400(routed: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await routed.client().chat.completions.create(
            model="chat", messages=HI, extra_headers={"x-podium-min-quality": "high"})
    assert info.value.body["param"] == "x-podium-min-quality"


async def test_rule_fallback_groups_come_after_the_group(routed: RunningGateway) -> None:
    decision = await explain(routed, {"model": "chat", "messages": HI},
                             headers={"x-tier": "gold"})
    assert decision["rule"] == "escalate-to-premium"
    assert decision["chain"] == ["sim-premium"]
    sources = {c["deployment"]: c["source"] for c in decision["candidates"]}
    assert sources["sim-premium"] == "fallback:premium"


@pytest.mark.parametrize(("kwargs", "expected", "dropped"), [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "sim-cheap",
     "does not support tools"),
    ({"response_format": {"type": "json_object"}}, "sim-cheap", "does not support json_schema"),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     "sim-dear", "does not support vision"),
    ({"messages": [{"role": "user", "content": "word " * 80}]}, "sim-cheap",
     "context window is 50"),
    ({"max_tokens": 100}, "sim-cheap", "context window is 50"),
])
async def test_capability_and_window_filters(routed: RunningGateway, kwargs: dict[str, Any],
                                             expected: str, dropped: str) -> None:
    body = {"model": "chat", "messages": HI, **kwargs}
    assert await answered_by(routed, **body) == expected
    decision = await explain(routed, body)
    [tiny] = [c for c in decision["candidates"] if c["deployment"] == "sim-tiny"]
    assert not tiny["kept"] and dropped in tiny["reason"]


async def test_allow_list_is_respected_by_auto(routed: RunningGateway) -> None:
    from tests.conftest import LIMITED_KEY

    decision = await explain(routed, {"model": "auto", "messages": HI}, key=LIMITED_KEY)
    assert {c["group"] for c in decision["candidates"]} == {"chat"}
    with pytest.raises(openai.PermissionDeniedError):
        await routed.client(LIMITED_KEY).chat.completions.create(model="premium", messages=HI)


def test_cli_explain_matches_the_live_decision(tmp_path: Path, upstream: Upstream) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(catalog(upstream.url)))
    body = json.dumps({"model": "chat", "messages": HI,
                       "tools": [{"type": "function", "function": {"name": "f"}}]})
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "route", "--explain", "--config", str(path),
         "--team", "ops", "--json"], input=body, capture_output=True, text=True, timeout=60,
        cwd=ROOT)
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["rule"] == "ops-needs-quality"
    assert decision["chain"] == ["sim-dear"]
    text = subprocess.run(
        [sys.executable, "-m", "gateway", "route", "--explain", "--config", str(path)],
        input=body, capture_output=True, text=True, timeout=60, cwd=ROOT).stdout
    assert "plan: sim-cheap -> sim-dear" in text
    assert "dropped sim-tiny" in text and "does not support tools" in text


def matching(url: str, rule: dict[str, Any]) -> dict[str, Any]:
    cfg = catalog(url)
    cfg["routing"] = {"rules": [{"name": "the-rule", "min_quality": 70, **rule}]}
    return cfg


@pytest.mark.parametrize(("rule", "hit", "miss"), [
    ({"match": {"key": "app"}}, {}, {"key": "sk-test-ops-0123456789"}),
    ({"match": {"model": "auto"}}, {"model": "auto"}, {}),
    ({"match": {"has_tools": True}},
     {"tools": [{"type": "function", "function": {"name": "f"}}]}, {}),
    ({"match": {"min_prompt_tokens": 50}},
     {"messages": [{"role": "user", "content": "word " * 60}]}, {}),
    ({"match": {"max_prompt_tokens": 20}}, {},
     {"messages": [{"role": "user", "content": "word " * 60}]}),
    ({"match": {"last_user_message": "(?i)urgent"}},
     {"messages": [{"role": "user", "content": "URGENT: help"}]}, {}),
])
async def test_every_rule_condition(upstream: Upstream, make_gateway: GatewayFactory,
                                    rule: dict[str, Any], hit: dict[str, Any],
                                    miss: dict[str, Any]) -> None:
    gw = await make_gateway(matching(upstream.url, rule))
    for request, expected in ((hit, "the-rule"), (miss, "default")):
        key = request.pop("key", APP_KEY)
        body = {"model": "chat", "messages": HI, **request}
        decision = await explain(gw, body, key=key)
        assert decision["rule"] == expected, (request, decision["rule"])


async def test_latency_strategy_prefers_the_fastest_measured(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    cfg = base_config(upstream.url)
    cfg["model_list"][:2] = [
        deployment("chat", "sim-slow", upstream.url, input_cost_per_token=1e-9),
        deployment("chat", "sim-quick", upstream.url, input_cost_per_token=1e-6)]
    cfg["routing"] = {"default": {"strategy": "latency"}}
    cfg["cache"] = {"enabled": False}
    gw = await make_gateway(cfg)
    # Unmeasured deployments go first so they get measured: both answer once.
    first = {await answered_by(gw, model="chat"), await answered_by(gw, model="chat")}
    assert first == {"sim-slow", "sim-quick"}
    decision = await explain(gw, {"model": "chat", "messages": HI})
    latency = {c["deployment"]: c["health"]["latency_ms"] for c in decision["candidates"]}
    assert latency["sim-slow"] > latency["sim-quick"], "the simulator's sim-slow takes 50 ms"
    assert decision["chain"][0] == "sim-quick"
    assert await answered_by(gw, model="chat") == "sim-quick"


async def test_weighted_strategy_follows_the_weights(upstream: Upstream,
                                                     make_gateway: GatewayFactory) -> None:
    cfg = base_config(upstream.url)
    cfg["routing"] = {"default": {"strategy": "weighted",
                                  "weights": {"sim-cheap": 9, "sim-dear": 1}}}
    gw = await make_gateway(cfg)
    firsts = [(await explain(gw, {"model": "chat", "messages": HI}))["chain"][0]
              for _ in range(200)]
    share = firsts.count("sim-cheap") / len(firsts)
    assert 0.8 < share < 0.97, share  # 0.9 expected; bounds far outside sampling noise


async def test_the_trace_records_every_dropped_candidate(routed: RunningGateway) -> None:
    await routed.client().chat.completions.create(
        model="chat", messages=HI, tools=[{"type": "function", "function": {"name": "f"}}])
    [span] = [s for s in routed.spans.get_finished_spans()
              if s.name == "POST /v1/chat/completions"]
    events = {e.attributes["deployment"]: e.attributes for e in span.events
              if e.name == "candidate.dropped"}
    assert "does not support tools" in events["sim-tiny"]["reason"]
    assert "sim-cheap" not in events and "sim-cheap" in span.attributes["podium.route.chain"]
    assert span.attributes["podium.route.rule"] == "default"


