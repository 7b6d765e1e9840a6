"""A broken or hostile upstream cannot take the gateway's memory or hold a stream open for ever.

Before: an answer was read whole, however large (300 MB took the process to 1.1 GB and held its
loop for 13 s), and a stream was bounded only per read, so an upstream that sent a byte every
few seconds kept it open indefinitely (still open after 101 s with a 60 s request limit). Now
every answer is read with `server.max_response_bytes` (a whole answer, or a stream's total),
and a stream ends with an error event once it has been silent for `server.stream_idle_timeout_s`
or has outlived `server.request_timeout_s`; what it produced is billed and on record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import ADMIN, GatewayFactory, RunningGateway, Upstream, deployment, via_litellm
from tests.support.hostile import HostileUpstream, deployment_for, start_hostile
from tests.support.waiting import CEILING_S

KEY = "sk-test-limits-0000000001"
CAP = 1024 * 1024
HI = [{"role": "user", "content": "tell me a long story"}]


@pytest.fixture
async def hostile() -> AsyncIterator[HostileUpstream]:
    async for h in start_hostile():
        yield h


def _config(hostile_url: str, model: str, sim_url: str | None = None, *, litellm: bool = False,
            **server: Any) -> dict[str, Any]:
    # The hostile deployment is the cheaper one, so it is tried first.
    models = [deployment_for("chat", model, hostile_url, quality=40, input_cost_per_token=1e-6,
                             output_cost_per_token=1e-6)]
    if sim_url is not None:
        models.append(deployment("chat", "sim-cheap", sim_url, quality=40,
                                 input_cost_per_token=2e-6, output_cost_per_token=2e-6))
    config = {"model_list": models, "keys": [{"key": KEY, "name": "reader"}],
              "admin_keys": [{"key": ADMIN, "name": "ops"}],
              "routing": {"retries": {"attempts": 0}},
              "server": {"max_response_bytes": CAP, **server}}
    return via_litellm(config) if litellm else config


async def _ask(gw: RunningGateway, **kw: Any) -> Any:
    client = gw.client(KEY, timeout=CEILING_S)
    return await asyncio.wait_for(client.chat.completions.with_raw_response.create(
        model="chat", messages=HI, **kw), CEILING_S)


async def _stream_until_error(gw: RunningGateway) -> tuple[int, openai.APIError]:
    """Read a stream to its end; (chunks received, the error event that ended it)."""
    received = 0

    async def read() -> openai.APIError:
        nonlocal received
        stream = await gw.client(KEY, timeout=CEILING_S).chat.completions.create(
            model="chat", messages=HI, stream=True)
        try:
            async for _ in stream:
                received += 1
        except openai.APIError as err:
            return err
        raise AssertionError("the stream ended without an error event")

    err = await asyncio.wait_for(read(), CEILING_S)
    return received, err


async def _audit(gw: RunningGateway) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(
            gw.url.removesuffix("/v1") + "/admin/audit",
            headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        assert resp.status == 200
        return list((await resp.json())["data"])


async def test_an_endless_answer_is_cut_and_the_call_falls_back(
        hostile: HostileUpstream, upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(_config(hostile.url, "endless-json", upstream.url))
    answer = await _ask(gw)
    assert answer.headers["x-podium-deployment"] == "sim-cheap"
    assert answer.headers["x-podium-attempts"] == "2"
    await asyncio.wait_for(hostile.hang_up_seen("endless-json").wait(), CEILING_S)
    # What the upstream managed to write: the cap plus what socket buffers hold, not more.
    assert hostile.written["endless-json"] < 32 * CAP


@pytest.mark.parametrize("path", ["native", "litellm"])
async def test_an_oversized_answer_falls_back(hostile: HostileUpstream, upstream: Upstream,
                                              make_gateway: GatewayFactory, path: str) -> None:
    gw = await make_gateway(_config(hostile.url, "huge-json", upstream.url,
                                    litellm=path == "litellm"))
    answer = await _ask(gw)
    assert answer.headers["x-podium-deployment"] == "sim-cheap"


async def test_with_nowhere_to_fall_back_an_oversized_answer_is_a_502(
        hostile: HostileUpstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(_config(hostile.url, "huge-json"))
    with pytest.raises(openai.APIStatusError) as caught:
        await _ask(gw)
    assert caught.value.status_code == 502
    assert "max_response_bytes" in caught.value.message


@pytest.mark.parametrize(("path", "model"), [("native", "endless-sse"),
                                             ("native", "endless-line"),
                                             ("litellm", "endless-sse")])
async def test_an_endless_stream_ends_with_an_error_event(
        hostile: HostileUpstream, make_gateway: GatewayFactory, path: str, model: str) -> None:
    gw = await make_gateway(_config(hostile.url, model, litellm=path == "litellm"))
    received, err = await _stream_until_error(gw)
    assert "max_response_bytes" in err.message
    assert received < CAP // 40  # a chunk is ~110 bytes on the wire: the cap, not more
    await asyncio.wait_for(hostile.hang_up_seen(model).wait(), CEILING_S)


@pytest.mark.parametrize("path", ["native", "litellm"])
@pytest.mark.parametrize(("model", "server", "why"), [
    ("drip-chunks", {"request_timeout_s": 1.5}, "time limit"),
    ("drip-bytes", {"stream_idle_timeout_s": 1.0}, "no chunk for 1s"),
])
async def test_a_drip_fed_stream_is_ended_billed_and_recorded(
        hostile: HostileUpstream, make_gateway: GatewayFactory, path: str, model: str,
        server: dict[str, float], why: str) -> None:
    gw = await make_gateway(_config(hostile.url, model, litellm=path == "litellm", **server))
    received, err = await _stream_until_error(gw)
    assert received >= 1 and why in err.message, (received, err.message)
    await asyncio.wait_for(hostile.hang_up_seen(model).wait(), CEILING_S)
    [record] = await _audit(gw)
    assert record["error_code"] == "stream_interrupted" and record["deployment"] == model
    # The upstream never reported usage: what it produced is estimated and billed.
    assert record["prompt_tokens"] > 0 and record["completion_tokens"] > 0
    assert record["cost_usd"] > 0
