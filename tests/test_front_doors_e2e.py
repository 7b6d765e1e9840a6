"""The official clients of every API against a real `podium serve`: the OpenAI SDK's Responses
API (plain, streamed, tools, `previous_response_id`, `parse`), the OpenAI Agents SDK with its
defaults, the Anthropic SDK (plain, streamed, a tool-use round trip, `count_tokens`),
LangChain's `ChatOpenAI(use_responses_api=True)`, and structured output (`chat.completions
.parse`, LangChain's `with_structured_output`).

Each runs twice: on the shipped config/gateway.yaml (its own simulator, offline) and on a
config in front of an OpenAI-compatible fake upstream (the simulator in a thread of this
process, which records what it received). On the second, per client: a confidential team's
request reaches only the deployment cleared for it, and a team out of budget is refused in
the client's own API's error shape.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import APP_KEY, UPSTREAM_KEY, base_config
from tests.support.served import ThreadedUpstream, serve

DEV_KEY = "sk-podium-dev"
VAULT_KEY = "sk-test-vault-0123456789"       # team vault: confidential data
BROKE_KEY = "sk-test-broke-0123456789"       # team broke: a budget of $0
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}},
           "required": ["city"], "additionalProperties": False}


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]


@dataclass
class Served:
    name: str                        # "default" | "upstream"
    url: str                         # ".../v1"
    key: str
    upstream: ThreadedUpstream | None = None

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def openai(self, key: str | None = None, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url, api_key=key or self.key, max_retries=0,
                                  **kw)

    def anthropic(self, key: str | None = None) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.root, api_key=key or self.key,
                                        max_retries=0)


def upstream_config(url: str, state: str) -> dict[str, Any]:
    config = base_config(url)
    config["model_list"][1]["model_info"]["data_clearance"] = "confidential"  # sim-dear
    config["teams"] = [{"name": "support"}, {"name": "vault", "data_class": "confidential"},
                       {"name": "broke", "budget_usd": 0}]
    config["keys"] += [{"key": VAULT_KEY, "name": "vault", "team": "vault"},
                       {"key": BROKE_KEY, "name": "broke", "team": "broke"}]
    config["storage"] = {"path": f"{state}/podium.sqlite3"}
    config["key_store"] = {"path": f"{state}/keys.sqlite3"}
    return config


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedUpstream]:
    sim = ThreadedUpstream(UPSTREAM_KEY)
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def on_default(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(tmp_path_factory.mktemp("default")) as url:
        yield Served("default", url, DEV_KEY)


@pytest.fixture(scope="module")
def on_upstream(tmp_path_factory: pytest.TempPathFactory,
                upstream: ThreadedUpstream) -> Iterator[Served]:
    state = tmp_path_factory.mktemp("upstream")
    with serve(state, upstream_config(upstream.url, str(state))) as url:
        yield Served("upstream", url, APP_KEY, upstream)


@pytest.fixture(params=["default", "upstream"])
def gw(request: pytest.FixtureRequest) -> Served:
    return request.getfixturevalue(f"on_{request.param}")  # type: ignore[no-any-return]


def marker() -> str:
    """A word of this test's own, to find its requests in the upstream's record."""
    return f"m{uuid.uuid4().hex[:10]}"


def tool(name: str = "get_weather") -> dict[str, Any]:
    return {"type": "function", "name": name, "description": "Weather for a city.",
            "parameters": WEATHER, "strict": True}


# ---- OpenAI SDK: the Responses API ----------------------------------------------------------

async def test_responses_create_with_a_tool_and_a_follow_up(gw: Served) -> None:
    client, word = gw.openai(), marker()
    raw = await client.responses.with_raw_response.create(
        model="chat", input=f"Weather in Paris? {word}", tools=[tool()])
    first = raw.parse()
    assert raw.headers["x-podium-deployment"] and raw.headers["x-podium-route"]
    assert float(raw.headers["x-podium-cost-usd"]) > 0
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    follow = await client.responses.create(
        model="chat", previous_response_id=first.id, tools=[tool()],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert follow.previous_response_id == first.id
    assert word in follow.output_text and follow.usage is not None
    again = await client.responses.retrieve(follow.id)
    assert again.output_text == follow.output_text
    if gw.upstream is not None:  # the stored turn went upstream with the new one
        last = gw.upstream.calls(word)[-1].body
        roles = [m["role"] for m in last["messages"]]
        assert roles == ["user", "assistant", "tool"]


async def test_responses_streamed_with_a_tool_then_text(gw: Served) -> None:
    client, word = gw.openai(), marker()
    kinds: list[str] = []
    async with client.responses.stream(model="chat", input=f"Weather? {word}",
                                       tools=[tool()]) as stream:
        async for event in stream:
            kinds.append(event.type)
        first = await stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-1] == "response.completed"
    [call] = first.output
    async with client.responses.stream(
            model="chat", previous_response_id=first.id, tools=[tool()],
            input=[{"type": "function_call_output", "call_id": call.call_id,
                    "output": "rain"}]) as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text and word in final.output_text
    assert final.usage is not None and final.usage.output_tokens > 0


async def test_responses_parse_with_a_pydantic_model(gw: Served) -> None:
    parsed = await gw.openai().responses.parse(model="chat", input=f"A person {marker()}",
                                              text_format=Person)
    assert isinstance(parsed.output_parsed, Person)


# ---- the OpenAI Agents SDK, default settings ------------------------------------------------

async def run_agent(client: openai.AsyncOpenAI, word: str) -> Any:
    from agents import (  # imported here: the SDK is slow to import and only these tests use it
        Agent,
        Runner,
        function_tool,
        set_default_openai_client,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)      # nothing may try to export traces to OpenAI
    set_default_openai_client(client, use_for_tracing=False)
    seen: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        seen.append(city)
        return f"sunny in {city}"

    # Only the model is named (the SDK's default names an OpenAI model): transport, API
    # (Responses), tool handling and the run loop are the SDK's defaults.
    agent = Agent(name="forecaster", instructions="Use the tool.", tools=[get_weather],
                  model="chat")
    result = await Runner.run(agent, f"Weather in Oslo? {word}")
    return result, seen


async def test_agents_sdk_runs_an_agent_with_a_tool_to_completion(gw: Served) -> None:
    paths: list[str] = []

    async def record(request: httpx.Request) -> None:
        paths.append(request.url.path)
    client = gw.openai(http_client=httpx.AsyncClient(event_hooks={"request": [record]}))
    word = marker()
    result, seen = await run_agent(client, word)
    assert seen == ["sim-city"]                       # the tool ran, with the model's input
    assert word in result.final_output                # and the model answered after it
    assert paths == ["/v1/responses", "/v1/responses"]  # the SDK's default: Responses


# ---- the Anthropic SDK ----------------------------------------------------------------------

ANTHROPIC_TOOL = {"name": "get_weather", "description": "Weather for a city.",
                  "input_schema": WEATHER}


async def test_anthropic_messages_tool_round_trip(gw: Served) -> None:
    client, word = gw.anthropic(), marker()
    ask = [{"role": "user", "content": f"Weather in Rome? {word}"}]
    first = await client.messages.create(model="chat", max_tokens=200, messages=ask,
                                         tools=[ANTHROPIC_TOOL])
    assert first.stop_reason == "tool_use"
    [use] = first.content
    assert use.type == "tool_use" and use.input == {"city": "sim-city"}
    answer = await client.messages.create(
        model="chat", max_tokens=200, tools=[ANTHROPIC_TOOL], messages=[
            *ask, {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                          "content": "sunny"}]}])
    assert answer.stop_reason == "end_turn" and word in answer.content[0].text
    assert answer.usage.input_tokens > 0 and answer.usage.output_tokens > 0


async def test_anthropic_messages_streamed_tool_round_trip(gw: Served) -> None:
    client, word = gw.anthropic(), marker()
    ask = [{"role": "user", "content": f"Weather in Rome? {word}"}]
    async with client.messages.stream(model="chat", max_tokens=200, messages=ask,
                                      tools=[ANTHROPIC_TOOL]) as stream:
        first = await stream.get_final_message()
    [use] = first.content
    assert first.stop_reason == "tool_use" and use.input == {"city": "sim-city"}
    follow = [*ask, {"role": "assistant", "content": first.content},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                            "content": "sunny"}]}]
    async with client.messages.stream(model="chat", max_tokens=200, messages=follow,
                                      tools=[ANTHROPIC_TOOL]) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert word in text and final.content[0].text == text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


async def test_anthropic_count_tokens(gw: Served) -> None:
    client = gw.anthropic()
    small = await client.messages.count_tokens(
        model="chat", messages=[{"role": "user", "content": "hi"}])
    large = await client.messages.count_tokens(
        model="chat", messages=[{"role": "user", "content": "hi " * 50}],
        tools=[ANTHROPIC_TOOL])
    assert 0 < small.input_tokens < large.input_tokens


# ---- LangChain --------------------------------------------------------------------------------

def langchain(gw: Served, key: str | None = None, **kw: Any) -> Any:
    from langchain_openai import ChatOpenAI

    # A client of this test's own: LangChain caches a default one per base URL, which would
    # outlive this test's event loop.
    return ChatOpenAI(model="chat", base_url=gw.url, api_key=key or gw.key, max_retries=0,
                      http_async_client=httpx.AsyncClient(), **kw)


async def test_langchain_responses_api(gw: Served) -> None:
    word = marker()
    reply = await langchain(gw, use_responses_api=True).ainvoke(f"Hello {word}")
    assert word in reply.text


async def test_structured_output_chat_parse_and_langchain(gw: Served) -> None:
    parsed = await gw.openai().chat.completions.parse(
        model="chat", messages=[{"role": "user", "content": f"A person {marker()}"}],
        response_format=Person)
    assert isinstance(parsed.choices[0].message.parsed, Person)
    person = await langchain(gw).with_structured_output(Person).ainvoke("A person")
    assert isinstance(person, Person)


# ---- per client: confidential data stays on cleared deployments; budgets refuse in shape -----

async def ask_responses(gw: Served, key: str, word: str) -> None:
    await gw.openai(key).responses.create(model="chat", input=f"Hi {word}")


async def ask_responses_streamed(gw: Served, key: str, word: str) -> None:
    async with gw.openai(key).responses.stream(model="chat", input=f"Hi {word}") as stream:
        await stream.get_final_response()


async def ask_responses_parse(gw: Served, key: str, word: str) -> None:
    await gw.openai(key).responses.parse(model="chat", input=f"Hi {word}", text_format=Person)


async def ask_agent(gw: Served, key: str, word: str) -> None:
    await run_agent(gw.openai(key), word)


async def ask_anthropic(gw: Served, key: str, word: str) -> None:
    await gw.anthropic(key).messages.create(
        model="chat", max_tokens=100, messages=[{"role": "user", "content": f"Hi {word}"}])


async def ask_anthropic_streamed(gw: Served, key: str, word: str) -> None:
    async with gw.anthropic(key).messages.stream(
            model="chat", max_tokens=100,
            messages=[{"role": "user", "content": f"Hi {word}"}]) as stream:
        await stream.get_final_message()


async def ask_langchain_responses(gw: Served, key: str, word: str) -> None:
    await langchain(gw, key, use_responses_api=True).ainvoke(f"Hi {word}")


async def ask_chat_parse(gw: Served, key: str, word: str) -> None:
    await gw.openai(key).chat.completions.parse(
        model="chat", messages=[{"role": "user", "content": f"Hi {word}"}],
        response_format=Person)


async def ask_langchain_structured(gw: Served, key: str, word: str) -> None:
    await langchain(gw, key).with_structured_output(Person).ainvoke(f"Hi {word}")


CLIENTS = {
    "responses": ask_responses, "responses-streamed": ask_responses_streamed,
    "responses-parse": ask_responses_parse, "agents-sdk": ask_agent,
    "anthropic": ask_anthropic, "anthropic-streamed": ask_anthropic_streamed,
    "langchain-responses": ask_langchain_responses, "chat-parse": ask_chat_parse,
    "langchain-structured": ask_langchain_structured,
}


@pytest.mark.parametrize("client", CLIENTS)
async def test_confidential_team_reaches_only_cleared_deployments(on_upstream: Served,
                                                                  client: str) -> None:
    assert on_upstream.upstream is not None
    word = marker()
    await CLIENTS[client](on_upstream, VAULT_KEY, word)
    called = on_upstream.upstream.models(word)
    assert called and set(called) == {"sim-dear"}   # the one deployment cleared for it
    other = marker()                                 # while an ordinary team gets the cheapest
    await CLIENTS[client](on_upstream, APP_KEY, other)
    assert set(on_upstream.upstream.models(other)) == {"sim-cheap"}


@pytest.mark.parametrize("client", CLIENTS)
async def test_budget_refusal_in_the_apis_own_error_shape(on_upstream: Served,
                                                          client: str) -> None:
    assert on_upstream.upstream is not None
    word = marker()
    with pytest.raises(Exception) as caught:
        await CLIENTS[client](on_upstream, BROKE_KEY, word)
    if client.startswith("anthropic"):
        err: Any = caught.value
        assert isinstance(err, anthropic.RateLimitError) and err.status_code == 429
        assert err.body["type"] == "error"
        assert err.body["error"]["type"] == "rate_limit_error"
        assert "budget" in err.body["error"]["message"]
    else:
        err = _in_chain(caught.value, openai.RateLimitError)
        assert err.status_code == 429 and err.code == "budget_exceeded"
        assert err.body["type"] == "rate_limit_error" and "budget" in err.body["message"]
    assert on_upstream.upstream.calls(word) == []    # refused before any upstream call


def _in_chain(exc: BaseException, kind: type[openai.APIStatusError]) -> openai.APIStatusError:
    """The SDK's error, where a framework (LangChain, the Agents SDK) wraps it."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, kind):
        seen = seen.__cause__ or seen.__context__
    assert isinstance(seen, kind), repr(exc)
    return seen
