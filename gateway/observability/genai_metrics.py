"""The OpenTelemetry GenAI client metrics: summed on the event loop, handed over at collection.

    gen_ai.client.operation.duration  (s)        one point per attempt; `error.type` on failures
    gen_ai.client.token.usage         ({token})  input and output (`gen_ai.token.type`), answered
                                                 attempts only

Recording each attempt through the SDK's histogram instrument cost about 85 µs of the event
loop's time (three `record` calls, each hashing its attributes, taking locks and offering an
exemplar). Here an attempt adds to plain points instead, one per attribute set: per-bucket
counts (bisected on the bounds), sum, count, min, max, and the last exemplar per bucket. The
metric reader takes them when it collects (the periodic reader's export thread, every
`OTEL_METRIC_EXPORT_INTERVAL`), so the SDK sees one batch per collection, not one call per
value. What the exporter receives is what the SDK's own histogram gave: the same names, units,
descriptions, attributes, explicit buckets (the SDK's default boundaries), min and max,
temporality (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`: cumulative, or delta) and
exemplars (`OTEL_METRICS_EXEMPLAR_FILTER`: trace_based by default: the sampled span that was
current, last per bucket, since the previous collection). The buckets are always explicit: an
exporter's preference for exponential histograms
(`OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION`) is not followed.

The loop and the export thread share the points under one lock, held for a few additions or
one swap, never while anything is encoded or sent.
"""

from __future__ import annotations

import math
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

# The SDK's default explicit bucket boundaries (what its Histogram instrument used).
BOUNDS = (0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0,
          7500.0, 10000.0)
DURATION = ("gen_ai.client.operation.duration", "GenAI operation duration", "s")
TOKEN_USAGE = ("gen_ai.client.token.usage", "Number of input and output tokens used", "{token}")
Key = tuple[tuple[str, str], ...]      # a point's attributes, in the order they are shown
_SCOPE = InstrumentationScope("podium")


class _Point:
    __slots__ = ("count", "counts", "exemplars", "max", "min", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.sum: float = 0                # stays an int for token counts, as the SDK's did
        self.count = 0
        self.min: float = math.inf
        self.max: float = -math.inf
        # Per bucket, the last exemplar offered: (value, when, span); made an Exemplar only
        # when collected.
        self.exemplars: dict[int, tuple[float, int, trace.SpanContext]] = {}

    def add(self, value: float, exemplar: tuple[int, trace.SpanContext] | None) -> None:
        bucket = bisect_left(BOUNDS, value)
        self.counts[bucket] += 1
        self.sum += value
        self.count += 1
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if exemplar is not None:
            self.exemplars[bucket] = (value, *exemplar)

    def merge(self, newer: _Point) -> None:
        """Add `newer`'s values (cumulative totals); its exemplars replace these."""
        self.counts = [a + b for a, b in zip(self.counts, newer.counts, strict=True)]
        self.sum += newer.sum
        self.count += newer.count
        self.min = min(self.min, newer.min)
        self.max = max(self.max, newer.max)
        self.exemplars = newer.exemplars

    def data_point(self, key: Key, start_ns: int, now_ns: int) -> HistogramDataPoint:
        return HistogramDataPoint(
            attributes=dict(key), start_time_unix_nano=start_ns, time_unix_nano=now_ns,
            count=self.count, sum=self.sum, bucket_counts=list(self.counts),
            explicit_bounds=BOUNDS, min=self.min, max=self.max,
            exemplars=[_exemplar(*self.exemplars[b]) for b in sorted(self.exemplars)])


Points = dict[Key, _Point]


class GenAIMetrics:
    def __init__(self, reader: MetricReader, resource: Resource,
                 env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.reader = reader
        self.resource = resource
        self.temporality = _histogram_temporality(env)
        self.exemplars = env.get("OTEL_METRICS_EXEMPLAR_FILTER", "trace_based").strip().lower()
        self._lock = threading.Lock()
        self._pending: tuple[Points, Points] = ({}, {})      # duration, token usage
        self._totals: tuple[Points, Points] = ({}, {})       # cumulative: all collected so far
        self._started_ns = self._collected_ns = time.time_ns()
        # What a MeterProvider does with its readers: this object is the reader's only source.
        # (An SDK-internal call, whose annotation does not match how the SDK calls it;
        # tests/test_metrics.py reads through a real reader to catch a change in it.)
        reader._set_collect_callback(self._collect)  # type: ignore[arg-type]

    @classmethod
    def create(cls, reader: MetricReader, resource: Resource) -> GenAIMetrics:
        return cls(reader, resource)

    def record(self, attrs: dict[str, str], seconds: float, input_tokens: int,
               output_tokens: int, error_type: str | None) -> None:
        """One upstream attempt: its duration, and for an answered one its token counts."""
        key = tuple(attrs.items())
        exemplar = self._exemplar()
        with self._lock:
            duration, usage = self._pending
            if error_type:
                _point(duration, (*key, ("error.type", error_type))).add(seconds, exemplar)
                return
            _point(duration, key).add(seconds, exemplar)
            _point(usage, (*key, ("gen_ai.token.type", "input"))).add(input_tokens, exemplar)
            _point(usage, (*key, ("gen_ai.token.type", "output"))).add(output_tokens, exemplar)

    def _exemplar(self) -> tuple[int, trace.SpanContext] | None:
        """When and in which span, if this attempt's values are offered as exemplars."""
        if self.exemplars == "always_off":
            return None
        span = trace.get_current_span().get_span_context()
        if self.exemplars == "always_on" or (span.is_valid and span.trace_flags.sampled):
            return time.time_ns(), span
        return None

    def _collect(self, reader: MetricReader, timeout_millis: float = 10_000,
                 **_: Any) -> MetricsData | None:
        """The reader's collection (on its own thread): everything since the last one."""
        now = time.time_ns()
        with self._lock:
            pending, self._pending = self._pending, ({}, {})
        if self.temporality is AggregationTemporality.DELTA:
            start, self._collected_ns, shown = self._collected_ns, now, pending
        else:
            start, shown = self._started_ns, self._totals
            for totals, new in zip(self._totals, pending, strict=True):
                for total in totals.values():    # exemplars are since the last collection
                    total.exemplars = {}
                for key, point in new.items():
                    _point(totals, key).merge(point)
        metrics = [Metric(name=name, description=description, unit=unit,
                          data=Histogram([p.data_point(k, start, now) for k, p in points.items()],
                                         self.temporality))
                   for (name, description, unit), points in zip((DURATION, TOKEN_USAGE), shown,
                                                                strict=True) if points]
        if not metrics:
            return None
        return MetricsData([ResourceMetrics(self.resource, [ScopeMetrics(_SCOPE, metrics, "")],
                                            self.resource.schema_url)])

    def shutdown(self) -> None:
        """A last collection and export (the periodic reader's), then the reader stops."""
        self.reader.shutdown()


def _exemplar(value: float, at_ns: int, span: trace.SpanContext) -> Exemplar:
    ids = (span.span_id, span.trace_id) if span.is_valid else (None, None)
    return Exemplar({}, value, at_ns, *ids)


def _point(points: Points, key: Key) -> _Point:
    point = points.get(key)
    if point is None:
        point = points[key] = _Point()
    return point


def _histogram_temporality(env: Mapping[str, str]) -> AggregationTemporality:
    """The exporter's preference, read as the OTLP exporter reads it: delta for histograms
    under DELTA and LOWMEMORY, cumulative otherwise."""
    preference = env.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "CUMULATIVE")
    if preference.strip().upper() in ("DELTA", "LOWMEMORY"):
        return AggregationTemporality.DELTA
    return AggregationTemporality.CUMULATIVE
