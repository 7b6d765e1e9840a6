"""Prometheus samples kept in plain Python on the event loop, read by one collector at scrape.

prometheus_client's own metric objects take a lock, validate labels and (under `--workers`)
write to an mmap file on every `inc`/`observe`. Podium's samples are only ever touched from
the event loop, so they live here as plain values instead: a counter child is one float, a
histogram child a list of per-bucket counts (found by bisecting the bounds) and a sum, a gauge
child a value and when it was set. `SampleCollector.collect` turns them into metric families
when `/metrics` is scraped; that is the only time prometheus_client sees them.

Each family keeps at most `MAX_SERIES` label sets: past that, a new one is counted under every
label "other", so a label that turns out to be unbounded costs counts, never memory.

A snapshot (`snapshot()`) is the same samples as plain JSON-ready data, for `--workers`
(`metrics_pool`): families summed, gauges merged by their `mode`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any, Generic, Literal, TypeVar

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

MAX_SERIES = 1000                      # label sets per metric (see the module docstring)
# How workers' values of one gauge combine: the highest, the sum over live workers, or the
# one set last among live workers (as prometheus_client's multiprocess modes of those names).
GaugeMode = Literal["max", "livesum", "livemostrecent"]
Labels = tuple[str, ...]
Snapshot = dict[str, list[Any]]        # family name → [[labels, value...], ...]
C = TypeVar("C")
F = TypeVar("F", "Counter", "Histogram", "Gauge")


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)   # per bucket (not cumulative); the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (`le` is inclusive).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class GaugeChild:
    __slots__ = ("at", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.at = 0.0                  # wall clock of the last set (for "livemostrecent")

    def set(self, value: float) -> None:
        self.value = value
        self.at = time.time()


class _Family(ABC, Generic[C]):
    kind: str

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str]) -> None:
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self.children: dict[Labels, C] = {}
        if not self.labelnames:        # an unlabelled metric is shown from the start, at zero
            self.children[()] = self._new()

    @abstractmethod
    def _new(self) -> C:
        """A fresh child of this family's kind."""

    def labels(self, *values: str) -> C:
        child = self.children.get(values)
        if child is None:
            child = self._made(values)
        return child

    def _made(self, values: Labels) -> C:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values!r}")
        if len(self.children) >= MAX_SERIES:
            values = ("other",) * len(values)
            child = self.children.get(values)
            if child is not None:
                return child
        child = self.children[values] = self._new()
        return child


class Counter(_Family[CounterChild]):
    kind = "counter"

    def _new(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self.children[()].value += amount

    def family(self, values: dict[Labels, float]) -> Metric:
        metric = CounterMetricFamily(self.name, self.help, labels=self.labelnames)
        for labels, value in values.items():
            metric.add_metric(labels, value)
        return metric

    def dump(self) -> list[Any]:
        return [[list(k), c.value] for k, c in self.children.items()]


class Histogram(_Family[HistogramChild]):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str],
                 buckets: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        # prometheus_client's own spelling of a bound ("1.0", "1e-06"), untyped there.
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        super().__init__(name, help_text, labelnames)

    def _new(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def family(self, values: dict[Labels, tuple[list[int], float]]) -> Metric:
        metric = HistogramMetricFamily(self.name, self.help, labels=self.labelnames)
        for labels, (counts, total) in values.items():
            cumulative, running = [], 0
            for le, count in zip(self._les, counts, strict=True):
                running += count
                cumulative.append((le, float(running)))
            metric.add_metric(labels, cumulative, total)
        return metric

    def dump(self) -> list[Any]:
        return [[list(k), c.counts, c.sum] for k, c in self.children.items()]


class Gauge(_Family[GaugeChild]):
    kind = "gauge"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = (),
                 mode: GaugeMode = "max") -> None:
        self.mode: GaugeMode = mode
        super().__init__(name, help_text, labelnames)

    def _new(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        self.children[()].set(value)

    def family(self, values: dict[Labels, float]) -> Metric:
        metric = GaugeMetricFamily(self.name, self.help, labels=self.labelnames)
        for labels, value in values.items():
            metric.add_metric(labels, value)
        return metric

    def dump(self) -> list[Any]:
        return [[list(k), c.value, c.at] for k, c in self.children.items()]


AnyFamily = Counter | Histogram | Gauge


class Samples:
    """The families of one process, in the order they were made (the exposition's order)."""

    def __init__(self) -> None:
        self.families: list[AnyFamily] = []

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help_text, labelnames))

    def histogram(self, name: str, help_text: str, labelnames: Sequence[str],
                  buckets: Sequence[float]) -> Histogram:
        return self._add(Histogram(name, help_text, labelnames, buckets))

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = (),
              mode: GaugeMode = "max") -> Gauge:
        return self._add(Gauge(name, help_text, labelnames, mode))

    def _add(self, family: F) -> F:
        self.families.append(family)
        return family

    def snapshot(self) -> Snapshot:
        return {f.name: f.dump() for f in self.families}

    def merged(self, snapshots: Sequence[tuple[Snapshot, bool]]) -> Iterator[Metric]:
        """Metric families from several processes' snapshots, each with whether its process
        is alive: counters and histograms summed (a dead worker's counts stay, so nothing goes
        backwards), gauges by their mode."""
        for family in self.families:
            rows = [(row, live) for snap, live in snapshots for row in snap.get(family.name, ())]
            if isinstance(family, Histogram):
                yield family.family(_summed_histograms(rows, len(family.bounds) + 1))
            elif isinstance(family, Counter):
                counts: dict[Labels, float] = {}
                for row, _ in rows:
                    labels = tuple(row[0])
                    counts[labels] = counts.get(labels, 0.0) + row[1]
                yield family.family(counts)
            else:
                yield family.family(_merged_gauges(rows, family.mode))

    def local(self) -> Iterator[Metric]:
        """Metric families from this process's own samples."""
        for family in self.families:
            if isinstance(family, Histogram):
                yield family.family({k: (c.counts, c.sum) for k, c in family.children.items()})
            else:
                yield family.family({k: c.value for k, c in family.children.items()})


def _summed_histograms(rows: list[tuple[list[Any], bool]],
                       width: int) -> dict[Labels, tuple[list[int], float]]:
    summed: dict[Labels, tuple[list[int], float]] = {}
    for row, _ in rows:
        labels, counts, total = tuple(row[0]), row[1], row[2]
        if len(counts) != width:       # written by a build with other buckets: not comparable
            continue
        have = summed.get(labels)
        if have is None:
            summed[labels] = (list(counts), total)
        else:
            summed[labels] = ([a + b for a, b in zip(have[0], counts, strict=True)],
                              have[1] + total)
    return summed


def _merged_gauges(rows: list[tuple[list[Any], bool]], mode: GaugeMode) -> dict[Labels, float]:
    merged: dict[Labels, tuple[float, float]] = {}   # labels → (value, set at)
    for row, live in rows:
        labels, value, at = tuple(row[0]), row[1], row[2]
        if mode != "max" and not live:
            continue
        have = merged.get(labels)
        if have is None:
            merged[labels] = (value, at)
        elif mode == "max":
            merged[labels] = (max(have[0], value), at)
        elif mode == "livesum":
            merged[labels] = (have[0] + value, at)
        elif at > have[1]:             # livemostrecent
            merged[labels] = (value, at)
    return {labels: value for labels, (value, _) in merged.items()}
