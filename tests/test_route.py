"""Routing end to end: the openai SDK → gateway → simulator, decisions read from headers,
from the upstream's log and from /v1/route/explain."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from gateway.simulator import start_simulator
from tests.conftest import (
    APP_KEY,
    GatewayFactory,
    RunningGateway,
    Upstream,
    base_config,
    deployment,
)
from tests.test_fallback import closed_port

ROOT = Path(__file__).resolve().parents[1]
HI = [{"role": "user", "content": "hi"}]


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


async def explain(gw: RunningGateway, body: dict[str, Any], key: str = APP_KEY,
                  headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            gw.url + "/route/explain", json=body,
            headers={"Authorization": f"Bearer {key}", **(headers or {})}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def answered_by(gw: RunningGateway, key: str = APP_KEY, **kwargs: Any) -> str:
    kwargs.setdefault("messages", HI)
    raw = await gw.client(key).chat.completions.with_raw_response.create(**kwargs)
    return raw.headers["x-podium-deployment"]


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


async def test_429_moves_on_at_once_and_cools_the_deployment(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    from tests.test_fallback import chain

    config = chain(upstream.url, "sim-rate429", "sim-ok")
    config["cache"] = {"enabled": False}
    gw = await make_gateway(config)
    started = time.monotonic()
    assert await answered_by(gw, model="chat") == "sim-ok"
    # The simulator says Retry-After: 7. Moving on must not wait for it.
    assert time.monotonic() - started < 7
    assert await answered_by(gw, model="chat") == "sim-ok"
    assert upstream.models_called() == ["sim-rate429", "sim-ok", "sim-ok"]
    decision = await explain(gw, {"model": "chat", "messages": HI})
    [cooled] = [c for c in decision["candidates"] if c["deployment"] == "sim-rate429"]
    assert not cooled["kept"] and "rate-limited" in cooled["reason"]


async def test_context_length_error_skips_to_a_larger_window(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["model_list"][:2] = [
        deployment("chat", "sim-ctxlimit", upstream.url, max_input_tokens=8000,
                   input_cost_per_token=1e-8),
        deployment("chat", "sim-same-window", upstream.url, max_input_tokens=8000,
                   input_cost_per_token=2e-8),
        deployment("chat", "sim-big-window", upstream.url, max_input_tokens=100000,
                   input_cost_per_token=3e-8),
    ]
    gw = await make_gateway(config)
    assert await answered_by(gw, model="chat") == "sim-big-window"
    assert upstream.models_called() == ["sim-ctxlimit", "sim-big-window"]


async def test_breaker_opens_stays_open_and_recovers(upstream: Upstream,
                                                     make_gateway: GatewayFactory) -> None:
    port = closed_port()
    config = base_config(upstream.url)
    config["model_list"][:2] = [
        deployment("chat", "sim-later", f"http://127.0.0.1:{port}/v1",
                   input_cost_per_token=1e-8),
        deployment("chat", "sim-ok", upstream.url, input_cost_per_token=1e-7)]
    config["routing"] = {"breaker": {"failures": 2, "cooldown_s": 0.5}}
    config["cache"] = {"enabled": False}
    gw = await make_gateway(config)
    for _ in range(2):
        assert await answered_by(gw, model="chat") == "sim-ok"
    decision = await explain(gw, {"model": "chat", "messages": HI})
    [later] = [c for c in decision["candidates"] if c["deployment"] == "sim-later"]
    assert "circuit open" in later["reason"] and later["health"]["breaker"] == "open"
    raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=HI)
    assert raw.headers["x-podium-attempts"] == "1", "an open breaker is not tried"
    # The deployment comes back; after the cool-down one probe closes the breaker.
    runner, _ = await start_simulator("127.0.0.1", port)
    try:
        await asyncio.sleep(0.6)  # wait out the configured 0.5 s cool-down (time itself)
        assert await answered_by(gw, model="chat") == "sim-later"
        decision = await explain(gw, {"model": "chat", "messages": HI})
        assert decision["chain"][0] == "sim-later"
    finally:
        await runner.cleanup()
    events = [e.name for s in gw.spans.get_finished_spans() for e in s.events]
    assert {"breaker.open", "breaker.half_open", "breaker.closed"} <= set(events)


async def test_single_deployment_retries_with_backoff(upstream: Upstream,
                                                      make_gateway: GatewayFactory) -> None:
    from tests.test_fallback import chain

    config = chain(upstream.url, "sim-error500")
    config["routing"] = {"retries": {"attempts": 2, "backoff_s": 0.01}}
    gw = await make_gateway(config)
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client().chat.completions.create(model="chat", messages=HI)
    assert info.value.status_code == 502
    assert upstream.models_called() == ["sim-error500"] * 3


def cascade_config(url: str, cheap: str) -> dict[str, Any]:
    config = base_config(url)
    config["model_list"][:2] = [
        deployment("chat", cheap, url, quality=40, input_cost_per_token=1e-7,
                   output_cost_per_token=1e-7),
        deployment("chat", "sim-strong", url, quality=90, input_cost_per_token=1e-6,
                   output_cost_per_token=1e-6)]
    config["routing"] = {"default": {"strategy": "cascade"}}
    return config


@pytest.mark.parametrize(("cheap", "kwargs"), [
    ("sim-badjson", {"response_format": {"type": "json_object"}}),
    ("sim-refuse", {}),
    ("sim-empty", {}),
])
async def test_cascade_escalates_on_a_failed_check(upstream: Upstream,
                                                   make_gateway: GatewayFactory, cheap: str,
                                                   kwargs: dict[str, Any]) -> None:
    gw = await make_gateway(cascade_config(upstream.url, cheap))
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=HI, **kwargs)
    assert raw.headers["x-podium-deployment"] == "sim-strong"
    assert raw.headers["x-podium-attempts"] == "2"
    assert raw.headers["x-podium-escalations"] == "1"
    assert upstream.models_called() == [cheap, "sim-strong"]
    # Cost counts both attempts: more than the strong model's share alone.
    usage = raw.parse().usage
    strong_only = (usage.prompt_tokens + usage.completion_tokens) * 1e-6
    assert float(raw.headers["x-podium-cost-usd"]) > strong_only


async def test_cascade_keeps_a_good_cheap_answer(upstream: Upstream,
                                                 make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(cascade_config(upstream.url, "sim-fine"))
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=HI, response_format={"type": "json_object"})
    assert raw.headers["x-podium-deployment"] == "sim-fine"
    assert json.loads(raw.parse().choices[0].message.content)["model"] == "sim-fine"
    assert upstream.models_called() == ["sim-fine"]


async def test_cascade_json_schema_and_stream(upstream: Upstream,
                                              make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(cascade_config(upstream.url, "sim-fine"))
    schema = {"type": "object", "required": ["answer", "score"]}
    stream = await gw.client().chat.completions.create(
        model="chat", messages=HI, stream=True, stream_options={"include_usage": True},
        response_format={"type": "json_schema",
                         "json_schema": {"name": "s", "schema": schema}})
    text, usage = "", None
    async for chunk in stream:
        usage = chunk.usage or usage
        text += "".join(c.delta.content or "" for c in chunk.choices)
    # The cheap answer lacks "score", so the cascade escalated; the stream is the strong answer.
    assert json.loads(text)["model"] == "sim-strong"
    assert usage is not None and usage.completion_tokens > 0
    assert upstream.models_called() == ["sim-fine", "sim-strong"]


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


async def test_request_deadline_bounds_all_attempts(upstream: Upstream,
                                                    make_gateway: GatewayFactory) -> None:
    from tests.test_fallback import chain

    cfg = chain(upstream.url, "sim-hang-a", "sim-hang-b", "sim-hang-c", timeout=5)
    cfg["server"] = {"request_timeout_s": 0.6}
    gw = await make_gateway(cfg)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client().chat.completions.create(model="chat", messages=HI)
    assert info.value.status_code == 504
    # Three 5 s timeouts would take 15 s; the 0.6 s deadline cuts every attempt short.
    assert time.monotonic() - started < 4


async def test_route_span_records_every_candidate(routed: RunningGateway) -> None:
    await routed.client().chat.completions.create(
        model="chat", messages=HI, tools=[{"type": "function", "function": {"name": "f"}}])
    [span] = [s for s in routed.spans.get_finished_spans() if s.name == "podium.route"]
    events = {e.attributes["deployment"]: e.attributes for e in span.events
              if e.name == "candidate"}
    assert events["sim-tiny"]["kept"] is False
    assert "does not support tools" in events["sim-tiny"]["reason"]
    assert events["sim-cheap"]["kept"] is True
    assert span.attributes["podium.route.rule"] == "default"


@pytest.mark.parametrize(("policy", "answered"), [("fail", None), ("next", "sim-ok")])
async def test_content_policy_refusal_is_configurable(upstream: Upstream,
                                                      make_gateway: GatewayFactory,
                                                      policy: str, answered: str | None) -> None:
    from tests.test_fallback import chain

    cfg = chain(upstream.url, "sim-policy400", "sim-ok")
    cfg["routing"] = {"on_content_policy": policy}
    gw = await make_gateway(cfg)
    if answered is None:
        with pytest.raises(openai.BadRequestError) as info:
            await gw.client().chat.completions.create(model="chat", messages=HI)
        assert info.value.body["code"] == "content_policy_violation"
        assert upstream.models_called() == ["sim-policy400"]
    else:
        assert await answered_by(gw, model="chat") == answered
        assert upstream.models_called() == ["sim-policy400", "sim-ok"]
