"""JWT bearer tokens, signed in the test with key pairs the test generates."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anthropic
import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import GatewayFactory, RunningGateway, Upstream, base_config

ISSUER, AUDIENCE = "https://idp.example.test", "podium"


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec": ec.generate_private_key(ec.SECP256R1()),
            "other": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


@pytest.fixture
async def jwt_gw(upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path,
                 keys: dict[str, Any]) -> RunningGateway:
    jwks = {"keys": [
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys["rsa"].public_key())),
         "kid": "rsa-1", "use": "sig", "alg": "RS256"},
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(keys["ec"].public_key())),
         "kid": "ec-1", "use": "sig", "alg": "ES256"}]}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    config = base_config(upstream.url)
    config["teams"] = [{"name": "support", "models": ["chat"]}, {"name": "research"}]
    config["auth"] = {"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(path),
                              "team_claim": "grp", "user_claim": "email"}}
    return await make_gateway(config)


def token(key: Any, kid: str, alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-42", "grp": "support",
            "email": "alice@example.test", "iat": now, "nbf": now - 5, "exp": now + 300,
            **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


async def test_valid_tokens_become_principals_with_their_team(
        jwt_gw: RunningGateway, keys: dict[str, Any]) -> None:
    for key, kid, alg in ((keys["rsa"], "rsa-1", "RS256"), (keys["ec"], "ec-1", "ES256")):
        client = jwt_gw.client(token(key, kid, alg))
        answer = await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content.startswith("Simulated answer")
        # The team from the `grp` claim brings its allow-list.
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(
                model="premium", messages=[{"role": "user", "content": "hi"}])
    # The identity hop's decision, on the request's SERVER span.
    [identity] = [s for s in jwt_gw.spans.get_finished_spans()
                  if s.name == "POST /v1/chat/completions"][:1]
    assert identity.attributes["podium.key.source"] == "jwt"
    assert identity.attributes["podium.team"] == "support"


async def test_a_jwt_in_x_api_key_on_the_messages_api(jwt_gw: RunningGateway,
                                                     keys: dict[str, Any]) -> None:
    """The Anthropic front door takes the same JWTs, in the header its SDK sends them in."""
    client = anthropic.AsyncAnthropic(base_url=jwt_gw.url.removesuffix("/v1"),
                                      api_key=token(keys["ec"], "ec-1", "ES256"), max_retries=0)
    message = await client.messages.create(model="chat", max_tokens=20,
                                           messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text.startswith("Simulated answer")  # type: ignore[union-attr]
    with pytest.raises(anthropic.PermissionDeniedError) as err:  # the team's allow-list
        await client.messages.create(model="premium", max_tokens=20,
                                     messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["error"]["type"] == "permission_error"  # type: ignore[index]


@pytest.mark.parametrize("case", ["expired", "bad_signature", "wrong_audience",
                                  "wrong_issuer", "not_yet_valid", "unknown_kid"])
async def test_invalid_tokens_are_401(jwt_gw: RunningGateway, keys: dict[str, Any],
                                      upstream: Upstream, case: str) -> None:
    now = int(time.time())
    bad = {
        "expired": lambda: token(keys["rsa"], "rsa-1", exp=now - 10),
        "bad_signature": lambda: token(keys["other"], "rsa-1"),
        "wrong_audience": lambda: token(keys["rsa"], "rsa-1", aud="someone-else"),
        "wrong_issuer": lambda: token(keys["rsa"], "rsa-1", iss="https://evil.test"),
        "not_yet_valid": lambda: token(keys["rsa"], "rsa-1", nbf=now + 600),
        "unknown_kid": lambda: token(keys["rsa"], "nope"),
    }[case]()
    with pytest.raises(openai.AuthenticationError) as info:
        await jwt_gw.client(bad).chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["type"] == "authentication_error"
    assert bad not in json.dumps(info.value.body)
    assert upstream.models_called() == []
