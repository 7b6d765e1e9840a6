"""Per-deployment health: circuit breaker, Retry-After cool-down, observed latency.

Breaker: after `failures` consecutive failures a deployment is *open* (skipped) for `cooldown_s`;
then the first request to reach it is the one *probe* (half-open) while others still skip it; the
probe's success closes the breaker, its failure opens it for another cool-down. A 429 does not
count as a breaker failure: it sets a cool-down of the upstream's Retry-After instead.

State lives for the process, keyed by deployment id, so it survives a config reload.

`version` grows with every change that can make a deployment available or unavailable to
routing (a breaker opening, closing or going half-open, a probe abandoned, a cool-down set, a
change adopted from another process), so the router may reuse a plan made at the same version.
A breaker's or cool-down's time running out is no event: a plan that skipped a deployment for
its health is never reused (see routing/router.py), so it needs none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.errors import ProviderError
from routing.rules import BreakerConfig

BreakerState = Literal["closed", "open", "half_open"]
# Failures that say the deployment itself is unwell; others (the request's fault, a policy
# refusal, a context window) leave the breaker alone.
_BREAKER_KINDS = frozenset({"timeout", "connection", "server", "auth", "not_found"})
_LATENCY_WEIGHT = 0.2  # EWMA weight of the newest sample
_DEFAULT_RATE_LIMIT_COOLDOWN_S = 1.0


@dataclass
class DeploymentHealth:
    state: BreakerState = "closed"
    consecutive_failures: int = 0
    open_until: float = 0.0
    probe_in_flight: bool = False
    cooling_until: float = 0.0
    latency_s: float | None = None


class Health:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_id: dict[str, DeploymentHealth] = {}
        self.version = 0

    def _changed(self) -> None:
        self.version += 1

    def _get(self, dep_id: str) -> DeploymentHealth:
        return self._by_id.setdefault(dep_id, DeploymentHealth())

    def snapshot(self, dep_id: str) -> DeploymentHealth:
        h = self._get(dep_id)
        return DeploymentHealth(**vars(h))

    def unavailable_reason(self, dep_id: str) -> str | None:
        """Why routing must skip this deployment now, or None if it may be tried."""
        h, now = self._get(dep_id), self._clock()
        if h.cooling_until > now:
            return f"rate-limited by the upstream for {h.cooling_until - now:.1f}s more"
        if h.state == "open" and h.open_until > now:
            return f"circuit open for {h.open_until - now:.1f}s more"
        if h.state in ("open", "half_open") and h.probe_in_flight:
            return "circuit half-open, a probe request is in flight"
        return None

    def begin(self, dep_id: str) -> BreakerState | None:
        """Called right before an attempt; returns the new state if this attempt is the probe."""
        h = self._get(dep_id)
        if h.state == "open" and h.open_until <= self._clock() and not h.probe_in_flight:
            h.state, h.probe_in_flight = "half_open", True
            self._changed()
            return h.state
        return None

    def abandon(self, dep_id: str) -> None:
        """The probe ended without a verdict: the next request may probe at once."""
        h = self._get(dep_id)
        if h.probe_in_flight:
            h.probe_in_flight = False
            if h.state == "half_open":
                h.state, h.open_until = "open", self._clock()
            self._changed()

    def succeeded(self, dep_id: str, latency_s: float | None) -> BreakerState | None:
        h = self._get(dep_id)
        changed = h.state != "closed"
        if changed or h.probe_in_flight:
            self._changed()
        h.state, h.consecutive_failures, h.probe_in_flight = "closed", 0, False
        if latency_s is not None:
            h.latency_s = latency_s if h.latency_s is None else (
                _LATENCY_WEIGHT * latency_s + (1 - _LATENCY_WEIGHT) * h.latency_s)
        return "closed" if changed else None

    def wall_open_until(self, dep_id: str) -> float:
        """When the breaker closes again, as unix seconds (for other processes)."""
        return time.time() + (self._get(dep_id).open_until - self._clock())

    def apply_remote(self, dep_id: str, state: str, open_until_wall: float) -> None:
        """Adopt a breaker change published by another process."""
        h = self._get(dep_id)
        if state == "open":
            until = self._clock() + (open_until_wall - time.time())
            if until > self._clock() and (h.state != "open" or until > h.open_until):
                h.state, h.open_until, h.probe_in_flight = "open", until, False
                self._changed()
        elif state == "closed" and h.state != "closed" and not h.probe_in_flight:
            h.state, h.consecutive_failures = "closed", 0
            self._changed()

    def failed(self, dep_id: str, err: ProviderError, cfg: BreakerConfig) -> BreakerState | None:
        h, now = self._get(dep_id), self._clock()
        if err.kind == "rate_limit":
            wait = err.retry_after_s or _DEFAULT_RATE_LIMIT_COOLDOWN_S
            h.cooling_until = max(h.cooling_until, now + wait)
            h.probe_in_flight = False
            self._changed()
            return None
        if err.kind not in _BREAKER_KINDS:
            return self.succeeded(dep_id, None)
        h.consecutive_failures += 1
        reopen = h.state == "half_open"
        h.probe_in_flight = False
        if reopen or h.consecutive_failures >= cfg.failures:
            h.state, h.open_until = "open", now + cfg.cooldown_s
            self._changed()
            return "open"
        return None
