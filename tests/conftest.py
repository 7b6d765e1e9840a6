"""Shared fixtures: a fake upstream (the simulator) and gateways, all on loopback.

Nothing of Podium's own is mocked: every test talks real HTTP to a real gateway, which talks
real HTTP to the simulator; the official `openai` SDK is the client.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import build_app
from gateway.config import parse_config
from gateway.http.connections import GatewayRunner
from gateway.observability import telemetry
from gateway.runtime import GATEWAY, Gateway
from gateway.simulator import RECORDED, RecordedRequest, SimModel, start_simulator
from tests.support import provision

APP_KEY = "sk-test-app-0123456789"
LIMITED_KEY = "sk-test-limited-0123456789"
UPSTREAM_KEY = "sk-upstream-secret-9876543210"
ADMIN = "sk-admin-0123456789abcdef"    # for `admin_keys:` in tests that use the admin API

logging.getLogger("LiteLLM").setLevel(logging.WARNING)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start installing the tools the selected tests need (Phoenix, Chromium) now, in the
    background, so the installs overlap the rest of the suite (tests/support/provision.py)."""
    provision.start_needed(session.items)


@dataclass
class Upstream:
    url: str                         # ".../v1"
    runner: web.AppRunner

    @property
    def recorded(self) -> deque[RecordedRequest]:
        return self.runner.app[RECORDED]

    def models_called(self) -> list[str]:
        return [r.body.get("model") for r in self.recorded
                if isinstance(r.body, dict) and r.path.endswith(("/completions", "/embeddings"))]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    runner, port = await start_simulator(
        "127.0.0.1", 0, {"sim-slow": SimModel(latency_ms=50)}, api_key=UPSTREAM_KEY)
    yield Upstream(url=f"http://127.0.0.1:{port}/v1", runner=runner)
    await runner.cleanup()


def deployment(name: str, upstream_model: str, url: str, **info: Any) -> dict[str, Any]:
    params = {"model": f"openai/{upstream_model}", "api_base": url, "api_key": UPSTREAM_KEY}
    if "timeout" in info:
        params["timeout"] = info.pop("timeout")
    info.setdefault("id", upstream_model)
    return {"model_name": name, "litellm_params": params, "model_info": info}


def base_config(url: str) -> dict[str, Any]:
    """A small catalog in front of the simulator: two chat groups, one embedding group."""
    return {
        "model_list": [
            deployment("chat", "sim-cheap", url, quality=40, input_cost_per_token=1e-7,
                       output_cost_per_token=2e-7),
            deployment("chat", "sim-dear", url, quality=80, input_cost_per_token=1e-6,
                       output_cost_per_token=2e-6),
            deployment("premium", "sim-premium", url, quality=95, input_cost_per_token=5e-6,
                       output_cost_per_token=1e-5),
            deployment("embed", "sim-embed", url, mode="embedding", input_cost_per_token=1e-8,
                       output_cost_per_token=0),
        ],
        "keys": [
            {"key": APP_KEY, "name": "app", "team": "support"},
            {"key": LIMITED_KEY, "name": "limited", "team": "support", "models": ["chat"]},
        ],
    }


@dataclass
class RunningGateway:
    url: str                         # ".../v1"
    server: TestServer
    spans: InMemorySpanExporter

    @property
    def gateway(self) -> Gateway:
        return self.server.app[GATEWAY]

    def client(self, key: str = APP_KEY, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url, api_key=key, max_retries=0, **kw)


GatewayFactory = Callable[..., Any]


class GatewayTestServer(TestServer):
    """aiohttp's test server on the gateway's own runner, as `podium serve` runs it (request
    heads with a deadline), so every test goes through the same connection handling."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return GatewayRunner(self.app, self.app[GATEWAY].runtime.config.server, **kwargs)


@pytest.fixture
async def make_gateway(tmp_path_factory: pytest.TempPathFactory,
                       ) -> AsyncIterator[GatewayFactory]:
    servers: list[TestServer] = []

    async def start(config: dict[str, Any], *, ready: bool = True,
                    tel: telemetry.Telemetry | None = None) -> RunningGateway:
        """`tel`: tracing as given (off, say) instead of into the in-memory exporter."""
        exporter = InMemorySpanExporter()
        state = tmp_path_factory.mktemp("state")
        config = {"key_store": {"path": ":memory:"},
                  "storage": {"path": str(state / "podium.sqlite3")}, **config}
        app = build_app(parse_config(config, env={}), tel or telemetry.with_exporter(exporter))
        server = GatewayTestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        gw = app[GATEWAY]
        if ready and gw.preload is not None:
            await gw.preload
        return RunningGateway(url=f"http://127.0.0.1:{server.port}/v1", server=server,
                              spans=exporter)

    yield start
    for server in servers:
        await server.close()


def via_litellm(config: dict[str, Any]) -> dict[str, Any]:
    """The same config, with every deployment sent through litellm instead of the native
    OpenAI-compatible path (any extra litellm parameter selects litellm)."""
    for entry in config["model_list"]:
        entry["litellm_params"]["drop_params"] = True
    return config


@pytest.fixture(params=["native", "litellm"])
async def gateway(request: pytest.FixtureRequest, upstream: Upstream,
                  make_gateway: GatewayFactory) -> RunningGateway:
    """A gateway in front of the simulator, once per provider path."""
    config = base_config(upstream.url)
    return await make_gateway(via_litellm(config) if request.param == "litellm" else config)
