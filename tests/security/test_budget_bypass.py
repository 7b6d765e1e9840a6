"""Money cannot be dodged (issue 12, section 4, the pipeline's side).

- No `max_tokens`: the reservation used to assume `expected_output_tokens` (256), so forty
  concurrent long answers spent several times a $0.05 budget. Now a request without a bound
  is given one (`routing.max_output_tokens`, or what the budget left can pay), sent upstream as
  `max_tokens`, and reserved in full: total spend stays within budget + one request's cost.
- A client that leaves mid-stream is billed for what the upstream produced.
- An answer without usage is billed from a local count, never $0.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import ADMIN, APP_KEY, GatewayFactory, RunningGateway, Upstream, deployment
from tests.support.scripted import OK_COMPLETION, ScriptedUpstream, start_scripted
from tests.support.waiting import until

BUDGET = 0.05
OUT_PRICE = 1e-5                       # a 5,000-word answer (~6,250 tokens) costs ~$0.06
LONG = [{"role": "user", "content": "Tell me everything. [[long:5000]]"}]


def _config(url: str, tmp: Path, state: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "model_list": [deployment("chat", "sim-long", url, input_cost_per_token=1e-7,
                                  output_cost_per_token=OUT_PRICE)],
        "keys": [{"key": APP_KEY, "name": "app", "budget_usd": BUDGET, "budget_period": "day"}],
        "admin_keys": [{"key": ADMIN, "name": "ops"}],
        "storage": {"path": str(tmp / "podium.sqlite3")},
        "cache": {"enabled": False}, **({"state": state} if state else {}),
    }


async def _spent(gw: RunningGateway) -> float:
    async with aiohttp.ClientSession() as session, session.get(
            gw.url.removesuffix("/v1") + "/admin/spend/budgets",
            headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        rows = (await resp.json())["data"]
    return float(rows[0]["spent_usd"])


async def _one(gw: RunningGateway) -> float | None:
    try:
        raw = await gw.client(timeout=60).chat.completions.with_raw_response.create(
            model="chat", messages=LONG)
    except openai.RateLimitError as err:
        assert isinstance(err.body, dict) and err.body["code"] == "budget_exceeded"
        return None
    return float(raw.headers["x-podium-cost-usd"])


async def _storm(gateways: list[RunningGateway], n: int) -> list[float]:
    results = await asyncio.gather(*(_one(gateways[i % len(gateways)]) for i in range(n)))
    return [r for r in results if r is not None]


async def test_forty_open_ended_answers_stay_within_the_budget(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = await make_gateway(_config(upstream.url, tmp_path))
    costs = await _storm([gw], 40)
    assert costs, "some requests must be answered"
    one_request = 4096 * OUT_PRICE + 0.001   # the cap, at the output price, plus the prompt
    assert await _spent(gw) <= BUDGET + one_request
    sent = [r.body for r in upstream.recorded if r.path.endswith("/chat/completions")]
    assert all(isinstance(b.get("max_tokens"), int) and b["max_tokens"] <= 4096 for b in sent)


def _redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")
async def test_two_gateways_on_redis_stay_within_the_budget(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    import uuid

    # A generous timeout: on a loaded test machine a slow answer must not count as an outage
    # (under `fail_mode: open` an outage leaves budgets unenforced, by design).
    state = {"backend": "redis", "url": "redis://127.0.0.1:6379/0", "timeout_s": 5,
             "key_prefix": f"podium-test:{uuid.uuid4().hex}:"}
    cfg = _config(upstream.url, tmp_path, state)
    one, two = await make_gateway(cfg), await make_gateway(cfg)
    costs = await _storm([one, two], 40)
    assert costs
    assert await _spent(one) <= BUDGET + 4096 * OUT_PRICE + 0.001


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedUpstream]:
    async for s in start_scripted():
        yield s


def _scripted_config(url: str, tmp: Path) -> dict[str, Any]:
    return {
        "model_list": [deployment("chat", "scripted", url, input_cost_per_token=1e-6,
                                  output_cost_per_token=1e-5)],
        "keys": [{"key": APP_KEY, "name": "app"}], "admin_keys": [{"key": ADMIN, "name": "ops"}],
        "storage": {"path": str(tmp / "podium.sqlite3")}, "cache": {"enabled": False},
    }


def _chunk(text: str) -> bytes:
    return orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1,
                         "model": "m", "choices": [{"index": 0, "delta": {"content": text},
                                                    "finish_reason": None}]})


async def _audited(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    url = gw.url.removesuffix("/v1") + f"/admin/audit?request_id={request_id}"

    async def record() -> dict[str, Any] | None:
        async with aiohttp.ClientSession() as session, session.get(
                url, headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            rows = (await resp.json())["data"]
        return rows[0] if rows else None

    found: dict[str, Any] = await until(record, "the request's audit record")
    return found


async def test_a_client_that_leaves_mid_stream_is_billed(
        scripted: ScriptedUpstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = await make_gateway(_scripted_config(scripted.url, tmp_path))
    scripted.stream = [_chunk("many words here ") for _ in range(200)]
    scripted.chunk_delay_s = 0.01
    body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gw.url + "/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {APP_KEY}"})
        request_id = resp.headers["x-request-id"]
        for _ in range(5):
            await resp.content.readline()
        resp.close()  # the client leaves with the stream half told
    record = await _audited(gw, request_id)
    assert record["completion_tokens"] > 0
    assert record["cost_usd"] > 0


async def test_an_answer_without_usage_is_counted_locally(
        scripted: ScriptedUpstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = await make_gateway(_scripted_config(scripted.url, tmp_path))
    scripted.answer = {k: v for k, v in OK_COMPLETION.items() if k != "usage"}
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hello there"}])
    assert float(raw.headers["x-podium-cost-usd"]) > 0
    scripted.stream = [_chunk("an answer with no usage chunk at all")]
    stream = await gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True)
    [_ async for _ in stream.parse()]
    record = await _audited(gw, stream.headers["x-request-id"])
    assert record["prompt_tokens"] > 0 and record["completion_tokens"] > 0
    assert record["cost_usd"] > 0


async def test_a_request_sized_to_the_exact_remainder_is_admitted(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    """The cap is what the budget left can pay; summing that cost again must not round past
    the budget and refuse the very request it was sized for."""
    cfg = _config(upstream.url, tmp_path)
    cfg["keys"][0]["budget_usd"] = 0.1 + 0.2  # not exactly representable
    gw = await make_gateway(cfg)
    for _ in range(3):
        raw = await gw.client().chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi [[long:50]]"}])
        assert raw.status_code == 200
