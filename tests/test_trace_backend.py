"""Traces end to end in a real tracing backend: Arize Phoenix, queried through its REST API.

Phoenix is an OTLP-native trace store that LLM teams run (`pip install arize-phoenix;
phoenix serve`); it is the real backend installable from the package registries these machines
reach (Jaeger and the OpenTelemetry Collector ship as binaries and images, not packages). It
runs as its own process, from its own venv (`.venv-phoenix/`, provisioned by
tests/support/provision.py on first use, in the background, with the pinned version), on free
loopback ports with a throw-away working directory and its telemetry off.

A real gateway is pointed at it with nothing but the standard OpenTelemetry variables; one chat
request carrying a W3C `traceparent`, whose first deployment fails so that it falls back, is
made with the official `openai` SDK, and the whole trace of that request is read back from
Phoenix: the SERVER span with every in-process hop on it, and a span per upstream attempt;
names, parent links, trace id, attributes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import build_app
from gateway.config import parse_config
from gateway.observability import telemetry
from tests.conftest import APP_KEY, UPSTREAM_KEY, Upstream, base_config, deployment
from tests.support import provision
from tests.support.net import free_port
from tests.support.waiting import until_sync

# Ceilings for conditions that are polled, never fixed waits: on a loaded 2-core machine
# Phoenix's first start (database migrations) can take minutes.
START_CEILING_S = 600.0
QUERY_CEILING_S = 60.0
PROJECT = "podium-e2e"
pytestmark = pytest.mark.provisioned("phoenix")


@dataclass
class Phoenix:
    url: str          # the HTTP port: UI, REST API (/v1/...) and OTLP/HTTP (/v1/traces)
    log: Path


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    provision.ready("phoenix")  # installed in the background since collection
    work = tmp_path_factory.mktemp("phoenix")
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "PHOENIX_"))}  # Phoenix must not trace itself
    env.update({
        "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()), "PHOENIX_WORKING_DIR": str(work),
        # No outbound calls: no telemetry pixels, web fonts or sandbox downloads.
        "PHOENIX_TELEMETRY_ENABLED": "false", "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
        "PHOENIX_LOG_MIGRATIONS": "false",
    })
    log = work / "phoenix.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(provision.PHOENIX), "serve"], cwd=work, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"phoenix serve exited with {proc.returncode}:\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
            return _http_ok(f"{url}/healthz")
        try:
            until_sync(up, "phoenix serve to answer /healthz", START_CEILING_S)
        except AssertionError as exc:
            pytest.fail(f"{exc}:\n{log.read_text(errors='replace')[-3000:]}")
        yield Phoenix(url=url, log=log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


def start(span: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(span["start_time"])


def end(span: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(span["end_time"])


async def phoenix_spans(phoenix: Phoenix, trace_id: str, expected: int) -> list[dict[str, Any]]:
    """The trace's spans from Phoenix's REST API, polled until `expected` have been ingested
    (Phoenix inserts received spans in the background)."""
    url = f"{phoenix.url}/v1/projects/{PROJECT}/spans"
    params = {"trace_id": trace_id, "limit": "1000"}
    spans: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + QUERY_CEILING_S
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(url, params=params) as response:
                if response.status == 200:  # 404 until the project's first span is stored
                    body = await response.json()
                    assert body["next_cursor"] is None
                    spans = body["data"]
            if len(spans) >= expected or asyncio.get_running_loop().time() > deadline:
                return spans
            await asyncio.sleep(0.2)  # poll interval


# The install and start-up are the fixture's, with their own ceilings; this bounds the test.
@pytest.mark.timeout(300, func_only=True)
async def test_phoenix_receives_the_full_span_tree_of_one_request(
        phoenix: Phoenix, upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    for name in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    # Only the standard OpenTelemetry variables point Podium at Phoenix, as docs/tracing.md
    # says: Phoenix files spans by the `openinference.project.name` resource attribute (set
    # with OTEL_RESOURCE_ATTRIBUTES), and takes no OTLP metrics (POST /v1/metrics is a 405).
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "podium-e2e")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"openinference.project.name={PROJECT}")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    caplog.set_level(logging.WARNING, logger="opentelemetry")
    tel = telemetry.from_env("podium")
    assert tel.enabled
    config = {"key_store": {"path": ":memory:"},
              "storage": {"path": str(tmp_path / "podium.sqlite3")},
              **base_config(upstream.url)}
    # The cheapest deployment answers 500: the request falls back to the next, two attempts.
    config["model_list"][0] = deployment("chat", "sim-error500", upstream.url, quality=40,
                                         input_cost_per_token=0, output_cost_per_token=0)
    server = TestServer(build_app(parse_config(config, env={}), tel), host="127.0.0.1")
    await server.start_server()
    trace_id, caller_span_id = secrets.token_hex(16), secrets.token_hex(8)
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1",
                                    api_key=APP_KEY, max_retries=0)
        answer = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hello"}], max_tokens=50,
            temperature=0.5, extra_headers={"traceparent": f"00-{trace_id}-{caller_span_id}-01"})
        request_id = answer.headers["x-request-id"]
        usage = answer.parse().usage
        await client.close()
    finally:
        await server.close()  # shuts the tracer provider down: the batch is exported now
    export_errors = [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")]
    assert not export_errors  # the exporter was neither refused nor timed out

    # The request's spans in the order they start: the SERVER span and each upstream attempt
    # (CLIENT), the failed one first. The in-process hops are no spans of their own.
    expected = ["POST /v1/chat/completions", "chat sim-error500", "chat sim-dear"]
    spans = await phoenix_spans(phoenix, trace_id, len(expected))
    spans.sort(key=lambda s: (start(s), s["name"] != expected[0], end(s)))
    assert [s["name"] for s in spans] == expected
    by_name = {s["name"]: s for s in spans}

    # One trace, continued from the caller's traceparent; each attempt is a direct child of
    # the SERVER span, lies within it, and the attempts run one after the other.
    assert {s["context"]["trace_id"] for s in spans} == {trace_id}
    root = by_name["POST /v1/chat/completions"]
    assert root["parent_id"] == caller_span_id
    for span in spans[1:]:
        assert span["parent_id"] == root["context"]["span_id"], span["name"]
        assert start(root) <= start(span) <= end(span) <= end(root), span["name"]
    for before, after in pairwise(spans[1:]):
        assert end(before) <= start(after), (before["name"], after["name"])
    assert {s["name"]: s["status_code"] for s in spans} == {
        "POST /v1/chat/completions": "UNSET", "chat sim-error500": "ERROR",
        "chat sim-dear": "UNSET"}
    # Phoenix keeps no OpenTelemetry span kind; it classifies the attempts as LLM spans from
    # their gen_ai.* attributes (and the rest as UNKNOWN).
    assert {s["name"]: s["span_kind"] for s in spans} == {
        "POST /v1/chat/completions": "UNKNOWN", "chat sim-error500": "LLM",
        "chat sim-dear": "LLM"}

    attrs = root["attributes"]
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.route"] == "/v1/chat/completions"
    assert attrs["url.path"] == "/v1/chat/completions"
    assert attrs["http.response.status_code"] == 200
    assert attrs["podium.request_id"] == request_id
    # Every in-process hop's time and decision, on the SERVER span.
    hops = {k for k in attrs if k.startswith("podium.hop.")}
    assert hops == {"podium.hop.identity.ms", "podium.hop.permissions.ms", "podium.hop.route.ms",
                    "podium.hop.plugin.rate_limit.on_request.ms",
                    "podium.hop.plugin.budget.on_request.ms", "podium.hop.cache.ms"}
    assert all(isinstance(attrs[k], int | float) and attrs[k] >= 0 for k in hops)
    assert attrs["podium.key.name"] == "app" and attrs["podium.team"] == "support"
    assert attrs["podium.data_class"] == "public"
    assert attrs["podium.route.requested_model"] == "chat"
    assert attrs["podium.route.chain"] == ["sim-error500", "sim-dear"]
    assert attrs["podium.cache"] == "bypass"

    failed = by_name["chat sim-error500"]["attributes"]
    assert failed["error.type"] == "server" and failed["podium.attempt"] == 1
    attempt = by_name["chat sim-dear"]["attributes"]
    assert attempt["gen_ai.operation.name"] == "chat"
    assert attempt["gen_ai.provider.name"] == "openai"
    assert attempt["gen_ai.request.model"] == "sim-dear"
    assert attempt["gen_ai.response.model"] == "sim-dear"
    assert attempt["gen_ai.request.max_tokens"] == 50
    assert attempt["gen_ai.request.temperature"] == 0.5
    assert attempt["gen_ai.usage.input_tokens"] == usage.prompt_tokens > 0
    assert attempt["gen_ai.usage.output_tokens"] == usage.completion_tokens > 0
    assert attempt["gen_ai.response.finish_reasons"] == ["stop"]
    assert attempt["server.address"] == "127.0.0.1"
    assert attempt["server.port"] == int(upstream.url.split(":")[2].split("/")[0])
    assert attempt["podium.deployment.id"] == "sim-dear"
    assert attempt["podium.attempt"] == 2
    # Secrets never reach the backend.
    assert APP_KEY not in repr(spans) and UPSTREAM_KEY not in repr(spans)
