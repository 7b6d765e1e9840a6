"""The admin API for keys: create → use → revoke → 401; only admin keys may call it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.pipeline.identity import digest_of
from gateway.storage.keystore import KeyStore
from plugins.settings import Limits
from tests.conftest import ADMIN, APP_KEY, GatewayFactory, RunningGateway, Upstream, base_config


async def admin_call(gw: RunningGateway, method: str, path: str, key: str | None = ADMIN,
                     json: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    base = gw.url.removesuffix("/v1")
    async with aiohttp.ClientSession() as session, session.request(
            method, base + path, json=json, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def admin_gw(upstream: Upstream, make_gateway: GatewayFactory,
                   tmp_path: Path) -> RunningGateway:
    config = base_config(upstream.url)
    config["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    config["key_store"] = {"path": str(tmp_path / "keys.sqlite3")}
    return await make_gateway(config)


async def test_create_use_revoke(admin_gw: RunningGateway, upstream: Upstream) -> None:
    status, created = await admin_call(admin_gw, "POST", "/admin/keys",
                                       json={"name": "new-app", "team": "support",
                                             "models": ["chat"]})
    assert status == 201
    raw_key = created["key"]
    assert raw_key.startswith("sk-podium-")
    client = admin_gw.client(raw_key)
    answer = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content.startswith("Simulated answer")
    with pytest.raises(openai.PermissionDeniedError):
        await client.chat.completions.create(
            model="premium", messages=[{"role": "user", "content": "hi"}])
    status, listed = await admin_call(admin_gw, "GET", "/admin/keys")
    assert status == 200
    [entry] = listed["data"]
    assert entry["id"] == created["id"] and entry["name"] == "new-app"
    assert "key" not in entry and raw_key not in str(listed)
    status, _ = await admin_call(admin_gw, "DELETE", f"/admin/keys/{created['id']}")
    assert status == 200
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}])
    status, again = await admin_call(admin_gw, "DELETE", f"/admin/keys/{created['id']}")
    assert status == 404 and again["error"]["type"] == "invalid_request_error"


async def test_only_the_digest_is_stored(admin_gw: RunningGateway, tmp_path: Path) -> None:
    _, created = await admin_call(admin_gw, "POST", "/admin/keys", json={"name": "x"})
    assert created["key"].encode() not in (tmp_path / "keys.sqlite3").read_bytes()


async def test_revocation_by_another_process_is_seen(admin_gw: RunningGateway,
                                                     tmp_path: Path) -> None:
    import sqlite3

    _, created = await admin_call(admin_gw, "POST", "/admin/keys", json={"name": "x"})
    client = admin_gw.client(created["key"])
    await client.models.list()
    with sqlite3.connect(tmp_path / "keys.sqlite3") as other:  # e.g. another worker
        other.execute("UPDATE keys SET revoked_at = 1 WHERE id = ?", (created["id"],))
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("sk-nobody-123", 401),
                                             (APP_KEY, 403)])
async def test_non_admins_are_rejected(admin_gw: RunningGateway, key: str | None,
                                       status: int) -> None:
    for method, path, body in (("GET", "/admin/keys", None),
                               ("POST", "/admin/keys", {"name": "evil"}),
                               ("DELETE", "/admin/keys/key_123", None)):
        got, err = await admin_call(admin_gw, method, path, key=key, json=body)
        assert got == status
        assert set(err["error"]) == {"message", "type", "param", "code"}
    _, listed = await admin_call(admin_gw, "GET", "/admin/keys")
    assert listed["data"] == []


async def test_bad_key_requests_are_400(admin_gw: RunningGateway) -> None:
    for body, param in (({"team": "support"}, "name"), ({"name": "x", "models": ["nope"]},
                                                        "models"),
                        ({"name": "x", "colour": "red"}, "colour")):
        status, err = await admin_call(admin_gw, "POST", "/admin/keys", json=body)
        assert status == 400 and err["error"]["param"] == param


async def test_a_created_key_carries_its_own_limits(admin_gw: RunningGateway,
                                                    upstream: Upstream) -> None:
    status, created = await admin_call(admin_gw, "POST", "/admin/keys",
                                       json={"name": "limited", "rpm": 2})
    assert status == 201 and created["rpm"] == 2 and created["budget_usd"] is None
    client = admin_gw.client(created["key"])
    hi = [{"role": "user", "content": "hi"}]
    for n in range(2):  # different prompts: each one reaches the upstream, none the cache
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": f"hi {n}"}])
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="chat", messages=hi)
    assert info.value.body["code"] == "rate_limit_exceeded"
    assert f"key:{created['id']}" in info.value.body["message"]
    assert len(upstream.models_called()) == 2
    # Another key is not held back by this one's limit.
    await admin_gw.client().chat.completions.create(model="chat", messages=hi)

    status, broke = await admin_call(admin_gw, "POST", "/admin/keys",
                                     json={"name": "broke", "budget_usd": 0,
                                           "budget_period": "day"})
    assert status == 201 and (broke["budget_usd"], broke["budget_period"]) == (0, "day")
    with pytest.raises(openai.RateLimitError) as info:
        await admin_gw.client(broke["key"]).chat.completions.create(model="chat", messages=hi)
    assert info.value.body["code"] == "budget_exceeded"
    assert len(upstream.models_called()) == 3
    _, listed = await admin_call(admin_gw, "GET", "/admin/keys")
    assert [(k["name"], k["rpm"], k["budget_usd"]) for k in listed["data"]] == [
        ("limited", 2, None), ("broke", None, 0)]


@pytest.mark.parametrize("body", [{"name": "x", "rpm": 0}, {"name": "x", "tpm": -5},
                                  {"name": "x", "budget_usd": -1},
                                  {"name": "x", "budget_usd": 1, "budget_period": "week"},
                                  {"name": "x", "rpm": "10"}])
async def test_bad_limits_are_400(admin_gw: RunningGateway, body: dict[str, Any]) -> None:
    status, err = await admin_call(admin_gw, "POST", "/admin/keys", json=body)
    assert status == 400 and err["error"]["param"] in body


async def test_a_key_store_from_before_limits_is_upgraded(tmp_path: Path) -> None:
    """A store written before keys had limits opens, keeps its keys, and takes new ones."""
    path = tmp_path / "keys.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE keys (id TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE, "
               "name TEXT NOT NULL, team TEXT, user TEXT, models TEXT, "
               "created_at REAL NOT NULL, revoked_at REAL)")
    db.execute("INSERT INTO keys VALUES ('key_old', ?, 'old', NULL, NULL, NULL, 1.0, NULL)",
               (digest_of("sk-podium-old"),))
    db.commit()
    db.close()
    store = KeyStore(str(path))
    await store.start()
    try:
        old = await store.find(digest_of("sk-podium-old"))
        assert old is not None and old.name == "old" and old.limits is None
        new, raw = await store.create("new", None, None, None,
                                      Limits(tpm=1000))
        assert (await store.find(digest_of(raw))) == new and new.limits == Limits(tpm=1000)
    finally:
        await store.close()
