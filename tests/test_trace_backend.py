"""Traces end to end in a real tracing backend: Arize Phoenix, queried through its REST API.

Phoenix is an OTLP-native trace store that LLM teams run (`pip install arize-phoenix;
phoenix serve`); it is the real backend installable from the package registries these machines
reach (Jaeger and the OpenTelemetry Collector ship as binaries and images, not packages). It
runs as its own process, from its own venv (`.venv-phoenix/`, provisioned by
tests/support/provision.py on first use, in the background, with the pinned version), on free
loopback ports with a throw-away working directory and its telemetry off.

A real gateway is pointed at it with nothing but the standard OpenTelemetry variables; one chat
request carrying a W3C `traceparent` is made with the official `openai` SDK, and the whole span
tree of that request is read back from Phoenix: names, parent links, trace id, attributes.
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
from tests.conftest import APP_KEY, UPSTREAM_KEY, Upstream, base_config
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

    # The request's spans in the order they start: the SERVER span, each hop, the plugins that
    # hook on_request (rate_limit, budget; no plugin hooks on_response in this config), the
    # cache lookup and the one upstream attempt (CLIENT).
    expected = ["POST /v1/chat/completions", "podium.identity", "podium.permissions",
                "podium.route", "podium.plugin.rate_limit", "podium.plugin.budget",
                "podium.cache", "chat sim-cheap"]
    spans = await phoenix_spans(phoenix, trace_id, len(expected))
    spans.sort(key=lambda s: (start(s), s["name"] != expected[0], end(s)))
    assert [s["name"] for s in spans] == expected
    by_name = {s["name"]: s for s in spans}

    # One trace, continued from the caller's traceparent; every hop, plugin and upstream
    # attempt is a direct child of the SERVER span, and lies within it.
    assert {s["context"]["trace_id"] for s in spans} == {trace_id}
    root = by_name["POST /v1/chat/completions"]
    assert root["parent_id"] == caller_span_id
    for span in spans[1:]:
        assert span["parent_id"] == root["context"]["span_id"], span["name"]
        assert start(root) <= start(span) <= end(span) <= end(root), span["name"]
    for before, after in pairwise(spans[1:]):  # the hops run one by one
        assert end(before) <= start(after), (before["name"], after["name"])
    assert all(s["status_code"] == "UNSET" for s in spans)
    # Phoenix keeps no OpenTelemetry span kind; it classifies the attempt as an LLM span from
    # its gen_ai.* attributes (and the rest as UNKNOWN).
    assert {s["name"]: s["span_kind"] for s in spans} == {
        name: "LLM" if name == "chat sim-cheap" else "UNKNOWN" for name in expected}

    attrs = root["attributes"]
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.route"] == "/v1/chat/completions"
    assert attrs["url.path"] == "/v1/chat/completions"
    assert attrs["http.response.status_code"] == 200
    assert attrs["podium.request_id"] == request_id

    attrs = by_name["podium.identity"]["attributes"]
    assert attrs["podium.key.name"] == "app" and attrs["podium.team"] == "support"
    attrs = by_name["podium.permissions"]["attributes"]
    assert attrs["podium.data_class"] == "public"
    attrs = by_name["podium.route"]["attributes"]
    assert attrs["podium.route.requested_model"] == "chat"
    assert attrs["podium.route.chain"] == ["sim-cheap", "sim-dear"]
    assert [(e["name"], e["attributes"]["deployment"], e["attributes"]["kept"])
            for e in by_name["podium.route"]["events"]] == [
        ("candidate", "sim-cheap", True), ("candidate", "sim-dear", True)]
    assert by_name["podium.cache"]["attributes"]["podium.cache"] == "bypass"
    for plugin in ("rate_limit", "budget"):
        assert by_name[f"podium.plugin.{plugin}"]["attributes"] == {
            "podium.plugin.hook": "on_request"}

    attempt = by_name["chat sim-cheap"]["attributes"]
    assert attempt["gen_ai.operation.name"] == "chat"
    assert attempt["gen_ai.provider.name"] == "openai"
    assert attempt["gen_ai.request.model"] == "sim-cheap"
    assert attempt["gen_ai.response.model"] == "sim-cheap"
    assert attempt["gen_ai.request.max_tokens"] == 50
    assert attempt["gen_ai.request.temperature"] == 0.5
    assert attempt["gen_ai.usage.input_tokens"] == usage.prompt_tokens > 0
    assert attempt["gen_ai.usage.output_tokens"] == usage.completion_tokens > 0
    assert attempt["gen_ai.response.finish_reasons"] == ["stop"]
    assert attempt["server.address"] == "127.0.0.1"
    assert attempt["server.port"] == int(upstream.url.split(":")[2].split("/")[0])
    assert attempt["podium.deployment.id"] == "sim-cheap"
    assert attempt["podium.attempt"] == 1
    # Secrets never reach the backend.
    assert APP_KEY not in repr(spans) and UPSTREAM_KEY not in repr(spans)
