"""The OpenTelemetry Python SDK's own cost per span: the floor under any traced request.

Measured in-process with the set-up `podium serve` uses when tracing is on (a TracerProvider
with a Resource, a BatchSpanProcessor, the OTLP protobuf encoder), on spans shaped like
Podium's: a SERVER span with HTTP attributes, hop spans with a few `podium.*` attributes, and a
CLIENT span with the GenAI attributes. No network: the encoded bytes are dropped.

- `create_us`: start, set attributes, end, hand over to the batch processor (the event loop
  pays this on every request);
- `encode_us`: the OTLP protobuf encoding in the exporter thread (it holds the GIL meanwhile,
  so on one core it comes out of the same budget).

Run on its own: `python -m bench.otel_floor` (pin it with `taskset -c 1` to match the bench).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

_SERVER = {"http.request.method": "POST", "http.route": "/v1/chat/completions",
           "url.path": "/v1/chat/completions", "podium.request_id": "req_0123456789abcdef",
           "http.response.status_code": 200}
_HOP = {"podium.key.id": "key_0123456789", "podium.team": "support", "podium.hop": "route"}
_CLIENT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
           "gen_ai.request.model": "gpt-4o-mini", "podium.deployment.id": "mock-cheap",
           "podium.attempt": 1, "server.address": "127.0.0.1", "server.port": 8001,
           "gen_ai.request.temperature": 0.7, "gen_ai.usage.input_tokens": 12,
           "gen_ai.usage.output_tokens": 9, "gen_ai.response.model": "gpt-4o-mini",
           "gen_ai.response.finish_reasons": ["stop"]}
HOPS = 6  # identity, permissions, route, two request-side plugins, cache


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def _one_request(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("POST /v1/chat/completions",
                                      kind=trace.SpanKind.SERVER) as root:
        root.set_attributes(_SERVER)
        for _ in range(HOPS):
            with tracer.start_as_current_span("podium.hop") as hop:
                hop.set_attributes(_HOP)
        client = tracer.start_span("chat gpt-4o-mini", kind=trace.SpanKind.CLIENT)
        client.set_attributes(_CLIENT)
        client.end()


def measure(requests: int = 3000) -> dict[str, Any]:
    keep = _Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "podium"}))
    provider.add_span_processor(BatchSpanProcessor(keep, max_queue_size=requests * 10))
    tracer = provider.get_tracer("podium")
    for _ in range(200):  # warm-up
        _one_request(tracer)
    started = time.perf_counter()
    for _ in range(requests):
        _one_request(tracer)
    created_s = time.perf_counter() - started
    provider.force_flush()
    spans = keep.spans[-requests * (HOPS + 2):]
    started = time.perf_counter()
    for i in range(0, len(spans), 512):  # the batch processor's default export size
        encode_spans(spans[i:i + 512]).SerializePartialToString()
    encoded_s = time.perf_counter() - started
    provider.shutdown()
    per_span = len(spans) / requests
    create_us = created_s / len(spans) * 1e6
    encode_us = encoded_s / len(spans) * 1e6
    return {"spans_per_request": per_span, "create_us_per_span": round(create_us, 1),
            "encode_us_per_span": round(encode_us, 1),
            "floor_us_per_request": round((create_us + encode_us) * per_span, 1)}


def main() -> int:
    floor = measure()
    print(f"{floor['spans_per_request']:g} spans per request: "
          f"{floor['create_us_per_span']} µs to create and end each, "
          f"{floor['encode_us_per_span']} µs to encode each; "
          f"{floor['floor_us_per_request']} µs per request before any other work")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
