"""Authentication: every credential source behind one object, compiled from one config.

`authenticate` serves the model endpoints; `admin` serves `/admin/...`, where a valid but
non-admin credential gets 403 and anything else 401.
"""

from __future__ import annotations

import hashlib
from typing import Any

from gateway.config import GatewayConfig, JWTConfig
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.pipeline.identity import (
    AdminRing,
    KeyRing,
    Principal,
    bearer_token,
    digest_of,
    looks_like_jwt,
    make_principal,
    teams_by_name,
)
from gateway.pipeline.jwt_auth import JWTVerifier
from gateway.storage.contracts import KeyStoreBackend


class Authenticator:
    def __init__(self, cfg: GatewayConfig, store: KeyStoreBackend) -> None:
        self._teams = teams_by_name(cfg)
        self._ring = KeyRing(cfg.keys, self._teams)
        self._admins = AdminRing(cfg.admin_keys)
        self._jwt = JWTVerifier(cfg.auth.jwt) if cfg.auth.jwt else None
        self._store = store

    async def authenticate(self, authorization: str | None) -> Principal:
        return await self.authenticate_token(bearer_token(authorization))

    async def authenticate_token(self, token: str) -> Principal:
        """The principal of a credential however it was sent (bearer, or `x-api-key`)."""
        if self._jwt is not None and looks_like_jwt(token):
            return self._from_claims(await self._jwt.verify(token), self._jwt.config)
        digest = digest_of(token)
        principal = self._ring.find(digest)
        if principal is not None:
            return principal
        stored = await self._store.find(digest)
        if stored is not None:
            return make_principal(key_id=stored.id, name=stored.name,
                                  team=self._teams.get(stored.team or ""), team_name=stored.team,
                                  user=stored.user, models=stored.models, source="store",
                                  limits=stored.limits)
        raise AuthenticationFailed("Incorrect API key provided.")

    async def admin(self, authorization: str | None) -> str:
        token = bearer_token(authorization)
        name = self._admins.find(digest_of(token))
        if name is not None:
            return name
        try:
            await self.authenticate(authorization)
        except AuthenticationFailed:
            raise AuthenticationFailed("Incorrect admin key provided.") from None
        raise PermissionDenied("This endpoint needs an admin key.", code="admin_required")

    def team_exists(self, name: str | None) -> bool:
        return name is None or not self._teams or name in self._teams

    def _from_claims(self, claims: dict[str, Any], cfg: JWTConfig) -> Principal:
        issuer, subject = str(claims["iss"]), str(claims.get("sub") or "")
        key_id = _pseudonym(issuer, subject)
        team_name = self._jwt_team(claims.get(cfg.team_claim), cfg)
        roles = claims.get(cfg.roles_claim) or ()
        if isinstance(roles, str):
            roles = roles.split()
        user = claims.get(cfg.user_claim)
        if cfg.identity == "hash":
            # A subject is often an e-mail address: records, spans, logs and the ledger name the
            # caller by a stable pseudonym instead (one that whoever guesses the address can
            # confirm, so a pseudonym, not anonymity).
            name = key_id
            user = None if user is None else _pseudonym(issuer, str(user))
        else:
            name = subject or key_id
        return make_principal(key_id=key_id, name=name, team=self._teams[team_name],
                              team_name=team_name,
                              user=str(user) if user is not None else None, models=None,
                              roles=tuple(str(r) for r in roles), source="jwt")

    def _jwt_team(self, claim: Any, cfg: JWTConfig) -> str:
        """The configured team a token's caller belongs to: the first team its claim names that
        the gateway knows (a claim may be a list, as identity providers send groups), else
        `default_team`. A token in no known team is refused: never a caller without a team's
        restrictions."""
        named = claim if isinstance(claim, list) else [claim]
        for team in named:
            if isinstance(team, str) and team in self._teams:
                return team
        if cfg.default_team in self._teams:  # check_references makes sure it is
            return cfg.default_team
        why = "has no" if claim in (None, "", []) else "names no team this gateway knows in its"
        raise PermissionDenied(f"The token {why} {cfg.team_claim!r} claim; ask for a token with "
                               "your team, or an operator to set auth.jwt.default_team.",
                               code="team_required")


def _pseudonym(issuer: str, value: str) -> str:
    return "jwt_" + hashlib.sha256(f"{issuer}|{value}".encode()).hexdigest()[:12]
