"""No work for a cache that is off (issue 16, item 8): with caching off, or a request the cache
bypasses, no cache key is made and the store is never asked; without a semantic cache, no
embedding is asked for. Real HTTP, the openai SDK; the simulator's log and the store itself are
the witnesses (the store is the gateway's own, wrapped to write down what it is asked)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.storage.contracts import CacheStore
from tests.conftest import GatewayFactory, RunningGateway, Upstream, base_config

HI = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Asked:
    """A `CacheStore` that writes down every call before passing it to the real one."""
    store: CacheStore
    calls: list[str] = field(default_factory=list)

    async def get(self, key: str) -> bytes | None:
        self.calls.append("get")
        return await self.store.get(key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self.calls.append("set")
        await self.store.set(key, value, ttl_s)


def cached(url: str, *, enabled: bool, semantic: bool) -> dict[str, Any]:
    config = base_config(url)
    config["cache"] = {"enabled": enabled}
    if semantic:
        config["cache"]["semantic"] = {"enabled": True, "embedding_model": "embed"}
    return config


async def watched(make_gateway: GatewayFactory, config: dict[str, Any],
                  ) -> tuple[RunningGateway, Asked]:
    gw = await make_gateway(config)
    cache = gw.gateway.cache
    asked = Asked(cache.store)
    cache.store = asked
    return gw, asked


async def ask_twice(gw: RunningGateway, **kw: Any) -> list[str]:
    """The same question twice, whole and streamed; the x-podium-cache of each."""
    states = []
    for stream in (False, True):
        raw = await gw.client().chat.completions.with_raw_response.create(
            model="chat", messages=HI, stream=stream, **kw)
        if stream:
            async for _ in raw.parse():
                pass
        states.append(raw.headers["x-podium-cache"])
    return states


def embeddings(upstream: Upstream) -> int:
    return sum(r.path.endswith("/embeddings") for r in upstream.recorded)


@pytest.mark.parametrize("semantic", [False, True])
async def test_caching_off_makes_no_key_and_asks_no_embedding(
        semantic: bool, upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw, asked = await watched(make_gateway,
                              cached(upstream.url, enabled=False, semantic=semantic))
    assert await ask_twice(gw, temperature=0) == ["bypass", "bypass"]
    assert asked.calls == [], "the cache store was asked although caching is off"
    assert embeddings(upstream) == 0


async def test_a_bypassed_request_makes_no_key_and_asks_no_embedding(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw, asked = await watched(make_gateway, cached(upstream.url, enabled=True, semantic=True))
    assert await ask_twice(gw) == ["bypass", "bypass"]  # sampled: no temperature 0, no seed
    assert asked.calls == []
    assert embeddings(upstream) == 0


async def test_without_a_semantic_cache_only_the_exact_cache_is_asked(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw, asked = await watched(make_gateway, cached(upstream.url, enabled=True, semantic=False))
    assert await ask_twice(gw, temperature=0) == ["miss", "hit"]
    assert asked.calls == ["get", "set", "get"]
    assert embeddings(upstream) == 0


async def test_with_a_semantic_cache_a_miss_asks_for_one_embedding(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    """The witnesses see the work when there is work to do."""
    gw, asked = await watched(make_gateway, cached(upstream.url, enabled=True, semantic=True))
    assert await ask_twice(gw, temperature=0) == ["miss", "hit"]
    assert asked.calls == ["get", "set", "get"]
    assert embeddings(upstream) == 1
