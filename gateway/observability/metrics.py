"""Prometheus metrics (`GET /metrics`) and the OpenTelemetry GenAI client metrics.

One `CollectorRegistry` per gateway (no global registry, so tests and embedders can run
several). Label values are bounded: deployments, rules and teams come from the config (a team
not in `teams:` is reported as "other"), statuses and error codes from Podium's own set; never a
request id or a raw user string. As a backstop, each metric keeps at most `MAX_SERIES` label
sets: past that, a new one is counted under every label "other", so a label that turns out to
be unbounded costs counts, never memory.

With `--workers N` each worker writes its samples to a shared directory
(`PROMETHEUS_MULTIPROC_DIR`, set by the supervisor) and any worker's `/metrics` aggregates all
of them, so one scrape sees the whole pool.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from gateway.errors import known_code
from gateway.observability.learned_metrics import LearnedMetrics, LearnedState
from gateway.observability.task_tally import TaskMetrics
from gateway.pipeline.context import RequestContext

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
            60, 120)
_BREAKER = {"closed": 0, "half_open": 1, "open": 2}
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
MAX_SERIES = 1000                      # label sets per metric (see the module docstring)


class Metrics:
    def __init__(self, teams: Iterable[str] = ()) -> None:
        self._multiproc = bool(os.environ.get(MULTIPROC_ENV))
        # In multiprocess mode samples go to files and are collected at scrape time instead.
        self.registry = CollectorRegistry()
        reg = None if self._multiproc else self.registry
        self.teams = frozenset(teams)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._series: dict[Any, int] = {}            # label sets made, per metric
        self.requests = Counter(
            "podium_requests_total", "Requests answered, by route rule, deployment, team, "
            "HTTP status and cache result", ["endpoint", "route", "deployment", "team", "status",
                                             "cache"], registry=reg)
        self.duration = Histogram(
            "podium_request_duration_seconds", "Whole request time, as the client sees it",
            ["endpoint"], buckets=_LATENCY, registry=reg)
        self.overhead = Histogram(
            "podium_gateway_overhead_seconds", "Request time minus time waiting on upstreams",
            ["endpoint"], buckets=_LATENCY, registry=reg)
        self.upstream = Histogram(
            "podium_upstream_duration_seconds", "One upstream attempt, by deployment",
            ["deployment", "outcome"], buckets=_LATENCY, registry=reg)
        self.ttft = Histogram(
            "podium_time_to_first_token_seconds", "Streams: request start to first chunk sent",
            ["deployment"], buckets=_LATENCY, registry=reg)
        self.tokens = Counter("podium_tokens_total", "Tokens billed, by deployment and direction",
                              ["deployment", "direction"], registry=reg)
        self.cost = Counter("podium_cost_usd_total", "Spend in USD, by deployment and team",
                            ["deployment", "team"], registry=reg)
        self.cache = Counter("podium_cache_requests_total", "Cache lookups by result",
                             ["result"], registry=reg)
        self.fallbacks = Counter("podium_fallbacks_total", "Failed attempts that moved on to "
                                 "another deployment or a retry", ["deployment", "kind"],
                                 registry=reg)
        self.escalations = Counter("podium_cascade_escalations_total", "Escalated requests: "
                                   "answered by a later deployment than the first because a "
                                   "cascade check failed (requests, not attempts)", ["route"],
                                   registry=reg)
        self.breaker = Gauge("podium_breaker_state", "Circuit breaker: 0 closed, 1 half-open, "
                             "2 open", ["deployment"], registry=reg, multiprocess_mode="max")
        self.rejections = Counter("podium_rejections_total", "Requests refused by Podium, by "
                                  "error code (rate_limit_exceeded, budget_exceeded, ...)",
                                  ["code"], registry=reg)
        self.reloads = Counter("podium_config_reloads_total", "Config reloads by result",
                               ["result"], registry=reg)
        self.feedback = Histogram("podium_feedback_score", "Feedback scores (0 bad … 1 good), "
                                  "by the deployment and rule of the rated request",
                                  ["deployment", "route"], buckets=(0.25, 0.5, 0.75, 1.0),
                                  registry=reg)
        self.shadow = Counter("podium_shadow_trials_total", "Shadow trials by rule, candidate "
                              "and result: agreed, disagreed, error, skipped_<why>",
                              ["route", "candidate", "result"], registry=reg)
        self.shadow_cost = Counter("podium_shadow_cost_usd_total", "What shadow trials cost "
                                   "(candidates and judges), by rule; ledgered under key "
                                   "'shadow', never a team's", ["route"], registry=reg)
        self.learned = LearnedMetrics(reg)
        self.task = TaskMetrics(reg)

    def _at(self, metric: Counter | Histogram, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: labels() validates and locks on every call.
        At most MAX_SERIES label sets per metric; later ones share the "other" set."""
        child = self._children.get((metric, values))
        if child is not None:
            return child
        made = self._series.get(metric, 0)
        if made >= MAX_SERIES:
            values = ("other",) * len(values)
            child = self._children.get((metric, values))
            if child is not None:
                return child
        self._series[metric] = made + 1
        child = self._children[(metric, values)] = metric.labels(*values)
        return child

    def rejected(self, code: str) -> None:
        self._at(self.rejections, known_code(code)).inc()

    def team(self, team: str | None) -> str:
        return team if team in self.teams else ("none" if team is None else "other")

    def attempt(self, deployment: str, seconds: float, outcome: str) -> None:
        self._at(self.upstream, deployment, outcome).observe(seconds)
        if outcome != "ok":
            self._at(self.fallbacks, deployment, outcome).inc()

    def shadowed(self, rule: str, candidate: str, result: str) -> None:
        self._at(self.shadow, rule, candidate, result).inc()

    def shadow_spend(self, rule: str, usd: float) -> None:
        self._at(self.shadow_cost, rule).inc(usd)

    def breaker_state(self, deployment: str, state: str) -> None:
        self.breaker.labels(deployment).set(_BREAKER.get(state, 0))

    def answered(self, ctx: RequestContext) -> None:
        """A governed request finished, however it ended (after its plugins' accounting)."""
        outcome = ctx.outcome
        dep, team_label = outcome.deployment or "none", self.team(ctx.principal.team)
        route = ctx.plan.rule if ctx.plan is not None else "none"
        cache = ctx.cache.state if ctx.cache is not None else None
        total_s = time.monotonic() - ctx.started_mono
        self._at(self.requests, ctx.endpoint, route, dep, team_label, str(outcome.status),
                 cache or "none").inc()
        self._at(self.duration, ctx.endpoint).observe(total_s)
        self._at(self.overhead, ctx.endpoint).observe(max(0.0, total_s - outcome.upstream_s))
        if cache:
            self._at(self.cache, cache).inc()
        if outcome.error_code and outcome.status < 500:
            self.rejected(outcome.error_code)
        if outcome.deployment:
            self._at(self.tokens, dep, "input").inc(outcome.usage.prompt_tokens)
            self._at(self.tokens, dep, "output").inc(outcome.usage.completion_tokens)
            self._at(self.cost, dep, team_label).inc(outcome.cost_usd)
        if ctx.escalations and ctx.plan is not None:  # one per escalated request
            self._at(self.escalations, ctx.plan.rule).inc()
        if ctx.plan is not None and ctx.plan.learned is not None:
            self._at(self.learned.decisions, ctx.plan.rule, ctx.plan.learned.decision).inc()

    def learned_calibration(self, rule: str, state: LearnedState) -> None:
        """A learned rule's calibration as it stands (set by the calibration task)."""
        self.learned.calibration(rule, state)

    def exposition(self) -> bytes:
        if self._multiproc:
            registry = CollectorRegistry()
            # prometheus_client leaves this constructor untyped.
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
