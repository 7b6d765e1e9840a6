"""A caller's rate-limit windows and budget claims are prepared once per key (plugins/prepared.py)
and never outlive what they were made from: a reload, or a key changed in the key store, takes
effect on the very next request. Real HTTP, the openai SDK, the simulator upstream."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.conftest import ADMIN, APP_KEY, GatewayFactory, RunningGateway, Upstream, base_config
from tests.test_admin import admin_call

HI = [{"role": "user", "content": "hi"}]


def limited(url: str, tmp: Path, **key_limits: Any) -> dict[str, Any]:
    config = base_config(url)
    config["keys"][0].update(key_limits)
    config["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    config["cache"] = {"enabled": False}  # every request here must reach the limits
    config["key_store"] = {"path": str(tmp / "keys.sqlite3")}
    config["storage"] = {"path": str(tmp / "podium.sqlite3")}
    return config


async def reload_with(gw: RunningGateway, config: dict[str, Any], tmp: Path) -> None:
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    result = await gw.gateway.reload(path)
    assert result.ok, result.problems


async def ask(gw: RunningGateway, key: str = APP_KEY) -> None:
    await gw.client(key).chat.completions.create(model="chat", messages=HI)


async def test_a_reload_raising_a_keys_rpm_admits_the_next_request(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    config = limited(upstream.url, tmp_path, rpm=2)
    gw = await make_gateway(config)
    for _ in range(2):
        await ask(gw)
    with pytest.raises(openai.RateLimitError):
        await ask(gw)
    config["keys"][0]["rpm"] = 4
    await reload_with(gw, config, tmp_path)
    await ask(gw)  # the third request in the minute: under the new limit
    await ask(gw)
    with pytest.raises(openai.RateLimitError) as info:
        await ask(gw)
    assert info.value.body["code"] == "rate_limit_exceeded"


async def test_a_reload_lowering_a_keys_rpm_refuses_the_next_request(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    config = limited(upstream.url, tmp_path, rpm=5)
    gw = await make_gateway(config)
    for _ in range(2):
        await ask(gw)
    config["keys"][0]["rpm"] = 2
    await reload_with(gw, config, tmp_path)
    with pytest.raises(openai.RateLimitError):
        await ask(gw)


async def test_a_reload_giving_a_key_a_budget_applies_it_at_once(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    config = limited(upstream.url, tmp_path)
    gw = await make_gateway(config)
    await ask(gw)
    config["keys"][0]["budget_usd"] = 0
    await reload_with(gw, config, tmp_path)
    with pytest.raises(openai.RateLimitError) as info:
        await ask(gw)
    assert info.value.body["code"] == "budget_exceeded"


def _set_limits(tmp: Path, key_id: str, limits: str) -> None:
    """Change a stored key's limits as another worker or an operator's tool would."""
    with sqlite3.connect(tmp / "keys.sqlite3") as other:
        other.execute("UPDATE keys SET limits = ? WHERE id = ?", (limits, key_id))


async def test_a_stored_keys_new_limits_apply_to_its_next_request(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = await make_gateway(limited(upstream.url, tmp_path))
    status, created = await admin_call(gw, "POST", "/admin/keys",
                                       json={"name": "app2", "rpm": 1})
    assert status == 201
    await ask(gw, created["key"])
    with pytest.raises(openai.RateLimitError):
        await ask(gw, created["key"])
    _set_limits(tmp_path, created["id"], '{"rpm": 3}')
    await ask(gw, created["key"])  # windows prepared for rpm 1 would refuse it
    _set_limits(tmp_path, created["id"], '{"rpm": 3, "budget_usd": 0.0}')
    with pytest.raises(openai.RateLimitError) as info:
        await ask(gw, created["key"])
    assert info.value.body["code"] == "budget_exceeded"


async def test_keys_created_through_the_admin_api_get_their_own_limits(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = await make_gateway(limited(upstream.url, tmp_path))
    keys = []
    for rpm in (1, 2):
        status, created = await admin_call(gw, "POST", "/admin/keys",
                                           json={"name": f"rpm{rpm}", "rpm": rpm})
        assert status == 201
        keys.append(created["key"])
    for key, admitted in zip(keys, (1, 2), strict=True):
        for _ in range(admitted):
            await ask(gw, key)
        with pytest.raises(openai.RateLimitError):
            await ask(gw, key)
