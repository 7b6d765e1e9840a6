"""A client that hangs up before its answer is written is no error of the gateway's: one DEBUG
event (`client_disconnected`, with the request id and endpoint), no traceback, nothing at
ERROR; and the request is still accounted for (audit record, spend). Over real loopback, with a
raw socket client that sends a request and closes.

The gateway is served here by the runner `podium serve` uses (http/connections.py), not by
aiohttp's test server: that one cancels a handler whose client hung up, `podium serve` lets it
finish (so that the answer is accounted for), and the handler's write then fails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import build_app
from gateway.config import parse_config
from gateway.http.connections import GatewayRunner
from gateway.observability import telemetry
from gateway.runtime import GATEWAY
from tests.conftest import ADMIN, APP_KEY, UPSTREAM_KEY, Upstream, base_config
from tests.support.net import free_port
from tests.support.waiting import until


def _request(path: str, body: dict[str, Any]) -> bytes:
    raw = orjson.dumps(body)
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {APP_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
            ).encode() + raw


Serve = Callable[[dict[str, Any]], Awaitable[int]]
GATEWAY_SERVER = "podium.test.aiohttp.server"


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Start a gateway as `podium serve` runs it; its port."""
    runners: list[web.AppRunner] = []

    async def start(config: dict[str, Any]) -> int:
        config = {"key_store": {"path": ":memory:"},
                  "storage": {"path": str(tmp_path / "podium.sqlite3")}, **config}
        app = build_app(parse_config(config, env={}),
                        telemetry.with_exporter(InMemorySpanExporter()))
        # Its aiohttp server logs under a name of its own: the simulator upstream, in this
        # process too, logs a reset of its own when the gateway drops the upstream stream.
        runner = GatewayRunner(app, app[GATEWAY].runtime.config.server, access_log=None,
                               logger=logging.getLogger(GATEWAY_SERVER))
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


async def hang_up(port: int, path: str, body: dict[str, Any], read_first: int = 0) -> None:
    """Send one request, read `read_first` bytes of the answer (0: none), and close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request(path, body))
    await writer.drain()
    if read_first:
        await reader.readexactly(read_first)
    writer.close()
    await writer.wait_closed()


async def audited(port: int) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/admin/audit",
            headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        assert resp.status == 200
        records: list[dict[str, Any]] = (await resp.json())["data"]
        return records


def _config(url: str, model: str) -> dict[str, Any]:
    config = base_config(url)
    config["model_list"] = [{"model_name": "chat", "litellm_params": {
        "model": f"openai/{model}", "api_base": url, "api_key": UPSTREAM_KEY},
        "model_info": {"id": "only", "input_cost_per_token": 1e-6,
                       "output_cost_per_token": 1e-6}}]
    config["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    config["cache"] = {"enabled": False}
    return config


def _check_logs(caplog: pytest.LogCaptureFixture, endpoint: str) -> None:
    """Nothing the gateway logged is an error or carries a traceback; one debug event."""
    loud = [r for r in caplog.records if r.name.startswith("podium")
            and (r.levelno >= logging.ERROR or r.exc_info)]
    assert loud == [], [(r.name, r.levelname, r.getMessage()) for r in loud]
    left = [r for r in caplog.records if r.getMessage() == "client_disconnected"]
    assert len(left) == 1
    assert left[0].levelno == logging.DEBUG
    assert left[0].endpoint == endpoint  # type: ignore[attr-defined]
    assert left[0].request_id.startswith("req_")  # type: ignore[attr-defined]


async def test_a_client_gone_before_its_json_answer_is_one_debug_event(
        upstream: Upstream, serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = await serve(_config(upstream.url, "sim-slow"))  # answers after 50 ms
    await hang_up(port, "/v1/chat/completions",
                  {"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    records = await until(lambda: audited(port), "the request's audit record")
    _check_logs(caplog, "/v1/chat/completions")
    [record] = records
    assert record["deployment"] == "only" and record["cost_usd"] > 0, "the answer is paid for"
    assert record["status"] == 499


async def test_a_client_gone_mid_stream_is_one_debug_event(
        upstream: Upstream, serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = await serve(_config(upstream.url, "sim-tinychunks"))
    # 100,000 words, a chunk each: far more than the socket buffers hold.
    await hang_up(port, "/v1/chat/completions",
                  {"model": "chat", "stream": True,
                   "messages": [{"role": "user", "content": "talk [[long:100000]]"}]},
                  read_first=200)
    records = await until(lambda: audited(port), "the request's audit record")
    _check_logs(caplog, "/v1/chat/completions")
    [record] = records
    assert record["deployment"] == "only" and record["status"] == 499
