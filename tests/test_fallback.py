"""Fallback inside a group: what moves on, what stops, streams, and the all-fail error."""

from __future__ import annotations

import socket
from typing import Any

import openai
import pytest

from tests.conftest import UPSTREAM_KEY, GatewayFactory, Upstream, base_config, deployment

MESSAGES = [{"role": "user", "content": "hello"}]


def chain(url: str, *models: str, **extra: Any) -> dict[str, Any]:
    """A config whose group "chat" tries `models` in the given order (cheapest first)."""
    config = base_config(url)
    config["model_list"] = [
        deployment("chat", m, url, input_cost_per_token=(i + 1) * 1e-7,
                   output_cost_per_token=(i + 1) * 1e-7, **extra)
        for i, m in enumerate(models)]
    return config


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    dead = deployment("chat", "sim-dead", f"http://127.0.0.1:{closed_port()}/v1",
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
