"""The semantic cache: a near-identical prompt reuses an answer within exactly the exact cache's
scope, at the price of one embedding call through the gateway; off by default, and never in
the way of the request when the embedding fails. The upstream's log is the witness."""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import pytest

from gateway.config import ConfigError, parse_config
from gateway.pipeline import semantic_cache
from gateway.pipeline.semantic_cache import SemanticIndex, conversation_text
from tests.conftest import (
    ADMIN,
    APP_KEY,
    LIMITED_KEY,
    GatewayFactory,
    RunningGateway,
    Upstream,
    base_config,
    deployment,
)

OTHER_TEAM = "sk-test-other-team-0123"
FRANCE = "What is the capital of France?"
NEAR = "what is the capital of france"


def config(url: str, enabled: bool = True, **semantic: Any) -> dict[str, Any]:
    cfg = base_config(url)
    cfg["keys"].append({"key": OTHER_TEAM, "name": "other", "team": "billing"})
    cfg["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    for entry in cfg["model_list"]:
        entry["model_info"]["data_clearance"] = "confidential"
    if enabled:
        cfg["cache"] = {"semantic": {"enabled": True, "embedding_model": "embed",
                                     "dimensions": 256, **semantic}}
    return cfg


async def ask(gw: RunningGateway, text: str, key: str = APP_KEY, **kw: Any) -> Any:
    kw.setdefault("temperature", 0)  # deterministic: only such requests are cached by default
    return await gw.client(key).chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": text}], **kw)


def calls(upstream: Upstream, endpoint: str) -> list[Any]:
    return [r.body for r in upstream.recorded if r.path == f"/v1/{endpoint}"]


@pytest.fixture
async def semantic(upstream: Upstream, make_gateway: GatewayFactory) -> RunningGateway:
    return await make_gateway(config(upstream.url))


async def test_off_by_default(upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config(upstream.url, enabled=False))
    await ask(gw, FRANCE)
    near = await ask(gw, NEAR)
    assert near.headers["x-podium-cache"] == "miss"
    assert "x-podium-cache-similarity" not in near.headers
    assert calls(upstream, "embeddings") == [] and len(calls(upstream, "chat/completions")) == 2


async def test_near_identical_prompt_is_a_semantic_hit(semantic: RunningGateway,
                                                       upstream: Upstream) -> None:
    first = await ask(semantic, FRANCE)
    near = await ask(semantic, NEAR)
    assert first.headers["x-podium-cache"] == "miss"
    assert near.headers["x-podium-cache"] == "hit"
    assert near.headers["x-podium-cache-kind"] == "semantic"
    assert float(near.headers["x-podium-cache-similarity"]) >= 0.95
    assert near.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert len(calls(upstream, "chat/completions")) == 1
    embedded = calls(upstream, "embeddings")
    assert [e["input"] for e in embedded] == [f"user: {FRANCE}", f"user: {NEAR}"]
    assert all(e["dimensions"] == 256 for e in embedded)
    # The hit costs the embedding call; the miss costs its embedding call plus the answer.
    hit_cost, miss_cost = (float(r.headers["x-podium-cost-usd"]) for r in (near, first))
    assert 0 < hit_cost < miss_cost
    # An exact repeat is still an exact hit, free, with no embedding call.
    exact = await ask(semantic, FRANCE)
    assert exact.headers["x-podium-cache-kind"] == "exact"
    assert float(exact.headers["x-podium-cost-usd"]) == 0.0
    assert len(calls(upstream, "embeddings")) == 2


async def test_an_unrelated_prompt_is_a_miss(semantic: RunningGateway,
                                             upstream: Upstream) -> None:
    await ask(semantic, FRANCE)
    other = await ask(semantic, "Write a haiku about the sea in winter")
    assert other.headers["x-podium-cache"] == "miss"
    assert "x-podium-cache-kind" not in other.headers
    assert len(calls(upstream, "chat/completions")) == 2


async def test_scope_is_the_exact_caches(upstream: Upstream, make_gateway: GatewayFactory,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semantic_cache, "_INLINE_WORK", 0)  # compare in a thread, as when big
    cfg = config(upstream.url)
    cfg["routing"] = {"default": {"cache_any_temperature": True}}
    gw = await make_gateway(cfg)
    await ask(gw, FRANCE)
    others = [await ask(gw, NEAR, key=OTHER_TEAM),
              await ask(gw, NEAR, extra_headers={"x-podium-data-class": "internal"}),
              await ask(gw, NEAR, temperature=0.7),
              await ask(gw, NEAR, max_tokens=50),
              await ask(gw, NEAR, key=LIMITED_KEY)]  # may not use `embed`: no lookup at all
    assert [r.headers["x-podium-cache"] for r in others] == ["miss"] * 5
    assert len(calls(upstream, "chat/completions")) == 6
    assert len(calls(upstream, "embeddings")) == 5
    # The same parameters do match.
    hit = await ask(gw, NEAR.upper(), max_tokens=50)
    assert hit.headers["x-podium-cache-kind"] == "semantic"


async def test_streamed_hit_and_audit(semantic: RunningGateway, upstream: Upstream) -> None:
    await ask(semantic, FRANCE)
    raw = await semantic.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": NEAR}], stream=True, temperature=0)
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert raw.headers["x-podium-cache-kind"] == "semantic" and FRANCE in text
    assert len(calls(upstream, "chat/completions")) == 1
    async with aiohttp.ClientSession() as session, session.get(
            semantic.url.removesuffix("/v1") + "/admin/audit",
            headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        hit, miss = (await resp.json())["data"]
    assert (hit["cache"], miss["cache"]) == ("hit", "miss")
    assert 0 < hit["cost_usd"] < miss["cost_usd"]
    assert {"plugin": "cache", "decision": "hit", "detail": "semantic"} in hit["decisions"]
    spans = sorted((s for s in semantic.spans.get_finished_spans()
                    if s.name == "POST /v1/chat/completions"), key=lambda s: s.start_time or 0)
    assert [s.attributes["podium.cache.semantic"] for s in spans] == ["miss", "hit"]
    assert all("podium.hop.cache.semantic.ms" in s.attributes for s in spans)
    assert spans[1].attributes["podium.cache.similarity"] >= 0.95


async def test_embedding_down_still_answers(upstream: Upstream, make_gateway: GatewayFactory,
                                            caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(upstream.url)
    cfg["model_list"][-1] = deployment("embed", "sim-embed-e503", upstream.url,
                                       mode="embedding", data_clearance="confidential")
    cfg["routing"] = {"retries": {"attempts": 0}}
    gw = await make_gateway(cfg)
    with caplog.at_level(logging.WARNING, logger="podium.cache"):
        first, near = await ask(gw, FRANCE), await ask(gw, NEAR)
    assert first.status_code == near.status_code == 200
    assert near.headers["x-podium-cache"] == "miss"
    assert "embedding with 'embed' failed" in caplog.text
    assert len(calls(upstream, "embeddings")) == 2


async def test_no_lookup_for_pii_or_an_uncleared_embedding_model(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    cfg = config(upstream.url)
    cfg["model_list"][-1]["model_info"]["data_clearance"] = "public"
    gw = await make_gateway(cfg)
    internal = await ask(gw, FRANCE, extra_headers={"x-podium-data-class": "internal"})
    pii = await ask(gw, "Is jane.doe@example.com the capital of France?")
    assert internal.status_code == pii.status_code == 200
    assert calls(upstream, "embeddings") == []


@pytest.mark.parametrize(("semantic", "problem"), [
    ({"enabled": True}, "cache.semantic: Value error, 'enabled: true' needs 'embedding_model' "
                        "(an embedding model group)"),
    ({"enabled": True, "embedding_model": "x"},
     "cache.semantic.embedding_model: unknown embedding model 'x'"),
    ({"enabled": True, "embedding_model": "chat"},
     "cache.semantic.embedding_model: unknown embedding model 'chat' (a chat model group)"),
    ({"threshold": 1.5}, "cache.semantic.threshold: Input should be less than or equal to 1"),
])
def test_config_errors(semantic: dict[str, Any], problem: str) -> None:
    cfg = base_config("http://127.0.0.1:1/v1")
    cfg["cache"] = {"semantic": semantic}
    with pytest.raises(ConfigError) as err:
        parse_config(cfg, env={})
    assert err.value.problems == [problem]


def test_index_is_bounded_scoped_and_expires() -> None:
    index = SemanticIndex(max_entries=2)
    index.add("s", (1.0, 0.0), "k0", ttl_s=60)
    index.add("s", (0.0, 1.0), "k1", ttl_s=60)
    index.add("t", (1.0, 0.0), "k2", ttl_s=60)  # the oldest goes
    assert len(index) == 2 and index.nearest("s", (1.0, 0.0)) == ("k1", pytest.approx(0.0))
    assert index.nearest("t", (0.6, 0.8)) == ("k2", pytest.approx(0.6))
    assert index.nearest("u", (1.0, 0.0)) is None
    index.add("t", (1.0, 0.0), "k3", ttl_s=0)
    time.sleep(0.001)
    index.add("s", (1.0, 0.0), "k4", ttl_s=60)  # the expired entry goes before the oldest
    assert index.nearest("s", (1.0, 0.0)) == ("k4", 1.0) and len(index) == 2
    index.add("s", (0.0, 1.0), "k4", ttl_s=60)  # the same key again replaces its entry
    assert index.nearest("s", (0.0, 1.0)) == ("k4", 1.0) and len(index) == 2


def test_conversation_text() -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Describe"},
                                             {"type": "image_url", "image_url": {"url": "x"}},
                                             {"type": "text", "text": "this."}]}]
    assert conversation_text(messages) == "system: Be brief.\nuser: Describe this."
