"""Hop 2, identity: a bearer credential → `Principal`.

Three sources, tried in this order: a JWT (when `auth.jwt` is configured and the token has a
JWT's shape), keys from the config, keys from the key store (created through the admin API).
Keys are held only as sha256 digests. A presented key is hashed; the first 16 hex digits of its
digest pick the candidate entry, and the full digests are then compared with
`hmac.compare_digest`, so the comparison that decides takes constant time. The raw key is never
kept, logged or traced. A key's team supplies the policy (models, tools, data class, regions);
the key may only narrow it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config import AdminKeyEntry, GatewayConfig, KeyEntry, TeamConfig
from gateway.errors import AuthenticationFailed
from gateway.observability.hops import HopRecord
from plugins.settings import Limits


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str                          # stable, non-secret id derived from the key's digest
    name: str
    team: str | None
    user: str | None
    allowed_models: frozenset[str] | None  # None: every model
    allowed_tools: frozenset[str] | None = None
    data_class: str = "public"           # the team's default class for its requests
    regions: frozenset[str] | None = None
    roles: tuple[str, ...] = ()
    source: str = "config"               # config | store | jwt
    limits: Limits | None = None         # a store key's own limits (config keys': in `keys:`)

    def may_use(self, group: str) -> bool:
        return self.allowed_models is None or group in self.allowed_models

    def own_limits(self, config_keys: Mapping[str, Limits]) -> Limits | None:
        """The key's own limits: from `keys:` (by key id) for a config key, from the key store
        for a stored one."""
        return self.limits if self.limits is not None else config_keys.get(self.key_id)


def identity_attributes(span: HopRecord, principal: Principal) -> None:
    """The hop's decision on its span: which key, never the key itself."""
    if span.is_recording():
        span.set_attributes({"podium.key.id": principal.key_id,
                             "podium.key.name": principal.name,
                             "podium.key.source": principal.source,
                             "podium.team": principal.team or ""})


def key_id_for(digest: str) -> str:
    return f"key_{digest[:12]}"


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _narrow(team: Iterable[str] | None, key: Iterable[str] | None) -> frozenset[str] | None:
    if team is None:
        return None if key is None else frozenset(key)
    if key is None:
        return frozenset(team)
    return frozenset(team) & frozenset(key)


def make_principal(*, key_id: str, name: str, team: TeamConfig | None, team_name: str | None,
                   user: str | None, models: Iterable[str] | None, roles: tuple[str, ...] = (),
                   source: str = "config", limits: Limits | None = None) -> Principal:
    return Principal(
        key_id=key_id, name=name, team=team_name, user=user,
        allowed_models=_narrow(team.models if team else None, models),
        allowed_tools=frozenset(team.tools) if team and team.tools is not None else None,
        data_class=team.data_class if team else "public",
        regions=frozenset(team.regions) if team and team.regions is not None else None,
        roles=roles, source=source, limits=limits)


def principal_for(entry: KeyEntry, teams: Mapping[str, TeamConfig] | None = None) -> Principal:
    team = (teams or {}).get(entry.team or "")
    return make_principal(key_id=key_id_for(entry.digest()), name=entry.name, team=team,
                          team_name=entry.team, user=entry.user, models=entry.models)


class DigestIndex:
    """Constant-time lookup of a value by the sha256 digest of a secret."""

    _NO_DIGEST = "-" * 64

    def __init__(self, entries: Iterable[tuple[str, object]] = ()) -> None:
        self._by_prefix = {digest[:16]: (digest, value) for digest, value in entries}

    def find(self, digest: str) -> object | None:
        stored, value = self._by_prefix.get(digest[:16], (self._NO_DIGEST, None))
        return value if hmac.compare_digest(stored, digest) else None


class KeyRing:
    """The keys written in the config."""

    def __init__(self, keys: Iterable[KeyEntry], teams: Mapping[str, TeamConfig]) -> None:
        self._index = DigestIndex((e.digest(), principal_for(e, teams)) for e in keys)

    def find(self, digest: str) -> Principal | None:
        found = self._index.find(digest)
        return found if isinstance(found, Principal) else None


class AdminRing:
    def __init__(self, keys: Iterable[AdminKeyEntry]) -> None:
        self._index = DigestIndex((e.digest(), e.name) for e in keys)

    def find(self, digest: str) -> str | None:
        found = self._index.find(digest)
        return found if isinstance(found, str) else None


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("The Authorization header must be 'Bearer <key>'.")
    return token


API_KEY_HEADER = "x-api-key"


def presented_token(headers: Mapping[str, str], *, api_key_header: bool) -> str:
    """The credential a request presents. Where the endpoint takes Anthropic's `x-api-key`
    (`api_key_header`), that header wins over `Authorization`; elsewhere only a bearer counts,
    and a lone `x-api-key` is told where its key belongs."""
    if api_key_header:
        key = (headers.get(API_KEY_HEADER) or "").strip()
        if key:
            return key
    elif headers.get(API_KEY_HEADER) and not headers.get("Authorization"):
        raise AuthenticationFailed("This endpoint takes the key as 'Authorization: Bearer "
                                   "<key>'; x-api-key is accepted on /v1/messages only.")
    return bearer_token(headers.get("Authorization"))


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def teams_by_name(cfg: GatewayConfig) -> dict[str, TeamConfig]:
    return {t.name: t for t in cfg.teams}
