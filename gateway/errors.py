"""Every error a client of Podium can see, and the one function that renders them.

    PodiumError                      status  OpenAI type              code
    ├── BadRequest                   400     invalid_request_error    (varies)
    │   ├── InvalidJSON              400     invalid_request_error    invalid_json
    │   └── UnsupportedRequest       400     invalid_request_error    unsupported_request
    ├── AuthenticationFailed         401     authentication_error     invalid_api_key
    ├── PermissionDenied             403     permission_error         model_not_allowed (varies)
    ├── ModelNotFound                404     invalid_request_error    model_not_found
    ├── RouteNotFound                404     invalid_request_error    not_found
    ├── ResponseNotFound             404     invalid_request_error    not_found
    ├── MethodNotAllowed             405     invalid_request_error    method_not_allowed
    ├── RequestTimeout               408     invalid_request_error    request_timeout
    ├── PayloadTooLarge              413     invalid_request_error    request_too_large
    ├── RateLimited                  429     rate_limit_error         rate_limit_exceeded
    ├── BudgetExceeded               429     rate_limit_error         budget_exceeded
    ├── GuardrailBlocked             400     invalid_request_error    guardrail_blocked
    ├── ReviewPending                403     permission_error         review_pending
    ├── ReviewRejected               403     permission_error         review_rejected
    ├── UpstreamRejected             4xx     invalid_request_error    (upstream's code)
    ├── NoDeploymentAvailable        503     api_error                no_deployment_available
    ├── StateUnavailable             503     api_error                state_unavailable
    ├── Overloaded                   503     api_error                overloaded
    ├── AllAttemptsFailed            502/504/429  api_error / rate_limit_error
    ├── StreamInterrupted            (sent as an SSE `error` event: headers are already out)
    └── InternalError                500     api_error                internal_error

`ProviderError` is not client-facing: providers raise it for one failed upstream attempt, and
the attempt loop turns a sequence of them into `UpstreamRejected` or `AllAttemptsFailed`, which
keep every attempt's error (so the client learns which deployment failed and why).

An upstream's own words (its message, its `code`) reach the client that sent the request: they
are about that client's request, often quoting it. They never reach telemetry as they are:
metrics, logs and audit records carry `telemetry_code(err)`, one of `CODES`, and spans and
records a scrubbed message (`gateway/observability/scrub.py`).
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import orjson
from aiohttp import web


class PodiumError(Exception):
    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"error": self.fields()}

    def fields(self) -> dict[str, object]:
        """The members of OpenAI's `error` object."""
        return {"message": self.message, "type": self.type, "param": self.param,
                "code": self.code}


class BadRequest(PodiumError):
    status, type = 400, "invalid_request_error"
    code: str | None = None


class InvalidJSON(BadRequest):
    code = "invalid_json"


class UnsupportedRequest(BadRequest):
    code = "unsupported_request"


class AuthenticationFailed(PodiumError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class PermissionDenied(PodiumError):
    status, type, code = 403, "permission_error", "model_not_allowed"


class ModelNotFound(PodiumError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class RouteNotFound(PodiumError):
    status, type, code = 404, "invalid_request_error", "not_found"


class ResponseNotFound(PodiumError):
    """A stored response that is not this caller's: absent, expired, deleted or another key's
    all look the same (404, never 403), so that no caller learns that someone else's id exists."""
    status, type, code = 404, "invalid_request_error", "not_found"


class MethodNotAllowed(PodiumError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class RequestTimeout(PodiumError):
    """The request's body did not arrive within `server.body_timeout_s`."""
    status, type, code = 408, "invalid_request_error", "request_timeout"


class PayloadTooLarge(PodiumError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class NoDeploymentAvailable(PodiumError):
    """Every candidate is skipped for its health (open breaker, Retry-After): try again later."""
    status, type, code = 503, "api_error", "no_deployment_available"


class StateUnavailable(PodiumError):
    """The shared state backend (Redis) is down and the config says to fail closed."""
    status, type, code = 503, "api_error", "state_unavailable"


class Overloaded(PodiumError):
    """The process already handles `server.max_in_flight` requests: try again in a moment."""
    status, type, code = 503, "api_error", "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class RateLimited(PodiumError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class BudgetExceeded(PodiumError):
    status, type, code = 429, "rate_limit_error", "budget_exceeded"


class GuardrailBlocked(PodiumError):
    status, type, code = 400, "invalid_request_error", "guardrail_blocked"


class ReviewPending(PodiumError):
    # 403, not 409 or 429: the OpenAI SDKs retry those automatically, creating duplicate holds.
    status, type, code = 403, "permission_error", "review_pending"

    def __init__(self, review_id: str, message: str | None = None) -> None:
        super().__init__(message or f"The answer is held for human review ({review_id}); "
                         f"fetch the outcome from GET /v1/reviews/{review_id}.",
                         headers={"x-podium-review-id": review_id})
        self.review_id = review_id

    def fields(self) -> dict[str, object]:
        return {**super().fields(), "review_id": self.review_id}


class ReviewRejected(PodiumError):
    status, type, code = 403, "permission_error", "review_rejected"


class InternalError(PodiumError):
    status, type, code = 500, "api_error", "internal_error"


ErrorKind = Literal[
    "timeout", "connection", "rate_limit", "server", "auth", "not_found",
    "context_length", "content_policy", "bad_request",
]

# Kinds where another deployment may well succeed: the failure belongs to this deployment
# (its capacity, its network, its credentials, its window), not to the caller's request.
MOVE_ON_KINDS: frozenset[ErrorKind] = frozenset(
    {"timeout", "connection", "rate_limit", "server", "auth", "not_found", "context_length"}
)


class ProviderError(Exception):
    """One failed upstream attempt, classified. Raised by providers, never shown as is."""

    def __init__(
        self, kind: ErrorKind, message: str, *, status: int | None = None,
        code: str | None = None, retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s

    @property
    def moves_on(self) -> bool:
        return self.kind in MOVE_ON_KINDS

    def summary(self) -> str:
        status = f"HTTP {self.status} " if self.status else ""
        return f"{self.kind} ({status}{self.message})".replace("( ", "(")


@dataclass(frozen=True)
class FailedAttempt:
    deployment_id: str
    error: ProviderError


class UpstreamRejected(PodiumError):
    """The upstream said the caller's request itself is wrong; no other deployment is tried."""

    type = "invalid_request_error"

    def __init__(self, attempt: FailedAttempt) -> None:
        err = attempt.error
        super().__init__(
            f"deployment {attempt.deployment_id!r} rejected the request: {err.message}",
            code=err.code or err.kind,
        )
        self.status = err.status if err.status and 400 <= err.status < 500 else 400
        self.attempts = [attempt]


class AllAttemptsFailed(PodiumError):
    def __init__(self, attempts: Sequence[FailedAttempt]) -> None:
        details = "; ".join(f"{a.deployment_id}: {a.error.summary()}" for a in attempts)
        super().__init__(
            f"all {len(attempts)} attempted deployment(s) failed: {details}",
            code="all_deployments_failed",
        )
        self.attempts = list(attempts)
        kinds = {a.error.kind for a in attempts}
        if kinds == {"rate_limit"}:
            self.status, self.type, self.code = 429, "rate_limit_error", "rate_limit_exceeded"
            waits = [a.error.retry_after_s for a in attempts if a.error.retry_after_s]
            if waits:
                self.headers["Retry-After"] = str(max(1, round(min(waits))))
        elif kinds == {"timeout"}:
            self.status = 504
        else:
            self.status = 502


class StreamInterrupted(PodiumError):
    status, type, code = 502, "api_error", "stream_interrupted"

    def __init__(self, attempt: FailedAttempt) -> None:
        super().__init__(f"the stream from deployment {attempt.deployment_id!r} broke off: "
                         f"{attempt.error.summary()}")
        self.attempts = [attempt]


# Every `code` Podium gives an error, and OpenAI's error types (what an error without a code is
# counted as): the only values an error's code takes in metrics, logs and audit records, so a
# label stays bounded and an upstream's free text (which can quote a prompt) never becomes one.
# `tests/security/test_telemetry.py` checks that every code in the source is listed here.
CODES = frozenset({
    "invalid_request_error", "authentication_error", "permission_error", "rate_limit_error",
    "api_error",
    "admin_required", "all_deployments_failed", "budget_exceeded", "data_class_not_cleared",
    "forbidden_parameter", "guardrail_blocked", "internal_error", "invalid_api_key",
    "invalid_config", "invalid_json", "invalid_token", "method_not_allowed",
    "model_not_allowed", "model_not_found", "no_cleared_deployment", "no_deployment_available",
    "not_found", "overloaded", "pii_detected", "previous_response_not_found",
    "rate_limit_exceeded", "request_timeout",
    "request_too_large", "review_already_decided", "review_pending", "review_rejected",
    "state_unavailable", "stream_interrupted", "team_required", "token_expired",
    "too_deeply_nested", "tool_not_allowed", "unsupported_request", "upstream_rejected",
})


def known_code(code: str | None) -> str:
    """`code` if it is one of CODES, else "other"."""
    return code if code in CODES else "other"


def telemetry_code(err: PodiumError) -> str:
    """The error's code as telemetry carries it: the client may see an upstream's own code
    (`UpstreamRejected`), telemetry sees only that an upstream rejected the request."""
    if isinstance(err, UpstreamRejected):
        return "upstream_rejected"
    return known_code(err.code or err.type)


def parse_retry_after(value: str) -> float | None:
    """Seconds to wait from a Retry-After value: seconds, or an HTTP date (RFC 9110)."""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def redact(text: str, secrets: Iterable[str]) -> str:
    """Remove secret values from text that may reach a client, a log or a trace."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


def render(err: PodiumError) -> web.Response:
    """The client's answer for `err` (the middleware adds `x-request-id` to every response)."""
    return web.Response(
        status=err.status, body=orjson.dumps(err.body()),
        content_type="application/json", headers=dict(err.headers),
    )
