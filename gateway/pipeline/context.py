"""One request on its way through the hops, and how it ended.

A `RequestContext` is made once the caller is known and the body is valid (identity, ingress).
Each later hop then fills in its own part, in order, through its own method:

    permissions                 permitted(scope)
    route                       routed(route, plan, reserved, features)
    plugins, request side       held(hold)        from the `Hold` a plugin returned
                                counted(bucket)   rate limits: where they counted it
                                earmarked(...)    budgets: what they hold for it, and where
                                capped(tokens)    budgets: the output cap of a request
                                                  without max_tokens
    cache                       looked_up(cache)
    call, and egress            outcome           how it ended: answer, usage, cost, status

A part is set once; setting it twice, or before the hop it depends on, is a bug and raises.
Plugins read the context and hand back decisions (`Hold`); what they add to it is their entry
in the record of decisions (`decide`), which the audit trail keeps, and, for the limits and
budgets, where they counted the request: settling corrects exactly that, so the shared state
keeps nothing per request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.config_versions import VersionTag
from gateway.errors import AllAttemptsFailed, PodiumError, telemetry_code
from gateway.observability.scrub import scrub
from gateway.observability.telemetry import TraceIds, current_trace_ids
from gateway.pipeline.identity import Principal
from gateway.pipeline.permissions import PermissionScope
from gateway.pipeline.tasks import TaskTag
from gateway.storage.contracts import BudgetReservation
from routing.attempts import OpenStream
from routing.fallback import CallResult
from routing.learned.features import RecordedFeatures
from routing.providers.base import Usage
from routing.router import RoutePlan, RouteRequest
from routing.rules import RequestFacts


@dataclass(frozen=True, slots=True)
class Hold:
    """A request-side plugin's decision: call the model, but hold its answer for review."""
    rule: str                          # the approval rule that asks for it


@dataclass(frozen=True, slots=True)
class Reservation:
    """What limits and budgets hold back before the call: the most it can use and cost."""
    tokens: int = 0
    usd: float = 0.0


@dataclass(frozen=True, slots=True)
class CacheResult:
    """What the cache hop found."""
    state: str                         # hit | miss | bypass
    kind: str | None = None            # on a hit: exact | semantic
    similarity: float | None = None    # on a semantic hit
    deployment: str | None = None      # on a hit: the deployment that produced the answer

    @property
    def hit(self) -> bool:
        return self.state == "hit"


@dataclass(frozen=True, slots=True)
class Decision:
    plugin: str
    decision: str                      # e.g. hold, rejected, flagged, escalated, hit
    detail: str = ""


@dataclass
class Outcome:
    """How the request ended; filled by the call (or the cache) and by egress."""
    status: int = 500
    error_code: str | None = None      # one of errors.CODES, or "other"
    error: str | None = None           # the error's message, scrubbed (observability/scrub.py)
    deployment: str | None = None      # the deployment that answered (a call, not a cache hit)
    attempted: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0              # every attempt, and a semantic lookup's embedding
    answer: dict[str, Any] | None = None
    review_id: str | None = None
    upstream_s: float = 0.0            # time spent waiting on upstreams
    settled: bool = False              # cost_usd is final (known before the answer was sent)
    checks: list[tuple[str, bool]] = field(default_factory=list)  # cascade: (deployment, passed)

    def failed(self, err: PodiumError) -> None:
        self.status, self.error_code = err.status, telemetry_code(err)
        self.error = scrub(err.message)
        if isinstance(err, AllAttemptsFailed):
            self.attempted = [a.deployment_id for a in err.attempts]

    def called(self, result: CallResult[Any]) -> None:
        """A finished (not streamed) call: who answered, what it used and cost."""
        self.deployment, self.attempted = result.deployment.id, result.attempted
        self.usage, self.upstream_s = result.usage, result.upstream_s
        self.cost_usd += result.cost_usd  # after a semantic lookup's, if any
        self.settled = True
        self.checks = result.checks

    def opened(self, stream: OpenStream) -> None:
        """A stream whose first chunk arrived: who answers; usage and cost come at its end."""
        self.deployment, self.attempted = stream.deployment.id, stream.attempted

    def streamed(self, stream: OpenStream) -> None:
        self.usage, self.upstream_s = stream.usage, stream.upstream_s
        self.cost_usd += stream.cost_usd  # after a semantic lookup's, if any


@dataclass(eq=False)
class RequestContext:
    request_id: str
    endpoint: str                      # chat | responses | messages | embeddings
    principal: Principal
    model: str
    body: Mapping[str, Any]            # the client's body, as forwarded
    stream: bool
    timeout_s: float                   # server.request_timeout_s: every attempt within it
    config: VersionTag = field(default_factory=VersionTag)  # the config version serving it
    task: TaskTag | None = None        # the task and workflow it belongs to (pipeline/tasks.py)
    trace: TraceIds = field(default_factory=current_trace_ids)
    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    scope: PermissionScope | None = None
    route: RouteRequest | None = None
    plan: RoutePlan | None = None
    reserved: Reservation = Reservation()
    features: RecordedFeatures | None = None  # the prompt's, for the audit trail (route hop)
    hold: Hold | None = None
    window_bucket: int | None = None   # the rate-limit bucket this request was counted in
    earmark: BudgetReservation | None = None  # what its budgets hold for it
    output_cap: int | None = None      # max_tokens a budget set, the client having set none
    cache: CacheResult | None = None
    outcome: Outcome = field(default_factory=Outcome)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    draw: float = field(default_factory=random.random)  # decides a rule's shadow share, once

    # ---- the hops fill in their parts, in order ------------------------------------------

    def permitted(self, scope: PermissionScope) -> None:
        self._unset("scope", self.scope)
        self.scope = scope

    def routed(self, route: RouteRequest, plan: RoutePlan, reserved: Reservation,
               features: RecordedFeatures | None = None) -> None:
        self._after("route", self.scope)
        self._unset("plan", self.plan)
        self.route, self.plan, self.reserved = route, plan, reserved
        self.features = features

    def held(self, hold: Hold | None) -> None:
        self._after("plugins", self.plan)
        self._unset("hold", self.hold)
        self.hold = hold

    def counted(self, bucket: int) -> None:
        self._after("rate limit", self.plan)
        self._unset("window bucket", self.window_bucket)
        self.window_bucket = bucket

    def earmarked(self, reservation: BudgetReservation) -> None:
        self._after("budget", self.plan)
        self._unset("budget reservation", self.earmark)
        self.earmark = reservation

    def capped(self, max_tokens: int) -> None:
        """A budget bounds the output of a request that set no `max_tokens` of its own."""
        self._after("budget", self.plan)
        self._unset("output cap", self.output_cap)
        self.output_cap = max_tokens

    def upstream_body(self) -> Mapping[str, Any]:
        """What the call hop sends: the client's body, with a budget's output cap added."""
        if self.output_cap is None:
            return self.body
        return {**self.body, "max_tokens": self.output_cap}

    def looked_up(self, cache: CacheResult) -> None:
        self._after("cache", self.plan)
        self._unset("cache", self.cache)
        self.cache = cache

    def decide(self, plugin: str, decision: str, detail: str = "") -> None:
        """Put a plugin's (or a hop's) decision on record."""
        self.decisions.append(asdict(Decision(plugin, decision, detail)))

    # ---- read by the plugins, the audit record and the metrics ---------------------------

    @property
    def permission(self) -> PermissionScope:
        """The scope, for the hops after permissions (which cannot run before it)."""
        if self.scope is None:
            raise RuntimeError("the permissions hop has not run")
        return self.scope

    @property
    def trace_id(self) -> str:
        return self.trace["trace_id"]

    @property
    def span_id(self) -> str:
        return self.trace["span_id"]

    @property
    def data_class(self) -> str:
        return self.scope.data_class if self.scope is not None else "public"

    @property
    def pii_counts(self) -> Mapping[str, int]:
        return self.scope.findings if self.scope is not None else {}

    @property
    def facts(self) -> RequestFacts | None:
        return self.route.facts if self.route is not None else None

    @property
    def escalations(self) -> int:
        return sum(1 for d in self.decisions if d["decision"] == "escalated")

    def deadline(self) -> float:
        """The loop time by which every attempt from now on must be done."""
        return asyncio.get_running_loop().time() + self.timeout_s

    @staticmethod
    def _unset(part: str, value: object) -> None:
        if value is not None:
            raise RuntimeError(f"the request's {part} is already set")

    @staticmethod
    def _after(hop: str, value: object) -> None:
        if value is None:
            raise RuntimeError(f"the {hop} hop ran before the hop it depends on")
