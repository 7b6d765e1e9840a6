"""A request body can never choose where a call goes or which credentials it carries.

The attacker points `api_base` (and friends) at a server of their own. On the litellm path these
used to become litellm keyword arguments, so the deployment's provider key and the prompt went to
the attacker. Now such a body is refused with 400 naming the field, on both provider paths,
streamed or not, and the attacker's server receives nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from gateway.simulator import start_simulator
from tests.conftest import (
    UPSTREAM_KEY,
    GatewayFactory,
    RunningGateway,
    Upstream,
    base_config,
    via_litellm,
)

SECRET_PROMPT = "Quarterly numbers for the board: confidential"


@pytest.fixture
async def attacker() -> AsyncIterator[Upstream]:
    runner, port = await start_simulator("127.0.0.1", 0, {}, api_key=None)
    yield Upstream(url=f"http://127.0.0.1:{port}/v1", runner=runner)
    await runner.cleanup()


@pytest.fixture(params=["native", "litellm"])
async def gw(request: pytest.FixtureRequest, upstream: Upstream,
             make_gateway: GatewayFactory) -> RunningGateway:
    config = base_config(upstream.url)
    if request.param == "litellm":
        # A deployment with an extra litellm parameter is what used to open the hole.
        config = via_litellm(config)
        for entry in config["model_list"]:
            entry["litellm_params"]["organization"] = "org-podium"
    return await make_gateway(config)


def _hostile(attacker_url: str) -> list[tuple[str, Any]]:
    return [("api_base", attacker_url), ("base_url", attacker_url),
            ("api_key", "sk-attacker"), ("extra_headers", {"X-Evil": "1"}),
            ("custom_llm_provider", "openai"), ("timeout", 0.001), ("num_retries", 9),
            ("organization", "org-evil"), ("litellm_logging_obj", "x"),
            ("aws_secret_access_key", "x")]


@pytest.mark.parametrize("stream", [False, True])
async def test_connection_fields_in_the_body_are_refused(
        gw: RunningGateway, upstream: Upstream, attacker: Upstream, stream: bool) -> None:
    client = gw.client()
    for field, value in _hostile(attacker.url):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="chat", stream=stream, extra_body={field: value},
                messages=[{"role": "user", "content": SECRET_PROMPT}])
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["param"] == field and error["code"] == "forbidden_parameter"
        assert field in error["message"]
    assert list(attacker.recorded) == []
    assert list(upstream.recorded) == []


async def test_embeddings_refuse_connection_fields(gw: RunningGateway, upstream: Upstream,
                                                   attacker: Upstream) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client().embeddings.create(model="embed", input="hello",
                                            extra_body={"api_base": attacker.url})
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "api_base"
    assert list(attacker.recorded) == [] and list(upstream.recorded) == []


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_receives_only_the_configured_credentials(
        gw: RunningGateway, upstream: Upstream, stream: bool) -> None:
    client = gw.client()
    answer = await client.chat.completions.create(
        model="chat", stream=stream, messages=[{"role": "user", "content": "hi"}])
    if stream:
        async for _ in answer:  # type: ignore[union-attr]
            pass
    (call,) = [r for r in upstream.recorded if r.path.endswith("/chat/completions")]
    headers = {k.lower(): v for k, v in call.headers.items()}
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "x-evil" not in headers
    assert not {"api_base", "base_url", "api_key", "extra_headers"} & set(call.body)


async def test_deep_nesting_is_a_400_not_a_500(gw: RunningGateway, upstream: Upstream) -> None:
    nested: Any = "x"
    for _ in range(300):  # orjson parses up to 1024 levels but re-encodes only 255
        nested = [nested]
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client().chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}],
            extra_body={"metadata_blob": nested})
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "too_deeply_nested"
    assert list(upstream.recorded) == []
