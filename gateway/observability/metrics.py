"""Prometheus metrics (`GET /metrics`) and the OpenTelemetry GenAI client metrics.

One `CollectorRegistry` per gateway (no global registry, so tests and embedders can run
several). Label values are bounded: deployments, rules and teams come from the config (a team
not in `teams:` is reported as "other"), statuses and error codes from Podium's own set; never a
request id or a raw user string. As a backstop, each metric keeps at most `MAX_SERIES` label
sets: past that, a new one is counted under every label "other", so a label that turns out to
be unbounded costs counts, never memory.

Samples are plain values on the event loop (`samples`), turned into metric families by one
collector when `/metrics` is scraped. With `--workers N` each worker shares a snapshot of them
with the others (`metrics_pool`) and any worker's `/metrics` merges all of them, so one scrape
sees the whole pool.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from gateway.errors import known_code
from gateway.observability.learned_metrics import LearnedMetrics, LearnedState
from gateway.observability.metrics_pool import MetricsPool
from gateway.observability.samples import MAX_SERIES, Samples
from gateway.observability.task_tally import TaskMetrics
from gateway.pipeline.context import RequestContext

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
            60, 120)
_BREAKER = {"closed": 0, "half_open": 1, "open": 2}
CONTENT_TYPE = CONTENT_TYPE_LATEST
__all__ = ["CONTENT_TYPE", "MAX_SERIES", "Metrics", "SampleCollector"]


class SampleCollector:
    """The one collector on a gateway's registry: its samples (merged with the other workers'
    under `--workers`) as metric families, read at scrape time."""

    def __init__(self, samples: Samples, pool: MetricsPool | None) -> None:
        self.samples, self.pool = samples, pool

    def collect(self) -> Iterator[Metric]:
        if self.pool is None:
            return self.samples.local()
        return self.samples.merged(self.pool.gathered(self.samples))


class Metrics:
    def __init__(self, teams: Iterable[str] = ()) -> None:
        self.samples = s = Samples()
        self.pool = pool = MetricsPool.from_env()   # set under `--workers` (metrics_pool)
        self.registry = CollectorRegistry()
        self.registry.register(SampleCollector(s, pool))
        self.teams = frozenset(teams)
        self.requests = s.counter(
            "podium_requests_total", "Requests answered, by route rule, deployment, team, "
            "HTTP status and cache result", ["endpoint", "route", "deployment", "team", "status",
                                             "cache"])
        self.duration = s.histogram(
            "podium_request_duration_seconds", "Whole request time, as the client sees it",
            ["endpoint"], buckets=_LATENCY)
        self.overhead = s.histogram(
            "podium_gateway_overhead_seconds", "Request time minus time waiting on upstreams",
            ["endpoint"], buckets=_LATENCY)
        self.upstream = s.histogram(
            "podium_upstream_duration_seconds", "One upstream attempt, by deployment",
            ["deployment", "outcome"], buckets=_LATENCY)
        self.ttft = s.histogram(
            "podium_time_to_first_token_seconds", "Streams: request start to first chunk sent",
            ["deployment"], buckets=_LATENCY)
        self.tokens = s.counter(
            "podium_tokens_total", "Tokens billed, by deployment and direction",
            ["deployment", "direction"])
        self.cost = s.counter(
            "podium_cost_usd_total", "Spend in USD, by deployment and team",
            ["deployment", "team"])
        self.cache = s.counter(
            "podium_cache_requests_total", "Cache lookups by result", ["result"])
        self.fallbacks = s.counter(
            "podium_fallbacks_total", "Failed attempts that moved on to another deployment or "
            "a retry", ["deployment", "kind"])
        self.escalations = s.counter(
            "podium_cascade_escalations_total", "Escalated requests: answered by a later "
            "deployment than the first because a cascade check failed (requests, not "
            "attempts)", ["route"])
        self.breaker = s.gauge(
            "podium_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
            ["deployment"], mode="max")
        self.rejections = s.counter(
            "podium_rejections_total", "Requests refused by Podium, by error code "
            "(rate_limit_exceeded, budget_exceeded, ...)", ["code"])
        self.reloads = s.counter(
            "podium_config_reloads_total", "Config reloads by result", ["result"])
        self.feedback = s.histogram(
            "podium_feedback_score", "Feedback scores (0 bad … 1 good), by the deployment and "
            "rule of the rated request", ["deployment", "route"], buckets=(0.25, 0.5, 0.75, 1.0))
        self.shadow = s.counter(
            "podium_shadow_trials_total", "Shadow trials by rule, candidate and result: "
            "agreed, disagreed, error, skipped_<why>", ["route", "candidate", "result"])
        self.shadow_cost = s.counter(
            "podium_shadow_cost_usd_total", "What shadow trials cost (candidates and judges), "
            "by rule; ledgered under key 'shadow', never a team's", ["route"])
        self.learned = LearnedMetrics(s)
        self.task = TaskMetrics(s)

    def rejected(self, code: str) -> None:
        self.rejections.labels(known_code(code)).inc()

    def team(self, team: str | None) -> str:
        return team if team in self.teams else ("none" if team is None else "other")

    def attempt(self, deployment: str, seconds: float, outcome: str) -> None:
        self.upstream.labels(deployment, outcome).observe(seconds)
        if outcome != "ok":
            self.fallbacks.labels(deployment, outcome).inc()

    def shadowed(self, rule: str, candidate: str, result: str) -> None:
        self.shadow.labels(rule, candidate, result).inc()

    def shadow_spend(self, rule: str, usd: float) -> None:
        self.shadow_cost.labels(rule).inc(usd)

    def breaker_state(self, deployment: str, state: str) -> None:
        self.breaker.labels(deployment).set(_BREAKER.get(state, 0))

    def answered(self, ctx: RequestContext) -> None:
        """A governed request finished, however it ended (after its plugins' accounting)."""
        outcome = ctx.outcome
        dep, team_label = outcome.deployment or "none", self.team(ctx.principal.team)
        route = ctx.plan.rule if ctx.plan is not None else "none"
        cache = ctx.cache.state if ctx.cache is not None else None
        total_s = time.monotonic() - ctx.started_mono
        self.requests.labels(ctx.endpoint, route, dep, team_label, str(outcome.status),
                             cache or "none").inc()
        self.duration.labels(ctx.endpoint).observe(total_s)
        self.overhead.labels(ctx.endpoint).observe(max(0.0, total_s - outcome.upstream_s))
        if cache:
            self.cache.labels(cache).inc()
        if outcome.error_code and outcome.status < 500:
            self.rejected(outcome.error_code)
        if outcome.deployment:
            self.tokens.labels(dep, "input").inc(outcome.usage.prompt_tokens)
            self.tokens.labels(dep, "output").inc(outcome.usage.completion_tokens)
            self.cost.labels(dep, team_label).inc(outcome.cost_usd)
        if ctx.escalations and ctx.plan is not None:  # one per escalated request
            self.escalations.labels(ctx.plan.rule).inc()
        if ctx.plan is not None and ctx.plan.learned is not None:
            self.learned.decisions.labels(ctx.plan.rule, ctx.plan.learned.decision).inc()

    def learned_calibration(self, rule: str, state: LearnedState) -> None:
        """A learned rule's calibration as it stands (set by the calibration task)."""
        self.learned.calibration(rule, state)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
