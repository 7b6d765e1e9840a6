"""Every string that reaches the upstream is scanned for personal data: not only the messages'
text, but `user`, `metadata`, tool and function descriptions, a legacy `function_call`,
refusal parts and `prediction`. Before, an address in any of those went raw to a deployment
not cleared for it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.conftest import APP_KEY, GatewayFactory, Upstream, base_config

EMAIL = "jane.doe@example.com"
HI = {"role": "user", "content": "hello"}

CARRIERS: dict[str, dict[str, Any]] = {
    "user": {"user": EMAIL},
    "metadata": {"metadata": {"customer": f"mail {EMAIL}"}},
    "tool description": {"tools": [{"type": "function", "function": {
        "name": "notify", "description": f"Notify {EMAIL} of the result", "parameters": {}}}]},
    "function description": {"functions": [{
        "name": "notify", "description": f"Writes to {EMAIL}", "parameters": {}}]},
    "legacy function_call": {"messages": [
        HI, {"role": "assistant", "content": None,
             "function_call": {"name": "notify", "arguments": f'{{"to": "{EMAIL}"}}'}},
        {"role": "function", "name": "notify", "content": "sent"}]},
    "refusal part": {"messages": [HI, {"role": "assistant", "content": [
        {"type": "refusal", "refusal": f"I cannot share {EMAIL}"}]}, HI]},
    "prediction": {"prediction": {"type": "content", "content": f"Dear {EMAIL},"}},
}


def _sent(upstream: Upstream) -> str:
    return orjson.dumps([r.body for r in upstream.recorded
                         if r.path.endswith("/chat/completions")]).decode()


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_an_address_in_any_field_is_masked_for_an_uncleared_deployment(
        upstream: Upstream, make_gateway: GatewayFactory, carrier: str) -> None:
    gw = await make_gateway(base_config(upstream.url))  # pseudonymize below confidential
    body = {"model": "chat", "messages": [HI], **CARRIERS[carrier]}
    raw = await gw.client(APP_KEY).chat.completions.with_raw_response.create(**body)
    assert raw.status_code == 200
    sent = _sent(upstream)
    assert sent and EMAIL not in sent
    assert "[EMAIL_1]" in sent


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_an_address_in_any_field_routes_to_a_cleared_deployment(
        upstream: Upstream, make_gateway: GatewayFactory, carrier: str) -> None:
    cfg = base_config(upstream.url)
    cfg["pii"] = {"action": "route"}
    cfg["model_list"][1]["model_info"]["data_clearance"] = "confidential"  # sim-dear
    gw = await make_gateway(cfg)
    body = {"model": "chat", "messages": [HI], **CARRIERS[carrier]}
    raw = await gw.client(APP_KEY).chat.completions.with_raw_response.create(**body)
    assert raw.headers["x-podium-deployment"] == "sim-dear"
