"""The audit trail's records, all built here, and the plugin that writes one per request.

Three events are on record: a request (`request_record`, by the plugin, whatever its
outcome), a reviewer's decision on a held answer (`review_record`) and a caller's feedback on
an earlier request (`feedback_record`). The trail itself (append-only, hash-chained) is in
`gateway/storage/`. Records never hold keys; prompts and answers only with
`audit.include_content: true`. A request under a cascade or learned rule also gets a `router`
section (routing/learned/outcomes.py): what the learned router trains on, with the prompt's
hashed features where `audit.router_features` and the request's data allow it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from gateway.storage.contracts import AuditStore
from gateway.storage.records import AuditRecord, Review
from plugins.base import BasePlugin, Outcome, RequestContext
from routing.learned.outcomes import router_section


def request_record(ctx: RequestContext, outcome: Outcome, include_content: bool) -> AuditRecord:
    p = ctx.principal
    details: dict[str, Any] = {
        "trace_id": ctx.trace_id, "span_id": ctx.span_id, "key_name": p.name, "user": p.user,
        "model": ctx.model, "route": ctx.plan.rule if ctx.plan else None,
        "attempted": outcome.attempted, "deployment": outcome.deployment,
        "prompt_tokens": outcome.usage.prompt_tokens,
        "completion_tokens": outcome.usage.completion_tokens,
        "cost_usd": round(outcome.cost_usd, 10), "data_class": ctx.data_class,
        "pii": dict(ctx.pii_counts), "decisions": ctx.decisions,
        "error_code": outcome.error_code, "error": outcome.error,
        "review_id": outcome.review_id,
        "cache": ctx.cache.state if ctx.cache is not None else None, "stream": ctx.stream,
        "config_version": ctx.config.number, "config_digest": ctx.config.short,
    }
    if ctx.plan is not None:
        cached = ctx.cache is not None and ctx.cache.hit   # a stored answer is no new outcome
        router = router_section(ctx.plan, None if cached else outcome.deployment,
                                outcome.checks, ctx.features)
        if router is not None:
            details["router"] = router
    if include_content:
        details["request_messages"] = ctx.body.get("messages")
        details["answer"] = outcome.answer
    return AuditRecord(time=ctx.started_at, request_id=ctx.request_id, key_id=p.key_id,
                       team=p.team, status=outcome.status, details=details)


def review_record(review: Review, reviewer: str, comment: str | None,
                  config_version: int) -> AuditRecord:
    return AuditRecord(time=time.time(), request_id=review.request_id, key_id=review.key_id,
                       team=review.team, status=None, details={
                           "event": f"review.{review.status}", "review_id": review.id,
                           "reviewer": reviewer, "comment": comment,
                           "config_version": config_version})


def feedback_record(original: Mapping[str, Any], score: float,
                    comment: str | None, config_version: int) -> AuditRecord:
    """Feedback on the request that `original` (its audit record) is about, linked to it by
    request and trace id."""
    return AuditRecord(time=time.time(), request_id=original["request_id"],
                       key_id=original.get("key_id"), team=original.get("team"), status=None,
                       details={"event": "feedback", "trace_id": original.get("trace_id"),
                                "score": score, "comment": comment,
                                "deployment": original.get("deployment"),
                                "route": original.get("route"),
                                "config_version": config_version})


class AuditPlugin(BasePlugin):
    name = "audit"

    def __init__(self, log: AuditStore, include_content: bool) -> None:
        self._log = log
        self._include_content = include_content

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        self._log.submit(request_record(ctx, outcome, self._include_content))
