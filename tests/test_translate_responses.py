"""gateway/translate/responses*: the Responses API around Chat Completions.

Every translated object is validated against the official `openai` SDK's own types, and the
streams are read by the SDK's own stream parsers: a small aiohttp app on loopback plays the
role phase 2's endpoint will play (request model → chat body → scripted chat answer →
translator → HTTP), with a dict standing in for the response store.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter, ValidationError

from gateway.errors import InternalError, PodiumError
from gateway.pipeline.ingress import ChatCompletionRequest
from gateway.simulator.schema_instance import instance
from gateway.translate import sse
from gateway.translate.responses import conversation_items, from_completion, to_chat
from gateway.translate.responses_models import ResponsesRequest
from gateway.translate.responses_stream import ResponsesStream
from tests.chat_script import FUNCTION_PARAMETERS, MODEL, SCRIPTS, TIME, WEATHER, Script

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
TOOLS = [{"type": "function", "name": name, "description": f"{name} tool",
          "parameters": params, "strict": True} for name, params in FUNCTION_PARAMETERS.items()]


def req(**body: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "chat", **body})


def chat_of(**body: Any) -> dict[str, Any]:
    chat = to_chat(req(**body))
    ChatCompletionRequest.model_validate(chat)   # the pipeline's own entry model takes it
    return chat


# ---- request → chat body --------------------------------------------------------------------

def test_string_input_instructions_and_options_make_one_chat_body() -> None:
    chat = chat_of(input="Hi there", instructions="Be brief.", temperature=0.2, top_p=0.9,
                   max_output_tokens=50, user="u-1", metadata={"task": "t"}, store=True)
    assert chat == {"model": "chat", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
        "temperature": 0.2, "top_p": 0.9, "max_completion_tokens": 50, "user": "u-1"}


def test_tools_tool_choice_and_json_schema_format_translate() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    chat = chat_of(input="x", tools=TOOLS, parallel_tool_calls=False, stream=True,
                   tool_choice={"type": "function", "name": "get_time"},
                   text={"format": {"type": "json_schema", "name": "A", "schema": schema,
                                    "strict": True}})
    assert chat["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "get_weather tool",
        "parameters": FUNCTION_PARAMETERS["get_weather"], "strict": True}}
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert chat["parallel_tool_calls"] is False
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "A", "schema": schema, "strict": True}}
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert chat_of(input="x", text={"format": {"type": "json_object"}})["response_format"] \
        == {"type": "json_object"}
    assert "response_format" not in chat_of(input="x", text={"format": {"type": "text"}})


def test_replayed_items_merge_calls_into_one_assistant_message() -> None:
    """The Agents SDK sends a whole turn back as items: a message, two calls, two outputs."""
    chat = chat_of(input=[
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [
            {"type": "input_text", "text": "Weather and time?"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "get_weather",
         "arguments": '{"city":"Paris"}', "status": "completed"},
        {"type": "function_call", "call_id": "call_b", "name": "get_time", "arguments": "{}"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call_output", "call_id": "call_a", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_b",
         "output": [{"type": "input_text", "text": "12:00"}]},
    ])
    assert chat["messages"] == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": [
            {"type": "text", "text": "Weather and time?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                "detail": "low"}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
    ]


def test_a_stored_conversation_continues_with_function_outputs() -> None:
    first = req(input="Weather in Paris?", instructions="Old instructions.", tools=TOOLS)
    answer = from_completion(first, SCRIPTS["text-and-tool"].completion())
    stored = json.loads(json.dumps(conversation_items([], first, answer)))  # plain JSON data
    follow = req(input=[{"type": "function_call_output", "call_id": WEATHER.id,
                         "output": "18C"}], previous_response_id=answer["id"],
                 instructions="New instructions.")
    chat = to_chat(follow, stored)
    ChatCompletionRequest.model_validate(chat)
    assert chat["messages"] == [
        {"role": "system", "content": "New instructions."},   # not carried over
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me look that up.", "tool_calls": [
            {"id": WEATHER.id, "type": "function",
             "function": {"name": WEATHER.name, "arguments": WEATHER.arguments}}]},
        {"role": "tool", "tool_call_id": WEATHER.id, "content": "18C"},
    ]


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [*TOOLS, {"type": "file_search", "vector_store_ids": []}]}, "tools[2].type"),
    ({"background": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
    ({"input": [{"role": "user", "content": "x"}, {"type": "web_search_call", "id": "ws"}]},
     "input[1].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"},
                                             {"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[1].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input[0].content[0].file_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": [
        {"type": "input_image", "image_url": "https://x/y.png"}]}]}, "input[0].output[0].type"),
    ({"input": []}, "input"),
])
def test_untranslatable_requests_are_400s_naming_the_field(body: dict[str, Any],
                                                           param: str) -> None:
    with pytest.raises(PodiumError) as caught:
        to_chat(req(**{"input": "x", "tools": TOOLS, **body}))
    assert (caught.value.status, caught.value.param) == (400, param)
    assert caught.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", [
    {"input": "x", "temperature": "0.5"},             # strict: no strings for numbers
    {"input": "x", "stream": 1},
    {"input": "x", "text": {"format": {"type": "json_schema", "name": "A"}}},
    {"input": [{"role": "robot", "content": "x"}]},
    {"input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
    {"input": "x", "tools": [{"type": "function"}]},
])
def test_malformed_requests_do_not_validate(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        req(**body)


def test_unknown_fields_are_accepted() -> None:
    assert to_chat(req(input="x", include=[], truncation="auto", prompt_cache_key="k"))


# ---- chat.completion → response -------------------------------------------------------------

@pytest.mark.parametrize("name", ["text", "one-tool", "two-tools", "text-and-tool",
                                  "cut-short", "no-usage"])
def test_completions_become_valid_responses(name: str) -> None:
    script = SCRIPTS[name]
    request = req(input="x", tools=TOOLS, instructions="I.", metadata={"k": "v"},
                  text={"format": {"type": "json_object"}})
    response = Response.model_validate(from_completion(request, script.completion()))
    assert response.id.startswith("resp_") and response.model == MODEL
    assert response.output_text == script.text
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] \
        == [(c.id, c.name, json.loads(c.arguments)) for c in script.calls]
    assert response.instructions == "I." and response.metadata == {"k": "v"}
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_object"
    assert [t.name for t in response.tools if t.type == "function"] == list(FUNCTION_PARAMETERS)
    if script.usage is None:
        assert response.usage is None
    else:
        assert response.usage is not None
        assert (response.usage.input_tokens, response.usage.output_tokens,
                response.usage.total_tokens) == (11, 7, 18)


def test_a_length_finish_is_an_incomplete_response() -> None:
    response = Response.model_validate(from_completion(req(input="x"),
                                                       SCRIPTS["cut-short"].completion()))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_cached_and_reasoning_tokens_carry_over() -> None:
    completion = Script(text="ok", usage={
        "prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 5}}).completion()
    usage = Response.model_validate(from_completion(req(input="x"), completion)).usage
    assert usage is not None
    assert usage.input_tokens_details.cached_tokens == 64
    assert usage.output_tokens_details.reasoning_tokens == 5


# ---- the stream translator ------------------------------------------------------------------

def play(script: Script, request: ResponsesRequest | None = None) -> list[dict[str, Any]]:
    stream = ResponsesStream(request or req(input="x", stream=True))
    events = [event for chunk in script.chunks() for event in stream.feed(chunk)]
    return events + stream.finish()


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_stream_events_are_the_sdks_types_in_lifecycle_order(name: str) -> None:
    events = play(SCRIPTS[name])
    for event in events:
        EVENTS.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    final = "response.incomplete" if name == "cut-short" else "response.completed"
    assert kinds[-1] == final and kinds.count(final) == 1
    open_item = None                       # items open and close one at a time, in order
    for event in events:
        if event["type"] == "response.output_item.added":
            assert open_item is None
            open_item = event["output_index"]
        elif event["type"] == "response.output_item.done":
            assert event["output_index"] == open_item
            open_item = None
        elif "output_index" in event:
            assert event["output_index"] == open_item, event


def test_interleaved_parallel_call_deltas_are_neither_dropped_nor_mixed() -> None:
    events = play(SCRIPTS["two-tools"])
    added = {e["output_index"]: e["item"] for e in events
             if e["type"] == "response.output_item.added"}
    arguments: dict[int, str] = {}
    for e in events:
        if e["type"] == "response.function_call_arguments.delta":
            arguments[e["output_index"]] = arguments.get(e["output_index"], "") + e["delta"]
    assert [(added[i]["call_id"], added[i]["name"], arguments[i]) for i in sorted(added)] \
        == [(c.id, c.name, c.arguments) for c in (WEATHER, TIME)]
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(d["name"], d["arguments"]) for d in done] \
        == [(WEATHER.name, WEATHER.arguments), (TIME.name, TIME.arguments)]


def test_the_streamed_response_equals_the_non_streamed_one() -> None:
    for name, script in SCRIPTS.items():
        stream = ResponsesStream(req(input="x"))
        for chunk in script.chunks():
            stream.feed(chunk)
        stream.finish()
        whole = from_completion(req(input="x"), script.completion())
        assert stream.response is not None
        assert _without_ids(stream.response["output"]) == _without_ids(whole["output"]), name
        assert stream.response["usage"] == whole["usage"], name


def _without_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k != "id"} for item in items]


def test_a_broken_stream_ends_with_error_and_response_failed() -> None:
    stream = ResponsesStream(req(input="x"))
    events = stream.feed(SCRIPTS["text"].chunks()[1])
    events += stream.fail(InternalError("the upstream broke off"))
    for event in events:
        EVENTS.validate_python(event)
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert events[-1]["response"]["error"]["message"] == "the upstream broke off"


# ---- the official SDK against the translation, over HTTP ------------------------------------

@dataclass
class Harness:
    client: openai.AsyncOpenAI
    chats: list[dict[str, Any]] = field(default_factory=list)        # chat bodies made
    stored: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


HARNESS = web.AppKey("harness", Harness)


async def _responses(request: web.Request) -> web.StreamResponse:
    harness = request.app[HARNESS]
    typed = ResponsesRequest.model_validate(await request.json())
    history = harness.stored.get(typed.previous_response_id or "", [])
    harness.chats.append(to_chat(typed, history))
    script = _script_for(typed)
    if not typed.stream:
        answer = from_completion(typed, script.completion())
        harness.stored[answer["id"]] = conversation_items(history, typed, answer)
        return web.json_response(answer)
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await out.prepare(request)
    stream = ResponsesStream(typed)
    chunks = script.chunks()
    for chunk in chunks[:3] if typed.model == "broken" else chunks:
        await out.write(sse.encode_all(stream.feed(chunk)))
    if typed.model == "broken":
        await out.write(sse.encode_all(stream.fail(InternalError("the upstream broke off"))))
        return out
    await out.write(sse.encode_all(stream.finish()))
    assert stream.response is not None
    harness.stored[stream.response["id"]] = conversation_items(history, typed, stream.response)
    return out


def _script_for(typed: ResponsesRequest) -> Script:
    fmt = typed.text.format if typed.text else None
    if fmt is not None and fmt.schema_ is not None:   # what the simulator will do in phase 2
        return Script(text=orjson.dumps(instance(fmt.schema_)).decode())
    return SCRIPTS.get(typed.model, SCRIPTS["text"])


@pytest.fixture
async def api() -> AsyncIterator[Harness]:
    app = web.Application()
    app.router.add_post("/v1/responses", _responses)
    async with TestServer(app, host="127.0.0.1") as server:
        client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test",
                                    max_retries=0)
        app[HARNESS] = harness = Harness(client)
        yield harness
        await client.close()


async def test_sdk_stream_accumulates_the_text_and_usage(api: Harness) -> None:
    async with api.client.responses.stream(model="text", input="Hi") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert final.output_text == SCRIPTS["text"].text
    assert final.usage is not None and final.usage.total_tokens == 18
    assert kinds.count("response.output_text.delta") > 3
    assert kinds[-1] == "response.completed"


async def test_sdk_stream_gets_two_interleaved_parallel_calls(api: Harness) -> None:
    stream = await api.client.responses.create(model="two-tools", input="Weather and time?",
                                               tools=TOOLS, stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    final = events[-1].response
    calls = [(c.call_id, c.name, json.loads(c.arguments)) for c in final.output
             if c.type == "function_call"]
    assert calls == [(c.id, c.name, json.loads(c.arguments)) for c in (WEATHER, TIME)]
    assert api.chats[-1]["tools"][1]["function"]["name"] == "get_time"


async def test_sdk_stream_parses_strict_function_arguments(api: Harness) -> None:
    async with api.client.responses.stream(model="one-tool", input="Weather?",
                                           tools=TOOLS) as stream:
        final = await stream.get_final_response()
    call = next(item for item in final.output if item.type == "function_call")
    assert call.parsed_arguments == {"city": "Paris", "unit": "celsius"}


async def test_sdk_multi_turn_tool_use_with_previous_response_id(api: Harness) -> None:
    first = await api.client.responses.create(model="one-tool", input="Weather in Paris?",
                                              tools=TOOLS)
    call = next(item for item in first.output if item.type == "function_call")
    second = await api.client.responses.create(
        model="text", previous_response_id=first.id, tools=TOOLS,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18C"}])
    assert second.previous_response_id == first.id
    assert second.output_text == SCRIPTS["text"].text
    assert [m["role"] for m in api.chats[-1]["messages"]] == ["user", "assistant", "tool"]
    assert api.chats[-1]["messages"][1]["tool_calls"][0]["id"] == call.call_id
    assert api.chats[-1]["messages"][2] == {"role": "tool", "tool_call_id": call.call_id,
                                            "content": "18C"}


class Forecast(BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]
    days: list[float]
    note: str | None


async def test_sdk_parse_gets_an_instance_of_its_schema(api: Harness) -> None:
    parsed = await api.client.responses.parse(model="text", input="Forecast?",
                                              text_format=Forecast)
    assert isinstance(parsed.output_parsed, Forecast)
    sent = api.chats[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True


async def test_sdk_stream_of_a_cut_short_answer_ends_incomplete(api: Harness) -> None:
    stream = await api.client.responses.create(model="cut-short", input="x", stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details is not None
    assert events[-1].response.output_text == SCRIPTS["cut-short"].text


async def test_sdk_sees_a_broken_stream_fail(api: Harness) -> None:
    stream = await api.client.responses.create(model="broken", input="x", stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None
    assert events[-1].response.error.code == "server_error"
