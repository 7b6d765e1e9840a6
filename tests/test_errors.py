"""Bad input gets a clear 4xx in OpenAI's error shape, and nothing reaches the upstream."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import (
    APP_KEY,
    LIMITED_KEY,
    UPSTREAM_KEY,
    GatewayFactory,
    RunningGateway,
    Upstream,
    base_config,
)

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


async def post(gw: RunningGateway, path: str, *, key: str | None = APP_KEY,
               json: object = None, data: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    async with aiohttp.ClientSession() as session, session.post(
            gw.url + path, json=json, data=data, headers=hdrs) as resp:
        return resp.status, await resp.json(), resp.headers.copy()


def assert_openai_error(body: dict, *, type_: str, code: str | None = None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


@pytest.mark.parametrize(("key", "status", "type_"), [
    (None, 401, "authentication_error"),
    ("sk-not-a-key", 401, "authentication_error"),
    (LIMITED_KEY, 403, "permission_error"),
])
async def test_identity_failures(gateway: RunningGateway, upstream: Upstream,
                                 key: str | None, status: int, type_: str) -> None:
    code, body, headers = await post(gateway, "/chat/completions", key=key,
                                     json={**CHAT, "model": "premium"})
    assert code == status
    assert_openai_error(body, type_=type_)
    assert headers["x-request-id"].startswith("req_")
    assert upstream.models_called() == []
    if key:
        assert key not in body["error"]["message"]


@pytest.mark.parametrize(("payload", "param"), [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b'{"model": "chat"}', "messages"),
    (b'{"model": "chat", "messages": []}', "messages"),
    (b'{"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}',
     "messages[0].role"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
     "temperature"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
     "stream"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "n": "2"}', "n"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], '
     b'"tools": [{"type": "function"}]}', "tools[0]"),
])
async def test_malformed_requests_are_400(gateway: RunningGateway, upstream: Upstream,
                                          payload: bytes, param: str | None) -> None:
    status, body, _ = await post(gateway, "/chat/completions", data=payload,
                                 headers={"Content-Type": "application/json"})
    assert status == 400
    assert_openai_error(body, type_="invalid_request_error")
    if param is not None:
        assert body["error"]["param"] == param
    assert upstream.models_called() == []


async def test_unknown_model_is_404(gateway: RunningGateway, upstream: Upstream) -> None:
    status, body, _ = await post(gateway, "/chat/completions", json={**CHAT, "model": "nope"})
    assert status == 404
    assert_openai_error(body, type_="invalid_request_error", code="model_not_found")
    assert body["error"]["param"] == "model"
    assert upstream.models_called() == []


async def test_wrong_mode_is_400(gateway: RunningGateway, upstream: Upstream) -> None:
    status, body, _ = await post(gateway, "/embeddings", json={"model": "chat", "input": "x"})
    assert status == 400
    assert "chat model" in body["error"]["message"]
    assert upstream.models_called() == []


async def test_body_over_the_limit_is_413(upstream: Upstream,
                                          make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["server"] = {"max_body_bytes": 2048}
    gw = await make_gateway(config)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    status, body, _ = await post(gw, "/chat/completions", json=big)
    assert status == 413
    assert_openai_error(body, type_="invalid_request_error", code="request_too_large")
    assert upstream.models_called() == []


async def test_unknown_endpoint_and_method_are_openai_shaped(gateway: RunningGateway) -> None:
    status, body, _ = await post(gateway, "/nothing-here", json={})
    assert status == 404
    assert_openai_error(body, type_="invalid_request_error")
    status, body, _ = await post(gateway, "/models", json={})
    assert status == 405
    assert_openai_error(body, type_="invalid_request_error")


async def test_upstream_bad_request_is_not_retried(upstream: Upstream,
                                                   make_gateway: GatewayFactory) -> None:
    from tests.conftest import deployment

    config = base_config(upstream.url)
    config["model_list"] = [deployment("chat", "sim-badreq", upstream.url, quality=90),
                            deployment("chat", "sim-ok", upstream.url, quality=60)]
    gw = await make_gateway(config)
    status, body, _ = await post(gw, "/chat/completions", json=CHAT)
    assert status == 400
    assert "sim-badreq" in body["error"]["message"]
    assert upstream.models_called() == ["sim-badreq"]
    assert UPSTREAM_KEY not in body["error"]["message"]


@pytest.mark.parametrize(("payload", "param"), [
    # Found by the conformance tests: each of these used to be a 500 or a 502.
    ({"messages": [{"role": "assistant", "content": "hi", "tool_calls": [None]}]},
     "messages[0].tool_calls[0]"),
    ({"messages": [{"role": "assistant", "content": "hi", "tool_calls": "abc"}]},
     "messages[0].tool_calls"),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "metadata": [{}, None]}, "metadata"),
])
async def test_malformed_nested_fields_are_400(gateway: RunningGateway, upstream: Upstream,
                                               payload: dict, param: str) -> None:
    status, body, _ = await post(gateway, "/chat/completions", json={"model": "chat", **payload})
    assert status == 400
    assert body["error"]["param"].startswith(param)
    assert upstream.models_called() == []


async def test_cached_stream_with_null_stream_options(gateway: RunningGateway) -> None:
    body = {**CHAT, "stream": True, "stream_options": None}
    for _ in range(2):  # the second is served from the cache
        async with aiohttp.ClientSession() as session, session.post(
                gateway.url + "/chat/completions", json=body,
                headers={"Authorization": f"Bearer {APP_KEY}"}) as resp:
            assert resp.status == 200
            text = await resp.text()
        assert text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize(("payload", "param"), [
    ({"input": "x", "dimensions": 1_000_000}, "dimensions"),
    ({"input": ["x"] * 2049}, "input"),
])
async def test_oversized_embedding_requests_are_400(gateway: RunningGateway,
                                                    upstream: Upstream, payload: dict,
                                                    param: str) -> None:
    status, body, _ = await post(gateway, "/embeddings", json={"model": "embed", **payload})
    assert status == 400 and body["error"]["param"] == param
    assert upstream.models_called() == []
