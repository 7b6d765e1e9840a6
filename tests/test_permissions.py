"""Data permissions end to end: which deployments a request may reach, by data class, PII,
region and tool allow-list, checked against what the fake upstream actually received."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import GatewayFactory, RunningGateway, Upstream, deployment

SUPPORT, FINANCE, LEGAL, EU = ("sk-team-support-000000", "sk-team-finance-000000",
                               "sk-team-legal-00000000", "sk-team-eu-000000000000")
EMAIL, PHONE, CARD = "jane.doe@example.com", "+1 415-555-0132", "4111 1111 1111 1111"


def config(url: str, **pii: Any) -> dict[str, Any]:
    return {
        "model_list": [
            deployment("chat", "sim-public", url, input_cost_per_token=1e-8,
                       data_clearance="public", region="us"),
            deployment("chat", "sim-internal", url, input_cost_per_token=1e-7,
                       data_clearance="internal", region="eu"),
            deployment("chat", "sim-conf", url, input_cost_per_token=1e-6,
                       data_clearance="confidential", region="us"),
            deployment("chat-tiny", "sim-public-tinychunks", url, data_clearance="public"),
        ],
        "teams": [
            {"name": "support", "data_class": "public"},
            {"name": "finance", "data_class": "confidential", "tools": ["lookup_invoice"]},
            {"name": "legal", "data_class": "restricted"},
            {"name": "eu-only", "regions": ["eu"]},
        ],
        "keys": [
            {"key": SUPPORT, "name": "support-bot", "team": "support"},
            {"key": FINANCE, "name": "finance-bot", "team": "finance"},
            {"key": LEGAL, "name": "legal-bot", "team": "legal"},
            {"key": EU, "name": "eu-bot", "team": "eu-only"},
        ],
        "pii": pii,
    }


def sent_texts(upstream: Upstream) -> str:
    return json.dumps([r.body for r in upstream.recorded if isinstance(r.body, dict)])


async def answer(gw: RunningGateway, key: str, content: str, **kw: Any) -> Any:
    return await gw.client(key).chat.completions.with_raw_response.create(
        model=kw.pop("model", "chat"), messages=[{"role": "user", "content": content}], **kw)


async def test_declared_confidential_only_reaches_cleared_deployments(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url))
    raw = await answer(gw, SUPPORT, "quarterly numbers",
                       extra_headers={"x-podium-data-class": "confidential"})
    assert raw.headers["x-podium-deployment"] == "sim-conf"
    assert upstream.models_called() == ["sim-conf"]
    public = await answer(gw, SUPPORT, "hello")
    assert public.headers["x-podium-deployment"] == "sim-public"


async def test_team_default_class_applies(upstream: Upstream,
                                          make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url))
    raw = await answer(gw, FINANCE, "hello", extra_headers={"x-podium-data-class": "public"})
    # A declaration can raise the class, never lower the team's default.
    assert raw.headers["x-podium-deployment"] == "sim-conf"


async def test_pii_in_route_mode_raises_the_class(upstream: Upstream,
                                                  make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url, action="route"))
    raw = await answer(gw, SUPPORT, f"write to {EMAIL} please")
    assert raw.headers["x-podium-deployment"] == "sim-conf"
    assert (await answer(gw, SUPPORT, "no personal data")).headers[
        "x-podium-deployment"] == "sim-public"
    [perm] = [s for s in gw.spans.get_finished_spans()
              if s.name == "POST /v1/chat/completions"][:1]
    assert perm.attributes["podium.data_class"] == "confidential"
    assert perm.attributes["podium.pii.email"] == 1
    dump = json.dumps([s.to_json() for s in gw.spans.get_finished_spans()])
    assert EMAIL not in dump


async def test_restricted_with_no_cleared_deployment_is_403_and_sends_nothing(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url))
    with pytest.raises(openai.PermissionDeniedError) as info:
        await answer(gw, LEGAL, "contract draft")
    assert info.value.body["code"] == "no_cleared_deployment"
    assert "restricted" in info.value.body["message"]
    assert list(upstream.recorded) == []
    # The refusal is on record with the class that caused it, though no route was found.
    audit = gw.gateway.governance.audit
    assert audit is not None
    [record] = await audit.query({})
    assert (record["status"], record["data_class"], record["route"]) == (403, "restricted", None)


async def test_pii_block_mode_names_kinds_not_values(upstream: Upstream,
                                                     make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url, action="block"))
    with pytest.raises(openai.BadRequestError) as info:
        await answer(gw, SUPPORT, f"card {CARD} and mail {EMAIL}")
    message = info.value.body["message"]
    assert "card" in message and "email" in message
    assert CARD not in message and EMAIL not in message
    assert list(upstream.recorded) == []


async def test_pseudonymized_upstream_never_sees_raw_values(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url))
    text = f"mail {EMAIL}, call {PHONE}, card {CARD}"
    raw = await answer(gw, SUPPORT, text)
    assert raw.headers["x-podium-deployment"] == "sim-public"
    sent = sent_texts(upstream)
    for value in (EMAIL, PHONE, CARD):
        assert value not in sent
    assert "[EMAIL_1]" in sent and "[PHONE_1]" in sent and "[CARD_1]" in sent
    # The simulator echoes the prompt; the client gets the originals back.
    assert raw.parse().choices[0].message.content == f"Simulated answer from sim-public: {text}"


async def test_cleared_deployment_gets_the_raw_text(upstream: Upstream,
                                                    make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url))
    await answer(gw, FINANCE, f"mail {EMAIL}")
    assert EMAIL in sent_texts(upstream)


@pytest.mark.parametrize("model", ["chat", "chat-tiny"])
async def test_pseudonymized_stream_restores_values_split_across_chunks(
        upstream: Upstream, make_gateway: GatewayFactory, model: str) -> None:
    gw = await make_gateway(config(upstream.url))
    text = f"mail {EMAIL} or {PHONE}"
    stream = await gw.client(SUPPORT).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], stream=True)
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces).endswith(f": {text}")
    assert EMAIL not in sent_texts(upstream)
    if model == "chat-tiny":
        assert "[EMAIL_1]" not in "".join(pieces)
        assert len(pieces) > 10, "the simulator really split the answer into tiny chunks"


async def test_tool_allow_list(upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url))
    tool = {"type": "function", "function": {"name": "delete_everything"}}
    with pytest.raises(openai.PermissionDeniedError) as info:
        await answer(gw, FINANCE, "hi", tools=[tool])
    assert info.value.body["code"] == "tool_not_allowed"
    assert "delete_everything" in info.value.body["message"]
    assert list(upstream.recorded) == []
    allowed = {"type": "function", "function": {"name": "lookup_invoice"}}
    raw = await answer(gw, FINANCE, "hi", tools=[allowed])
    assert raw.parse().choices[0].message.tool_calls[0].function.name == "lookup_invoice"


async def test_team_regions_and_explain_show_why(upstream: Upstream,
                                                 make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url))
    raw = await answer(gw, EU, "hello")
    assert raw.headers["x-podium-deployment"] == "sim-internal"
    async with aiohttp.ClientSession() as session, session.post(
            gw.url + "/route/explain", headers={"Authorization": f"Bearer {SUPPORT}",
                                                "x-podium-data-class": "internal"},
            json={"model": "chat", "messages": [{"role": "user", "content": "x"}]}) as resp:
        decision = await resp.json()
    [public] = [c for c in decision["candidates"] if c["deployment"] == "sim-public"]
    assert public["reason"] == "cleared for public, request is internal"
    assert decision["data_class"] == "internal"
    async with aiohttp.ClientSession() as session, session.post(
            gw.url + "/route/explain", headers={"Authorization": f"Bearer {EU}"},
            json={"model": "chat", "messages": [{"role": "user", "content": "x"}]}) as resp:
        decision = await resp.json()
    [conf] = [c for c in decision["candidates"] if c["deployment"] == "sim-conf"]
    assert conf["reason"] == "region us not in allowed ['eu']"


async def test_invalid_data_class_header_is_400(upstream: Upstream,
                                                make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url))
    with pytest.raises(openai.BadRequestError) as info:
        await answer(gw, SUPPORT, "hi", extra_headers={"x-podium-data-class": "secret"})
    assert info.value.body["param"] == "x-podium-data-class"
