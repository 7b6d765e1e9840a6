"""A broken upstream answer is a failed attempt: it falls back, or ends in 502; never a 500, and
never a deployment wedged half-open. Before, any exception that was not a ProviderError escaped
the attempt loop as a 500 with no fallback, and on a half-open probe left `probe_in_flight` set,
so the deployment answered 503 for ever, even after it healed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GatewayFactory, RunningGateway, Upstream, deployment, via_litellm
from tests.support.scripted import OK_COMPLETION, ScriptedUpstream, start_scripted
from tests.support.waiting import until

GARBAGE: list[Any] = [
    {**OK_COMPLETION, "choices": [1]},
    {**OK_COMPLETION, "choices": "none"},
    {**OK_COMPLETION, "choices": [{"index": 0, "message": 5, "finish_reason": "stop"}]},
    {**OK_COMPLETION, "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "tool_calls": [3]}}]},
    {**OK_COMPLETION, "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": {"a": 1}}}]},
    [1, 2, 3],
    b"\xff\xfe not json",
]


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedUpstream]:
    async for s in start_scripted():
        yield s


def _config(scripted_url: str, sim_url: str | None, *, litellm: bool = False,
            cooldown_s: float = 30.0) -> dict[str, Any]:
    models = [deployment("chat", "broken", scripted_url, quality=40,
                         input_cost_per_token=1e-7, output_cost_per_token=1e-7)]
    if sim_url is not None:
        models.append(deployment("chat", "sim-good", sim_url, quality=40,
                                 input_cost_per_token=1e-6, output_cost_per_token=1e-6))
    config = {"model_list": models, "keys": [{"key": "sk-test-broken-0000000001", "name": "a"}],
              "routing": {"retries": {"attempts": 0},
                          "breaker": {"failures": 1, "cooldown_s": cooldown_s}}}
    return via_litellm(config) if litellm else config


async def _ask(gw: RunningGateway, **kw: Any) -> Any:
    return await gw.client("sk-test-broken-0000000001").chat.completions.with_raw_response \
        .create(model="chat", messages=[{"role": "user", "content": "hi"}], **kw)


@pytest.mark.parametrize("path", ["native", "litellm"])
@pytest.mark.parametrize("garbage", range(len(GARBAGE)))
async def test_a_malformed_answer_falls_back(scripted: ScriptedUpstream, upstream: Upstream,
                                             make_gateway: GatewayFactory, garbage: int,
                                             path: str) -> None:
    gw = await make_gateway(_config(scripted.url, upstream.url, litellm=path == "litellm"))
    scripted.answer = GARBAGE[garbage]
    answer = await _ask(gw)
    assert answer.headers["x-podium-deployment"] == "sim-good"
    assert answer.headers["x-podium-attempts"] == "2"
    assert scripted.calls == 1


@pytest.mark.parametrize("garbage", range(len(GARBAGE)))
async def test_with_nowhere_to_fall_back_it_is_a_502(scripted: ScriptedUpstream,
                                                     make_gateway: GatewayFactory,
                                                     garbage: int) -> None:
    gw = await make_gateway(_config(scripted.url, None))
    scripted.answer = GARBAGE[garbage]
    with pytest.raises(openai.APIStatusError) as caught:
        await _ask(gw)
    assert caught.value.status_code == 502
    assert "broken" in caught.value.message


@pytest.mark.parametrize("usage", [{"prompt_tokens": "lots", "completion_tokens": 1},
                                   {"prompt_tokens": -500000, "completion_tokens": -9},
                                   {"prompt_tokens": True, "completion_tokens": 1e30}])
async def test_insane_usage_is_never_trusted(scripted: ScriptedUpstream,
                                             make_gateway: GatewayFactory,
                                             usage: dict[str, Any]) -> None:
    gw = await make_gateway(_config(scripted.url, None))
    scripted.answer = {**OK_COMPLETION, "usage": usage}
    answer = await _ask(gw)
    assert answer.status_code == 200
    assert float(answer.headers["x-podium-cost-usd"]) >= 0


async def _until_probe_possible(gw: RunningGateway) -> None:
    health = gw.gateway.health

    async def cooled() -> bool:  # the breaker's cool-down is 1 ms: wait it out, bounded
        return health.unavailable_reason("broken") is None

    await until(cooled, "the breaker's cool-down")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failed_probe_never_wedges_the_deployment(scripted: ScriptedUpstream,
                                                          make_gateway: GatewayFactory,
                                                          stream: bool) -> None:
    gw = await make_gateway(_config(scripted.url, None, cooldown_s=0.001))
    scripted.answer = GARBAGE[0]
    scripted.stream = [orjson.dumps({"id": "c", "object": "chat.completion.chunk",
                                     "choices": [1]})]
    for _ in range(2):  # the first failure opens the breaker, the second is the probe
        await _until_probe_possible(gw)
        with pytest.raises(openai.APIStatusError) as caught:
            await _ask(gw, stream=stream)
        assert caught.value.status_code == 502
    assert gw.gateway.health.snapshot("broken").probe_in_flight is False
    scripted.heal()
    await _until_probe_possible(gw)
    answer = await _ask(gw)
    assert answer.status_code == 200
    assert gw.gateway.health.snapshot("broken").state == "closed"


async def test_a_broken_chunk_mid_stream_ends_the_stream_with_an_error(
        scripted: ScriptedUpstream, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(_config(scripted.url, None))
    good = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
    scripted.stream = [orjson.dumps(good), orjson.dumps({**good, "choices": [{"delta": 7}]})]
    stream = await gw.client("sk-test-broken-0000000001").chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True)
    seen = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["Hel"]


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_paths = st.sampled_from([("choices",), ("choices", 0), ("choices", 0, "message"),
                          ("choices", 0, "message", "content"),
                          ("choices", 0, "message", "tool_calls"),
                          ("choices", 0, "finish_reason"), ("choices", 0, "index"),
                          ("usage",), ("usage", "prompt_tokens"), ("usage", "completion_tokens"),
                          ("model",), ("id",), ("created",)])


def _mutate(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    answer = orjson.loads(orjson.dumps(OK_COMPLETION))
    node = answer
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return answer


@pytest.fixture
async def tolerant(scripted: ScriptedUpstream, upstream: Upstream,
                   make_gateway: GatewayFactory) -> RunningGateway:
    """One gateway for all of a property test's examples; the breaker never opens, so every
    example reaches the scripted upstream, and nothing is answered from the cache."""
    config = _config(scripted.url, upstream.url)
    config["routing"]["breaker"] = {"failures": 1_000_000, "cooldown_s": 1}
    config["cache"] = {"enabled": False}
    return await make_gateway(config)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=_paths, value=_json)
async def test_garbage_answers_never_become_a_500(tolerant: RunningGateway,
                                                  scripted: ScriptedUpstream,
                                                  path: tuple[Any, ...], value: Any) -> None:
    scripted.answer = _mutate(path, value)
    try:
        answer = await _ask(tolerant)
    except openai.APIStatusError as err:  # pragma: no cover - a failure names the status
        raise AssertionError(f"{err.status_code}: {err.message}") from None
    assert answer.status_code == 200
    assert answer.headers["x-podium-deployment"] in {"broken", "sim-good"}
    answer.parse()  # the SDK can read whatever Podium passed on
