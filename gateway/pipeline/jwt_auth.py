"""JWT bearer tokens (RS256/ES256...) verified with PyJWT against a JWKS.

Signature, `exp`, `nbf`, `iss` and `aud` are all checked by PyJWT; Podium adds only the mapping
of claims to a `Principal` (team, user, roles). A JWKS file is read at load; a JWKS URL is
fetched off the event loop and cached by PyJWT's client.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import jwt

from gateway.config import JWTConfig
from gateway.errors import AuthenticationFailed


class JWTVerifier:
    def __init__(self, cfg: JWTConfig) -> None:
        self._cfg = cfg
        self._keys: dict[str, jwt.PyJWK] = {}
        self._client: jwt.PyJWKClient | None = None
        if cfg.jwks_file:
            jwks = jwt.PyJWKSet.from_json(Path(cfg.jwks_file).read_text())
            self._keys = {k.key_id or "": k for k in jwks.keys}
        elif cfg.jwks_url is not None:
            self._client = jwt.PyJWKClient(cfg.jwks_url, cache_keys=True, lifespan=300)
        else:  # check_references refuses such a config; a config built by hand may not
            raise ValueError("auth.jwt needs 'jwks_file' or 'jwks_url'")

    @property
    def config(self) -> JWTConfig:
        return self._cfg

    async def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            key = await self._signing_key(str(header.get("kid") or ""))
            return jwt.decode(
                token, key=key.key, algorithms=list(self._cfg.algorithms),
                audience=self._cfg.audience, issuer=self._cfg.issuer,
                leeway=self._cfg.leeway_s,
                options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise AuthenticationFailed("The token has expired.", code="token_expired") from None
        except (jwt.PyJWTError, ValueError) as exc:
            raise AuthenticationFailed(f"The token is not valid: {_reason(exc)}",
                                       code="invalid_token") from None

    async def _signing_key(self, kid: str) -> jwt.PyJWK:
        if self._client is not None:
            key: jwt.PyJWK = await asyncio.to_thread(self._client.get_signing_key, kid)
            return key
        if kid in self._keys:
            return self._keys[kid]
        if not kid and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise jwt.InvalidKeyError("no key in the JWKS matches the token's key id")


def _reason(exc: Exception) -> str:
    # PyJWT's messages name the failed check ("Invalid audience", "Signature verification
    # failed") and never contain the token.
    return str(exc) or type(exc).__name__
