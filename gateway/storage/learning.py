"""The audit records a learned router trains on, read back through any audit backend.

`podium router train --from-audit` asks for the newest request records that kept prompt
features made by one embedder (a `router` section, see routing/learned/outcomes.py) and the
feedback given since; the labels are made from them in routing/learned/outcomes.py.
"""

from __future__ import annotations

from typing import Any

from gateway.storage.contracts import AuditStore
from routing.learned.outcomes import feedback_by_request


async def router_outcomes(audit: AuditStore, embedder: str, since: float | None,
                          limit: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """(request records with features by `embedder`, newest first, at most `limit`; the mean
    feedback score per request id, from feedback given since `since`)."""
    window = {"since": str(since)} if since is not None else {}
    requests = await audit.query({"router_embedder": embedder, **window}, limit)
    feedback = await audit.query({"event": "feedback", **window}, limit)
    return requests, feedback_by_request(feedback)
