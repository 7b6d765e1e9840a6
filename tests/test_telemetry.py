"""Spans: names, kinds, parent/child links, GenAI attributes, failed attempts, traceparent
continuity, and OTLP/HTTP export configured purely by the standard environment variables."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import openai
import pytest
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from gateway.app import build_app
from gateway.config import parse_config
from gateway.observability import telemetry
from tests.conftest import (
    APP_KEY,
    UPSTREAM_KEY,
    GatewayFactory,
    RunningGateway,
    Upstream,
    base_config,
    deployment,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
MESSAGES = [{"role": "user", "content": "hello"}]


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_span_tree_of_a_chat_request(gateway: RunningGateway) -> None:
    await gateway.client().chat.completions.create(model="chat", messages=MESSAGES,
                                                   max_tokens=50, temperature=0.5)
    spans = gateway.spans.get_finished_spans()
    [server] = by_name(spans, "POST /v1/chat/completions")
    [identity] = by_name(spans, "podium.identity")
    [route] = by_name(spans, "podium.route")
    [attempt] = by_name(spans, "chat sim-cheap")
    assert server.kind == SpanKind.SERVER and server.parent is None
    assert attempt.kind == SpanKind.CLIENT
    for child in (identity, route, attempt):
        assert child.parent is not None and child.parent.span_id == server.context.span_id
        assert child.context.trace_id == server.context.trace_id
    attrs = attempt.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "sim-cheap"
    assert attrs["gen_ai.response.model"] == "sim-cheap"
    assert attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.request.max_tokens"] == 50
    assert attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["server.address"] == "127.0.0.1"
    assert server.attributes["http.response.status_code"] == 200
    assert route.attributes["podium.route.chain"] == ("sim-cheap", "sim-dear")


async def test_failed_attempt_has_its_own_span(upstream: Upstream,
                                               make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["model_list"][0] = deployment("chat", "sim-error500", upstream.url, quality=40,
                                         input_cost_per_token=0, output_cost_per_token=0)
    gw = await make_gateway(config)
    await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
    spans = gw.spans.get_finished_spans()
    [failed] = by_name(spans, "chat sim-error500")
    [ok] = by_name(spans, "chat sim-dear")
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "server"
    assert failed.attributes["podium.attempt"] == 1
    assert ok.attributes["podium.attempt"] == 2
    assert "error.type" not in ok.attributes


async def test_traceparent_is_continued_and_propagated(gateway: RunningGateway,
                                                       upstream: Upstream) -> None:
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    await gateway.client().chat.completions.create(
        model="chat", messages=MESSAGES, extra_headers={"traceparent": traceparent})
    spans = gateway.spans.get_finished_spans()
    [server] = by_name(spans, "POST /v1/chat/completions")
    [attempt] = by_name(spans, "chat sim-cheap")
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID
    sent = upstream.recorded[-1].headers["traceparent"]
    _, trace_id, parent_id, _ = sent.split("-")
    assert trace_id == TRACE_ID
    assert parent_id == format(attempt.context.span_id, "016x")


async def test_stream_attempt_span_records_usage(gateway: RunningGateway) -> None:
    stream = await gateway.client().chat.completions.create(model="chat", messages=MESSAGES,
                                                            stream=True)
    async for _ in stream:
        pass
    # The attempt span ends when the upstream stream is exhausted, before [DONE] is written.
    [attempt] = by_name(gateway.spans.get_finished_spans(), "chat sim-cheap")
    assert attempt.attributes["gen_ai.usage.output_tokens"] > 0
    assert attempt.attributes["gen_ai.response.finish_reasons"] == ("stop",)


async def test_embeddings_span_and_no_secrets_anywhere(gateway: RunningGateway) -> None:
    await gateway.client().embeddings.create(model="embed", input="x")
    with pytest.raises(openai.AuthenticationError):
        await gateway.client("sk-wrong-key-123456").embeddings.create(model="embed", input="x")
    spans = gateway.spans.get_finished_spans()
    [attempt] = by_name(spans, "embeddings sim-embed")
    assert attempt.attributes["gen_ai.operation.name"] == "embeddings"
    dump = json.dumps([s.to_json() for s in spans])
    for secret in (APP_KEY, UPSTREAM_KEY, "sk-wrong-key-123456"):
        assert secret not in dump


def test_tracing_is_off_without_otel_environment() -> None:
    assert not telemetry.from_env("podium", env={}).enabled
    assert not telemetry.from_env("podium", env={"OTEL_TRACES_EXPORTER": "none"}).enabled
    assert not telemetry.from_env("podium", env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}).enabled


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver in its own thread: the exporter posts synchronously, so a receiver
    on the gateway's event loop would deadlock with the flush at shutdown."""
    received: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        if self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf":
            self.received.append(message)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_otlp_http_export_from_standard_environment(
        upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT",
                       f"http://127.0.0.1:{collector.server_address[1]}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "podium-under-test")
    tel = telemetry.from_env("ignored")
    assert tel.enabled
    app = build_app(parse_config(base_config(upstream.url), env={}), tel)
    gw = TestServer(app, host="127.0.0.1")
    await gw.start_server()
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key=APP_KEY,
                                max_retries=0)
    await client.chat.completions.create(model="chat", messages=MESSAGES)
    await gw.close()  # app cleanup shuts the tracer provider down, which flushes the batch
    collector.shutdown()
    names, services = set(), set()
    for message in _Collector.received:
        for resource_spans in message.resource_spans:
            services |= {a.value.string_value for a in resource_spans.resource.attributes
                         if a.key == "service.name"}
            for scope in resource_spans.scope_spans:
                names |= {s.name for s in scope.spans}
    assert {"POST /v1/chat/completions", "podium.route", "chat sim-cheap"} <= names
    assert services == {"podium-under-test"}
