"""The attempt loop (routing/fallback.py, routing/attempts.py) end to end: what moves on and
what stops, cool-downs and breakers, retries, the request deadline, streams, and the all-fail
error."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest

from gateway.simulator import start_simulator
from tests.conftest import UPSTREAM_KEY, GatewayFactory, Upstream, base_config, deployment
from tests.support.asking import HI, answered_by, explain
from tests.support.net import free_port

MESSAGES = [{"role": "user", "content": "hello"}]


def chain(url: str, *models: str, **extra: Any) -> dict[str, Any]:
    """A config whose group "chat" tries `models` in the given order (cheapest first)."""
    config = base_config(url)
    config["model_list"] = [
        deployment("chat", m, url, input_cost_per_token=(i + 1) * 1e-7,
                   output_cost_per_token=(i + 1) * 1e-7, **extra)
        for i, m in enumerate(models)]
    return config


@pytest.mark.parametrize("failing", ["sim-error500", "sim-e503", "sim-rate429"])
async def test_retryable_failure_moves_to_the_next_deployment(
        upstream: Upstream, make_gateway: GatewayFactory, failing: str) -> None:
    gw = await make_gateway(chain(upstream.url, failing, "sim-ok"))
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES)
    assert raw.parse().choices[0].message.content.startswith("Simulated answer from sim-ok")
    assert raw.headers["x-podium-deployment"] == "sim-ok"
    assert raw.headers["x-podium-attempts"] == "2"
    assert upstream.models_called() == [failing, "sim-ok"]


async def test_connection_refused_moves_on(upstream: Upstream,
                                           make_gateway: GatewayFactory) -> None:
    config = chain(upstream.url, "sim-ok")
    dead = deployment("chat", "sim-dead", f"http://127.0.0.1:{free_port()}/v1",
                      input_cost_per_token=0)
    config["model_list"].insert(0, dead)
    gw = await make_gateway(config)
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES)
    assert raw.headers["x-podium-deployment"] == "sim-ok"
    assert raw.headers["x-podium-attempts"] == "2"


async def test_hung_deployment_times_out_and_falls_back(upstream: Upstream,
                                                        make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(chain(upstream.url, "sim-hang", "sim-ok", timeout=0.5))
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES)
    assert raw.headers["x-podium-deployment"] == "sim-ok"
    assert upstream.models_called() == ["sim-hang", "sim-ok"]


async def test_all_fail_names_every_deployment(upstream: Upstream,
                                               make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(chain(upstream.url, "sim-error500", "sim-e503"))
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
    err = info.value
    assert err.status_code == 502
    message = err.body["message"]
    assert "sim-error500: server (HTTP 500" in message
    assert "sim-e503: server (HTTP 503" in message
    assert err.body["code"] == "all_deployments_failed"
    assert UPSTREAM_KEY not in message
    assert upstream.models_called() == ["sim-error500", "sim-e503"]


async def test_all_rate_limited_is_429(upstream: Upstream,
                                       make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(chain(upstream.url, "sim-rate429-a", "sim-rate429-b"))
    with pytest.raises(openai.RateLimitError) as info:
        await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
    assert info.value.body["code"] == "rate_limit_exceeded"


async def test_all_timed_out_is_504(upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(chain(upstream.url, "sim-hang", timeout=0.3))
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
    assert info.value.status_code == 504
    assert "sim-hang: timeout" in info.value.body["message"]


async def test_stream_falls_back_before_the_first_byte(upstream: Upstream,
                                                       make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(chain(upstream.url, "sim-error500", "sim-ok"))
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, stream=True)
    assert raw.headers["x-podium-deployment"] == "sim-ok"
    assert raw.headers["x-podium-attempts"] == "2"
    text = ""
    async for chunk in raw.parse():
        text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text == "Simulated answer from sim-ok: hello"


async def test_stream_broken_after_first_byte_is_not_retried(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(chain(upstream.url, "sim-midstream", "sim-ok"))
    stream = await gw.client().chat.completions.create(
        model="chat", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received.append(chunk)
    assert received, "the chunks sent before the break reach the client"
    assert "sim-midstream" in str(info.value)
    assert upstream.models_called() == ["sim-midstream"]


async def test_stream_all_fail_is_a_plain_error_response(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(chain(upstream.url, "sim-error500", "sim-e503"))
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client().chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    assert info.value.status_code == 502
    assert "sim-error500" in info.value.body["message"]


async def test_embeddings_fall_back_too(upstream: Upstream,
                                        make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["model_list"] = [m for m in config["model_list"] if m["model_name"] != "embed"] + [
        deployment("embed", "sim-embed-error500", upstream.url, mode="embedding",
                   input_cost_per_token=0),
        deployment("embed", "sim-embed", upstream.url, mode="embedding",
                   input_cost_per_token=1e-8)]
    gw = await make_gateway(config)
    raw = await gw.client().embeddings.with_raw_response.create(model="embed", input="x")
    assert raw.headers["x-podium-deployment"] == "sim-embed"
    assert len(raw.parse().data) == 1


async def test_429_moves_on_at_once_and_cools_the_deployment(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
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
    port = free_port()
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
    config = chain(upstream.url, "sim-error500")
    config["routing"] = {"retries": {"attempts": 2, "backoff_s": 0.01}}
    gw = await make_gateway(config)
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client().chat.completions.create(model="chat", messages=HI)
    assert info.value.status_code == 502
    assert upstream.models_called() == ["sim-error500"] * 3

async def test_request_deadline_bounds_all_attempts(upstream: Upstream,
                                                    make_gateway: GatewayFactory) -> None:
    cfg = chain(upstream.url, "sim-hang-a", "sim-hang-b", "sim-hang-c", timeout=5)
    cfg["server"] = {"request_timeout_s": 0.6}
    gw = await make_gateway(cfg)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client().chat.completions.create(model="chat", messages=HI)
    assert info.value.status_code == 504
    # Three 5 s timeouts would take 15 s; the 0.6 s deadline cuts every attempt short.
    assert time.monotonic() - started < 4

@pytest.mark.parametrize(("policy", "answered"), [("fail", None), ("next", "sim-ok")])
async def test_content_policy_refusal_is_configurable(upstream: Upstream,
                                                      make_gateway: GatewayFactory,
                                                      policy: str, answered: str | None) -> None:
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
