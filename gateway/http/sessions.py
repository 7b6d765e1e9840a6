"""Dashboard sessions: an admin key typed into the login form, exchanged for a cookie.

Browsers cannot send a bearer header when navigating, so `/dashboard/login` opens a session
and sets the cookie `podium_dashboard`: 32 random bytes. The server keeps only the cookie's
sha256, with the admin key's name, a fingerprint of that key, and an expiry
(`dashboard.session_ttl_s`), in the session store beside the key store
(`gateway/storage/sessions.py`, `postgres_sessions.py`). Hence:

- nothing about a cookie can be computed from anything else. (Before, a cookie was a MAC keyed
  with the admin key's sha256, a value a config file may carry in the open as `key_sha256`:
  whoever could read the config could mint sessions, and none could be revoked);
- logout deletes the session: the same cookie, replayed, is refused;
- removing or rotating the admin key ends its sessions (the fingerprint no longer matches);
- the workers of a machine share sessions through the key store's SQLite file, and several
  machines through PostgreSQL (`storage.backend: postgres`); a random secret per process would
  have made a login on one worker unknown to the others.

The Secure flag: `dashboard.secure_cookie: true|false`, or `auto` (the default): set when the
login came over https, directly or through a TLS-terminating proxy that says so in
`X-Forwarded-Proto`. That header is believed from anyone, on purpose: it can only add the flag,
and a client who forges it only keeps its own cookie off plain http.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.runtime import GATEWAY
from gateway.storage.records import DashboardSession

SESSION_COOKIE = "podium_dashboard"
_FINGERPRINT = 16                    # hex digits of the admin key's sha256 kept with a session


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _fingerprint(config: GatewayConfig, name: str, key: str) -> str | None:
    presented = _digest(key)
    for entry in config.admin_keys:
        if entry.name == name and hmac.compare_digest(entry.digest(), presented):
            return presented[:_FINGERPRINT]
    return None


async def open_session(request: web.Request, name: str, key: str,
                       response: web.StreamResponse) -> bool:
    """Open a session for admin `name`, who presented `key`, and set its cookie on `response`;
    False if `key` is not that admin's key."""
    gw = request.app[GATEWAY]
    config = gw.runtime.config
    fingerprint = _fingerprint(config, name, key)
    if fingerprint is None:
        return False
    value = secrets.token_urlsafe(32)
    ttl = config.dashboard.session_ttl_s
    await gw.sessions.open(_digest(value), DashboardSession(name, fingerprint, time.time() + ttl))
    response.set_cookie(SESSION_COOKIE, value, max_age=int(ttl), **cookie_attrs(request))
    return True


async def session_admin(request: web.Request) -> str | None:
    """The admin whose live session the request's cookie names, or None."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return None
    gw = request.app[GATEWAY]
    session = await gw.sessions.find(_digest(value))
    if session is None:
        return None
    for entry in gw.runtime.config.admin_keys:  # the key that opened it must still be there
        if entry.name == session.admin and hmac.compare_digest(
                entry.digest()[:_FINGERPRINT], session.key_fingerprint):
            return session.admin
    return None


async def end_session(request: web.Request, response: web.StreamResponse) -> None:
    """Logout: the session is gone server side, and the cookie cleared."""
    value = request.cookies.get(SESSION_COOKIE)
    if value:
        await request.app[GATEWAY].sessions.end(_digest(value))
    response.del_cookie(SESSION_COOKIE, **cookie_attrs(request))


def cookie_attrs(request: web.Request) -> dict[str, Any]:
    return {"path": "/", "httponly": True, "samesite": "Strict", "secure": _secure(request)}


def _secure(request: web.Request) -> bool:
    setting = request.app[GATEWAY].runtime.config.dashboard.secure_cookie
    if setting != "auto":
        return bool(setting)
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.scheme == "https" or forwarded == "https"
