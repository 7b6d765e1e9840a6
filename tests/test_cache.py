"""The response cache: hits, scoping across tenants and clearances, request controls, streams,
TTL and size bounds, with the upstream's log as the witness."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.storage.memory_state import MemoryCache
from tests.conftest import (
    ADMIN,
    APP_KEY,
    LIMITED_KEY,
    GatewayFactory,
    RunningGateway,
    Upstream,
    base_config,
)

OTHER_TEAM = "sk-test-other-team-0123"
Q = [{"role": "user", "content": "what is the capital of France?"}]


def config(url: str, **cache: Any) -> dict[str, Any]:
    cfg = base_config(url)
    cfg["keys"].append({"key": OTHER_TEAM, "name": "other", "team": "billing"})
    cfg["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    for entry in cfg["model_list"]:
        entry["model_info"]["data_clearance"] = "confidential"
    if cache:
        cfg["cache"] = cache
    return cfg


async def ask(gw: RunningGateway, key: str = APP_KEY, **kw: Any) -> Any:
    kw.setdefault("messages", Q)
    kw.setdefault("temperature", 0)  # deterministic: only such requests are cached by default
    return await gw.client(key).chat.completions.with_raw_response.create(
        model=kw.pop("model", "chat"), **kw)


@pytest.fixture
async def cached(upstream: Upstream, make_gateway: GatewayFactory) -> RunningGateway:
    return await make_gateway(config(upstream.url))


async def test_repeat_request_is_a_hit(cached: RunningGateway, upstream: Upstream) -> None:
    first = await ask(cached)
    second = await ask(cached)
    assert first.headers["x-podium-cache"] == "miss"
    assert second.headers["x-podium-cache"] == "hit"
    assert float(second.headers["x-podium-cost-usd"]) == 0.0
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert len(upstream.models_called()) == 1
    # Field order in the JSON does not matter; a different question does.
    assert (await ask(cached, seed=7)).headers["x-podium-cache"] == "miss"
    assert (await ask(cached, messages=[{"content": Q[0]["content"], "role": "user"}])
            ).headers["x-podium-cache"] == "hit"


async def test_no_answer_crosses_a_tenant_or_a_clearance(cached: RunningGateway,
                                                         upstream: Upstream) -> None:
    await ask(cached)
    assert (await ask(cached, key=OTHER_TEAM)).headers["x-podium-cache"] == "miss"
    raised = await ask(cached, extra_headers={"x-podium-data-class": "internal"})
    assert raised.headers["x-podium-cache"] == "miss"
    # A narrower allow-list routes `auto` over fewer deployments: another chain, another key.
    await ask(cached, model="auto")
    assert (await ask(cached, key=LIMITED_KEY, model="auto")).headers["x-podium-cache"] == "miss"
    assert len(upstream.models_called()) == 5


async def test_cache_control_and_ttl_headers(cached: RunningGateway,
                                             upstream: Upstream) -> None:
    assert (await ask(cached, extra_headers={"Cache-Control": "no-store"})
            ).headers["x-podium-cache"] == "miss"
    assert (await ask(cached)).headers["x-podium-cache"] == "miss", "no-store stored nothing"
    assert (await ask(cached, extra_headers={"Cache-Control": "no-cache"})
            ).headers["x-podium-cache"] == "miss"
    assert (await ask(cached)).headers["x-podium-cache"] == "hit"
    assert len(upstream.models_called()) == 3
    short = [{"role": "user", "content": "short-lived"}]
    await ask(cached, messages=short, extra_headers={"x-podium-cache-ttl": "0.3"})
    assert (await ask(cached, messages=short)).headers["x-podium-cache"] == "hit"
    await asyncio.sleep(0.4)  # let the 0.3 s TTL run out (waiting on time itself)
    assert (await ask(cached, messages=short)).headers["x-podium-cache"] == "miss"


async def test_nondeterministic_requests_bypass_unless_a_rule_allows(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url))
    hot = await ask(gw, temperature=0.8)
    assert hot.headers["x-podium-cache"] == "bypass"
    cfg = config(upstream.url)
    cfg["routing"] = {"default": {"cache_any_temperature": True, "cache_ttl_s": 60}}
    allowed = await make_gateway(cfg)
    await ask(allowed, temperature=0.8)
    assert (await ask(allowed, temperature=0.8)).headers["x-podium-cache"] == "hit"


async def test_stream_is_served_from_cache_and_stored_from_a_stream(
        cached: RunningGateway, upstream: Upstream) -> None:
    async def streamed(**kw: Any) -> tuple[str, str, Any]:
        raw = await cached.client().chat.completions.with_raw_response.create(
            model="chat", messages=Q, stream=True, **{"temperature": 0, **kw})
        text, usage = "", None
        async for chunk in raw.parse():
            usage = chunk.usage or usage
            text += "".join(c.delta.content or "" for c in chunk.choices)
        return raw.headers["x-podium-cache"], text, usage

    state, text, _ = await streamed()
    assert state == "miss"
    state, again, usage = await streamed(stream_options={"include_usage": True})
    assert state == "hit" and again == text and usage is not None
    plain = await ask(cached)
    assert plain.headers["x-podium-cache"] == "hit"
    assert plain.parse().choices[0].message.content == text
    assert len(upstream.models_called()) == 1


async def test_byte_bound_evicts(upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url, max_bytes=1200))
    questions = [[{"role": "user", "content": f"question number {i}"}] for i in range(4)]
    for q in questions:
        await ask(gw, messages=q)
    cache = gw.gateway.state.cache
    assert isinstance(cache, MemoryCache) and cache.bytes_used <= 1200
    assert (await ask(gw, messages=questions[-1])).headers["x-podium-cache"] == "hit"
    assert (await ask(gw, messages=questions[0])).headers["x-podium-cache"] == "miss"


async def test_entry_bound_evicts() -> None:
    cache = MemoryCache(max_entries=2, max_bytes=10_000)
    for i in range(3):
        await cache.set(f"k{i}", b"x" * 10, ttl_s=60)
    assert len(cache) == 2
    assert await cache.get("k0") is None and await cache.get("k2") == b"x" * 10


async def test_hits_are_audited_and_cost_nothing(upstream: Upstream, tmp_path: Path,
                                                 make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url))
    await ask(gw)
    await ask(gw)
    async with aiohttp.ClientSession() as session, session.get(
            gw.url.removesuffix("/v1") + "/admin/audit",
            headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        records = (await resp.json())["data"]
    hit, miss = records
    assert (hit["cache"], miss["cache"]) == ("hit", "miss")
    assert hit["cost_usd"] == 0 and miss["cost_usd"] > 0
