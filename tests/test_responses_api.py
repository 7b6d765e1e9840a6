"""`POST/GET/DELETE /v1/responses` in detail, in process (the client-level proof against a real
`podium serve` is tests/test_front_doors_e2e.py): what is stored and for how long, what the
upstream receives, pass-through to a deployment that speaks Responses, and that headers, costs,
cache and spans are the same whatever the front door."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from tests.conftest import (
    APP_KEY,
    LIMITED_KEY,
    GatewayFactory,
    RunningGateway,
    Upstream,
    base_config,
)
from tests.support.waiting import until

TOOL = {"type": "function", "name": "lookup", "description": "Look it up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                       "required": ["q"]}}
NO_CACHE = {"Cache-Control": "no-cache, no-store"}


def anthropic_client(gw: RunningGateway, key: str = APP_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url.removesuffix("/v1"), api_key=key,
                                    max_retries=0)


@pytest.fixture
async def native(upstream: Upstream, make_gateway: GatewayFactory) -> RunningGateway:
    """A gateway on the native provider path only: what these tests check does not depend
    on the provider path (the `gateway` fixture's tests run on both)."""
    return await make_gateway(base_config(upstream.url))


async def test_store_false_keeps_nothing(native: RunningGateway) -> None:
    client = native.client()
    kept = await client.responses.create(model="chat", input="remember me")
    gone = await client.responses.create(model="chat", input="forget me", store=False)
    assert kept.store is True and gone.store is False
    assert (await client.responses.retrieve(kept.id)).output_text == kept.output_text
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(gone.id)
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(model="chat", input="and?", previous_response_id=gone.id)
    assert err.value.code == "previous_response_not_found"
    assert err.value.body["param"] == "previous_response_id"


async def test_delete_then_the_id_is_gone(native: RunningGateway) -> None:
    client = native.client()
    made = await client.responses.create(model="chat", input="short-lived")
    await client.responses.delete(made.id)
    for call in (client.responses.retrieve(made.id), client.responses.delete(made.id)):
        with pytest.raises(openai.NotFoundError) as err:
            await call
        assert err.value.body["code"] == "not_found"


async def test_follow_up_sends_the_whole_conversation(upstream: Upstream,
                                                      gateway: RunningGateway) -> None:
    client = gateway.client()
    first = await client.responses.create(model="chat", instructions="Be brief.",
                                          input="What is 2+2?", tools=[TOOL])
    [call] = first.output
    assert call.type == "function_call"
    second = await client.responses.create(
        model="chat", previous_response_id=first.id, tools=[TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "4"}])
    third = await client.responses.create(model="chat", previous_response_id=second.id,
                                          input="And 3+3?")
    sent = [r.body for r in upstream.recorded if r.path.endswith("/chat/completions")][-1]
    # instructions are not carried over (as in the API); every turn's items are.
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "assistant",
                                                     "user"]
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.call_id,
                                   "content": "4"}
    assert third.previous_response_id == second.id


async def test_retention_expires_responses_and_the_sweep_removes_them(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    config = base_config(upstream.url)
    config["responses"] = {"retention_s": 2.0, "sweep_interval_s": 0.05}
    config["storage"] = {"path": str(tmp_path / "podium.sqlite3")}
    gw = await make_gateway(config)
    client = gw.client()
    made = await client.responses.create(model="chat", input="fleeting")

    def rows() -> int:
        db = sqlite3.connect(tmp_path / "podium.sqlite3")
        try:
            return int(db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
        finally:
            db.close()
    assert rows() == 1

    async def swept() -> bool:
        return rows() == 0
    await until(swept, "the sweep to remove the expired response")
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(made.id)


async def test_headers_cost_and_usage_are_the_same_at_every_front_door(
        gateway: RunningGateway) -> None:
    prompt = "Tell me about lighthouses"
    chat = await gateway.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": prompt}], extra_headers=NO_CACHE)
    resp = await gateway.client().responses.with_raw_response.create(
        model="chat", input=prompt, extra_headers=NO_CACHE)
    msg = await anthropic_client(gateway).messages.with_raw_response.create(
        model="chat", max_tokens=1000, messages=[{"role": "user", "content": prompt}],
        extra_headers=NO_CACHE)
    names = ("x-podium-deployment", "x-podium-route", "x-podium-attempts", "x-podium-cost-usd",
             "x-podium-cache")
    expected = {name: chat.headers[name] for name in names}
    assert expected["x-podium-cache"] == "bypass" and float(expected["x-podium-cost-usd"]) > 0
    for raw in (resp, msg):
        assert {name: raw.headers[name] for name in names} == expected
        assert raw.headers["x-request-id"].startswith("req_")
    usage, resp_usage = chat.parse().usage, resp.parse().usage
    assert (resp_usage.input_tokens, resp_usage.output_tokens) == (usage.prompt_tokens,
                                                                    usage.completion_tokens)
    assert (await msg.parse()).usage.output_tokens == usage.completion_tokens


async def test_one_cache_behind_every_front_door(native: RunningGateway) -> None:
    """The cache key is the chat body: the same question asked through Responses after Chat
    Completions is a hit, and still names the deployment that answered."""
    chat = await native.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "cache me once"}], temperature=0)
    resp = await native.client().responses.with_raw_response.create(
        model="chat", input="cache me once", temperature=0)
    assert chat.headers["x-podium-cache"] == "miss"
    assert resp.headers["x-podium-cache"] == "hit"
    assert resp.headers["x-podium-deployment"] == chat.headers["x-podium-deployment"]
    assert resp.parse().output_text == chat.parse().choices[0].message.content


@pytest.mark.parametrize("door", ["chat", "responses", "messages"])
async def test_spans_are_the_same_at_every_front_door(native: RunningGateway,
                                                      door: str) -> None:
    ask = [{"role": "user", "content": "span me"}]
    if door == "chat":
        await native.client().chat.completions.create(model="chat", messages=ask,
                                                       max_completion_tokens=77)
    elif door == "responses":
        await native.client().responses.create(model="chat", input="span me",
                                                max_output_tokens=77)
    else:
        await anthropic_client(native).messages.create(model="chat", messages=ask,
                                                        max_tokens=77)
    spans = native.spans.get_finished_spans()
    path = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
            "messages": "/v1/messages"}[door]
    [server] = [s for s in spans if s.name == f"POST {path}"]
    [attempt] = [s for s in spans if s.name == "chat sim-cheap"]
    assert attempt.parent is not None and attempt.parent.span_id == server.context.span_id
    attrs = attempt.attributes or {}
    assert attrs["gen_ai.operation.name"] == "chat"   # the GenAI name for all three APIs
    assert attrs["gen_ai.request.max_tokens"] == 77
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)


async def test_models_by_id_have_the_lists_visibility(native: RunningGateway) -> None:
    model = await native.client().models.retrieve("premium")
    assert (model.id, model.object) == ("premium", "model")
    assert (await native.client().models.retrieve("auto")).id == "auto"
    limited = native.client(LIMITED_KEY)          # may use "chat" only
    assert [m.id async for m in limited.models.list()] == ["chat", "auto"]
    for hidden in ("premium", "no-such-model"):
        with pytest.raises(openai.NotFoundError) as err:
            await limited.models.retrieve(hidden)
        assert err.value.body == {"message": f"The model {hidden!r} does not exist.",
                                  "type": "invalid_request_error", "param": "model",
                                  "code": "model_not_found"}


async def test_x_api_key_is_for_the_anthropic_endpoints_only(native: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(native.url + "/chat/completions",
                                headers={"x-api-key": APP_KEY},
                                json={"model": "chat", "messages": [{"role": "user",
                                                                     "content": "hi"}]}) as r:
            assert r.status == 401
            error = (await r.json())["error"]
    assert error["type"] == "authentication_error" and "Authorization: Bearer" in \
        error["message"]


# ---- pass-through to a deployment that speaks Responses -------------------------------------

def speaking_config(url: str, **extra: Any) -> dict[str, Any]:
    config = base_config(url)
    config["model_list"][0]["model_info"]["supports"] = [
        "tools", "json_schema", "streaming", "responses"]
    config.update(extra)
    return config


async def test_a_deployment_that_speaks_responses_gets_the_request_as_is(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(speaking_config(upstream.url))
    client = gw.client()
    first = await client.responses.create(model="chat", input="pass me", tools=[TOOL],
                                          metadata={"ticket": "7"}, truncation="disabled")
    [call] = first.output
    follow = await client.responses.create(
        model="chat", previous_response_id=first.id, tools=[TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "found"}])
    paths = [r.path for r in upstream.recorded]
    assert paths == ["/v1/responses", "/v1/responses"]
    sent = upstream.recorded[-1].body
    assert sent["store"] is False and "previous_response_id" not in sent
    assert [item.get("type", "message") for item in sent["input"]] == [
        "message", "function_call", "function_call_output"]
    assert first.metadata == {"ticket": "7"} and first.id.startswith("resp_")
    assert follow.previous_response_id == first.id and "pass me" in follow.output_text
    assert (await client.responses.retrieve(follow.id)).output_text == follow.output_text

    async with client.responses.stream(model="chat", input="stream me through") as stream:
        final = await stream.get_final_response()
    assert upstream.recorded[-1].path == "/v1/responses"
    assert upstream.recorded[-1].body["stream"] is True
    assert "stream me through" in final.output_text and final.usage is not None


async def test_pass_through_costs_like_a_translated_call(upstream: Upstream,
                                                         make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(speaking_config(upstream.url))
    raw = await gw.client().responses.with_raw_response.create(
        model="chat", input="price me", extra_headers=NO_CACHE)
    usage = raw.parse().usage
    assert usage is not None
    expected = usage.input_tokens * 1e-7 + usage.output_tokens * 2e-7  # sim-cheap's prices
    assert float(raw.headers["x-podium-cost-usd"]) == pytest.approx(expected)
    assert raw.headers["x-podium-deployment"] == "sim-cheap"
