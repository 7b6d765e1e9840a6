"""Config sections for the process's edges: the HTTP server's limits and timeouts, logging,
telemetry and the dashboard. Part of stage one (`gateway/config.py` assembles the whole)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.config_base import Frozen


class LoggingConfig(Frozen):
    format: Literal["json", "text"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True                       # one line per HTTP request


class ServerConfig(Frozen):
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    request_timeout_s: float = Field(default=600.0, gt=0)   # a stream's whole life included
    attempt_timeout_s: float = Field(default=120.0, gt=0)
    # The most Podium reads from an upstream for one answer: a whole answer, or a stream's
    # total. 64 MiB holds the largest legitimate answer (128k tokens streamed, or 2048
    # embeddings of 1536 floats as JSON); past it the attempt fails and falls back.
    max_response_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    # A stream that sends no chunk for this long is ended with an error event.
    stream_idle_timeout_s: float = Field(default=120.0, gt=0)
    # Client side: a request head must arrive whole within `header_timeout_s` of the
    # connection opening (or of its first byte, on a kept-alive connection), a body within
    # `body_timeout_s` of its head; slower ones are closed (408 for a body).
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    keepalive_timeout_s: float = Field(default=75.0, gt=0)  # an idle kept-alive connection
    # Requests handled at once by one process; past it 503 with Retry-After (probes and
    # /metrics are always answered).
    max_in_flight: int = Field(default=2048, ge=1)
    # On SIGTERM: stop accepting, then give in-flight requests and streams this long.
    shutdown_timeout_s: float = Field(default=30.0, ge=0)


class DashboardConfig(Frozen):
    # The session cookie's Secure flag: `auto` sets it when the login came over https,
    # directly or through a TLS-terminating proxy that says so in `X-Forwarded-Proto`.
    secure_cookie: Literal["auto"] | bool = "auto"
    session_ttl_s: float = Field(default=12 * 3600.0, gt=0, le=7 * 24 * 3600.0)


class TelemetryConfig(Frozen):
    # Standard OTEL_* environment variables take precedence; this only names the service when
    # OTEL_SERVICE_NAME is not set.
    service_name: str = "podium"
    # A child span per in-process hop (`podium.route`, ...): off, the hops are attributes and
    # events on the request's SERVER span; each SDK span costs about 50 µs of the event loop.
    hop_spans: bool = False
