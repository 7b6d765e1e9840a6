"""`/admin/...`: operators' endpoints, behind an admin key (`admin_keys:` in the config).

Keys: `POST /admin/keys` returns the raw key once (only its digest is stored), `GET /admin/keys`
lists them, `DELETE /admin/keys/{id}` revokes one, effective on the next request.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.app import GATEWAY, REQUEST_ID
from gateway.egress import json_response
from gateway.errors import BadRequest, RouteNotFound
from gateway.ingress import read_json, validate


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: str = Field(min_length=1, max_length=200)
    team: str | None = None
    user: str | None = None
    models: list[str] | None = None


def add_routes(app: web.Application) -> None:
    app.router.add_post("/admin/keys", create_key)
    app.router.add_get("/admin/keys", list_keys)
    app.router.add_delete("/admin/keys/{key_id}", revoke_key)


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
    key, raw = gw.keystore.create(new.name, new.team, new.user, new.models)
    return json_response({**key.public(), "key": raw},
                         {"x-request-id": request[REQUEST_ID]}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    await require_admin(request)
    keys = request.app[GATEWAY].keystore.list()
    return json_response({"object": "list", "data": [k.public() for k in keys]},
                         {"x-request-id": request[REQUEST_ID]})


async def revoke_key(request: web.Request) -> web.Response:
    await require_admin(request)
    key_id = request.match_info["key_id"]
    if not request.app[GATEWAY].keystore.revoke(key_id):
        raise RouteNotFound(f"No active key with id {key_id!r}.")
    return json_response({"id": key_id, "object": "key", "revoked": True},
                         {"x-request-id": request[REQUEST_ID]})
