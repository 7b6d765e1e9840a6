"""`/admin/...`: operators' endpoints, behind an admin key (`admin_keys:` in the config).

Keys: `POST /admin/keys` returns the raw key once (only its digest is stored) and may give the
key its own rpm, tpm and budget, `GET /admin/keys` lists them, `DELETE /admin/keys/{id}` revokes
one, effective on the next request.

Spend: `GET /admin/spend` reports the ledger grouped by key, team, model, deployment or day,
or by task and by workflow (the per-task KPIs);
`GET /admin/spend/budgets` shows every key's and team's budget as enforcement sees it now: the
period, spent, reserved by requests in flight, and what remains.
"""

from __future__ import annotations

import time

from aiohttp import web
from pydantic import ConfigDict, Field

from gateway.errors import BadRequest, RouteNotFound
from gateway.pipeline.egress import json_response
from gateway.pipeline.identity import key_id_for
from gateway.pipeline.ingress import read_json, validate
from gateway.runtime import GATEWAY, Gateway
from gateway.storage.task_report import workflow_kpis
from plugins.budget import BudgetPlugin
from plugins.settings import Limits

SPEND_GROUPS = ("key", "team", "model", "deployment", "day")
TASK_GROUPS = ("task", "workflow")
MAX_TASKS_LISTED = 10_000


class NewKey(Limits):
    """A key to create, with its own limits (as on `keys:` in the config; its team's apply as
    well)."""
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: str = Field(min_length=1, max_length=200)
    team: str | None = None
    user: str | None = None
    models: list[str] | None = None

    def limits(self) -> Limits | None:
        if self.rpm is None and self.tpm is None and self.budget_usd is None:
            return None
        return Limits(rpm=self.rpm, tpm=self.tpm, budget_usd=self.budget_usd,
                      budget_period=self.budget_period)



def _float(request: web.Request, name: str) -> float | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise BadRequest(f"Query parameter {name!r} must be a number (unix seconds).",
                         param=name) from None


async def spend(request: web.Request) -> web.Response:
    """Spend grouped by key, team, model, deployment or day; by task (the newest `limit`
    tasks, default 100) or by workflow (its KPIs: gateway/storage/task_report.py);
    `since`/`until` in unix seconds."""
    await require_admin(request)
    group_by = request.query.get("group_by", "key")
    if group_by not in (*SPEND_GROUPS, *TASK_GROUPS):
        raise BadRequest(f"group_by must be one of {', '.join(SPEND_GROUPS + TASK_GROUPS)}.",
                         param="group_by")
    ledger = request.app[GATEWAY].governance.ledger
    since, until = _float(request, "since"), _float(request, "until")
    if group_by == "task":
        limit = int(_float(request, "limit") or 100)
        tasks = await ledger.tasks(since, until, max(1, min(limit, MAX_TASKS_LISTED)))
        rows = [t.public() for t in tasks]
    elif group_by == "workflow":
        rows = workflow_kpis(await ledger.tasks(since, until), since, until, time.time())
    else:
        rows = await ledger.report(group_by, since, until)
    return json_response({"object": "list", "group_by": group_by, "data": rows})


async def budgets(request: web.Request) -> web.Response:
    """Each key's and team's budget now: `key_id` or `team` narrow the list."""
    await require_admin(request)
    gw = request.app[GATEWAY]
    plugin = next((p for p in gw.runtime.chain.plugins if isinstance(p, BudgetPlugin)), None)
    if plugin is None:
        raise RouteNotFound("The budget plugin is not in the chain.")
    want_key, want_team = request.query.get("key_id"), request.query.get("team")
    rows = []
    for kind, ident, name, team, limits in await _budget_holders(gw):
        if (want_key or want_team) and not (
                (kind == "key" and ident == want_key) or (team is not None and team == want_team)):
            continue
        home = f"team:{team}" if team else f"key:{ident}"
        standing = await plugin.standing(kind, ident, home, limits)
        if standing is not None:
            rows.append({"object": "budget", "scope": kind, "id": ident, "name": name,
                         "team": team, **standing})
    return json_response({"object": "list", "data": rows})


Holder = tuple[str, str, str, str | None, Limits | None]


async def _budget_holders(gw: Gateway) -> list[Holder]:
    """(scope, id, name, team, limits) of every config key, active stored key and team."""
    cfg = gw.runtime.config
    out: list[Holder] = [("key", key_id_for(k.digest()), k.name, k.team, k) for k in cfg.keys]
    out += [("key", k.id, k.name, k.team, k.limits) for k in await gw.keystore.list()
            if k.revoked_at is None]
    out += [("team", t.name, t.name, t.name, t) for t in cfg.teams]
    return out


async def audit(request: web.Request) -> web.Response:
    """Audit records, newest first; filters: key_id, team, status, request_id, since, until."""
    await require_admin(request)
    log = request.app[GATEWAY].governance.audit
    if log is None:
        raise RouteNotFound("The audit trail is disabled (audit.enabled: false).")
    limit = int(_float(request, "limit") or 100)
    records = await log.query(request.query, limit=max(1, min(limit, 1000)))
    return json_response({"object": "list", "data": records})


async def require_admin(request: web.Request) -> str:
    rt = request.app[GATEWAY].runtime
    return await rt.auth.admin(request.headers.get("Authorization"))


async def create_key(request: web.Request) -> web.Response:
    await require_admin(request)
    gw = request.app[GATEWAY]
    rt = gw.runtime
    new = validate(NewKey, await read_json(request, rt.config.server.max_body_bytes)).typed
    if not rt.auth.team_exists(new.team):
        raise BadRequest(f"Unknown team {new.team!r}.", param="team")
    unknown = [m for m in new.models or () if m not in rt.catalog.groups]
    if unknown:
        raise BadRequest(f"Unknown model(s): {', '.join(unknown)}.", param="models")
    key, raw = await gw.keystore.create(new.name, new.team, new.user, new.models,
                                        new.limits())
    return json_response({**key.public(), "key": raw}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    await require_admin(request)
    keys = await request.app[GATEWAY].keystore.list()
    return json_response({"object": "list", "data": [k.public() for k in keys]})


async def revoke_key(request: web.Request) -> web.Response:
    await require_admin(request)
    key_id = request.match_info["key_id"]
    if not await request.app[GATEWAY].keystore.revoke(key_id):
        raise RouteNotFound(f"No active key with id {key_id!r}.")
    return json_response({"id": key_id, "object": "key", "revoked": True})
