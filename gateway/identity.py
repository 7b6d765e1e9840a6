"""Hop 2, identity: a bearer key → `Principal`.

Keys are held only as sha256 digests. A presented key is hashed; the first 16 hex digits of its
digest pick the candidate entry, and the full digests are then compared with
`hmac.compare_digest`, so the comparison that decides takes constant time. The raw key is never
kept, logged or traced.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import KeyEntry
from gateway.errors import AuthenticationFailed


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str                          # stable, non-secret id derived from the key's digest
    name: str
    team: str | None
    user: str | None
    allowed_models: frozenset[str] | None  # None: every model

    def may_use(self, group: str) -> bool:
        return self.allowed_models is None or group in self.allowed_models


def key_id_for(digest: str) -> str:
    return f"key_{digest[:12]}"


def principal_for(entry: KeyEntry) -> Principal:
    models = frozenset(entry.models) if entry.models is not None else None
    return Principal(key_id=key_id_for(entry.digest()), name=entry.name, team=entry.team,
                     user=entry.user, allowed_models=models)


_NO_DIGEST = "-" * 64


class KeyRing:
    def __init__(self, keys: Iterable[KeyEntry]) -> None:
        self._by_prefix = {e.digest()[:16]: (e.digest(), principal_for(e)) for e in keys}

    def authenticate(self, authorization: str | None) -> Principal:
        token = _bearer_token(authorization)
        digest = hashlib.sha256(token.encode()).hexdigest()
        stored, principal = self._by_prefix.get(digest[:16], (_NO_DIGEST, None))
        if not hmac.compare_digest(stored, digest) or principal is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return principal


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("The Authorization header must be 'Bearer <key>'.")
    return token
