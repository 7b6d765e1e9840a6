"""Embeddings go through the same permission scope as chat: team class, declared class, PII,
clearance and regions. Before, `/v1/embeddings` routed with no scope at all, so a confidential
or EU-only team's text, a `restricted` header, and text with emails or card numbers all went
raw to a public US deployment."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import GatewayFactory, RunningGateway, Upstream, deployment

SECRET_KEY = "sk-test-secret-team-0000000001"
EU_KEY = "sk-test-eu-team-00000000000001"
OPEN_KEY = "sk-test-open-team-000000000001"
EMAIL_TEXT = "Please file this for jane.doe@example.com, card 4111 1111 1111 1111"


def _config(url: str, *, cleared: bool = True) -> dict[str, Any]:
    models = [deployment("embed", "sim-embed", url, mode="embedding", region="us",
                         input_cost_per_token=1e-9, output_cost_per_token=0)]
    if cleared:
        models.append(deployment("embed", "sim-embed-eu", url, mode="embedding", region="eu",
                                 data_clearance="confidential", input_cost_per_token=1e-8,
                                 output_cost_per_token=0))
    return {
        "model_list": models,
        # Without the eu deployment, region "eu" names nothing: a config error, so no eu team.
        "teams": [{"name": "secret", "data_class": "confidential"}, {"name": "open"},
                  *([{"name": "eu", "regions": ["eu"]}] if cleared else [])],
        "keys": [{"key": SECRET_KEY, "name": "secret-app", "team": "secret"},
                 {"key": OPEN_KEY, "name": "open-app", "team": "open"},
                 *([{"key": EU_KEY, "name": "eu-app", "team": "eu"}] if cleared else [])],
    }


def _embedded_by(upstream: Upstream) -> list[str]:
    return [r.body["model"] for r in upstream.recorded if r.path.endswith("/embeddings")]


def _texts_seen(upstream: Upstream, model: str) -> str:
    return repr([r.body["input"] for r in upstream.recorded
                 if r.path.endswith("/embeddings") and r.body["model"] == model])


@pytest.fixture
async def gw(upstream: Upstream, make_gateway: GatewayFactory) -> RunningGateway:
    return await make_gateway(_config(upstream.url))


async def test_a_confidential_team_reaches_only_cleared_deployments(
        gw: RunningGateway, upstream: Upstream) -> None:
    await gw.client(SECRET_KEY).embeddings.create(model="embed", input="board minutes")
    assert _embedded_by(upstream) == ["sim-embed-eu"]


async def test_an_eu_team_reaches_only_eu_deployments(gw: RunningGateway,
                                                      upstream: Upstream) -> None:
    await gw.client(EU_KEY).embeddings.create(model="embed", input="hello")
    assert _embedded_by(upstream) == ["sim-embed-eu"]


async def test_a_restricted_header_with_no_cleared_deployment_is_refused(
        gw: RunningGateway, upstream: Upstream) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        await gw.client(OPEN_KEY).embeddings.create(
            model="embed", input="launch codes",
            extra_headers={"x-podium-data-class": "restricted"})
    assert _embedded_by(upstream) == []


async def test_pii_routes_embeddings_to_a_cleared_deployment(gw: RunningGateway,
                                                             upstream: Upstream) -> None:
    await gw.client(OPEN_KEY).embeddings.create(model="embed", input=[EMAIL_TEXT, "plain"])
    assert _embedded_by(upstream) == ["sim-embed-eu"]
    assert "jane.doe" not in _texts_seen(upstream, "sim-embed")


async def test_pii_with_no_cleared_deployment_is_refused_not_sent_raw(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(_config(upstream.url, cleared=False))
    with pytest.raises(openai.PermissionDeniedError):
        await gw.client(OPEN_KEY).embeddings.create(model="embed", input=EMAIL_TEXT)
    assert _embedded_by(upstream) == []
    # Text without personal data still goes to the public deployment.
    await gw.client(OPEN_KEY).embeddings.create(model="embed", input="the weather")
    assert _embedded_by(upstream) == ["sim-embed"]
