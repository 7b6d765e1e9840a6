"""The simulator is the fake upstream for the whole suite, so its wire behaviour is pinned here."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.simulator import RECORDED, SimModel, build_simulator_app, start_simulator

Client = TestClient[Any, Any]

USER = [{"role": "user", "content": "hello there, how are you doing today my friend?"}]


def tool(name: str, **props: str) -> dict[str, Any]:
    properties = {prop: {"type": kind} for prop, kind in props.items()}
    parameters = {"type": "object", "properties": properties}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


TOOLS = [tool("lookup", city="string", days="integer", hot="boolean", misc="object"), tool("noop")]
LOOKUP_ARGS = {"city": "sim-city", "days": 42, "hot": True, "misc": None}


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_simulator_app())) as c:
        yield c


async def chat(client: Client, model: str = "m", **extra: Any) -> Any:
    payload = {"model": model, "messages": USER, **extra}
    resp = await client.post("/v1/chat/completions", json=payload)
    return resp.status, await resp.json()


def sse(text: str) -> list[Any]:
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def test_chat_completion_shape_and_usage(client: Client) -> None:
    messages = [
        {"role": "system", "content": "abcdefgh"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
    ]
    resp = await client.post("/v1/chat/completions", json={"model": "any-x", "messages": messages})
    body = await resp.json()
    assert resp.status == 200 and body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-sim-") and isinstance(body["created"], int)
    assert (body["model"], body["system_fingerprint"]) == ("any-x", "podium-sim")
    content = "Simulated answer from any-x: hi"
    message = {"role": "assistant", "content": content, "refusal": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    assert body["choices"] == [choice]
    # prompt: ceil(10 text chars / 4) + 85 for the image; completion: ceil(31 chars / 4)
    assert body["usage"] == {"prompt_tokens": 88, "completion_tokens": 8, "total_tokens": 96}


async def test_scripted_json_truncated_and_n_answers(client: Client) -> None:
    say = [{"role": "user", "content": "please [[say:not json]] ok"}]
    json_format = {"type": "json_object"}
    _, body = await chat(client, messages=say, response_format=json_format)
    assert body["choices"][0]["message"]["content"] == "not json"
    _, body = await chat(client, "m-j", response_format={"type": "json_schema"})
    answer = json.loads(body["choices"][0]["message"]["content"])
    assert answer == {"answer": f"Simulated answer from m-j: {USER[0]['content']}", "model": "m-j"}
    for limit in ("max_tokens", "max_completion_tokens"):
        _, body = await chat(client, **{limit: 2})
        assert body["choices"][0]["message"]["content"] == "Simulate"
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 2
    _, body = await chat(client, n=3)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]


async def test_a_fails_on_model_refuses_only_prompts_with_its_word(client: Client) -> None:
    """A cheap model that cannot do one kind of task: what cascade and learned-router tests
    script their outcomes with."""
    hard = [{"role": "user", "content": "Evaluate the INTEGRAL of x from 0 to 1."}]
    _, refused = await chat(client, "cheap-fails-on-integral", messages=hard)
    _, answered = await chat(client, "cheap-fails-on-integral")
    _, other = await chat(client, "strong", messages=hard)
    assert refused["choices"][0]["message"]["content"].startswith("I'm sorry, but I can't")
    assert answered["choices"][0]["message"]["content"].startswith("Simulated answer from")
    assert other["choices"][0]["message"]["content"].startswith("Simulated answer from")


async def test_tool_calls(client: Client) -> None:
    _, body = await chat(client, tools=TOOLS)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["lookup", "noop"]
    assert all(c["id"].startswith("call_sim_") and c["type"] == "function" for c in calls)
    assert json.loads(calls[0]["function"]["arguments"]) == LOOKUP_ARGS
    assert json.loads(calls[1]["function"]["arguments"]) == {}
    _, body = await chat(client, tools=TOOLS, parallel_tool_calls=False)
    assert len(body["choices"][0]["message"]["tool_calls"]) == 1
    named = {"type": "function", "function": {"name": "noop"}}
    _, body = await chat(client, tools=TOOLS, tool_choice=named)
    assert [c["function"]["name"] for c in body["choices"][0]["message"]["tool_calls"]] == ["noop"]
    _, body = await chat(client, tools=TOOLS, tool_choice="none")
    assert body["choices"][0]["finish_reason"] == "stop"
    after_tool = [*USER, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    _, body = await chat(client, tools=TOOLS, messages=after_tool)
    assert "tool_calls" not in body["choices"][0]["message"]


def reassemble(chunks: list[Any]) -> dict[int, dict[str, Any]]:
    """Fold stream deltas back into per-choice messages, the way an OpenAI client does."""
    out: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            msg = out.setdefault(choice["index"], {"content": "", "calls": {}, "finish": None})
            delta = choice["delta"]
            msg["content"] += delta.get("content") or ""
            for call in delta.get("tool_calls", []):
                slot = msg["calls"].setdefault(call["index"], {"name": "", "arguments": ""})
                slot["name"] += call.get("function", {}).get("name", "")
                slot["arguments"] += call["function"]["arguments"]
            msg["finish"] = choice["finish_reason"] or msg["finish"]
    return out


@pytest.mark.parametrize("extra", [{}, {"n": 2}, {"tools": TOOLS}, {"max_tokens": 5}])
async def test_stream_matches_plain_answer(client: Client, extra: Any) -> None:
    _, plain = await chat(client, **extra)
    payload = {"model": "m", "messages": USER, "stream": True, **extra}
    payload["stream_options"] = {"include_usage": True}
    resp = await client.post("/v1/chat/completions", json=payload)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    chunks = sse(await resp.text())
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    streamed = reassemble(chunks)
    for choice in plain["choices"]:
        got, message = streamed[choice["index"]], choice["message"]
        assert got["finish"] == choice["finish_reason"]
        assert got["content"] == (message["content"] or "")
        calls = [c["function"] for c in message.get("tool_calls", [])]
        assert [got["calls"][i] for i in sorted(got["calls"])] == calls
    if not extra:  # ~3 words per content chunk: several chunks, not one
        words = plain["choices"][0]["message"]["content"].split()
        assert len(chunks) - 3 == math.ceil(len(words) / 3) > 1


@pytest.mark.parametrize(
    ("keyword", "status", "err_type", "code"),
    [
        ("error500", 500, "server_error", None),
        ("e503", 503, "server_error", None),
        ("rate429", 429, "rate_limit_error", "rate_limit_exceeded"),
        ("badreq", 400, "invalid_request_error", None),
        ("ctxlimit", 400, "invalid_request_error", "context_length_exceeded"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
async def test_keyword_errors(
    client: Client, keyword: str, status: int, err_type: str, code: Any, path: str
) -> None:
    resp = await client.post(path, json={"model": f"x-{keyword}-y", "messages": USER, "input": "a"})
    error = (await resp.json())["error"]
    assert resp.status == status and (error["type"], error["code"]) == (err_type, code)
    assert error["param"] is None and error["message"]
    assert resp.headers.get("Retry-After") == ("7" if status == 429 else None)
    if keyword == "ctxlimit":
        assert "maximum context length" in error["message"]


async def test_malformed_requests_are_openai_errors(client: Client) -> None:
    chat_bodies = [b"{not json", b"[]", b'{"messages": []}', b'{"model": "m"}']
    cases = [
        *(("/v1/chat/completions", b) for b in chat_bodies),
        ("/v1/embeddings", b'{"model": "m"}'),
    ]
    for path, data in [*cases, ("/v1/nowhere", b"{}")]:
        resp = await client.post(path, data=data)
        assert resp.status == (404 if path == "/v1/nowhere" else 400)
        assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_fail_rate_is_seeded_and_latency_applies() -> None:
    async def statuses(seed: int) -> list[int]:
        app = build_simulator_app({"flaky": SimModel(fail_rate=0.5)}, seed=seed)
        async with TestClient(TestServer(app)) as c:
            return [(await chat(c, "flaky"))[0] for _ in range(30)]

    first = await statuses(7)
    assert set(first) == {200, 503} and first == await statuses(7)
    app = build_simulator_app({"slow": SimModel(latency_ms=200)})
    async with TestClient(TestServer(app)) as c:
        started = time.monotonic()
        assert (await chat(c, "slow"))[0] == 200
        assert time.monotonic() - started >= 0.2
        started = time.monotonic()
        payload = {"model": "slow", "messages": USER, "stream": True}
        resp = await c.post("/v1/chat/completions", json=payload)
        assert (await resp.content.readline()).startswith(b"data: ")
        assert time.monotonic() - started >= 0.2


async def test_embeddings_are_deterministic_unit_vectors(client: Client) -> None:
    async def embed(value: Any, **extra: Any) -> Any:
        resp = await client.post("/v1/embeddings", json={"model": "e", "input": value, **extra})
        assert resp.status == 200
        return await resp.json()

    body = await embed(["a", "bb"])
    assert body["object"] == "list" and body["model"] == "e"
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1] and vectors[0] != vectors[1]
    for vec in vectors:
        assert len(vec) == 8 and all(-1 <= v <= 1 for v in vec)
        assert math.isclose(sum(v * v for v in vec), 1.0)
    assert (await embed("a"))["data"][0]["embedding"] == vectors[0]
    assert len((await embed([1, 2, 3]))["data"]) == 1
    assert (await embed([[1, 2], [3]]))["usage"]["prompt_tokens"] == 3
    assert len((await embed("a", dimensions=20))["data"][0]["embedding"]) == 20
    encoded = (await embed("a", encoding_format="base64"))["data"][0]["embedding"]
    decoded = struct.unpack("<8f", base64.b64decode(encoded))
    assert decoded == pytest.approx(vectors[0], abs=1e-6)


async def test_api_key_is_enforced_and_every_request_recorded() -> None:
    app = build_simulator_app(api_key="sekret")
    async with TestClient(TestServer(app)) as c:
        missing = await c.post("/v1/chat/completions", json={"model": "m", "messages": USER})
        wrong = await c.get("/v1/models", headers={"Authorization": "Bearer nope"})
        for resp in (missing, wrong):
            assert resp.status == 401
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
        ok = await c.get("/v1/models", headers={"Authorization": "Bearer sekret"})
        assert ok.status == 200
        await c.post("/v1/embeddings", data=b"{oops", headers={"Authorization": "Bearer sekret"})
    log = list(app[RECORDED])
    paths = ["POST/v1/chat/completions", "GET/v1/models", "GET/v1/models", "POST/v1/embeddings"]
    assert [r.method + r.path for r in log] == paths
    assert log[0].body == {"model": "m", "messages": USER} and log[1].body is None
    assert log[2].headers["Authorization"] == "Bearer sekret" and log[3].body is None
    assert app[RECORDED].maxlen == 1000


async def test_midstream_aborts_streams_only(client: Client) -> None:
    payload = {"model": "m-midstream", "messages": USER, "stream": True}
    resp = await client.post("/v1/chat/completions", json=payload)
    received = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async for line in resp.content:
            received.append(line)
    events = [json.loads(line[6:]) for line in received if line.startswith(b"data: ")]
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""},
        {"content": "Simulated answer from "},
    ]
    status, body = await chat(client, "m-midstream")
    assert status == 200 and body["choices"][0]["finish_reason"] == "stop"


def hanging_handlers() -> int:
    """Tasks whose await chain is inside the simulator's scripted hang."""
    count = 0
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        while coro is not None and getattr(coro, "__qualname__", "") != "_behave":
            coro = getattr(coro, "cr_await", None)
        count += coro is not None
    return count


async def test_started_server_cancels_hang_on_client_timeout() -> None:
    runner, port = await start_simulator("127.0.0.1", 0, {"m": SimModel(), "n": SimModel()})
    try:
        assert port > 0
        timeout = aiohttp.ClientTimeout(total=0.3)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", timeout=timeout) as s:
            async with s.get("/v1/models") as resp:
                listed = await resp.json()
            assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["m", "n"]
            assert {(m["object"], m["owned_by"]) for m in listed["data"]} == {
                ("model", "podium-simulator")
            }
            hang = {"model": "m-hang", "messages": USER}
            request = asyncio.create_task(s.post("/v1/chat/completions", json=hang))
            await asyncio.sleep(0.1)
            assert hanging_handlers() == 1
            with pytest.raises(asyncio.TimeoutError):
                await request
        for _ in range(50):  # the disconnect reaches the server a moment after the client gives up
            if not hanging_handlers():
                break
            await asyncio.sleep(0.02)
        assert hanging_handlers() == 0
    finally:
        await runner.cleanup()
