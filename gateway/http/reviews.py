"""Human approval over HTTP: the caller's `GET /v1/reviews/{id}` and the reviewers'
`/admin/reviews` endpoints. Every decision is also an audit record, naming the reviewer."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import ReviewPending, ReviewRejected, RouteNotFound
from gateway.http.admin import require_admin
from gateway.http.governed import identify
from gateway.pipeline.egress import json_response
from gateway.pipeline.ingress import read_json, validate
from gateway.runtime import GATEWAY
from gateway.storage.records import Review
from plugins.audit import review_record


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    comment: str | None = Field(default=None, max_length=4000)



async def _find(request: web.Request) -> Review:
    review_id = request.match_info["review_id"]
    review = await request.app[GATEWAY].governance.reviews.get(review_id)
    if review is None:
        raise RouteNotFound(f"No review with id {review_id!r}.")
    return review


async def review_outcome(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    principal = await identify(request, gw, gw.runtime)
    review = await _find(request)
    if review.key_id != principal.key_id:
        # Another caller's review does not exist, as far as this caller can tell.
        raise RouteNotFound(f"No review with id {review.id!r}.")
    if review.status == "pending":
        raise ReviewPending(review.id, f"Review {review.id} is still pending.")
    if review.status == "rejected":
        reason = f": {review.comment}" if review.comment else ""
        raise ReviewRejected(f"The answer was rejected by a reviewer{reason}.")
    return json_response(review.answer, {"x-podium-review-id": review.id})


async def list_reviews(request: web.Request) -> web.Response:
    await require_admin(request)
    status = request.query.get("status", "pending")
    reviews = await request.app[GATEWAY].governance.reviews.list(
        None if status == "all" else status)
    return json_response({"object": "list", "data": [r.public() for r in reviews]})


async def show_review(request: web.Request) -> web.Response:
    await require_admin(request)
    return json_response((await _find(request)).public())


async def approve(request: web.Request) -> web.Response:
    return await _decide(request, approve=True)


async def reject(request: web.Request) -> web.Response:
    return await _decide(request, approve=False)


async def _decide(request: web.Request, approve: bool) -> web.Response:
    reviewer = await require_admin(request)
    gw = request.app[GATEWAY]
    body = await read_json(request, gw.runtime.config.server.max_body_bytes) \
        if request.body_exists else {}
    comment = validate(Decision, body).typed.comment
    review = await gw.governance.reviews.decide(request.match_info["review_id"], approve,
                                                reviewer, comment)
    if review is None:
        raise RouteNotFound(f"No review with id {request.match_info['review_id']!r}.")
    if gw.governance.audit is not None:
        gw.governance.audit.submit(review_record(review, reviewer, comment,
                                                 gw.runtime.version.number))
    return json_response(review.public())
