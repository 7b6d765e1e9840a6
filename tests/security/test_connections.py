"""Slow or greedy clients cannot lock others out.

Before: aiohttp closed a connection whose request head never completed only when its keep-alive
time ran out (75 s), a stalled body was waited for indefinitely, nothing bounded the requests a
process took on, and the process kept the 1024 open files many systems start it with: 1,100
half-open connections locked real clients out. Now a head is due within
`server.header_timeout_s`, a body within `server.body_timeout_s` (408), a process handles at
most `server.max_in_flight` requests (503 with Retry-After beyond; probes always answered), and
`podium serve` raises its open-files limit to the hard limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import APP_KEY, GatewayFactory, RunningGateway, Upstream, base_config
from tests.support.hostile import HostileUpstream, deployment_for, start_hostile
from tests.support.metrics import scrape, total
from tests.support.pool import running_pool
from tests.support.waiting import until

HALF_OPEN = 600                         # more than the 256 open files the server starts with
PARTIAL_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-"
# Far below the 75 s keep-alive time that used to be the only bound, far above the deadline.
CLOSED_WITHIN_S = 30.0


@pytest.fixture
async def hostile() -> AsyncIterator[HostileUpstream]:
    async for h in start_hostile():
        yield h


@contextlib.contextmanager
def _open_files_soft_limit(soft: int) -> Iterator[None]:
    """Children started meanwhile inherit this soft limit (as from a default systemd unit)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def _open_files(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before closing the connection (b"" for a bare close)."""
    return await asyncio.wait_for(reader.read(), CLOSED_WITHIN_S)


async def _half_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PARTIAL_HEAD)
    await writer.drain()
    return reader, writer


async def _drip_head(port: int, stop: asyncio.Event) -> bytes:
    """A head sent one byte every 0.2 s: activity alone must not keep it alive."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    closing = asyncio.create_task(_closed_by_server(reader))
    for byte in PARTIAL_HEAD * 100:
        if closing.done() or stop.is_set():
            break
        with contextlib.suppress(ConnectionError):
            writer.write(bytes([byte]))
        await asyncio.sleep(0.2)
    writer.close()
    return await closing


def _served(upstream: Upstream, tmp_path: Path, **server: Any) -> dict[str, Any]:
    config = base_config(upstream.url)
    config.update(storage={"path": str(tmp_path / "podium.sqlite3")},
                  key_store={"path": str(tmp_path / "keys.sqlite3")},
                  logging={"access_log": False}, server=server)
    return config


async def test_half_open_connections_are_cut_and_real_clients_still_served(
        upstream: Upstream, tmp_path: Path) -> None:
    config = _served(upstream, tmp_path, header_timeout_s=1.0)
    with _open_files_soft_limit(256):
        pool = running_pool(config, tmp_path, workers=1)
        proc, base = await pool.__aenter__()
    try:
        soft, hard = _open_files(proc.pid)
        assert soft == hard, "podium serve raises its open-files limit to the hard limit"
        port = int(base.rsplit(":", 1)[1])
        stalled = [await _half_open(port) for _ in range(HALF_OPEN)]
        stop = asyncio.Event()
        drippers = [asyncio.create_task(_drip_head(port, stop)) for _ in range(5)]
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=APP_KEY, max_retries=0,
                                    timeout=CLOSED_WITHIN_S)
        answer = await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "still there?"}])
        assert answer.choices[0].message.content
        closed = await asyncio.gather(*(_closed_by_server(r) for r, _ in stalled))
        assert closed == [b""] * HALF_OPEN
        assert await asyncio.gather(*drippers) == [b""] * len(drippers)
        stop.set()
        for _, writer in stalled:
            writer.close()
    finally:
        await pool.__aexit__(None, None, None)


async def _answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP response's head and body (by its Content-Length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN_S)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    return head, await asyncio.wait_for(reader.readexactly(length), CLOSED_WITHIN_S)


async def _raw(gw: RunningGateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gw.server.port)


async def test_a_stalled_body_gets_408_and_connection_close(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["server"] = {"body_timeout_s": 0.5}
    gw = await make_gateway(config)
    reader, writer = await _raw(gw)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
                 b"Authorization: Bearer " + APP_KEY.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\"")
    await writer.drain()
    head, body = await _answer(reader)
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"\r\nconnection: close" in head.lower()
    assert orjson.loads(body)["error"]["code"] == "request_timeout"
    assert gw.gateway.in_flight == 0
    writer.close()


async def test_a_kept_alive_connection_gets_the_same_deadline_for_its_next_head(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["server"] = {"header_timeout_s": 0.5}
    gw = await make_gateway(config)
    reader, writer = await _raw(gw)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
    await writer.drain()
    head, _ = await _answer(reader)
    assert head.startswith(b"HTTP/1.1 200 ")
    writer.write(PARTIAL_HEAD)  # the next request on the same connection, never finished
    await writer.drain()
    assert await _closed_by_server(reader) == b""
    writer.close()


async def test_past_the_in_flight_bound_503_with_retry_after_and_probes_still_answer(
        hostile: HostileUpstream, make_gateway: GatewayFactory) -> None:
    config = {"model_list": [deployment_for("chat", "gated", hostile.url)],
              "keys": [{"key": APP_KEY, "name": "app"}], "server": {"max_in_flight": 2}}
    gw = await make_gateway(config)
    client = gw.client()
    hi = [{"role": "user", "content": "hi"}]
    held = [asyncio.create_task(client.chat.completions.create(model="chat", messages=hi))
            for _ in range(2)]

    async def both_waiting() -> bool:
        return hostile.waiting == 2

    await until(both_waiting, "two requests in flight")
    with pytest.raises(openai.InternalServerError) as caught:
        await asyncio.wait_for(client.chat.completions.create(model="chat", messages=hi),
                               CLOSED_WITHIN_S)
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "overloaded" and caught.value.body["type"] == "api_error"
    assert caught.value.response.headers["Retry-After"] == "1"
    root = gw.url.removesuffix("/v1")
    async with aiohttp.ClientSession() as session:
        for probe in ("/healthz", "/readyz", "/metrics"):
            async with session.get(root + probe) as resp:
                assert resp.status == 200, probe
    assert total(await scrape(gw.url), "podium_rejections_total", code="overloaded") == 1
    hostile.gate.set()
    for answer in await asyncio.gather(*held):
        assert answer.choices[0].message.content
    assert (await client.chat.completions.create(model="chat", messages=hi)).choices
