"""Human approval: answers to matching requests are held until a reviewer approves them.

The model is called; its answer is stored with the request and the caller gets 403
`review_pending` with a `review_id` (403 rather than 409/429, which the OpenAI SDKs retry on
their own, creating duplicate holds). Reviewers approve or reject through `/admin/reviews`; the
caller fetches the outcome from `GET /v1/reviews/{id}` with the same key. Held items are stored
durably (`gateway/storage/`), written before the caller is answered, so they survive a restart;
nothing held is ever released without an approval.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import ReviewPending
from gateway.storage.contracts import ReviewStore
from gateway.storage.records import Review
from plugins.base import BasePlugin, Hold, Outcome, RequestContext
from plugins.settings import ApprovalRule
from routing.rules import RequestFacts, RuleMatcher


@dataclass(frozen=True)
class _Matcher:
    """An approval rule: the routing rules' matcher (`routing/rules.py`, so the two can never
    disagree about what a field means), plus the one field only approval rules have."""
    rule: ApprovalRule
    matcher: RuleMatcher

    def matches(self, facts: RequestFacts, data_class: str) -> bool:
        wanted = self.rule.match.data_class
        return (wanted is None or data_class in ([wanted] if isinstance(wanted, str) else wanted)) \
            and self.matcher.matches(facts)


class ApprovalPlugin(BasePlugin):
    name = "approval"

    def __init__(self, rules: Iterable[ApprovalRule], queue: ReviewStore) -> None:
        self._rules = [_Matcher(r, RuleMatcher.compile(r.match)) for r in rules]
        self._queue = queue

    async def on_request(self, ctx: RequestContext) -> Hold | None:
        if ctx.facts is None:
            return None
        for matcher in self._rules:
            if matcher.matches(ctx.facts, ctx.data_class):
                ctx.decide(self.name, "hold", matcher.rule.name)
                return Hold(matcher.rule.name)
        return None

    async def on_response(self, ctx: RequestContext, outcome: Outcome) -> None:
        if ctx.hold is None or outcome.answer is None:
            return
        review = Review.pending(
            rule=ctx.hold.rule, request_id=ctx.request_id, key_id=ctx.principal.key_id,
            team=ctx.principal.team, model=ctx.model, data_class=ctx.data_class,
            request=ctx.body, answer=outcome.answer)
        await self._queue.hold(review)
        outcome.review_id = review.id
        raise ReviewPending(review.id)
