"""Podium's OTLP span encoder (`otlp_wire`) against the SDK's: for random spans (every attribute
type, sequences, events, links, status, kinds, remote and local parents, dropped counts,
resources and scopes, one or several of each) the bytes parse to the very message the SDK's
`encode_spans` builds; and the exporter that uses it delivers a real request's spans, over real
OTLP/HTTP (plain and gzip), to a receiver that decodes them to the SDK's message."""

from __future__ import annotations

import gzip
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import openai
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from gateway.app import build_app
from gateway.config import parse_config
from gateway.observability import telemetry
from gateway.observability.otlp_wire import OTLPWireSpanExporter, SpanEncoder
from tests.conftest import APP_KEY, Upstream, base_config
from tests.support.waiting import until

_text = st.text(max_size=12)
_int64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
_float = st.floats(allow_nan=False)
_scalar = st.one_of(st.booleans(), _int64, _float, _text, st.binary(max_size=6))
# What the SDK accepts as an attribute value (homogeneous sequences, None allowed inside), and
# what its encoder turns into nested arrays and key-value lists (event attributes are not
# validated by every path), plus values it cannot encode (an int beyond int64, a lone surrogate).
_value = st.one_of(
    _scalar,
    st.lists(st.booleans(), max_size=4).map(tuple),
    st.lists(st.one_of(st.none(), _int64), max_size=4).map(tuple),
    st.lists(_float, max_size=4).map(tuple),
    st.lists(_text, max_size=4).map(tuple),
    st.lists(st.lists(_scalar, max_size=3), max_size=2),
    st.dictionaries(_text, _scalar, max_size=3),
    st.just(None),
    st.integers(min_value=1 << 63, max_value=1 << 70),
    st.just("bad \ud800 surrogate"),
)
_plain_attributes = st.dictionaries(
    st.one_of(st.text(max_size=20), st.just("key \ud800")), _value, max_size=8)
# What the SDK records (BoundedAttributes, with a count of those dropped over its limit), or a
# plain mapping (what a ReadableSpan made by hand may hold).
_attributes = st.one_of(_plain_attributes, st.builds(
    lambda items, limit: BoundedAttributes(limit, items, immutable=False),
    _plain_attributes, st.one_of(st.none(), st.integers(0, 4))))
_ids = st.integers(min_value=1, max_value=(1 << 64) - 1)
_context = st.builds(
    SpanContext, trace_id=st.integers(min_value=1, max_value=(1 << 128) - 1), span_id=_ids,
    is_remote=st.booleans(), trace_flags=st.just(TraceFlags(1)),
    trace_state=st.one_of(st.none(), st.just(TraceState([("vendor", "a=1")])),
                          st.just(TraceState([("a", "1"), ("b", "2")]))))
_time = st.integers(min_value=0, max_value=(1 << 64) - 1)
_resources = [Resource.create({"service.name": "podium", "deployment.environment": "test"}),
              Resource({"service.name": "other", "n": 3, "tags": ("a", "b")}, "https://schema"),
              Resource({})]
_scopes = [InstrumentationScope("podium"), InstrumentationScope("lib", "1.2", "https://s"),
           InstrumentationScope("attrs", None, None, {"k": "v", "n": 1}), None]


def _bounded(items: list[Any], dropped: int) -> BoundedList[Any]:
    bounded: BoundedList[Any] = BoundedList(None)
    bounded.extend(items)
    bounded.dropped = dropped
    return bounded


@st.composite
def _span(draw: st.DrawFn) -> ReadableSpan:
    events = [Event(draw(_text), draw(st.one_of(st.none(), _attributes)), draw(_time))
              for _ in range(draw(st.integers(0, 3)))]
    links = [Link(draw(_context), draw(st.one_of(st.none(), _attributes)))
             for _ in range(draw(st.integers(0, 2)))]
    description = draw(st.one_of(st.none(), _text))
    code = draw(st.sampled_from(StatusCode))
    status = Status(code, description if code is StatusCode.ERROR else None)
    return ReadableSpan(
        name=draw(_text), context=draw(_context), parent=draw(st.one_of(st.none(), _context)),
        resource=draw(st.sampled_from(_resources)), attributes=draw(_attributes),
        events=_bounded(events, draw(st.integers(0, 3))) if draw(st.booleans()) else events,
        links=_bounded(links, draw(st.integers(0, 3))) if draw(st.booleans()) else links,
        kind=draw(st.sampled_from(SpanKind)), status=status,
        instrumentation_scope=draw(st.sampled_from(_scopes)),
        start_time=draw(st.one_of(st.none(), _time)), end_time=draw(st.one_of(st.none(), _time)))


# One encoder for every example, as an exporter keeps one: what it caches from earlier batches
# (keys, string values, resources, scopes) must never change a later batch's bytes.
_ENCODER = SpanEncoder()


def _sdk(spans: Any) -> ExportTraceServiceRequest:
    message: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(
        encode_spans(spans).SerializeToString())
    return message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_span(), max_size=5))
def test_random_spans_encode_to_the_sdks_message(spans: list[ReadableSpan]) -> None:
    logging.disable(logging.ERROR)  # both encoders log each value they cannot encode
    try:
        ours = ExportTraceServiceRequest.FromString(_ENCODER.encode(spans))
        assert ours == _sdk(spans)
    finally:
        logging.disable(logging.NOTSET)


def test_dropped_attribute_counts_are_encoded() -> None:
    attrs: Attributes = BoundedAttributes(2, {"a": 1, "b": "x", "c": 2.5}, immutable=False)
    span = ReadableSpan(name="s", context=SpanContext(1, 2, False), attributes=attrs,
                        resource=_resources[0], events=[Event("e", BoundedAttributes(
                            1, {"x": 1, "y": 2}), 5)], start_time=1, end_time=2)
    ours = ExportTraceServiceRequest.FromString(_ENCODER.encode([span]))
    assert ours.resource_spans[0].scope_spans[0].spans[0].dropped_attributes_count == 1
    assert ours.resource_spans[0].scope_spans[0].spans[0].events[0].dropped_attributes_count == 1
    assert ours == _sdk([span])


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver in its own thread (the exporter posts synchronously)."""
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf":
            self.bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Tee(InMemorySpanExporter):
    """Keeps the finished spans and sends them on through Podium's OTLP exporter."""

    def __init__(self, exporter: OTLPWireSpanExporter) -> None:
        super().__init__()
        self.exporter = exporter

    def export(self, spans: Any) -> SpanExportResult:
        super().export(spans)
        return self.exporter.export(spans)


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
async def test_a_real_requests_spans_reach_a_receiver_as_the_sdk_encodes_them(
        upstream: Upstream, compression: Compression) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    _Receiver.bodies.clear()
    exporter = OTLPWireSpanExporter(
        endpoint=f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces",
        compression=compression)
    tee = _Tee(exporter)
    tel = telemetry.with_exporter(tee)
    gw = TestServer(build_app(parse_config(base_config(upstream.url), env={}), tel),
                    host="127.0.0.1")
    await gw.start_server()
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1",
                                    api_key=APP_KEY, max_retries=0)
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hello"}])
        async def both_spans() -> bool:
            return len(tee.get_finished_spans()) >= 2
        await until(both_spans, "the SERVER and CLIENT spans are exported")
    finally:
        await gw.close()
        receiver.shutdown()
    spans = tee.get_finished_spans()
    received = [ExportTraceServiceRequest.FromString(b) for b in _Receiver.bodies]
    names = {s.name for m in received for rs in m.resource_spans for ss in rs.scope_spans
             for s in ss.spans}
    assert names == {"POST /v1/chat/completions", "chat sim-cheap"}
    server = next(s for s in spans if s.name == "POST /v1/chat/completions")
    assert len(server.attributes or {}) > 10
    merged = ExportTraceServiceRequest()
    for m in received:
        merged.resource_spans.extend(m.resource_spans)
    expected = ExportTraceServiceRequest()
    for span in spans:  # exported one by one (SimpleSpanProcessor), so compare one by one
        expected.resource_spans.extend(_sdk([span]).resource_spans)
    assert merged == expected


def test_the_standard_environment_gets_podiums_exporter() -> None:
    exporter = telemetry._otlp_exporter({})
    assert isinstance(exporter, OTLPWireSpanExporter)
    exporter.shutdown()  # type: ignore[no-untyped-call]
    assert exporter.export([]) is SpanExportResult.FAILURE
