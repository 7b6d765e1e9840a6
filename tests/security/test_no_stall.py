"""No single request may stall the gateway.

The PII scan used to be super-linear and ran on the event loop: 40 KB of `".a" * 20000` froze
every connection, /healthz included, for seconds; a streamed output guardrail rescanned the
whole accumulated text on every chunk. Now every detector runs in linear time, long texts are
scanned in windows that yield to the loop, and streams are scanned incrementally (tool-call
arguments included). Exact lag figures are measured by bench/loop_lag.py; these tests only
check what must never happen, with margins far beyond any machine noise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from gateway.pipeline.pii import detect
from tests.conftest import APP_KEY, GatewayFactory, RunningGateway, Upstream, base_config
from tests.support.scripted import ScriptedUpstream, start_scripted

# Inputs that made the old detectors backtrack: runs that almost match, over and over.
ADVERSARIAL = [".a", "a.", "@a", "a@a.", "1 ", "1-", "1.", "a:", "sk-", "aB3+", "(1) ", "+1 ",
               "AB12 ", "123-45-", "a\u200b", "\uff11"]


def _cpu(text: str) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        detect(text)
        best = min(best, time.process_time() - started)
    return best


@pytest.mark.parametrize("unit", ADVERSARIAL)
def test_every_detector_is_linear(unit: str) -> None:
    small, large = unit * (4_000 // len(unit)), unit * (32_000 // len(unit))
    # 8x the text: linear work costs ~8x, quadratic 64x. 24x leaves room for a noisy machine.
    assert _cpu(large) < 24 * max(_cpu(small), 1e-4)


def test_findings_across_window_boundaries_are_whole() -> None:
    from gateway.pipeline.pii import WINDOW

    filler = "x " * (WINDOW // 2 - 10)
    text = filler + "mail jane.doe@example.com now " + filler + "card 4111 1111 1111 1111"
    kinds = {(f.kind, f.value) for f in detect(text)}
    assert kinds == {("email", "jane.doe@example.com"), ("card", "4111 1111 1111 1111")}


async def _probe(url: str, stop: asyncio.Event) -> float:
    """The longest wait for /healthz while `stop` is not set."""
    worst = 0.0
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.monotonic()
            async with session.get(url) as resp:
                assert resp.status == 200
            worst = max(worst, time.monotonic() - started)
    return worst


async def test_a_huge_hostile_prompt_does_not_stall_other_connections(
        gateway: RunningGateway) -> None:
    health = gateway.url.removesuffix("/v1") + "/healthz"
    hostile = ".a" * 1_000_000 + " jane.doe@example.com"  # 2 MB: seconds on the old detector
    stop = asyncio.Event()
    prober = asyncio.create_task(_probe(health, stop))
    try:
        answer = await gateway.client(timeout=120).chat.completions.create(
            model="chat", messages=[{"role": "user", "content": hostile}])
        assert answer.choices[0].message.content
    finally:
        stop.set()
    assert await prober < 1.0


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedUpstream]:
    async for s in start_scripted():
        yield s


def _guarded(url: str) -> dict[str, Any]:
    config = base_config(url)
    config["model_list"] = [config["model_list"][0]]
    config["guardrails"] = [{"name": "no-secrets", "on": "output", "type": "regex",
                             "pattern": "TOP SECRET", "action": "block"}]
    return config


def _chunk(delta: dict[str, Any]) -> bytes:
    return orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1,
                         "model": "m", "choices": [{"index": 0, "delta": delta,
                                                    "finish_reason": None}]})


async def test_a_long_stream_is_scanned_incrementally(scripted: ScriptedUpstream,
                                                      make_gateway: GatewayFactory) -> None:
    config = _guarded(scripted.url)
    config["guardrails"].append({"name": "injection", "on": "output", "type": "prompt_injection",
                                 "action": "flag"})
    gw = await make_gateway(config)
    scripted.stream = [_chunk({"content": "word "}) for _ in range(40_000)]
    stream = await gw.client(APP_KEY, timeout=120).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "talk"}], stream=True)
    pieces = 0
    async with asyncio.timeout(60):  # the old rescan of 200 KB per chunk took ~2 minutes
        async for chunk in stream:
            pieces += bool(chunk.choices and chunk.choices[0].delta.content)
    assert pieces == 40_000


async def test_streamed_tool_arguments_are_checked_across_chunks(
        scripted: ScriptedUpstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(_guarded(scripted.url))
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "leak", "arguments": ""}}
    scripted.stream = [_chunk({"role": "assistant", "tool_calls": [call]})] + [
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        for piece in ['{"text": "TOP ', 'SEC', 'RET plans"}']]
    stream = await gw.client(APP_KEY).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "call it"}], stream=True,
        tools=[{"type": "function", "function": {"name": "leak", "parameters": {}}}])
    arguments = ""
    with pytest.raises(openai.APIError, match="no-secrets"):
        async for chunk in stream:
            for c in chunk.choices[0].delta.tool_calls or ():
                arguments += c.function.arguments or ""  # type: ignore[union-attr]
    assert "RET" not in arguments  # the chunk that completed the match never left


async def test_explain_is_scanned_the_same_way(gateway: RunningGateway,
                                               upstream: Upstream) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            gateway.url + "/route/explain", headers={"Authorization": f"Bearer {APP_KEY}"},
            json={"model": "chat", "messages": [{"role": "user", "content": "@a" * 200_000}]},
    ) as resp:
        assert resp.status == 200
    assert list(upstream.recorded) == []
