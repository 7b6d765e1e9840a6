"""The dashboard's numbers over time: cumulative counters read from the metrics, a `Point` every
few seconds kept for the last hour, and the window every tile of the page is computed over.

Every tile shows the same window (the page's 5 min / 15 min / 1 h), computed here, so a p95 can
never sit next to "no requests" of a different window, and the page shows exactly what
`/admin/dashboard/data` says. History lives in the gateway, not the browser, so a reload keeps
the charts: one `History` per process (per worker with `--workers N`, each sampling the metrics
of the whole pool); the page says which process answered.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

KEEP_S = 3600.0                        # history served to a page that loads
SAMPLE_S = 5.0                         # one point every this many seconds
WINDOWS_S = (300, 900, 3600)           # the page's choices; anything else is refused

Samples = dict[str, list[tuple[dict[str, str], float]]]
Bucket = tuple[float, float]           # (upper bound, cumulative count)


def collected(registry: CollectorRegistry) -> Samples:
    """The registry's samples as `parse_exposition` reads them from its exposition, taken
    from the collectors directly: no text rendered and parsed again on every sample."""
    samples: Samples = {}
    for family in registry.collect():
        for s in family.samples:
            if not s.name.endswith("_created"):
                samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples


def parse_exposition(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.endswith("_created"):
                samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def sum_by(samples: Samples, name: str, label: str, skip: Iterable[str] = ()) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in samples.get(name, ()):
        key = labels.get(label, "")
        if key not in skip:
            out[key] = out.get(key, 0.0) + value
    return {k: round(v, 10) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def buckets(samples: Samples, name: str) -> list[Bucket]:
    """Cumulative (upper bound, count) pairs of a histogram, summed over its label sets."""
    by_le: dict[float, float] = {}
    for labels, value in samples.get(name + "_bucket", ()):
        le = float(labels["le"])
        by_le[le] = by_le.get(le, 0.0) + value
    return sorted(by_le.items())


def quantile(q: float, cumulative: list[Bucket]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank, lower, below = q * cumulative[-1][1], 0.0, 0.0
    for upper, count in cumulative:
        if count >= rank:
            if upper == float("inf"):
                return lower
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, count
    return lower


@dataclass(frozen=True, slots=True)
class Point:
    """The cumulative counters at one moment (since the process, or the pool, started)."""
    t: float
    requests: float
    errors: float                      # answered with a 5xx
    rejected: float                    # refused by Podium with a 4xx, before routing or after
    latency: tuple[Bucket, ...]
    overhead: tuple[Bucket, ...]
    cache_hits: float
    cache_lookups: float               # hits and misses (a bypass is no lookup)
    escalated: float                   # escalated requests (see routing/fallback.py)
    tokens: float
    spend_by_team: Mapping[str, float] = field(default_factory=dict)
    spend_by_model: Mapping[str, float] = field(default_factory=dict)
    workflows: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, samples: Samples, t: float, groups: Mapping[str, str]) -> Point:
        statuses = sum_by(samples, "podium_requests_total", "status")
        cache = sum_by(samples, "podium_cache_requests_total", "result")
        by_model: dict[str, float] = {}
        for dep, usd in sum_by(samples, "podium_cost_usd_total", "deployment").items():
            by_model[groups.get(dep, dep)] = round(by_model.get(groups.get(dep, dep), 0.0)
                                                   + usd, 10)
        return cls(
            t=t, requests=sum(statuses.values()),
            errors=sum(v for k, v in statuses.items() if k.startswith("5")),
            rejected=sum(sum_by(samples, "podium_rejections_total", "code").values()),
            latency=tuple(buckets(samples, "podium_request_duration_seconds")),
            overhead=tuple(buckets(samples, "podium_gateway_overhead_seconds")),
            cache_hits=cache.get("hit", 0.0),
            cache_lookups=cache.get("hit", 0.0) + cache.get("miss", 0.0),
            escalated=sum(sum_by(samples, "podium_cascade_escalations_total", "route").values()),
            tokens=sum(sum_by(samples, "podium_tokens_total", "direction").values()),
            spend_by_team=sum_by(samples, "podium_cost_usd_total", "team"),
            spend_by_model=dict(sorted(by_model.items(), key=lambda kv: -kv[1])),
            workflows=workflow_totals(samples))

    def as_json(self) -> dict[str, Any]:
        return {"t": self.t, "requests": self.requests, "errors": self.errors,
                "rejected": self.rejected, "latency": self.latency, "overhead": self.overhead,
                "cache_hits": self.cache_hits, "cache_lookups": self.cache_lookups,
                "escalated": self.escalated, "tokens": self.tokens,
                "spend_by_team": self.spend_by_team, "spend_by_model": self.spend_by_model,
                "workflows": self.workflows}


@dataclass
class History:
    """The last hour of points of this process, oldest first, and who this process is."""
    pid: int
    worker: str | None = None          # the worker's index in a pool
    every_s: float = SAMPLE_S
    points: deque[Point] = field(default_factory=deque)

    def add(self, point: Point) -> None:
        self.points.append(point)
        while self.points and self.points[0].t < point.t - KEEP_S - self.every_s:
            self.points.popleft()

    def baseline(self, t: float) -> Point | None:
        """The newest point at or before `t`, else the oldest there is (the process is younger
        than the window: it then covers everything since the first point)."""
        found = None
        for point in self.points:
            if point.t > t:
                break
            found = point
        return found or (self.points[0] if self.points else None)

    def since(self, t: float) -> list[dict[str, Any]]:
        return [p.as_json() for p in self.points if p.t >= t]


async def sample_forever(history: History, read: Callable[[], Point]) -> None:
    """A point now (the baseline of every window), then one every `history.every_s`."""
    while True:
        history.add(read())
        await asyncio.sleep(history.every_s)


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole > 0 else None


def _minus(now: tuple[Bucket, ...], base: tuple[Bucket, ...]) -> list[Bucket]:
    before = dict(base)
    return [(le, count - before.get(le, 0.0)) for le, count in now]


def window(now: Point, history: History, seconds: int) -> dict[str, Any]:
    """What happened in the last `seconds` (or since the first point, if that is later): the
    numbers every tile of the page shows."""
    base = history.baseline(now.t - seconds) or now
    requests = now.requests - base.requests
    lookups = now.cache_lookups - base.cache_lookups
    latency, overhead = _minus(now.latency, base.latency), _minus(now.overhead, base.overhead)
    covered = max(now.t - base.t, 0.0)
    errors = now.errors - base.errors
    return {
        "seconds": seconds, "since": base.t, "covered_s": round(covered, 3),
        "from_start": base.t > now.t - seconds,   # the process is younger than the window
        "requests": requests,
        "rate_per_s": round(requests / covered, 6) if covered > 0 else None,
        "errors": errors, "rejected": now.rejected - base.rejected,
        "error_share": _share(errors, requests),
        "p50_s": quantile(0.5, latency), "p95_s": quantile(0.95, latency),
        "overhead_p95_s": quantile(0.95, overhead),
        "cache_hits": now.cache_hits - base.cache_hits, "cache_lookups": lookups,
        "cache_hit_rate": _share(now.cache_hits - base.cache_hits, lookups),
        "escalated": now.escalated - base.escalated,
        "tokens": now.tokens - base.tokens,
        "spend_usd": round(sum(now.spend_by_team.values())
                           - sum(base.spend_by_team.values()), 10),
        "workflows": workflow_window(now.workflows, base.workflows, covered),
    }


# ---- tasks and workflows (the series of gateway/observability/task_tally.py) ----------------

def workflow_totals(samples: Samples) -> dict[str, dict[str, Any]]:
    """Each workflow's finished tasks, cumulative: how many, how many ended in error, their
    cost and time summed, how many escalated or were held, and the cost histogram."""
    finished: dict[str, dict[str, Any]] = {}
    for labels, value in samples.get("podium_tasks_total", ()):
        entry = finished.setdefault(labels.get("workflow", ""), _no_tasks())
        entry["tasks"] += value
        entry["errors"] += value if labels.get("result") == "error" else 0.0
    for name, key in (("podium_task_cost_usd_sum", "cost_usd"),
                      ("podium_task_duration_seconds_sum", "duration_s"),
                      ("podium_task_escalated_total", "escalated"),
                      ("podium_task_approval_total", "approvals")):
        for workflow, value in sum_by(samples, name, "workflow").items():
            finished.setdefault(workflow, _no_tasks())[key] = value
    name = "podium_task_cost_usd_bucket"
    for workflow, entry in finished.items():
        mine = [(labels, v) for labels, v in samples.get(name, ())
                if labels.get("workflow") == workflow]
        entry["cost_buckets"] = buckets({name: mine}, name.removesuffix("_bucket"))
    return dict(sorted(finished.items()))


def _no_tasks() -> dict[str, Any]:
    return {"tasks": 0.0, "errors": 0.0, "cost_usd": 0.0, "duration_s": 0.0,
            "escalated": 0.0, "approvals": 0.0, "cost_buckets": []}


def workflow_window(now: Mapping[str, Mapping[str, Any]], base: Mapping[str, Mapping[str, Any]],
                    covered_s: float) -> dict[str, dict[str, Any]]:
    """Each workflow's KPIs over the window: tasks finished in it, per hour, their mean and
    p95 cost, failure, escalation and approval rates, mean time to resolution."""
    out = {}
    for workflow, cur in now.items():
        was = base.get(workflow) or _no_tasks()
        tasks = cur["tasks"] - was["tasks"]
        if tasks <= 0:
            continue
        costs = _minus(tuple(cur["cost_buckets"]), tuple(was["cost_buckets"]))
        out[workflow] = {
            "tasks": tasks,
            "tasks_per_hour": round(tasks * 3600 / covered_s, 6) if covered_s > 0 else None,
            "cost_per_task_usd": {"mean": round((cur["cost_usd"] - was["cost_usd"]) / tasks, 10),
                                  "p95": quantile(0.95, costs)},
            "failure_rate": _share(cur["errors"] - was["errors"], tasks),
            "escalation_rate": _share(cur["escalated"] - was["escalated"], tasks),
            "approval_rate": _share(cur["approvals"] - was["approvals"], tasks),
            "time_to_resolution_s": round((cur["duration_s"] - was["duration_s"]) / tasks, 6)}
    return out
