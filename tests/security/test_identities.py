"""Sessions and identities: no forged or replayed dashboard session, no team-less JWT caller, no
approval rule that ignores half its conditions.

Before: a dashboard cookie was a MAC keyed with the admin key's sha256 (which a config may hold
in the open as `key_sha256`: anyone who read it could mint sessions), logout only asked the
browser to forget the cookie, the Secure flag followed the gateway's own scheme only (never set
behind a TLS-terminating proxy); a JWT without a known team claim was a caller with no team
restrictions at all; approval rules matched with a copy of the routing matcher that ignored
`min_prompt_tokens` and `max_prompt_tokens`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.http.sessions import SESSION_COOKIE
from tests.conftest import ADMIN, APP_KEY, GatewayFactory, RunningGateway, Upstream, base_config
from tests.support.tokens import jwt_config, token

HI = [{"role": "user", "content": "hi"}]


async def _fetch(gw: RunningGateway, method: str, path: str,
                 **kw: Any) -> tuple[int, aiohttp.ClientResponse, str]:
    async with aiohttp.ClientSession() as session, session.request(
            method, gw.url.removesuffix("/v1") + path, allow_redirects=False, **kw) as resp:
        return resp.status, resp, await resp.text()


async def _log_in(gw: RunningGateway, **headers: str) -> tuple[str, str]:
    """(the session cookie's value, its whole Set-Cookie header)."""
    status, resp, _ = await _fetch(gw, "POST", "/dashboard/login", data={"key": ADMIN},
                                   headers=headers)
    assert status == 303
    return resp.cookies[SESSION_COOKIE].value, resp.headers["Set-Cookie"]


async def _data_status(gw: RunningGateway, cookie: str) -> int:
    status, _, _ = await _fetch(gw, "GET", "/admin/dashboard/data",
                                cookies={SESSION_COOKIE: cookie})
    return status


def _dashboard_config(upstream: Upstream, tmp_path: Path, **dashboard: Any) -> dict[str, Any]:
    config = base_config(upstream.url)
    config["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    config["key_store"] = {"path": str(tmp_path / "keys.sqlite3")}  # shared, as by workers
    if dashboard:
        config["dashboard"] = dashboard
    return config


async def test_logout_revokes_the_session_everywhere(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    config = _dashboard_config(upstream, tmp_path)
    one, other = await make_gateway(config), await make_gateway(config)  # two workers
    cookie, _ = await _log_in(one)
    assert await _data_status(one, cookie) == 200
    assert await _data_status(other, cookie) == 200, "a session opened by one worker"
    status, _, _ = await _fetch(other, "POST", "/dashboard/logout",
                                cookies={SESSION_COOKIE: cookie})
    assert status == 303
    for gw in (one, other):  # the cookie, replayed after logout, is refused
        assert await _data_status(gw, cookie) == 401
        _, _, page = await _fetch(gw, "GET", "/dashboard", cookies={SESSION_COOKIE: cookie})
        assert 'id="login"' in page


async def test_a_session_cannot_be_minted_from_the_admin_keys_digest(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = await make_gateway(_dashboard_config(upstream, tmp_path))
    # What the config may hold in the open (key_sha256) was all it took to sign a cookie.
    digest = hashlib.sha256(ADMIN.encode()).hexdigest()
    message = f"{base64.urlsafe_b64encode(b'ops').decode().rstrip('=')}.{int(time.time()) + 600}"
    forged = f"{message}.{hmac.new(bytes.fromhex(digest), message.encode(), 'sha256').hexdigest()}"
    assert await _data_status(gw, forged) == 401
    cookie, _ = await _log_in(gw)
    assert ADMIN not in cookie and digest not in cookie and len(cookie) >= 43


@pytest.mark.parametrize(("setting", "forwarded", "secure"), [
    ("auto", None, False), ("auto", "https", True), (True, None, True), (False, "https", False)])
async def test_the_secure_flag_is_configurable_for_a_tls_terminating_proxy(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path,
        setting: Any, forwarded: str | None, secure: bool) -> None:
    gw = await make_gateway(_dashboard_config(upstream, tmp_path, secure_cookie=setting))
    headers = {"X-Forwarded-Proto": forwarded} if forwarded else {}
    _, set_cookie = await _log_in(gw, **headers)
    assert ("; Secure" in set_cookie) is secure


# ---- JWT teams -------------------------------------------------------------------------------

TEAMLESS = {"missing": lambda: token(without=("grp",)),
            "unknown": lambda: token(grp="no-such-team"), "empty": lambda: token(grp=[])}


@pytest.mark.parametrize("case", sorted(TEAMLESS))
async def test_a_jwt_without_a_known_team_is_refused(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path, case: str) -> None:
    gw = await make_gateway(jwt_config(upstream.url, tmp_path))
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await gw.client(TEAMLESS[case]()).chat.completions.create(model="premium", messages=HI)
    assert caught.value.body["code"] == "team_required"
    assert "'grp' claim" in caught.value.message
    assert upstream.models_called() == []


async def test_a_jwt_without_a_known_team_can_be_placed_in_a_default_team(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = await make_gateway(jwt_config(upstream.url, tmp_path, default_team="support"))
    for bearer in (TEAMLESS["missing"](), TEAMLESS["unknown"]()):
        client = gw.client(bearer)
        assert (await client.chat.completions.create(model="chat", messages=HI)).choices
        with pytest.raises(openai.PermissionDeniedError):  # the default team's allow-list
            await client.chat.completions.create(model="premium", messages=HI)
    # A list claim (identity providers send groups): the first team the gateway knows.
    answer = await gw.client(token(grp=["admins", "research"])).chat.completions.create(
        model="premium", messages=HI)
    assert answer.choices


def test_the_config_refuses_jwt_without_teams_or_with_an_unknown_default(
        tmp_path: Path) -> None:
    from gateway.config import ConfigError, parse_config

    config = jwt_config("http://127.0.0.1:9/v1", tmp_path, default_team="nobody")
    with pytest.raises(ConfigError) as caught:
        parse_config(config, env={})
    assert caught.value.problems == ["auth.jwt.default_team: unknown team 'nobody'"]
    config.pop("teams")
    config["auth"]["jwt"].pop("default_team")
    with pytest.raises(ConfigError) as caught:
        parse_config(config, env={})
    assert "define at least one team" in caught.value.problems[0]


# ---- approval rules --------------------------------------------------------------------------

@pytest.mark.parametrize(("match", "prompt", "held"), [
    ({"min_prompt_tokens": 10000}, "refund please", False),
    ({"min_prompt_tokens": 20}, "refund please " * 40, True),
    ({"max_prompt_tokens": 20}, "refund please " * 40, False),
    ({"max_prompt_tokens": 20}, "refund please", True),
])
async def test_approval_rules_match_as_routing_rules_do(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path,
        match: dict[str, int], prompt: str, held: bool) -> None:
    config = base_config(upstream.url)
    config["approvals"] = [{"name": "large-refunds",
                            "match": {"last_user_message": "refund", **match}}]
    gw = await make_gateway(config)
    messages = [{"role": "user", "content": prompt}]
    if held:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await gw.client(APP_KEY).chat.completions.create(model="chat", messages=messages)
        assert caught.value.body["code"] == "review_pending"
    else:
        answer = await gw.client(APP_KEY).chat.completions.create(model="chat",
                                                                  messages=messages)
        assert answer.choices
