"""gateway/translate/anthropic*: the Anthropic Messages API around Chat Completions.

Translated objects are validated against the official `anthropic` SDK's types, and streams
are read by the SDK's own `messages.stream` accumulator from a small aiohttp app on loopback
that plays phase 2's endpoint (request model → chat body → scripted answer → translator).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from anthropic.types import ErrorResponse, Message, MessageTokensCount, RawMessageStreamEvent
from pydantic import TypeAdapter, ValidationError

from gateway.errors import (
    AuthenticationFailed,
    BadRequest,
    BudgetExceeded,
    InternalError,
    ModelNotFound,
    NoDeploymentAvailable,
    PayloadTooLarge,
    PermissionDenied,
    PodiumError,
    RateLimited,
    ReviewPending,
    UnsupportedRequest,
)
from gateway.pipeline.ingress import ChatCompletionRequest
from gateway.translate import sse
from gateway.translate.anthropic import (
    count_tokens,
    error_body,
    from_completion,
    render_error,
    to_chat,
)
from gateway.translate.anthropic_models import CountTokensRequest, MessagesRequest
from gateway.translate.anthropic_stream import MessagesStream
from tests.chat_script import FUNCTION_PARAMETERS, MODEL, SCRIPTS, TIME, WEATHER, Script

EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
TOOLS = [{"name": name, "description": f"{name} tool", "input_schema": params}
         for name, params in FUNCTION_PARAMETERS.items()]
PNG = "iVBORw0KGgo="


def req(**body: Any) -> MessagesRequest:
    return MessagesRequest.model_validate(
        {"model": "chat", "max_tokens": 100, "messages": [{"role": "user", "content": "x"}],
         **body})


def chat_of(**body: Any) -> dict[str, Any]:
    chat = to_chat(req(**body))
    ChatCompletionRequest.model_validate(chat)   # the pipeline's own entry model takes it
    return chat


# ---- request → chat body --------------------------------------------------------------------

def test_a_conversation_with_images_and_tool_use_translates() -> None:
    chat = chat_of(system=[{"type": "text", "text": "Be brief."},
                           {"type": "text", "text": "Use tools.", "cache_control": {}}],
                   messages=[
        {"role": "user", "content": [
            {"type": "text", "text": "What is in these, and the weather?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hm", "signature": "s"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris", "unit": "celsius"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True, "content": [
                {"type": "text", "text": "clock"}, {"type": "text", "text": "broken"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}}]},
            {"type": "text", "text": "Go on."}]},
    ])
    png = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief.\nUse tools."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in these, and the weather?"}, png,
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'}},
            {"id": "toolu_2", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: clock\nbroken"},
        {"role": "user", "content": [png, {"type": "text", "text": "Go on."}]},
    ]


def test_options_translate_and_top_k_is_dropped() -> None:
    chat = chat_of(max_tokens=321, stop_sequences=["END", "STOP"], temperature=0.3,
                   top_p=0.8, top_k=40, metadata={"user_id": "u-7"}, stream=True,
                   thinking={"type": "enabled", "budget_tokens": 1024})
    assert chat == {"model": "chat", "messages": [{"role": "user", "content": "x"}],
                    "max_completion_tokens": 321, "stop": ["END", "STOP"],
                    "temperature": 0.3, "top_p": 0.8, "user": "u-7", "stream": True,
                    "stream_options": {"include_usage": True}}


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "get_time"},
     {"tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
    ({"type": "any", "disable_parallel_tool_use": True},
     {"tool_choice": "required", "parallel_tool_calls": False}),
])
def test_tools_and_tool_choice_translate(choice: dict[str, Any],
                                         expected: dict[str, Any]) -> None:
    chat = chat_of(tools=TOOLS, tool_choice=choice)
    assert chat["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "parameters": FUNCTION_PARAMETERS["get_weather"],
        "description": "get_weather tool"}}
    assert {k: chat[k] for k in expected} == expected


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x"}, {"type": "document", "source": {}}]}]},
     "messages[0].content[1].type"),
    ({"tools": [*TOOLS, {"type": "web_search_20250305", "name": "web_search"}]},
     "tools[2].type"),
    ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
    ({"tool_choice": {"type": "tool"}, "tools": TOOLS}, "tool_choice.name"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
     "messages[0].content[0].source"),
    ({"messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "t"}]}]}, "messages[1].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                 "content": [{"type": "search_result"}]}]}]},
     "messages[0].content[0].content[0].type"),
    ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "m"}]}, "mcp_servers"),
])
def test_untranslatable_requests_are_400s_naming_the_field(body: dict[str, Any],
                                                           param: str) -> None:
    with pytest.raises(PodiumError) as caught:
        to_chat(req(**body))
    assert (caught.value.status, caught.value.param) == (400, param)
    assert error_body(caught.value)["error"]["message"].startswith(f"{param}: ")


@pytest.mark.parametrize("body", [
    {"max_tokens": None}, {"max_tokens": 0}, {"max_tokens": "5"}, {"temperature": 1.5},
    {"messages": []}, {"messages": [{"role": "system", "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
    {"system": [{"type": "image"}]}, {"tool_choice": {"type": "sometimes"}},
])
def test_malformed_requests_do_not_validate(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        req(**body)


# ---- chat.completion → message --------------------------------------------------------------

@pytest.mark.parametrize("name", list(SCRIPTS))
def test_completions_become_valid_messages(name: str) -> None:
    script = SCRIPTS[name]
    message = Message.model_validate(from_completion(req(), script.completion()))
    assert message.id.startswith("msg_") and message.model == MODEL
    assert "".join(b.text for b in message.content if b.type == "text") == script.text
    assert [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"] \
        == [(c.id, c.name, json.loads(c.arguments)) for c in script.calls]
    expected = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}
    assert message.stop_reason == expected[script.finish]
    assert (message.usage.input_tokens, message.usage.output_tokens) == \
        ((11, 7) if script.usage else (0, 0))


@pytest.mark.parametrize(("finish", "matched", "calls", "expected"), [
    ("stop", None, False, ("end_turn", None)),
    ("stop", "END", False, ("stop_sequence", "END")),
    ("stop", "OTHER", False, ("end_turn", None)),     # not one of the request's sequences
    ("stop", None, True, ("tool_use", None)),          # some providers say stop with calls
    ("length", None, False, ("max_tokens", None)),
    ("content_filter", None, False, ("refusal", None)),
    ("tool_calls", None, True, ("tool_use", None)),
])
def test_stop_reasons_map(finish: str, matched: str | None, calls: bool,
                          expected: tuple[str, str | None]) -> None:
    completion = Script(text="t", calls=(WEATHER,) if calls else (), finish=finish).completion()
    completion["choices"][0]["stop_reason"] = matched     # as vLLM reports a matched stop
    message = Message.model_validate(
        from_completion(req(stop_sequences=["END"]), completion))
    assert (message.stop_reason, message.stop_sequence) == expected


def test_broken_tool_arguments_are_kept_not_lost() -> None:
    script = Script(calls=(WEATHER.__class__("c1", "f", '{"city": "Par'),), finish="tool_calls")
    block = from_completion(req(), script.completion())["content"][0]
    assert block["input"] == {"_unparsed_arguments": '{"city": "Par'}


def test_cache_reads_are_counted_apart_from_input_tokens() -> None:
    completion = Script(text="ok", usage={"prompt_tokens": 100, "completion_tokens": 3,
                                          "prompt_tokens_details": {"cached_tokens": 64}})
    usage = Message.model_validate(from_completion(req(), completion.completion())).usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) \
        == (36, 64, 3)


# ---- the stream translator ------------------------------------------------------------------

def play(script: Script, request: MessagesRequest | None = None) -> list[dict[str, Any]]:
    stream = MessagesStream(request or req(stream=True))
    events = [event for chunk in script.chunks() for event in stream.feed(chunk)]
    return events + stream.finish()


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_stream_events_are_the_sdks_types_in_block_order(name: str) -> None:
    events = play(SCRIPTS[name])
    for event in events:
        EVENTS.validate_python(event)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    open_block, next_index = None, 0           # blocks open and close one at a time
    for event in events[1:-2]:
        if event["type"] == "content_block_start":
            assert open_block is None and event["index"] == next_index
            open_block, next_index = event["index"], next_index + 1
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_block
            open_block = None
        else:
            assert event["type"] == "content_block_delta" and event["index"] == open_block


def test_interleaved_parallel_tool_input_is_neither_dropped_nor_mixed() -> None:
    events = play(SCRIPTS["two-tools"])
    starts = {e["index"]: e["content_block"] for e in events
              if e["type"] == "content_block_start"}
    partial: dict[int, str] = {}
    for e in events:
        if e["type"] == "content_block_delta":
            partial[e["index"]] = partial.get(e["index"], "") + e["delta"]["partial_json"]
    assert [(starts[i]["id"], starts[i]["name"], json.loads(partial[i])) for i in sorted(starts)]\
        == [(c.id, c.name, json.loads(c.arguments)) for c in (WEATHER, TIME)]


def test_the_streamed_message_equals_the_non_streamed_one() -> None:
    for name, script in SCRIPTS.items():
        stream = MessagesStream(req())
        for chunk in script.chunks():
            stream.feed(chunk)
        stream.finish()
        whole = from_completion(req(), script.completion())
        assert stream.message is not None
        assert {**stream.message, "id": ""} == {**whole, "id": ""}, name


def test_a_broken_stream_ends_with_an_error_event() -> None:
    stream = MessagesStream(req())
    events = stream.feed(SCRIPTS["text"].chunks()[1]) + stream.fail(InternalError("cut off"))
    assert events[-1] == {"type": "error",
                          "error": {"type": "api_error", "message": "cut off"}}


# ---- count_tokens and errors ----------------------------------------------------------------

def test_count_tokens_counts_system_messages_and_tools() -> None:
    def count(**body: Any) -> int:
        answer = count_tokens(CountTokensRequest.model_validate(
            {"model": "chat", "messages": [{"role": "user", "content": "Hello, world"}],
             **body}))
        return MessageTokensCount.model_validate(answer).input_tokens
    # "Hello", ",", " world" in cl100k_base, plus 3 per message and 3 for the reply.
    assert count() == 3 + 3 + 3
    assert count(system="You are terse.") == count() + 3 + 4
    assert count(tools=TOOLS) > count() + 20


@pytest.mark.parametrize(("err", "status", "kind"), [
    (BadRequest("bad", param="messages"), 400, "invalid_request_error"),
    (UnsupportedRequest("no"), 400, "invalid_request_error"),
    (AuthenticationFailed("who"), 401, "authentication_error"),
    (PermissionDenied("no"), 403, "permission_error"),
    (ReviewPending("rev_1"), 403, "permission_error"),
    (ModelNotFound("none"), 404, "not_found_error"),
    (PayloadTooLarge("big"), 413, "request_too_large"),
    (RateLimited("slow", 2), 429, "rate_limit_error"),
    (BudgetExceeded("spent"), 429, "rate_limit_error"),
    (InternalError("oops"), 500, "api_error"),
    (NoDeploymentAvailable("busy"), 503, "overloaded_error"),
])
def test_errors_take_anthropics_shape(err: PodiumError, status: int, kind: str) -> None:
    response = render_error(err, "req_1")
    body = json.loads(response.body)
    assert response.status == status
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert body["request_id"] == "req_1" and response.headers["request-id"] == "req_1"
    if kind != "request_too_large":   # documented by Anthropic, missing from the SDK's union
        ErrorResponse.model_validate(body)
    if isinstance(err, RateLimited):
        assert response.headers["Retry-After"] == "2"


# ---- the official SDK against the translation, over HTTP ------------------------------------

@dataclass
class Harness:
    client: anthropic.AsyncAnthropic
    chats: list[dict[str, Any]] = field(default_factory=list)


HARNESS = web.AppKey("harness", Harness)
REFUSALS: dict[str, PodiumError] = {
    "over-budget": BudgetExceeded("The team's monthly budget is spent."),
    "bad-key": AuthenticationFailed("Unknown API key."),
    "too-big": PayloadTooLarge("Request body exceeds the limit."),
}


async def _messages(request: web.Request) -> web.StreamResponse:
    try:
        typed = MessagesRequest.model_validate(await request.json())
        request.app[HARNESS].chats.append(to_chat(typed))
        if typed.model in REFUSALS:
            raise REFUSALS[typed.model]
    except PodiumError as err:
        return render_error(err, "req_1")
    script = SCRIPTS.get(typed.model, SCRIPTS["text"])
    if not typed.stream:
        return web.json_response(from_completion(typed, script.completion()))
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await out.prepare(request)
    stream = MessagesStream(typed, input_tokens=5)
    for chunk in script.chunks()[:3] if typed.model == "broken" else script.chunks():
        await out.write(sse.encode_all(stream.feed(chunk)))
    ending = stream.fail(InternalError("cut off")) if typed.model == "broken" \
        else stream.finish()
    await out.write(sse.encode_all(ending))
    return out


async def _count(request: web.Request) -> web.Response:
    return web.json_response(count_tokens(CountTokensRequest.model_validate(
        await request.json())))


@pytest.fixture
async def api() -> AsyncIterator[Harness]:
    app = web.Application()
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/v1/messages/count_tokens", _count)
    async with TestServer(app, host="127.0.0.1") as server:
        client = anthropic.AsyncAnthropic(base_url=str(server.make_url("")),
                                          api_key="sk-test", max_retries=0)
        app[HARNESS] = harness = Harness(client)
        yield harness
        await client.close()


USER = [{"role": "user", "content": "Weather and time in Paris?"}]


async def test_sdk_stream_accumulates_the_text_and_usage(api: Harness) -> None:
    async with api.client.messages.stream(model="text", max_tokens=50,
                                          messages=USER) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == final.content[0].text == SCRIPTS["text"].text
    assert len(texts) > 3
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 7)


async def test_sdk_stream_gets_two_interleaved_parallel_tool_uses(api: Harness) -> None:
    async with api.client.messages.stream(model="two-tools", max_tokens=50, messages=USER,
                                          tools=TOOLS) as stream:
        final = await stream.get_final_message()
    assert [(b.id, b.name, b.input) for b in final.content if b.type == "tool_use"] \
        == [(c.id, c.name, json.loads(c.arguments)) for c in (WEATHER, TIME)]
    assert final.stop_reason == "tool_use"


async def test_sdk_tool_use_round_trip(api: Harness) -> None:
    first = await api.client.messages.create(model="text-and-tool", max_tokens=50,
                                             messages=USER, tools=TOOLS)
    use = next(b for b in first.content if b.type == "tool_use")
    second = await api.client.messages.create(
        model="text", max_tokens=50, tools=TOOLS,
        messages=[*USER, {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                           for b in first.content]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                "content": "18C"}]}])
    assert second.content[0].text == SCRIPTS["text"].text
    assistant, tool = api.chats[-1]["messages"][1:]
    assert assistant["content"] == "Let me look that up."
    assert assistant["tool_calls"][0]["id"] == use.id == WEATHER.id
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == use.input
    assert tool == {"role": "tool", "tool_call_id": use.id, "content": "18C"}


async def test_sdk_count_tokens(api: Harness) -> None:
    counted = await api.client.messages.count_tokens(
        model="chat", messages=[{"role": "user", "content": "Hello, world"}])
    assert counted.input_tokens == 9


@pytest.mark.parametrize(("model", "error"), [
    ("over-budget", anthropic.RateLimitError),
    ("bad-key", anthropic.AuthenticationError),
    ("too-big", anthropic.APIStatusError),
])
async def test_sdk_raises_its_own_errors(api: Harness, model: str,
                                         error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        await api.client.messages.create(model=model, max_tokens=5, messages=USER)
    assert isinstance(caught.value, anthropic.APIStatusError)
    assert caught.value.body["error"]["message"] == REFUSALS[model].message
    assert caught.value.request_id == "req_1"


async def test_sdk_reports_an_untranslatable_request_by_field(api: Harness) -> None:
    with pytest.raises(anthropic.BadRequestError, match=r"tools\[0\]\.type"):
        await api.client.messages.create(
            model="text", max_tokens=5, messages=USER,
            tools=[{"type": "web_search_20250305", "name": "web_search"}])


async def test_sdk_raises_on_a_broken_stream(api: Harness) -> None:
    with pytest.raises(anthropic.APIStatusError, match="cut off"):
        async with api.client.messages.stream(model="broken", max_tokens=5,
                                              messages=USER) as stream:
            await stream.get_final_message()
