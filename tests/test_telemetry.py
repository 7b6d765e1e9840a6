"""Spans: one per network hop (the SERVER span, a CLIENT span per upstream attempt), the
in-process hops as timings, decisions and events on the SERVER span (child spans again with
`telemetry.hop_spans`), GenAI attributes, failed attempts, traceparent continuity (and none of
it with tracing off), and OTLP/HTTP export configured purely by the standard environment
variables."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    default_getter,
    default_setter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import NoOpTracer, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.app import build_app
from gateway.config import parse_config
from gateway.observability import telemetry
from tests.conftest import (
    ADMIN,
    APP_KEY,
    UPSTREAM_KEY,
    GatewayFactory,
    RunningGateway,
    Upstream,
    base_config,
    deployment,
)
from tests.support.net import free_port
from tests.support.waiting import until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
MESSAGES = [{"role": "user", "content": "hello"}]
SERVER = "POST /v1/chat/completions"
# The in-process hops of a plain chat request with the default plugins (rate_limit and budget
# hook on_request; nothing hooks on_response).
CHAT_HOPS = ("identity", "permissions", "route", "plugin.rate_limit.on_request",
             "plugin.budget.on_request", "cache")


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def hop_times(span: ReadableSpan) -> dict[str, float]:
    """The SERVER span's `podium.hop.<name>.ms` attributes, by hop name."""
    return {k.removeprefix("podium.hop.").removesuffix(".ms"): v
            for k, v in (span.attributes or {}).items() if k.startswith("podium.hop.")}


def events(span: ReadableSpan) -> list[tuple[str, dict[str, object]]]:
    return [(e.name, dict(e.attributes or {})) for e in span.events]


async def test_a_chat_request_is_one_server_span_and_one_client_span(
        gateway: RunningGateway) -> None:
    await gateway.client().chat.completions.create(model="chat", messages=MESSAGES,
                                                   max_tokens=50, temperature=0.5)
    spans = gateway.spans.get_finished_spans()
    assert sorted(s.name for s in spans) == [SERVER, "chat sim-cheap"]
    [server] = by_name(spans, SERVER)
    [attempt] = by_name(spans, "chat sim-cheap")
    assert server.kind == SpanKind.SERVER and server.parent is None
    assert attempt.kind == SpanKind.CLIENT
    assert attempt.parent is not None and attempt.parent.span_id == server.context.span_id
    assert attempt.context.trace_id == server.context.trace_id
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
    # Every in-process hop that ran is timed on the SERVER span, within the request's time.
    times = hop_times(server)
    assert set(times) == set(CHAT_HOPS)
    assert all(isinstance(ms, float) and ms >= 0 for ms in times.values())
    assert server.end_time is not None and server.start_time is not None
    assert sum(times.values()) <= (server.end_time - server.start_time) / 1e6
    # ... with each hop's decision.
    attrs = server.attributes
    assert attrs["http.response.status_code"] == 200
    assert attrs["podium.key.name"] == "app" and attrs["podium.team"] == "support"
    assert attrs["podium.data_class"] == "public"
    assert attrs["podium.route.rule"] == "default"
    assert attrs["podium.route.requested_model"] == "chat"
    assert attrs["podium.route.chain"] == ("sim-cheap", "sim-dear")
    assert attrs["podium.cache"] == "bypass"
    assert server.events == ()  # nothing notable: no candidate dropped, no breaker moved


async def test_each_attempt_of_a_fallback_is_a_client_span(upstream: Upstream,
                                                            make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["model_list"][0] = deployment("chat", "sim-error500", upstream.url, quality=40,
                                         input_cost_per_token=0, output_cost_per_token=0)
    gw = await make_gateway(config)
    await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
    spans = gw.spans.get_finished_spans()
    assert sorted(s.name for s in spans) == [SERVER, "chat sim-dear", "chat sim-error500"]
    [server] = by_name(spans, SERVER)
    [failed] = by_name(spans, "chat sim-error500")
    [ok] = by_name(spans, "chat sim-dear")
    for attempt in (failed, ok):
        assert attempt.kind == SpanKind.CLIENT
        assert attempt.parent is not None and attempt.parent.span_id == server.context.span_id
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "server"
    assert failed.attributes["podium.attempt"] == 1
    assert ok.attributes["podium.attempt"] == 2
    assert "error.type" not in ok.attributes


async def test_hop_spans_bring_back_a_child_span_per_hop(upstream: Upstream,
                                                          make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["telemetry"] = {"hop_spans": True}
    gw = await make_gateway(config)
    await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
    spans = sorted(gw.spans.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert [s.name for s in spans] == [
        SERVER, "podium.identity", "podium.permissions", "podium.route",
        "podium.plugin.rate_limit", "podium.plugin.budget", "podium.cache", "chat sim-cheap"]
    server, spans_by = spans[0], {s.name: s for s in spans}
    for child in spans[1:]:
        assert child.parent is not None and child.parent.span_id == server.context.span_id
        assert child.kind == (SpanKind.CLIENT if child.name.startswith("chat") else
                              SpanKind.INTERNAL)
    # Each decision is on its hop's span, as before hop spans were made optional.
    assert spans_by["podium.identity"].attributes["podium.key.name"] == "app"
    assert spans_by["podium.route"].attributes["podium.route.chain"] == ("sim-cheap",
                                                                         "sim-dear")
    assert spans_by["podium.cache"].attributes["podium.cache"] == "bypass"
    for plugin in ("rate_limit", "budget"):
        assert dict(spans_by[f"podium.plugin.{plugin}"].attributes or {}) == {
            "podium.plugin.hook": "on_request"}
    assert "podium.route.chain" not in server.attributes
    # The hops' times are on the SERVER span all the same.
    assert set(hop_times(server)) == set(CHAT_HOPS)


async def test_a_dropped_candidate_is_an_event_on_the_server_span(
        gateway: RunningGateway) -> None:
    await gateway.client().chat.completions.create(
        model="chat", messages=MESSAGES, extra_headers={"x-podium-min-quality": "60"})
    [server] = by_name(gateway.spans.get_finished_spans(), SERVER)
    [(name, attrs)] = events(server)  # the kept candidate is the chain, no event
    assert name == "candidate.dropped"
    assert attrs["deployment"] == "sim-cheap" and attrs["source"] == "group"
    assert "quality" in str(attrs["reason"])
    assert server.attributes["podium.route.chain"] == ("sim-dear",)


async def test_a_breaker_opening_is_an_event_on_the_server_span(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["model_list"][:2] = [
        deployment("chat", "sim-down", f"http://127.0.0.1:{free_port()}/v1",
                   input_cost_per_token=1e-8),
        deployment("chat", "sim-ok", upstream.url, input_cost_per_token=1e-7)]
    config["routing"] = {"breaker": {"failures": 1, "cooldown_s": 60}}
    gw = await make_gateway(config)
    await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
    spans = gw.spans.get_finished_spans()
    [server] = by_name(spans, SERVER)
    assert events(server) == [("breaker.open", {"deployment": "sim-down", "attempt": 1})]
    [down] = by_name(spans, "chat sim-down")
    assert down.status.status_code == StatusCode.ERROR and down.events == ()


async def test_an_escalation_is_an_event_on_the_server_span(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["model_list"][:2] = [
        deployment("chat", "sim-refuse", upstream.url, quality=40, input_cost_per_token=1e-7),
        deployment("chat", "sim-strong", upstream.url, quality=90, input_cost_per_token=1e-6)]
    config["routing"] = {"default": {"strategy": "cascade"}}
    gw = await make_gateway(config)
    await gw.client().chat.completions.create(model="chat", messages=MESSAGES)
    spans = gw.spans.get_finished_spans()
    assert sorted(s.name for s in spans) == [SERVER, "chat sim-refuse", "chat sim-strong"]
    [server] = by_name(spans, SERVER)
    [(name, attrs)] = events(server)
    assert name == "cascade.escalate"
    assert attrs["deployment"] == "sim-refuse" and attrs["attempt"] == 1
    assert attrs["reason"]


async def test_a_hold_for_review_is_an_event_on_the_server_span(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["approvals"] = [{"name": "refunds", "match": {"last_user_message": "(?i)refund"}}]
    gw = await make_gateway(config)
    with pytest.raises(openai.PermissionDeniedError):
        await gw.client().chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "Refund order 7"}])
    [server] = by_name(gw.spans.get_finished_spans(), SERVER)
    assert events(server) == [("hold", {"plugin": "approval", "rule": "refunds"})]
    assert "podium.hop.plugin.approval.on_request.ms" in server.attributes


async def test_a_shadow_trials_events_are_on_its_own_span(upstream: Upstream,
                                                          make_gateway: GatewayFactory) -> None:
    """A trial runs in a task the request started, after the request's answer: what its calls
    see is the trial's, on its own `podium.shadow` span, never lost or put on the request's."""
    config = base_config(upstream.url)
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    config["model_list"].append(deployment("trial", "sim-cand", nowhere, quality=30))
    config["routing"] = {"breaker": {"failures": 1, "cooldown_s": 60}, "rules": [
        {"name": "support", "match": {"model": "chat"},
         "shadow": {"group": "trial", "share": 1.0}}]}
    gw = await make_gateway(config)
    await gw.client().chat.completions.create(model="chat", messages=MESSAGES)

    async def trial() -> list[ReadableSpan]:
        return by_name(gw.spans.get_finished_spans(), "podium.shadow")
    [shadow] = await until(trial, "the shadow trial's span")
    assert events(shadow) == [("breaker.open", {"deployment": "sim-cand", "attempt": 1})]
    [server] = by_name(gw.spans.get_finished_spans(), SERVER)
    assert server.events == ()


class _CountingPropagator(TraceContextTextMapPropagator):
    """The standard W3C propagator, counting its calls: with tracing off there must be none."""

    def __init__(self) -> None:
        self.calls = 0

    def extract(self, carrier: CarrierT, context: Context | None = None,
                getter: Getter[CarrierT] = default_getter) -> Context:
        self.calls += 1
        return super().extract(carrier, context, getter)

    def inject(self, carrier: CarrierT, context: Context | None = None,
               setter: Setter[CarrierT] = default_setter) -> None:
        self.calls += 1
        super().inject(carrier, context, setter)


async def test_tracing_off_reads_no_traceparent_and_sends_none(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    propagator = _CountingPropagator()
    off = telemetry.Telemetry(tracer=NoOpTracer(), propagator=propagator)
    config = base_config(upstream.url)
    config["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    gw = await make_gateway(config, tel=off)
    # A caller's valid traceparent, and a hostile one: neither is parsed, neither goes on.
    for traceparent in (f"00-{TRACE_ID}-{PARENT_ID}-01", "00-" + "z" * 4000 + "-01"):
        raw = await gw.client().chat.completions.with_raw_response.create(
            model="chat", messages=MESSAGES, extra_headers={"traceparent": traceparent})
        assert raw.status_code == 200 and "traceparent" not in raw.headers
    assert propagator.calls == 0
    assert [r for r in upstream.recorded if "traceparent" in r.headers] == []
    async with aiohttp.ClientSession() as session, session.get(
            gw.url.removesuffix("/v1") + "/admin/audit",
            headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        records = (await resp.json())["data"]
    assert len(records) == 2
    assert {(r["trace_id"], r["span_id"]) for r in records} == {("", "")}


async def test_traceparent_is_continued_and_propagated(gateway: RunningGateway,
                                                       upstream: Upstream) -> None:
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    await gateway.client().chat.completions.create(
        model="chat", messages=MESSAGES, extra_headers={"traceparent": traceparent})
    spans = gateway.spans.get_finished_spans()
    [server] = by_name(spans, SERVER)
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
    served, refused = sorted(by_name(spans, "POST /v1/embeddings"),
                             key=lambda s: s.attributes["http.response.status_code"])
    assert attempt.parent is not None and attempt.parent.span_id == served.context.span_id
    assert {"identity", "permissions", "route"} <= set(hop_times(served))
    assert set(hop_times(refused)) == {"identity"}  # the key was refused there
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
    names, services, route_attrs = set(), set(), set()
    for message in _Collector.received:
        for resource_spans in message.resource_spans:
            services |= {a.value.string_value for a in resource_spans.resource.attributes
                         if a.key == "service.name"}
            for scope in resource_spans.scope_spans:
                names |= {s.name for s in scope.spans}
                route_attrs |= {a.key for s in scope.spans if s.name == SERVER
                                for a in s.attributes}
    assert names == {SERVER, "chat sim-cheap"}
    assert "podium.hop.route.ms" in route_attrs
    assert services == {"podium-under-test"}
