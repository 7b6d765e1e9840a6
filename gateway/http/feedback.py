"""`POST /v1/feedback`: a score for an earlier request, from the key that made it.

The feedback becomes an audit record (`event: feedback`, linked to the original by request and
trace id), a span `podium.feedback` linked to the original request's trace, and counters per
deployment and per route rule, which the dashboard turns into mean scores: the data a team needs
to tune `quality` scores and routing rules.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from opentelemetry.trace import Link, SpanContext, TraceFlags
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.errors import RouteNotFound
from gateway.http.governed import identify
from gateway.pipeline.egress import json_response
from gateway.pipeline.ingress import read_json, validate
from gateway.runtime import GATEWAY
from plugins.audit import feedback_record


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    request_id: str | None = Field(default=None, min_length=1, max_length=100)
    trace_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    score: float = Field(ge=0, le=1)              # 0 bad … 1 good
    comment: str | None = Field(default=None, max_length=4000)

    @model_validator(mode="after")
    def _one_reference(self) -> FeedbackIn:
        if (self.request_id is None) == (self.trace_id is None):
            raise ValueError("give exactly one of 'request_id' or 'trace_id'")
        return self



async def feedback(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = await identify(request, gw, rt)
    fb = validate(FeedbackIn, await read_json(request, rt.config.server.max_body_bytes)).typed
    audit = gw.governance.audit
    if audit is None:
        raise RouteNotFound("Feedback is kept with the audit trail, which is disabled.")
    found = await audit.query({"request_id": fb.request_id} if fb.request_id
                              else {"trace_id": fb.trace_id or ""}, limit=50)
    original = next((r for r in found if "event" not in r
                     and r.get("key_id") == principal.key_id), None)
    if original is None:  # unknown, or another caller's: the same answer for both
        raise RouteNotFound("No request with that id was made with this key.")
    audit.submit(feedback_record(original, fb.score, fb.comment, rt.version.number))
    _trace(gw, original, fb)
    labels = (original.get("deployment") or "none", original.get("route") or "none")
    gw.metrics.feedback.labels(*labels).observe(fb.score)
    return json_response({"object": "feedback", "request_id": original["request_id"],
                          "score": fb.score, "deployment": original.get("deployment"),
                          "route": original.get("route")}, status=201)


def _trace(gw: Any, original: dict[str, Any], fb: FeedbackIn) -> None:
    links = []
    trace_id, span_id = original.get("trace_id"), original.get("span_id")
    if trace_id and span_id:
        links.append(Link(SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                                      trace_flags=TraceFlags(TraceFlags.SAMPLED))))
    with gw.telemetry.tracer.start_as_current_span("podium.feedback", links=links) as span:
        span.add_event("feedback", {"request_id": original["request_id"], "score": fb.score,
                                    "deployment": original.get("deployment") or "",
                                    "route": original.get("route") or ""})
