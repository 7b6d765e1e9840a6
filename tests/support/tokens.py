"""JWTs for tests: an RSA key generated here, its JWKS file, and tokens signed with it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import ADMIN, base_config

ISSUER, AUDIENCE = "https://idp.example.test", "podium"
SIGNER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwt_config(upstream_url: str, tmp_path: Path, **jwt_settings: Any) -> dict[str, Any]:
    """The test catalog, teams `support` (chat only) and `research`, JWTs with the team in the
    `grp` claim."""
    jwks = {"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(SIGNER.public_key())),
                      "kid": "k1", "use": "sig", "alg": "RS256"}]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    config = base_config(upstream_url)
    config["teams"] = [{"name": "support", "models": ["chat"]}, {"name": "research"}]
    config["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    config["auth"] = {"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "team_claim": "grp",
                              "jwks_file": str(tmp_path / "jwks.json"), **jwt_settings}}
    return config


def token(*, without: tuple[str, ...] = (), **claims: Any) -> str:
    """A valid token for alice@example.test in team support; `claims` override, `without`
    leaves claims out."""
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice@example.test", "grp": "support",
            "iat": now, "exp": now + 300, **claims}
    body = {k: v for k, v in body.items() if k not in without}
    return jwt.encode(body, SIGNER, algorithm="RS256", headers={"kid": "k1"})
