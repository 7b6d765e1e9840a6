"""Human approval: answers to matching requests are held until a reviewer approves them.

The model is called; its answer is stored with the request and the caller gets 403
`review_pending` with a `review_id` (403 rather than 409/429, which the OpenAI SDKs retry on
their own, creating duplicate holds). Reviewers approve or reject through `/admin/reviews`; the
caller fetches the outcome from `GET /v1/reviews/{id}` with the same key. Held items are stored
durably (`gateway/storage/`), written before the caller is answered, so they survive a restart;
nothing held is ever released without an approval.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.errors import ReviewPending
from gateway.storage.contracts import ReviewStore
from gateway.storage.records import Review
from plugins.base import BasePlugin, Hold, Outcome, RequestContext
from plugins.settings import ApprovalRule
from routing.rules import RequestFacts


def _one_of(expected: str | Sequence[str] | None, actual: str | None) -> bool:
    return expected is None or actual in ([expected] if isinstance(expected, str) else expected)


@dataclass(frozen=True)
class _Matcher:
    rule: ApprovalRule
    message_re: re.Pattern[str] | None

    def matches(self, facts: RequestFacts, data_class: str) -> bool:
        m = self.rule.match
        return (_one_of(m.team, facts.team) and _one_of(m.key, facts.key)
                and _one_of(m.model, facts.model) and _one_of(m.data_class, data_class)
                and (m.has_tools is None or m.has_tools == facts.has_tools)
                and all(facts.headers.get(k.lower()) == v for k, v in m.headers.items())
                and (self.message_re is None
                     or self.message_re.search(facts.last_user_message) is not None))


class ApprovalPlugin(BasePlugin):
    name = "approval"

    def __init__(self, rules: Iterable[ApprovalRule], queue: ReviewStore) -> None:
        self._rules = [_Matcher(r, re.compile(r.match.last_user_message)
                                if r.match.last_user_message else None) for r in rules]
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
