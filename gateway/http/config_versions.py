"""`/admin/config/...`: the history of config versions, a diff between any two, a rollback.

    GET  /admin/config/versions               newest first (`limit`, default 50); with
                                              `from=A&to=B` (`to` default: the current one)
                                              also the diff between them, secrets masked
    GET  /admin/config/versions/{number}      one version, its YAML with secrets masked
    POST /admin/config/rollback {"version": N}
                                              apply version N's text again, as a new version

Nothing here ever shows a config as stored: only `config_versions.masked_view` of it.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.config_versions import diff, masked_view
from gateway.errors import BadRequest, RouteNotFound
from gateway.http.admin import require_admin
from gateway.pipeline.egress import json_response
from gateway.pipeline.ingress import read_json, validate
from gateway.runtime import GATEWAY, Gateway
from gateway.storage.contracts import ConfigVersionStore
from gateway.storage.records import ConfigVersion

MAX_LISTED = 1000


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    version: int = Field(ge=1)


def _store(gw: Gateway) -> ConfigVersionStore:
    if gw.versions is None:
        raise RouteNotFound("This gateway keeps no config versions.")
    return gw.versions


def _number(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequest(f"{name} must be a version number (1, 2, ...).", param=name)
    return int(raw)


async def _version(store: ConfigVersionStore, number: int, name: str) -> ConfigVersion:
    found = await store.get(number)
    if found is None:
        raise RouteNotFound(f"No config version {number}.", param=name)
    return found


async def list_versions(request: web.Request) -> web.Response:
    await require_admin(request)
    gw = request.app[GATEWAY]
    store = _store(gw)
    limit = min(_number(request.query.get("limit"), "limit") or 50, MAX_LISTED)
    current = gw.runtime.version.number
    history = await store.history(limit)
    body = {"object": "list", "current": current,
            "latest": history[0].number if history else None,
            "data": [{**v.public(), "current": v.number == current} for v in history]}
    old = _number(request.query.get("from"), "from")
    if old is not None:
        new = _number(request.query.get("to"), "to") or current
        a, b = await _version(store, old, "from"), await _version(store, new, "to")
        body["diff"] = {"from": old, "to": new,
                        "text": diff(a.content, b.content, f"version {old}", f"version {new}")}
    return json_response(body)


async def show_version(request: web.Request) -> web.Response:
    await require_admin(request)
    number = _number(request.match_info["number"], "number") or 0
    version = await _version(_store(request.app[GATEWAY]), number, "number")
    return json_response({**version.public(), "yaml": masked_view(version.content)})


async def rollback(request: web.Request) -> web.Response:
    admin = await require_admin(request)
    gw = request.app[GATEWAY]
    _store(gw)
    wanted = validate(RollbackRequest, await read_json(
        request, gw.runtime.config.server.max_body_bytes)).typed.version
    result = await gw.rollback(wanted, f"admin {admin}")
    if not result.ok or result.version is None:
        raise BadRequest(f"Version {wanted} cannot be restored; the current one stays: "
                         + "; ".join(result.problems[:10]), code="invalid_config",
                         param="version")
    return json_response({"status": "rolled back", "version": result.version.public(),
                          "restart_required": result.restart_required,
                          "warnings": list(result.warnings)})
