"""A local OTLP/HTTP receiver: accepts `POST /v1/traces` (protobuf), counts what came in,
answers 200 with an empty ExportTraceServiceResponse. It stands in for a collector so the
tracing scenario pays the real export cost (serialisation and HTTP) on Podium's side.
`POST /v1/metrics` and `/v1/logs` are accepted (and counted) too, for SDKs that export those
to the same endpoint.

    GET /stats   {"exports": n, "spans": n, "bytes": n, "other_exports": n}

Run: python -m bench.otlp_receiver --port 4318
"""

from __future__ import annotations

import orjson
from aiohttp import web

from bench.serving import serve, server_args

_COUNTS: web.AppKey[dict[str, int]] = web.AppKey("counts", dict)


def count_spans(raw: bytes) -> int:
    """Spans in one export request; -1 when the protobuf classes are not importable."""
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
    except ImportError:
        return -1
    message = ExportTraceServiceRequest()
    message.ParseFromString(raw)
    return sum(len(scope.spans) for rs in message.resource_spans for scope in rs.scope_spans)


async def traces(request: web.Request) -> web.Response:
    raw = await request.read()
    counts = request.app[_COUNTS]
    counts["exports"] += 1
    counts["bytes"] += len(raw)
    spans = count_spans(raw)
    if spans >= 0:
        counts["spans"] += spans
    return web.Response(body=b"", content_type="application/x-protobuf")


async def other_signal(request: web.Request) -> web.Response:
    request.app[_COUNTS]["other_exports"] += 1
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")


async def stats(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(request.app[_COUNTS]),
                        content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_COUNTS] = {"exports": 0, "spans": 0, "bytes": 0, "other_exports": 0}
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/metrics", other_signal)
    app.router.add_post("/v1/logs", other_signal)
    app.router.add_get("/stats", stats)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    args = server_args("local OTLP/HTTP trace receiver").parse_args()
    serve(build_app(), args.host, args.port)


if __name__ == "__main__":
    main()
