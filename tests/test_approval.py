"""Human approval: pending → approve → fetch; reject; a restart while pending."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import ADMIN, LIMITED_KEY, GatewayFactory, RunningGateway, Upstream, base_config


def config(url: str, tmp: Path) -> dict[str, Any]:
    cfg = base_config(url)
    cfg["admin_keys"] = [{"key": ADMIN, "name": "reviewer-ann"}]
    cfg["storage"] = {"path": str(tmp / "podium.sqlite3")}
    cfg["approvals"] = [{"name": "refunds", "match": {"last_user_message": "(?i)refund"}}]
    return cfg


async def call(gw: RunningGateway, method: str, path: str, key: str = ADMIN,
               json: Any = None) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as session, session.request(
            method, gw.url.removesuffix("/v1") + path, json=json,
            headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, await resp.json(), resp.headers.copy()


async def held(gw: RunningGateway, content: str = "Refund order 7, please") -> str:
    with pytest.raises(openai.PermissionDeniedError) as info:
        await gw.client().chat.completions.create(
            model="chat", messages=[{"role": "user", "content": content}])
    body = info.value.body
    assert body["code"] == "review_pending"
    assert info.value.response.headers["x-podium-review-id"] == body["review_id"]
    return body["review_id"]


async def outcome(gw: RunningGateway, review_id: str, key: str | None = None) -> Any:
    from tests.conftest import APP_KEY

    return await call(gw, "GET", f"/v1/reviews/{review_id}", key=key or APP_KEY)


async def test_pending_then_approved_then_fetched(upstream: Upstream, tmp_path: Path,
                                                  make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url, tmp_path))
    review_id = await held(gw)
    assert upstream.models_called() == ["sim-cheap"], "the model is called; the answer held"
    status, body, _ = await outcome(gw, review_id)
    assert status == 403 and body["error"]["code"] == "review_pending"
    status, pending, _ = await call(gw, "GET", "/admin/reviews")
    [item] = pending["data"]
    assert item["id"] == review_id and item["rule"] == "refunds"
    assert item["messages"][0]["content"] == "Refund order 7, please"
    assert item["answer"]["choices"][0]["message"]["content"].endswith("Refund order 7, please")
    status, decided, _ = await call(gw, "POST", f"/admin/reviews/{review_id}/approve",
                                    json={"comment": "ok to send"})
    assert status == 200 and decided["status"] == "approved"
    assert decided["reviewer"] == "reviewer-ann"
    status, completion, _ = await outcome(gw, review_id)
    assert status == 200
    assert completion["choices"][0]["message"]["content"].endswith("Refund order 7, please")
    # Not for other callers, and not decidable twice.
    status, _, _ = await outcome(gw, review_id, key=LIMITED_KEY)
    assert status == 404
    status, again, _ = await call(gw, "POST", f"/admin/reviews/{review_id}/reject")
    assert status == 400 and again["error"]["code"] == "review_already_decided"
    status, audit, _ = await call(gw, "GET", "/admin/audit")
    events = [(r.get("event"), r.get("reviewer")) for r in audit["data"]]
    assert ("review.approved", "reviewer-ann") in events
    held_record = next(r for r in audit["data"] if r.get("review_id") == review_id
                       and r.get("status") == 403)
    assert held_record["error_code"] == "review_pending"


async def test_rejected_answer_is_never_released(upstream: Upstream, tmp_path: Path,
                                                 make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url, tmp_path))
    review_id = await held(gw)
    status, _, _ = await call(gw, "POST", f"/admin/reviews/{review_id}/reject",
                              json={"comment": "policy"})
    assert status == 200
    status, body, _ = await outcome(gw, review_id)
    assert status == 403 and body["error"]["code"] == "review_rejected"
    assert "policy" in body["error"]["message"]
    assert "choices" not in body


async def test_streamed_requests_are_held_too(upstream: Upstream, tmp_path: Path,
                                              make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url, tmp_path))
    with pytest.raises(openai.PermissionDeniedError) as info:
        await gw.client().chat.completions.create(
            model="chat", stream=True, messages=[{"role": "user", "content": "refund?"}])
    assert info.value.body["code"] == "review_pending"


async def test_pending_reviews_survive_a_restart(upstream: Upstream, tmp_path: Path,
                                                 make_gateway: GatewayFactory) -> None:
    cfg = config(upstream.url, tmp_path)
    first = await make_gateway(cfg)
    review_id = await held(first)
    await first.server.close()
    second = await make_gateway(cfg)
    status, body, _ = await outcome(second, review_id)
    assert body["error"]["code"] == "review_pending"
    await call(second, "POST", f"/admin/reviews/{review_id}/approve")
    status, completion, _ = await outcome(second, review_id)
    assert status == 200 and completion["object"] == "chat.completion"


async def test_only_admins_review(upstream: Upstream, tmp_path: Path,
                                  make_gateway: GatewayFactory) -> None:
    from tests.conftest import APP_KEY

    gw = await make_gateway(config(upstream.url, tmp_path))
    review_id = await held(gw)
    status, _, _ = await call(gw, "POST", f"/admin/reviews/{review_id}/approve", key=APP_KEY)
    assert status == 403
    status, body, _ = await outcome(gw, review_id)
    assert body["error"]["code"] == "review_pending"
