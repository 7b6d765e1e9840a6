"""Tracing set-up from the standard OpenTelemetry environment, and the span vocabulary.

Podium never installs a global tracer provider: it builds its own and hangs it on the app, so
tests (and an embedding application) can run several gateways with separate exporters. Tracing
is off unless the environment asks for it (`OTEL_TRACES_EXPORTER`, or an OTLP endpoint), and
when off every span is a no-op that costs almost nothing.

Span names: `POST /v1/chat/completions` (SERVER) for the request, `chat {model}` /
`embeddings {model}` (CLIENT) for each upstream attempt, following the OpenTelemetry GenAI
semantic conventions. The in-process hops are attributes and events on the SERVER span
(`hops.py`), or, with `telemetry.hop_spans: true`, child spans `podium.<hop>` (INTERNAL) too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypedDict

from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.observability import hops
from gateway.observability.genai_metrics import GenAIMetrics
from gateway.observability.hops import HopRecord

log = logging.getLogger("podium.telemetry")


@dataclass(frozen=True)
class Telemetry:
    tracer: trace.Tracer
    propagator: TextMapPropagator
    provider: TracerProvider | None = None
    genai: GenAIMetrics | None = None
    hop_spans: bool = False            # a child span per in-process hop (`telemetry.hop_spans`)

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def span(self, name: str, hook: str | None = None) -> AbstractContextManager[HopRecord]:
        """An in-process hop, by its span name: timed and recorded on the request's SERVER span
        (a child span of its own with `hop_spans`); when tracing is off, a shared no-op that
        costs nothing to enter."""
        if self.provider is None:
            return hops.NO_HOP
        return hops.hop(name, hook)

    def shutdown(self) -> None:
        """Flush and stop exporting; called once when the app closes."""
        if self.provider is not None:
            self.provider.shutdown()
        if self.genai is not None:
            self.genai.shutdown()


class TraceIds(TypedDict):
    trace_id: str
    span_id: str


def current_trace_ids() -> TraceIds:
    """The current span's ids (the request's SERVER span, for the audit record and feedback
    links); empty when not tracing."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {"trace_id": "", "span_id": ""}
    return {"trace_id": format(span_context.trace_id, "032x"),
            "span_id": format(span_context.span_id, "016x")}


def disabled() -> Telemetry:
    return Telemetry(tracer=trace.NoOpTracer(), propagator=TraceContextTextMapPropagator())


def with_exporter(exporter: SpanExporter, service_name: str = "podium",
                  *, batch: bool = False, metrics: MetricReader | None = None) -> Telemetry:
    provider = TracerProvider(resource=_resource(service_name))
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    genai = GenAIMetrics.create(metrics, _resource(service_name)) if metrics is not None else None
    return Telemetry(tracer=provider.get_tracer("podium"),
                     propagator=TraceContextTextMapPropagator(), provider=provider, genai=genai)


def from_env(service_name: str, env: Mapping[str, str] | None = None) -> Telemetry:
    """Build tracing from the standard OTEL_* variables; off when none asks for it."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return disabled()
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    has_endpoint = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    if exporter_name in ("", "otlp") and (has_endpoint or exporter_name == "otlp"):
        return with_exporter(_otlp_exporter(env), service_name, batch=True,
                             metrics=_otlp_metrics(env))
    if exporter_name == "console":
        return with_exporter(ConsoleSpanExporter(), service_name, batch=True)
    if exporter_name not in ("", "none"):
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported; tracing is off", exporter_name)
    return disabled()


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if protocol != "http/protobuf":
        log.warning("OTLP protocol %r is not installed; using http/protobuf", protocol)
    from gateway.observability.otlp_wire import OTLPWireSpanExporter

    # The SDK's OTLP exporter with a leaner encoder (otlp_wire.py); it reads the endpoint,
    # headers, compression and timeout from OTEL_* itself.
    return OTLPWireSpanExporter()


def _otlp_metrics(env: Mapping[str, str]) -> MetricReader | None:
    """GenAI client metrics over OTLP too, unless OTEL_METRICS_EXPORTER says none."""
    if env.get("OTEL_METRICS_EXPORTER", "otlp").strip().lower() == "none":
        return None
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return PeriodicExportingMetricReader(OTLPMetricExporter())


def _resource(service_name: str) -> Resource:
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, but attributes passed
    # here would win over them; the standard variable must win over Podium's config.
    attrs = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    return Resource.create(attrs)
