"""A cache hit still names the deployment that produced the answer (`x-podium-deployment`).

Before, a hit's response carried no `x-podium-deployment` at all: the README's own quick start
raised KeyError on its second run, and a client could not tell which model its answer came
from. The deployment is now stored with the cached answer, and every hit (exact or semantic,
plain or streamed) reports it, with `x-podium-attempts: 0` since nothing was called.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import GatewayFactory, RunningGateway, Upstream, base_config

ASK = {"model": "chat", "messages": [{"role": "user", "content": "Which model answers?"}],
       "temperature": 0}


async def _ask(gw: RunningGateway, **kw: Any) -> Any:
    return await gw.client().chat.completions.with_raw_response.create(**{**ASK, **kw})


async def test_an_exact_hit_names_the_deployment_that_answered(
        gateway: RunningGateway, upstream: Upstream) -> None:
    fresh = await _ask(gateway)
    assert fresh.headers["x-podium-cache"] == "miss"
    answered_by = fresh.headers["x-podium-deployment"]
    assert answered_by == "sim-cheap"

    hit = await _ask(gateway)
    assert hit.headers["x-podium-cache"] == "hit"
    assert hit.headers["x-podium-deployment"] == answered_by
    assert hit.headers["x-podium-attempts"] == "0"
    assert hit.parse().choices[0].message.content == fresh.parse().choices[0].message.content
    assert upstream.models_called() == ["sim-cheap"]


async def test_a_streamed_hit_names_the_deployment_too(gateway: RunningGateway,
                                                        upstream: Upstream) -> None:
    stream = await _ask(gateway, stream=True)  # a miss, stored once the stream is complete
    assert stream.headers["x-podium-deployment"] == "sim-cheap"
    async for _ in stream.parse():
        pass
    for streamed in (True, False):
        hit = await _ask(gateway, stream=streamed)
        assert hit.headers["x-podium-cache"] == "hit"
        assert hit.headers["x-podium-deployment"] == "sim-cheap"
    assert upstream.models_called() == ["sim-cheap"]


async def test_a_hit_names_the_deployment_that_produced_it(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    """Not the group's cheapest (sim-cheap, the default's first choice): whichever deployment
    produced the stored answer, here sim-dear, the one adequate for quality 80."""
    gw = await make_gateway(base_config(upstream.url))
    fresh = await _ask(gw, extra_headers={"x-podium-min-quality": "80"})
    hit = await _ask(gw, extra_headers={"x-podium-min-quality": "80"})
    assert fresh.headers["x-podium-deployment"] == "sim-dear"
    assert (hit.headers["x-podium-cache"], hit.headers["x-podium-deployment"]) == (
        "hit", "sim-dear")


async def test_a_semantic_hit_names_the_deployment_of_the_matched_answer(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["cache"] = {"semantic": {"enabled": True, "embedding_model": "embed",
                                    "dimensions": 256}}
    gw = await make_gateway(config)
    fresh = await _ask(gw, messages=[{"role": "user", "content": "What is the capital of France?"}])
    near = await _ask(gw, messages=[{"role": "user", "content": "what is the capital of france"}])
    assert near.headers["x-podium-cache"] == "hit"
    assert near.headers["x-podium-cache-kind"] == "semantic"
    assert near.headers["x-podium-deployment"] == fresh.headers["x-podium-deployment"]
