"""What reaches telemetry: no prompt text, no e-mail address, no unbounded label.

Before: an upstream error that quoted the prompt put it in the attempt span's status, in the
audit record's `error_code`, and, as `podium_rejections_total{code="invalid_Contact jane..."}`,
in the unauthenticated /metrics (one new series per prompt). A JWT subject that was an e-mail
address became `key_name` in records and spans. Now telemetry carries only codes from
`errors.CODES` (or "other"), messages cut and scrubbed by the PII detectors, and a JWT caller's
pseudonym unless `auth.jwt.identity: claim` asks for the claim itself.

The client that sent the request still reads the upstream's own message and code: they are
about its own request (README, "Security model").
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.errors import CODES
from tests.conftest import (
    ADMIN,
    GatewayFactory,
    RunningGateway,
    Upstream,
    via_litellm,
)
from tests.support.hostile import HostileUpstream, deployment_for, start_hostile
from tests.support.tokens import jwt_config, token

KEY = "sk-test-telemetry-000000001"
EMAIL = "jane.doe@example.com"
PROMPT = f"Contact {EMAIL} about order 7"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def hostile() -> AsyncIterator[HostileUpstream]:
    async for h in start_hostile():
        yield h


async def _admin_get(gw: RunningGateway, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(
            gw.url.removesuffix("/v1") + path,
            headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        assert resp.status == 200
        return await resp.json()


async def _metrics(gw: RunningGateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(
            gw.url.removesuffix("/v1") + "/metrics") as resp:
        return await resp.text()


def _span_texts(gw: RunningGateway) -> list[str]:
    texts = []
    for span in gw.spans.get_finished_spans():
        texts += [span.name, str(span.status.description), json.dumps(dict(span.attributes or {}))]
        texts += [f"{e.name} {dict(e.attributes or {})}" for e in span.events]
    return texts


@pytest.mark.parametrize("path", ["native", "litellm"])
async def test_an_upstream_error_quoting_the_prompt_stays_out_of_telemetry(
        hostile: HostileUpstream, make_gateway: GatewayFactory,
        caplog: pytest.LogCaptureFixture, path: str) -> None:
    caplog.set_level("INFO")
    # Cleared for personal data, so the prompt reaches it as written (and comes back quoted).
    leaky = deployment_for("chat", "leaky-error", hostile.url, data_clearance="restricted")
    config = {"model_list": [leaky], "keys": [{"key": KEY, "name": "app"}],
              "admin_keys": [{"key": ADMIN, "name": "o"}]}
    gw = await make_gateway(via_litellm(config) if path == "litellm" else config)
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client(KEY).chat.completions.create(
            model="chat", messages=[{"role": "user", "content": PROMPT}])
    assert EMAIL in caught.value.message, "the caller reads the upstream's words"

    metrics = await _metrics(gw)
    assert EMAIL not in metrics and "Contact" not in metrics
    assert 'podium_rejections_total{code="upstream_rejected"} 1.0' in metrics
    [attempt] = [s for s in gw.spans.get_finished_spans() if s.name == "chat leaky-error"]
    assert "[EMAIL]" in str(attempt.status.description)
    assert not [t for t in _span_texts(gw) if EMAIL in t]
    [record] = (await _admin_get(gw, "/admin/audit"))["data"]
    assert record["error_code"] == "upstream_rejected" and "[EMAIL]" in record["error"]
    assert EMAIL not in json.dumps(record)
    assert EMAIL not in caplog.text


async def test_metric_codes_stay_bounded_whatever_the_upstream_says(
        hostile: HostileUpstream, make_gateway: GatewayFactory) -> None:
    config = {"model_list": [deployment_for("chat", "leaky-error", hostile.url)],
              "keys": [{"key": KEY, "name": "app"}]}
    gw = await make_gateway(config)
    for i in range(20):  # twenty different upstream codes: one series
        with pytest.raises(openai.BadRequestError):
            await gw.client(KEY).chat.completions.create(
                model="chat", messages=[{"role": "user", "content": f"prompt {i}"}])
    codes = re.findall(r'podium_rejections_total\{code="([^"]*)"\}', await _metrics(gw))
    assert codes == ["upstream_rejected"]


def test_every_error_code_podium_raises_is_a_known_code() -> None:
    """A new code must join `errors.CODES`, or metrics would count it as "other"."""
    source = "\n".join(p.read_text() for d in ("gateway", "routing", "plugins")
                       for p in (ROOT / d).rglob("*.py") if "simulator" not in p.parts
                       and "translate" not in p.parts)
    raised = set(re.findall(r'\bcode\s*=\s*"([a-z_]+)"', source))
    raised |= set(re.findall(r'status, type, code = \d+, "[a-z_]+", "([a-z_]+)"', source))
    assert raised and raised <= CODES, raised - CODES


# ---- JWT subjects ----------------------------------------------------------------------------

@pytest.mark.parametrize("identity", ["hash", "claim"])
async def test_a_jwt_subject_that_is_an_email_is_a_pseudonym_by_default(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, identity: str) -> None:
    caplog.set_level("INFO")
    settings = {} if identity == "hash" else {"identity": "claim"}
    gw = await make_gateway(jwt_config(upstream.url, tmp_path, **settings))
    await gw.client(token()).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}])
    [record] = (await _admin_get(gw, "/admin/audit"))["data"]
    [caller] = (await _admin_get(gw, "/admin/spend?group_by=key"))["data"]
    [ident] = [s for s in gw.spans.get_finished_spans()
               if s.name == "POST /v1/chat/completions"]
    named = [record["key_name"], record["user"], caller.get("key_name"),
             ident.attributes["podium.key.name"]]
    if identity == "hash":
        assert re.fullmatch(r"jwt_[0-9a-f]{12}", record["key_name"])
        assert "alice@example.test" not in json.dumps(named) + " ".join(_span_texts(gw))
        assert "alice@example.test" not in caplog.text + await _metrics(gw)
    else:
        assert record["key_name"] == "alice@example.test"
