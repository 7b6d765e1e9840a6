"""`POST /v1/messages` and `count_tokens` at the HTTP level: credentials in either header, and
every refusal in Anthropic's error shape, as the official SDK reads it (its exception classes
are chosen by status, its `body` is the JSON)."""

from __future__ import annotations

from typing import Any

import aiohttp
import anthropic
import pytest

from tests.conftest import (
    APP_KEY,
    LIMITED_KEY,
    GatewayFactory,
    RunningGateway,
    Upstream,
    base_config,
)

ASK = [{"role": "user", "content": "hello there"}]


def client(gw: RunningGateway, key: str = APP_KEY, **kw: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url.removesuffix("/v1"), api_key=key,
                                    max_retries=0, **kw)


def shaped(err: anthropic.APIStatusError, kind: str, *words: str) -> None:
    body: Any = err.body
    assert set(body) == {"type", "error", "request_id"} and body["type"] == "error"
    assert body["error"]["type"] == kind, body
    for word in words:
        assert word in body["error"]["message"], body
    assert err.request_id == body["request_id"]   # the SDK reads the `request-id` header


@pytest.fixture
async def native(upstream: Upstream, make_gateway: GatewayFactory) -> RunningGateway:
    """A gateway on the native provider path only: what these tests check does not depend
    on the provider path (the `gateway` fixture's tests run on both)."""
    return await make_gateway(base_config(upstream.url))


async def test_key_in_x_api_key_or_as_a_bearer(gateway: RunningGateway) -> None:
    by_header = await client(gateway).messages.create(model="chat", max_tokens=50,
                                                      messages=ASK)
    bearer = anthropic.AsyncAnthropic(base_url=gateway.url.removesuffix("/v1"),
                                      auth_token=APP_KEY, max_retries=0)
    by_bearer = await bearer.messages.create(model="chat", max_tokens=50, messages=ASK)
    assert by_header.content[0].text == by_bearer.content[0].text
    assert by_header.model == "sim-cheap" and by_header.stop_reason == "end_turn"


async def test_anthropic_version_and_beta_headers_are_accepted(native: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            native.url + "/messages", json={"model": "chat", "max_tokens": 20, "messages": ASK},
            headers={"x-api-key": APP_KEY, "anthropic-version": "2023-06-01",
                     "anthropic-beta": "tools-2024-04-04"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["type"] == "message" and body["role"] == "assistant"
    assert resp.headers["x-podium-deployment"] == "sim-cheap"
    assert resp.headers["request-id"] == resp.headers["x-request-id"]


async def test_401_and_404_in_anthropics_shape(native: RunningGateway) -> None:
    with pytest.raises(anthropic.AuthenticationError) as auth:
        await client(native, "sk-wrong-0000000000").messages.create(
            model="chat", max_tokens=10, messages=ASK)
    shaped(auth.value, "authentication_error", "Incorrect API key")
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client(native).messages.create(model="claude-nope", max_tokens=10,
                                              messages=ASK)
    shaped(missing.value, "not_found_error", "claude-nope")
    with pytest.raises(anthropic.NotFoundError) as counted:
        await client(native).messages.count_tokens(model="claude-nope", messages=ASK)
    shaped(counted.value, "not_found_error", "claude-nope")


async def test_bad_requests_and_edge_errors_in_anthropics_shape(
        native: RunningGateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as server_tool:
        await client(native).messages.create(
            model="chat", max_tokens=10, messages=ASK,
            tools=[{"type": "web_search_20250305", "name": "web_search"}])
    shaped(server_tool.value, "invalid_request_error", "tools[0].type")
    headers = {"x-api-key": APP_KEY}
    async with aiohttp.ClientSession() as session:
        for method, path, status, kind, sent in (
                ("POST", "/messages", 400, "invalid_request_error",  # max_tokens is required
                 {"model": "chat", "messages": ASK}),
                ("POST", "/messages", 400, "invalid_request_error", None),   # not JSON
                ("GET", "/messages", 405, "invalid_request_error", None),
                ("POST", "/messages/batches", 404, "not_found_error", None)):
            async with session.request(method, native.url + path, headers=headers,
                                       json=sent) as resp:
                body = await resp.json()
            assert resp.status == status and body["type"] == "error", body
            assert body["error"]["type"] == kind
            if sent is not None:
                assert "max_tokens: Field required" in body["error"]["message"]


async def test_413_in_anthropics_shape(upstream: Upstream,
                                       make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["server"] = {"max_body_bytes": 2048}
    gw = await make_gateway(config)
    with pytest.raises(anthropic.APIStatusError) as big:
        await client(gw).messages.create(model="chat", max_tokens=10, messages=[
            {"role": "user", "content": "x" * 5000}])
    assert big.value.status_code == 413
    shaped(big.value, "request_too_large")
    assert upstream.recorded == type(upstream.recorded)()  # nothing was sent upstream


async def test_rate_limit_and_budget_are_429_rate_limit_errors(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["keys"][0].update(rpm=1)
    config["keys"][1].update(budget_usd=0)
    gw = await make_gateway(config)
    await client(gw).messages.create(model="chat", max_tokens=10, messages=ASK)
    with pytest.raises(anthropic.RateLimitError) as limited:
        await client(gw).messages.create(model="chat", max_tokens=10, messages=ASK)
    shaped(limited.value, "rate_limit_error", "requests per minute")
    assert int(limited.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.RateLimitError) as broke:
        await client(gw, LIMITED_KEY).messages.create(model="chat", max_tokens=10,
                                                      messages=ASK)
    shaped(broke.value, "rate_limit_error", "budget")


async def test_a_stream_that_breaks_ends_with_anthropics_error_event(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["model_list"][0]["litellm_params"]["model"] = "openai/sim-midstream"
    gw = await make_gateway(config)
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as broken:
        async with client(gw).messages.stream(model="chat", max_tokens=50,
                                              messages=ASK) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    assert broken.value.body["type"] == "error"  # type: ignore[index]
    assert broken.value.body["error"]["type"] == "api_error"  # type: ignore[index]
