"""Property tests of the router's ordering: never prefer a deployment that costs more than an
adequate, eligible one; never drop an eligible one; never keep an inadequate one."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.errors import UnsupportedRequest
from gateway.pipeline.identity import Principal
from routing.catalog import Catalog
from routing.health import Health
from routing.router import Router, RouteRequest

CAPS = ["tools", "json_schema", "vision", "streaming"]
ANYONE = Principal(key_id="k", name="k", team=None, user=None, allowed_models=None)

deployments = st.lists(st.fixed_dictionaries({
    "quality": st.integers(0, 100),
    "input": st.floats(0, 1e-4, allow_nan=False),
    "output": st.floats(0, 1e-4, allow_nan=False),
    "window": st.integers(100, 10_000),
    "supports": st.lists(st.sampled_from(CAPS), unique=True),
}), min_size=1, max_size=8)

requests = st.fixed_dictionaries({
    "needs": st.frozensets(st.sampled_from(CAPS), max_size=2),
    "prompt_tokens": st.integers(1, 8000),
    "max_output_tokens": st.one_of(st.none(), st.integers(1, 4000)),
    "min_quality": st.integers(0, 100),
})


def build(specs: list[dict[str, Any]]) -> Router:
    config = {"model_list": [
        {"model_name": "g", "litellm_params": {"model": f"openai/m{i}"},
         "model_info": {"id": f"d{i}", "quality": s["quality"],
                        "input_cost_per_token": s["input"], "output_cost_per_token": s["output"],
                        "max_input_tokens": s["window"], "supports": s["supports"]}}
        for i, s in enumerate(specs)]}
    return Router(Catalog.from_config(parse_config(config, env={})))


def adequate(spec: dict[str, Any], req: dict[str, Any]) -> bool:
    return (req["needs"] <= set(spec["supports"]) and spec["quality"] >= req["min_quality"]
            and req["prompt_tokens"] + (req["max_output_tokens"] or 0) <= spec["window"])


def cost(spec: dict[str, Any], req: dict[str, Any]) -> float:
    return (req["prompt_tokens"] * spec["input"]
            + (req["max_output_tokens"] or 256) * spec["output"])


@settings(max_examples=300, deadline=None)
@given(deployments, requests)
def test_chain_is_exactly_the_adequate_deployments_cheapest_first(
        specs: list[dict[str, Any]], req: dict[str, Any]) -> None:
    router = build(specs)
    route_req = RouteRequest(model="g", mode="chat", needs=req["needs"],
                             prompt_tokens=req["prompt_tokens"],
                             max_output_tokens=req["max_output_tokens"],
                             header_min_quality=req["min_quality"])
    eligible = {f"d{i}" for i, s in enumerate(specs) if adequate(s, req)}
    try:
        plan = router.plan(route_req, ANYONE, Health())
    except UnsupportedRequest as exc:
        assert not eligible, f"raised {exc!r} although {eligible} were eligible"
        return
    chain = [d.id for d in plan.chain]
    assert set(chain) == eligible
    costs = [cost(specs[int(d[1:])], req) for d in chain]
    assert costs == sorted(costs), "never a dearer deployment before a cheaper adequate one"
    cheapest = min(cost(specs[int(d[1:])], req) for d in eligible)
    assert costs[0] == cheapest
