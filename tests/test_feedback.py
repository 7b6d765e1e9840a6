"""Feedback: stored with the audit trail, linked to the original trace, counted per deployment
and rule; only from the key that made the request."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import ADMIN, APP_KEY, LIMITED_KEY, GatewayFactory, Upstream, base_config
from tests.support.metrics import scrape, total


async def post(url: str, body: Any, key: str = APP_KEY) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            url, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, await resp.json()


async def test_feedback_is_stored_linked_and_counted(upstream: Upstream,
                                                     make_gateway: GatewayFactory) -> None:
    cfg = base_config(upstream.url)
    cfg["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    gw = await make_gateway(cfg)
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "rate me"}])
    request_id = raw.headers["x-request-id"]
    status, body = await post(gw.url + "/feedback", {"request_id": request_id, "score": 0.25,
                                                     "comment": "too vague"})
    assert status == 201
    assert body == {"object": "feedback", "request_id": request_id, "score": 0.25,
                    "deployment": "sim-cheap", "route": "default"}
    async with aiohttp.ClientSession() as session, session.get(
            gw.url.removesuffix("/v1") + "/admin/audit?event=feedback",
            headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        [stored] = (await resp.json())["data"]
    assert stored["request_id"] == request_id and stored["comment"] == "too vague"
    assert stored["score"] == 0.25 and stored["deployment"] == "sim-cheap"
    spans = gw.spans.get_finished_spans()
    [root] = [s for s in spans if s.name == "POST /v1/chat/completions"]
    [fb] = [s for s in spans if s.name == "podium.feedback"]
    assert fb.links[0].context.trace_id == root.context.trace_id
    assert fb.links[0].context.span_id == root.context.span_id
    assert fb.events[0].attributes["score"] == 0.25
    samples = await scrape(gw.url)
    assert total(samples, "podium_feedback_score_count", deployment="sim-cheap") == 1
    assert total(samples, "podium_feedback_score_sum", route="default") == 0.25
    # By trace id too.
    trace_id = format(root.context.trace_id, "032x")
    status, _ = await post(gw.url + "/feedback", {"trace_id": trace_id, "score": 1.0})
    assert status == 201


@pytest.mark.parametrize(("body", "key", "status"), [
    ({"request_id": "req_unknown", "score": 1}, APP_KEY, 404),
    ({"score": 1}, APP_KEY, 400),
    ({"request_id": "x", "score": 7}, APP_KEY, 400),
])
async def test_bad_feedback(upstream: Upstream, make_gateway: GatewayFactory,
                            body: dict[str, Any], key: str, status: int) -> None:
    gw = await make_gateway(base_config(upstream.url))
    got, err = await post(gw.url + "/feedback", body, key)
    assert got == status and set(err["error"]) == {"message", "type", "param", "code"}


async def test_only_the_same_key_can_rate(upstream: Upstream,
                                          make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(base_config(upstream.url))
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "mine"}])
    status, _ = await post(gw.url + "/feedback", {"request_id": raw.headers["x-request-id"],
                                                  "score": 0}, key=LIMITED_KEY)
    assert status == 404
