"""The cache keeps HTTP and sampling semantics, and routing's promises.

- OpenAI's default `temperature` is 1: a plain SDK call is sampled, and used to be answered
  from the cache for 300 s with the same text. Only requests deterministic by their own
  parameters (`temperature: 0`, or a `seed`) are cached unless a rule opts in.
- A cached answer must meet the request's routing constraints: a request with
  `x-podium-min-quality: 70` used to get the cached answer of a quality-40 deployment.
- The semantic cache never answers one key with another key's answer unless the config says
  `scope: team`.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import APP_KEY, GatewayFactory, Upstream, base_config

Q = [{"role": "user", "content": "Name a prime number."}]
MATE_KEY = "sk-test-teammate-0123456789"  # same team as APP_KEY, may use every model


async def _ask(gw: Any, key: str = APP_KEY, **kw: Any) -> Any:
    return await gw.client(key).chat.completions.with_raw_response.create(
        model="chat", messages=kw.pop("messages", Q), **kw)


async def test_a_plain_sdk_call_is_sampled_not_cached(upstream: Upstream,
                                                      make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(base_config(upstream.url))
    first, second = await _ask(gw), await _ask(gw)
    assert first.headers["x-podium-cache"] == second.headers["x-podium-cache"] == "bypass"
    assert len(upstream.models_called()) == 2
    seeded = [await _ask(gw, seed=42) for _ in range(2)]
    assert [r.headers["x-podium-cache"] for r in seeded] == ["miss", "hit"]


async def test_a_cached_answer_meets_the_required_quality(upstream: Upstream,
                                                          make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(base_config(upstream.url))
    cheap = await _ask(gw, temperature=0)
    assert cheap.headers["x-podium-deployment"] == "sim-cheap"  # quality 40
    strict = await _ask(gw, temperature=0, extra_headers={"x-podium-min-quality": "70"})
    assert strict.headers["x-podium-cache"] == "miss"
    assert strict.headers["x-podium-deployment"] == "sim-dear"  # quality 80
    again = await _ask(gw, temperature=0, extra_headers={"x-podium-min-quality": "70"})
    assert (again.headers["x-podium-cache"], again.headers["x-podium-deployment"]) == \
        ("hit", "sim-dear")


def _semantic(url: str, scope: str | None) -> dict[str, Any]:
    cfg = base_config(url)
    semantic: dict[str, Any] = {"enabled": True, "embedding_model": "embed", "dimensions": 256}
    if scope:
        semantic["scope"] = scope
    cfg["cache"] = {"semantic": semantic}
    cfg["keys"].append({"key": MATE_KEY, "name": "teammate", "team": "support"})
    return cfg


async def test_the_semantic_cache_stays_within_a_key(upstream: Upstream,
                                                      make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(_semantic(upstream.url, None))
    question = [{"role": "user", "content": "What is the capital of France?"}]
    near = [{"role": "user", "content": "what is the capital of france"}]
    await _ask(gw, APP_KEY, messages=question, temperature=0)
    other = await _ask(gw, MATE_KEY, messages=near, temperature=0)  # same team, other key
    assert other.headers["x-podium-cache"] == "miss"
    # (The exact cache is per team: the other key's answer to `near` is now stored exactly.)
    nearer = [{"role": "user", "content": "What is the capital of France"}]
    same = await _ask(gw, APP_KEY, messages=nearer, temperature=0)
    assert same.headers.get("x-podium-cache-kind") == "semantic"


async def test_scope_team_shares_within_the_team(upstream: Upstream,
                                                 make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(_semantic(upstream.url, "team"))
    await _ask(gw, APP_KEY, temperature=0,
               messages=[{"role": "user", "content": "What is the capital of France?"}])
    other = await _ask(gw, MATE_KEY, temperature=0,
                       messages=[{"role": "user", "content": "what is the capital of france"}])
    assert other.headers.get("x-podium-cache-kind") == "semantic"
