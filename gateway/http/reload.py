"""`POST /admin/reload`: re-read the config file now, as SIGHUP does (see `Gateway.reload`)."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import BadRequest
from gateway.pipeline.egress import json_response
from gateway.runtime import GATEWAY


async def admin_reload(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    await gw.runtime.auth.admin(request.headers.get("Authorization"))
    if gw.config_path is None:
        raise BadRequest("This gateway was not started from a config file; nothing to reload.")
    result = await gw.reload(gw.config_path)
    if not result.ok:
        raise BadRequest("The new config is invalid; the current one stays: "
                         + "; ".join(result.problems[:10]), code="invalid_config")
    return json_response({"status": "reloaded", "loaded_at": gw.runtime.loaded_at,
                          "restart_required": result.restart_required,
                          "warnings": list(result.warnings)})
