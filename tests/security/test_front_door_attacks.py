"""Attacks on the Responses and Messages front doors.

- Another key reads, continues or deletes a stored response: it does not exist for them (404,
  or 400 `previous_response_not_found`), exactly as an id that never existed, and nothing of
  it reaches a model.
- Confidential data through any front door, streamed or not, reaches only deployments cleared
  for it; with none cleared it is refused in the API's own shape and sent nowhere.
- Personal data in stored conversation state is scanned again with every follow-up, so a
  deployment that may not see it never gets it from history (masked, or routed away), and the
  pass-through to a deployment that speaks Responses is never used to dodge the masking.
- Connection settings in a Responses or Messages body are refused, as in a chat body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import (
    APP_KEY,
    LIMITED_KEY,
    GatewayFactory,
    RunningGateway,
    Upstream,
    deployment,
)

EMAIL = "jane.doe@example.com"
PUBLIC, VAULT, SECRET = "sk-team-public-0000000", "sk-team-vault-00000000", "sk-team-top-000000000"


def config(url: str, *, speaks: bool = False, **pii: Any) -> dict[str, Any]:
    public = deployment("chat", "sim-public", url, input_cost_per_token=1e-8,
                        data_clearance="public")
    if speaks:  # this deployment speaks the Responses API itself
        public["model_info"]["supports"] = ["tools", "json_schema", "streaming", "responses"]
    return {
        "model_list": [public, deployment("chat", "sim-conf", url, input_cost_per_token=1e-6,
                                          data_clearance="confidential")],
        "teams": [{"name": "open"}, {"name": "vault", "data_class": "confidential"},
                  {"name": "top", "data_class": "restricted"}],
        "keys": [{"key": PUBLIC, "name": "public", "team": "open"},
                 {"key": VAULT, "name": "vault", "team": "vault"},
                 {"key": SECRET, "name": "top", "team": "top"},
                 {"key": APP_KEY, "name": "app", "team": "open"},
                 {"key": LIMITED_KEY, "name": "limited", "team": "open"}],
        "pii": pii,
    }


def sent(upstream: Upstream) -> str:
    return json.dumps([r.body for r in upstream.recorded])


def anthropic_client(gw: RunningGateway, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url.removesuffix("/v1"), api_key=key,
                                    max_retries=0)


# ---- stored responses belong to their key ---------------------------------------------------

async def test_another_key_cannot_read_continue_or_delete_a_response(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url))
    owner, thief = gw.client(APP_KEY), gw.client(LIMITED_KEY)   # same team, other key
    made = await owner.responses.create(model="chat", input="the owner's secret plan")
    calls = len(upstream.recorded)
    bodies = []
    for response_id in (made.id, "resp_" + "0" * 48):        # theirs, and one that never was
        for attempt in (thief.responses.retrieve, thief.responses.delete):
            with pytest.raises(openai.NotFoundError) as err:
                await attempt(response_id)
            bodies.append({**err.value.body, "message": None})
        with pytest.raises(openai.BadRequestError) as follow:
            await thief.responses.create(model="chat", input="go on",
                                         previous_response_id=response_id)
        assert follow.value.code == "previous_response_not_found"
    assert all(body == bodies[0] for body in bodies)    # no answer tells the two apart
    assert len(upstream.recorded) == calls              # nothing of it reached a model
    assert (await owner.responses.retrieve(made.id)).output_text == made.output_text


# ---- confidential data, whatever the front door ---------------------------------------------

Ask = Callable[[RunningGateway, str, str], Awaitable[Any]]


async def ask_chat(gw: RunningGateway, key: str, text: str) -> Any:
    return await gw.client(key).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": text}])


async def ask_responses(gw: RunningGateway, key: str, text: str) -> Any:
    return await gw.client(key).responses.create(model="chat", input=text)


async def ask_responses_streamed(gw: RunningGateway, key: str, text: str) -> Any:
    async with gw.client(key).responses.stream(model="chat", input=text) as stream:
        return await stream.get_final_response()


async def ask_messages(gw: RunningGateway, key: str, text: str) -> Any:
    return await anthropic_client(gw, key).messages.create(
        model="chat", max_tokens=200, messages=[{"role": "user", "content": text}])


async def ask_messages_streamed(gw: RunningGateway, key: str, text: str) -> Any:
    async with anthropic_client(gw, key).messages.stream(
            model="chat", max_tokens=200,
            messages=[{"role": "user", "content": text}]) as stream:
        return await stream.get_final_message()


DOORS: dict[str, Ask] = {
    "chat": ask_chat, "responses": ask_responses, "responses-streamed": ask_responses_streamed,
    "messages": ask_messages, "messages-streamed": ask_messages_streamed,
}


@pytest.mark.parametrize("door", DOORS)
async def test_confidential_reaches_only_cleared_deployments(
        upstream: Upstream, make_gateway: GatewayFactory, door: str) -> None:
    gw = await make_gateway(config(upstream.url, speaks=True))
    await DOORS[door](gw, VAULT, "the merger terms")
    # sim-public is cheaper and speaks Responses; neither makes it eligible.
    assert [(r.path, r.body["model"]) for r in upstream.recorded] == [
        ("/v1/chat/completions", "sim-conf")]


@pytest.mark.parametrize("door", DOORS)
async def test_nothing_cleared_is_refused_in_the_apis_shape(
        upstream: Upstream, make_gateway: GatewayFactory, door: str) -> None:
    gw = await make_gateway(config(upstream.url))
    with pytest.raises((openai.PermissionDeniedError, anthropic.PermissionDeniedError)) as err:
        await DOORS[door](gw, SECRET, "the launch codes")
    body: Any = err.value.body
    if door.startswith("messages"):
        assert body["type"] == "error" and body["error"]["type"] == "permission_error"
        assert "restricted" in body["error"]["message"]
    else:
        assert body["code"] == "no_cleared_deployment"
    assert list(upstream.recorded) == []


# ---- personal data in stored conversation state ---------------------------------------------

@pytest.mark.parametrize("speaks", [False, True])
async def test_stored_history_is_masked_again_for_an_uncleared_deployment(
        upstream: Upstream, make_gateway: GatewayFactory, speaks: bool) -> None:
    gw = await make_gateway(config(upstream.url, speaks=speaks))
    client = gw.client(PUBLIC)
    first = await client.responses.create(model="chat", input=f"Write to {EMAIL} please")
    assert EMAIL in first.output_text                  # the client sees its own data back
    follow = await client.responses.create(model="chat", previous_response_id=first.id,
                                           input="And then what?")
    async with client.responses.stream(model="chat", previous_response_id=follow.id,
                                       input="Stream the rest") as stream:
        await stream.get_final_response()
    assert {r.body["model"] for r in upstream.recorded} == {"sim-public"}
    assert EMAIL not in sent(upstream) and "[EMAIL_1]" in sent(upstream)
    # Masking works on the chat translation: the pass-through was not taken for it.
    assert {r.path for r in upstream.recorded} == {"/v1/chat/completions"}
    stored = await client.responses.retrieve(follow.id)   # kept as the client received it
    assert stored.output_text == follow.output_text


async def test_stored_history_routes_a_follow_up_to_a_cleared_deployment(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url, action="route"))
    client = gw.client(PUBLIC)
    first = await client.responses.create(model="chat", input=f"Write to {EMAIL} please")
    await client.responses.create(model="chat", previous_response_id=first.id,
                                  input="Nothing personal here")
    # The follow-up carries no personal data of its own; its history does.
    assert [r.body["model"] for r in upstream.recorded] == ["sim-conf", "sim-conf"]


# ---- connection settings in a body ----------------------------------------------------------

async def test_connection_settings_in_a_body_are_refused(upstream: Upstream,
                                                         make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url, speaks=True))
    with pytest.raises(openai.BadRequestError) as responses_err:
        await gw.client(PUBLIC).responses.create(
            model="chat", input="hi", extra_body={"api_base": "http://127.0.0.1:9/v1"})
    assert responses_err.value.code == "forbidden_parameter"
    with pytest.raises(anthropic.BadRequestError) as messages_err:
        await anthropic_client(gw, PUBLIC).messages.create(
            model="chat", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
            extra_body={"api_key": "sk-attacker"})
    assert "api_key" in messages_err.value.body["error"]["message"]  # type: ignore[index]
    assert list(upstream.recorded) == []


# ---- money: an open-ended answer is bounded under a budget, whatever the API ----------------

@pytest.mark.parametrize("speaks", [False, True])
async def test_an_open_ended_response_is_capped_under_a_budget(
        upstream: Upstream, make_gateway: GatewayFactory, speaks: bool) -> None:
    """Without `max_output_tokens` a Responses request under a budget gets the cap a chat
    request gets, in whichever form its deployment reads."""
    cfg = config(upstream.url, speaks=speaks)
    cfg["keys"][0]["budget_usd"] = 0.05
    gw = await make_gateway(cfg)
    await gw.client(PUBLIC).responses.create(model="chat", input="Tell me everything")
    [call] = upstream.recorded
    field = "max_output_tokens" if speaks else "max_tokens"
    assert call.path == ("/v1/responses" if speaks else "/v1/chat/completions")
    assert isinstance(call.body[field], int) and 0 < call.body[field] <= 4096
