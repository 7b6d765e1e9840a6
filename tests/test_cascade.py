"""Cascades (routing/cascade.py) end to end: the cheapest adequate deployment answers first,
and the request escalates only when its answer fails a check."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import GatewayFactory, Upstream, base_config, deployment
from tests.support.asking import HI
from tests.support.metrics import scrape, total


def cascade_config(url: str, cheap: str) -> dict[str, Any]:
    config = base_config(url)
    config["model_list"][:2] = [
        deployment("chat", cheap, url, quality=40, input_cost_per_token=1e-7,
                   output_cost_per_token=1e-7),
        deployment("chat", "sim-strong", url, quality=90, input_cost_per_token=1e-6,
                   output_cost_per_token=1e-6)]
    config["routing"] = {"default": {"strategy": "cascade"}}
    return config


@pytest.mark.parametrize(("cheap", "kwargs"), [
    ("sim-badjson", {"response_format": {"type": "json_object"}}),
    ("sim-refuse", {}),
    ("sim-empty", {}),
])
async def test_cascade_escalates_on_a_failed_check(upstream: Upstream,
                                                   make_gateway: GatewayFactory, cheap: str,
                                                   kwargs: dict[str, Any]) -> None:
    gw = await make_gateway(cascade_config(upstream.url, cheap))
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=HI, **kwargs)
    assert raw.headers["x-podium-deployment"] == "sim-strong"
    assert raw.headers["x-podium-attempts"] == "2"
    assert raw.headers["x-podium-escalations"] == "1"
    assert upstream.models_called() == [cheap, "sim-strong"]
    # Cost counts both attempts: more than the strong model's share alone.
    usage = raw.parse().usage
    strong_only = (usage.prompt_tokens + usage.completion_tokens) * 1e-6
    assert float(raw.headers["x-podium-cost-usd"]) > strong_only


async def test_cascade_keeps_a_good_cheap_answer(upstream: Upstream,
                                                 make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(cascade_config(upstream.url, "sim-fine"))
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=HI, response_format={"type": "json_object"})
    assert raw.headers["x-podium-deployment"] == "sim-fine"
    assert json.loads(raw.parse().choices[0].message.content)["model"] == "sim-fine"
    assert upstream.models_called() == ["sim-fine"]


async def test_cascade_json_schema_and_stream(upstream: Upstream,
                                              make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(cascade_config(upstream.url, "sim-offschema"))
    schema = {"type": "object", "required": ["answer", "score"]}
    stream = await gw.client().chat.completions.create(
        model="chat", messages=HI, stream=True, stream_options={"include_usage": True},
        response_format={"type": "json_schema",
                         "json_schema": {"name": "s", "schema": schema}})
    text, usage = "", None
    async for chunk in stream:
        usage = chunk.usage or usage
        text += "".join(c.delta.content or "" for c in chunk.choices)
    # The cheap answer ignores the schema (no "score"), so the cascade escalated; the stream
    # is the strong answer, an instance of the schema.
    assert set(json.loads(text)) == {"answer", "score"}
    assert usage is not None and usage.completion_tokens > 0
    assert upstream.models_called() == ["sim-offschema", "sim-strong"]


async def test_an_escalation_is_a_move_to_a_later_deployment(upstream: Upstream,
                                                            make_gateway: GatewayFactory,
                                                            ) -> None:
    """Both answers fail the check, so the last is delivered: two attempts, one escalation
    (the first attempt is none, and the delivered answer's own failed check moves nothing),
    and the metric counts one escalated request, as the dashboard does."""
    config = cascade_config(upstream.url, "sim-refuse")
    config["model_list"][1] = deployment("chat", "sim-refuse-strong", upstream.url, quality=90,
                                         input_cost_per_token=1e-6, output_cost_per_token=1e-6)
    gw = await make_gateway(config)
    raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=HI)
    assert raw.headers["x-podium-deployment"] == "sim-refuse-strong"
    assert (raw.headers["x-podium-attempts"], raw.headers["x-podium-escalations"]) == ("2", "1")
    again = await gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "another"}])
    assert again.headers["x-podium-escalations"] == "1"
    samples = await scrape(gw.url)
    assert total(samples, "podium_cascade_escalations_total", route="default") == 2
    assert total(samples, "podium_requests_total", route="default") == 2


async def test_a_failed_check_with_nothing_after_it_is_no_escalation(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    config = cascade_config(upstream.url, "sim-refuse")
    config["model_list"][1] = deployment("chat", "sim-error500", upstream.url, quality=90,
                                         input_cost_per_token=1e-6, output_cost_per_token=1e-6)
    gw = await make_gateway(config)
    raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=HI)
    # The refusal failed its check, the next deployment failed outright: the first answers.
    assert raw.headers["x-podium-deployment"] == "sim-refuse"
    assert raw.headers["x-podium-attempts"] == "2"
    assert "x-podium-escalations" not in raw.headers
    assert total(await scrape(gw.url), "podium_cascade_escalations_total") == 0
