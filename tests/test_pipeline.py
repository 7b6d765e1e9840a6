"""The official openai SDK against a real gateway in front of the simulator: the happy paths."""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import aiohttp
import openai
import pytest

from plugins.base import BasePlugin, Outcome, RequestContext
from tests.conftest import (
    APP_KEY,
    LIMITED_KEY,
    UPSTREAM_KEY,
    GatewayFactory,
    RunningGateway,
    Upstream,
    base_config,
)
from tests.support.waiting import until

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string"}}}}},
]


async def test_chat_returns_the_cheapest_deployment_answer(gateway: RunningGateway,
                                                           upstream: Upstream) -> None:
    raw = await gateway.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hello there"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Simulated answer from sim-cheap: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-podium-deployment"] == "sim-cheap"
    assert raw.headers["x-podium-attempts"] == "1"
    assert raw.headers["x-request-id"].startswith("req_")
    usage = completion.usage
    expected = usage.prompt_tokens * 1e-7 + usage.completion_tokens * 2e-7
    assert float(raw.headers["x-podium-cost-usd"]) == pytest.approx(expected)
    # The upstream got the provider's key and the upstream model name, never the client's key.
    sent = upstream.recorded[-1]
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.body["model"] == "sim-cheap"
    assert APP_KEY not in json.dumps([sent.headers, sent.body])


async def test_stream_with_usage_reassembles_the_answer(gateway: RunningGateway) -> None:
    stream = await gateway.client().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True, stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
            assert chunk.choices == []
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == "Simulated answer from sim-cheap: one two three four five six"
    assert finish == "stop"
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0


async def test_stream_without_usage_sends_no_usage_chunk(gateway: RunningGateway) -> None:
    stream = await gateway.client().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks), "no empty usage-only chunk may leak through"


async def test_streamed_tool_calls_arrive_intact(gateway: RunningGateway) -> None:
    stream = await gateway.client().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "weather and time?"}],
        tools=TOOLS, stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "sim-city", "days": 42}
    assert json.loads(calls[1]["arguments"]) == {"tz": "sim-tz"}
    assert all(c["id"].startswith("call_sim_") for c in calls.values())


async def test_non_streamed_tool_calls_and_json_mode(gateway: RunningGateway,
                                                     upstream: Upstream) -> None:
    client = gateway.client()
    completion = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS[:1],
        tool_choice="auto")
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "sim-city", "days": 42}
    assert upstream.recorded[-1].body["tools"] == TOOLS[:1]
    answer = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "json please"}],
        response_format={"type": "json_object"})
    assert json.loads(answer.choices[0].message.content)["model"] == "sim-cheap"
    assert upstream.recorded[-1].body["response_format"] == {"type": "json_object"}


async def test_image_parts_and_unknown_fields_pass_through(gateway: RunningGateway,
                                                           upstream: Upstream) -> None:
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    await gateway.client().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": content}], seed=7,
        extra_headers={"x-podium-min-quality": "0"})
    sent = upstream.recorded[-1]
    assert sent.body["messages"][0]["content"] == content
    assert sent.body["seed"] == 7
    assert not any(h.lower().startswith("x-podium") for h in sent.headers)


@pytest.mark.parametrize("encoding", ["float", None])
async def test_embeddings_in_both_encodings(gateway: RunningGateway, upstream: Upstream,
                                            encoding: str | None) -> None:
    # With no encoding_format the SDK asks for base64 and decodes it; with "float", floats.
    client = gateway.client()
    kwargs = {"encoding_format": encoding} if encoding else {}
    result = await client.embeddings.create(model="embed", input=["alpha", "beta"], **kwargs)
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8
    assert result.usage.prompt_tokens > 0
    floats = await client.embeddings.create(model="embed", input=["alpha", "beta"],
                                            encoding_format="float")
    assert result.data[1].embedding == pytest.approx(floats.data[1].embedding, rel=1e-6)
    assert result.data[0].embedding != result.data[1].embedding
    assert upstream.recorded[-1].body.get("encoding_format") == "float"


async def test_base64_embedding_is_little_endian_float32(gateway: RunningGateway) -> None:
    client = gateway.client()
    encoded = await client.embeddings.create(model="embed", input="alpha",
                                             encoding_format="base64")
    floats = await client.embeddings.create(model="embed", input="alpha", encoding_format="float")
    packed = base64.b64decode(encoded.data[0].embedding)
    assert len(packed) == 8 * 4
    assert list(struct.unpack("<8f", packed)) == pytest.approx(floats.data[0].embedding, rel=1e-6)


async def test_models_lists_only_what_the_key_may_use(gateway: RunningGateway) -> None:
    everything = {m.id for m in (await gateway.client().models.list()).data}
    assert everything == {"chat", "premium", "embed", "auto"}
    limited = {m.id for m in (await gateway.client(LIMITED_KEY).models.list()).data}
    assert limited == {"chat", "auto"}


async def test_limited_key_can_use_its_model(gateway: RunningGateway) -> None:
    completion = await gateway.client(LIMITED_KEY).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content.startswith("Simulated answer")


async def test_auto_picks_the_cheapest_allowed_chat_deployment(gateway: RunningGateway) -> None:
    raw = await gateway.client().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-podium-deployment"] == "sim-cheap"


async def test_health_and_readiness(gateway: RunningGateway) -> None:
    client = gateway.client()
    health = await client.get("/../healthz", cast_to=object)
    ready = await client.get("/../readyz", cast_to=object)
    assert health["status"] == "ok" and health["pid"] > 0
    assert ready["status"] == "ready"


async def test_sdk_raises_on_a_model_the_key_may_not_use(gateway: RunningGateway) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        await gateway.client(LIMITED_KEY).chat.completions.create(
            model="premium", messages=[{"role": "user", "content": "hi"}])



class _HeldAccounting(BasePlugin):
    """Accounting that waits for the test: on_complete blocks until released, or fails."""
    name = "held"

    def __init__(self, fail: bool = False) -> None:
        self.release = asyncio.Event()
        self.completed: list[str] = []
        self.fail = fail

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        await self.release.wait()
        self.completed.append(ctx.request_id)
        if self.fail:
            raise RuntimeError("accounting broke")


async def test_the_answer_is_sent_before_the_accounting_runs(gateway: RunningGateway) -> None:
    """Spend, audit, metrics and the access log run after the client has its answer, so they
    add nothing to its latency; and the request is still accounted for."""
    held = _HeldAccounting()
    gateway.gateway.runtime.chain.plugins.append(held)
    async with asyncio.timeout(20):  # a gateway that answers after accounting never answers
        raw = await gateway.client().chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "early"}])
    assert raw.parse().choices[0].message.content  # answered while on_complete still waits
    assert held.completed == []
    held.release.set()

    async def accounted() -> bool:
        return held.completed == [raw.headers["x-request-id"]]
    await until(accounted, "the held accounting to finish")
    embedded = await gateway.client().embeddings.create(model="embed", input="early too")
    assert embedded.data and len(held.completed) == 2


async def test_a_failure_after_answering_never_sends_a_second_response(
        gateway: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    """An error raised after the answer went out is logged as such, not answered with a 500
    on top of the 200; the connection stays usable and the next request on it gets its own
    answer."""
    held = _HeldAccounting(fail=True)
    held.release.set()
    chain = gateway.gateway.runtime.chain
    chain.plugins.append(held)
    # on_complete failures are already contained by the chain; make one escape it.
    original = chain.on_complete

    async def escaping(ctx: RequestContext, outcome: Outcome) -> None:
        await original(ctx, outcome)
        raise RuntimeError("after the answer")
    chain.on_complete = escaping  # type: ignore[method-assign]
    headers = {"Authorization": f"Bearer {APP_KEY}"}
    async with aiohttp.ClientSession() as session:  # one keep-alive connection for both
        for n in range(2):
            body = {"model": "chat", "messages": [{"role": "user", "content": f"twice {n}"}]}
            async with session.post(gateway.url + "/chat/completions", json=body,
                                    headers=headers) as resp:
                assert resp.status == 200
                answer = await resp.json()
                assert answer["object"] == "chat.completion"
    assert len(held.completed) == 2
    after = [r for r in caplog.records if r.getMessage().startswith("error after answering")]
    assert len(after) == 2 and all(r.exc_info for r in after)
    assert not [r for r in caplog.records if r.getMessage().startswith("unhandled error")]


async def test_unknown_fields_pass_through_and_are_named_at_debug(
        make_gateway: GatewayFactory, upstream: Upstream,
        caplog: pytest.LogCaptureFixture) -> None:
    gw = await make_gateway(base_config(upstream.url))  # the native OpenAI-compatible path
    caplog.set_level("INFO", logger="podium.ingress")
    body = {"seed": 7, "frobnicate": {"level": 3}}
    await gw.client().chat.completions.create(model="chat", messages=[
        {"role": "user", "content": "one"}], extra_body=body)
    assert not [r for r in caplog.records if r.name == "podium.ingress"]  # quiet at info
    caplog.set_level("DEBUG", logger="podium.ingress")
    await gw.client().chat.completions.create(model="chat", messages=[
        {"role": "user", "content": "two"}], extra_body=body)
    [line] = [r.getMessage() for r in caplog.records if r.name == "podium.ingress"]
    # A documented OpenAI parameter Podium does not read (seed) is not "unrecognised".
    assert line == "request fields not recognised, passed through as they are: frobnicate"
    sent = [r.body for r in upstream.recorded if isinstance(r.body, dict)]
    assert [b.get("frobnicate") for b in sent] == [{"level": 3}] * 2
    assert all(b.get("seed") == 7 for b in sent)
