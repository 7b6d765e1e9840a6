"""The edge of every request: its id, its SERVER span, its access-log line, its admission, and
the one place where an error becomes the client's answer.

Admission: a process handles at most `server.max_in_flight` requests at once (past that, 503
`overloaded` with Retry-After, which the OpenAI SDKs honour), and a request's body must arrive
within `server.body_timeout_s` of its head (408 otherwise), for every endpoint alike. Probes and
scrapes (`/healthz`, `/readyz`, `/metrics`) are always answered: an overloaded gateway must
still tell its load balancer and its operator so.

`x-request-id` is set here once, on every response, when its headers are about to be sent
(`on_response_prepare`): also on answers a handler writes early (`send_json`, streams), so no
handler passes it by hand.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.errors import (
    InternalError,
    MethodNotAllowed,
    Overloaded,
    PayloadTooLarge,
    PodiumError,
    RequestTimeout,
    RouteNotFound,
    render,
    telemetry_code,
)
from gateway.observability import logs
from gateway.observability.hops import RequestTrace
from gateway.pipeline.egress import CLIENT_CLOSED, CONFIG_VERSION_HEADER, SENT, client_left
from gateway.runtime import ACCESS, ACCOUNTED, GATEWAY, REQUEST_ID
from gateway.translate import anthropic

log = logging.getLogger("podium")

# A random per-process prefix and a counter: unique across processes and restarts, and far
# cheaper per request than uuid4 (os.urandom each time).
_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count(1)
# Probes and scrapes arrive every few seconds: a trace each would drown the real ones.
_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})
ANTHROPIC_PATH = "/v1/messages"


def new_request_id() -> str:
    return f"req_{_ID_PREFIX}{next(_ids):016x}"


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    request[REQUEST_ID] = new_request_id()
    version = gw.runtime.version
    request[ACCESS] = {"config_version": version.number}  # the handler's runtime may be newer
    if request.path in _UNTRACED:
        return await _handled(request, handler)
    handler = functools.partial(_admitted, handler=handler)
    telemetry = gw.telemetry
    if not telemetry.enabled:  # no span, and no traceparent read: that costs too
        return await _logged(request, handler, trace.INVALID_SPAN)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else ""
    parent = telemetry.propagator.extract(request.headers)
    with telemetry.tracer.start_as_current_span(
        f"{request.method} {route}".strip(), context=parent, kind=SpanKind.SERVER,
        record_exception=False, set_status_on_exception=False,
    ) as span:
        if not span.is_recording():  # sampled out: the hops need not record anything either
            return await _logged(request, handler, span)
        # The hops write into this record; it goes onto the span in one call at the end.
        with RequestTrace(span, telemetry.tracer if telemetry.hop_spans else None) as record:
            record.set_attributes({"http.request.method": request.method, "http.route": route,
                                   "url.path": request.path,
                                   "podium.request_id": request[REQUEST_ID],
                                   "podium.config.version": version.number,
                                   "podium.config.digest": version.short})
            response = await _logged(request, handler, span)
            record.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        return response


async def _logged(request: web.Request, handler: Handler,
                  span: trace.Span) -> web.StreamResponse:
    started = time.monotonic()
    response = await _handled(request, handler)
    if request.app[GATEWAY].runtime.config.logging.access_log:
        _log_access(request, response.status, started, span)
    return response


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every response names its request and the config version that
    served it, however it was written."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["x-request-id"] = request_id
    access = request.get(ACCESS)
    if access is not None and CONFIG_VERSION_HEADER not in response.headers:
        response.headers[CONFIG_VERSION_HEADER] = str(access["config_version"])


async def _admitted(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer, within the process's bound on requests in flight, once the body
    (if any) has arrived in time."""
    gw = request.app[GATEWAY]
    server = gw.runtime.config.server
    if gw.in_flight >= server.max_in_flight:
        raise Overloaded(f"The gateway is handling {server.max_in_flight} requests; "
                         "try again in a moment.")
    gw.in_flight += 1
    try:
        if request.body_exists:
            await _read_body(request, server.body_timeout_s, server.max_body_bytes)
        return await handler(request)
    finally:
        gw.in_flight -= 1


async def _read_body(request: web.Request, timeout_s: float, limit: int) -> None:
    """Read the body now, within the deadline; handlers then get it from aiohttp's copy."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body is {request.content_length} bytes; "
                              f"the limit is {limit} bytes.")
    try:
        async with asyncio.timeout(timeout_s):
            await request.read()
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:g}s.") from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.") from None


def _log_access(request: web.Request, status: int, started: float, span: trace.Span) -> None:
    context = span.get_span_context()
    fields: dict[str, Any] = request[ACCESS]
    method, path = request.method, request.path
    logs.access(f"{method} {path} {status}", {
        "request_id": request[REQUEST_ID], "method": method, "path": path,
        "status": status, "latency_ms": round((time.monotonic() - started) * 1000, 3),
        "trace_id": format(context.trace_id, "032x") if context.is_valid else None,
        **fields})


async def _handled(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's response, or the error it raised rendered in OpenAI's shape."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except Exception as exc:
        if client_left(request, exc):  # not an error: nothing to log but this, no traceback
            log.debug("client_disconnected", extra={
                "request_id": request[REQUEST_ID], "endpoint": request.path})
            return web.Response(status=CLIENT_CLOSED)  # for the span and access log only
        sent: web.StreamResponse | None = request.get(SENT)
        if sent is not None:  # the client has its answer: a later failure can only be logged
            log.exception("error after answering %s %s (request %s)",
                          request.method, request.path, request[REQUEST_ID])
            return sent
        if isinstance(exc, PodiumError):
            return _refused(request, exc)
        if isinstance(exc, web.HTTPException):
            return _refused(request, _from_http(exc, request))
        log.exception("unhandled error in %s %s (request %s)",
                      request.method, request.path, request[REQUEST_ID])
        return _render(request, InternalError(
            f"Internal error; quote request id {request[REQUEST_ID]}."))


def _refused(request: web.Request, err: PodiumError) -> web.Response:
    if (err.status < 500 or isinstance(err, Overloaded)) and ACCOUNTED not in request:
        # Refused before the governed part (bad key, body, endpoint): counted here, once.
        request.app[GATEWAY].metrics.rejected(telemetry_code(err))
    response = _render(request, err)
    if isinstance(err, RequestTimeout):
        # Nothing more is read from this connection: it closes once the answer is out (after
        # aiohttp's lingering time for a client still sending).
        response.force_close()
    return response


def _render(request: web.Request, err: PodiumError) -> web.Response:
    """An error in the shape of the API the path belongs to: Anthropic's under /v1/messages
    (unknown sub-paths and wrong methods included, since an Anthropic client reads those)."""
    if request.path == ANTHROPIC_PATH or request.path.startswith(ANTHROPIC_PATH + "/"):
        return anthropic.render_error(err, request[REQUEST_ID])
    return render(err)


def _from_http(exc: web.HTTPException, request: web.Request) -> PodiumError:
    if exc.status == 404:
        return RouteNotFound(f"Unknown endpoint {request.method} {request.path}.")
    if exc.status == 405:
        return MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.")
    if exc.status == 413:
        return PayloadTooLarge("The request body is too large.")
    err = PodiumError(exc.reason or "HTTP error")
    err.status, err.type = exc.status, "invalid_request_error"
    return err
