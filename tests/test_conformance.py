"""Property-based conformance: schemathesis drives a real gateway with requests generated from the
official OpenAI OpenAPI spec and checks every answer against that same spec.

How it runs: the gateway (and the simulator behind it) live on the test's asyncio loop, while
schemathesis and hypothesis are synchronous (`requests`). So each test hands one hypothesis run to
a worker thread with `asyncio.to_thread`; the loop stays free to serve the requests it sends.
Every operation runs once per provider path (the `gateway` fixture is parametrized).

What is generated, and why it is nudged (edits touch only the fields named here, so hypothesis
still explores every other field the spec allows):
- `model`: a random string only ever reaches a 404, so most cases are pointed at a group that
  exists ("chat"/"premium"/"auto", "embed") and reach the happy path, whose 200 bodies are what
  the spec describes; the rest keep their generated name.
- `encoding_format`: the spec's `Embedding.embedding` is `array<number>` only, so a correct
  `base64` answer (a string) cannot validate; generated requests are pinned to `float`.
- integers the spec leaves unbounded: embedding token ids are folded below 100k (OpenAI refuses
  ids beyond its vocabulary) and `dimensions` into 1..256. OpenAI allows up to 3072, but 2048
  inputs of 3072 floats take ~25 s through litellm, and 2**28 (which hypothesis does send) makes
  the in-process simulator compute for minutes on the event loop, stalling the gateway.
- `stream: true` is forced on a third of chat cases (the generator alone rarely sends it). The
  spec gives the chunk schema as the `schema` of `text/event-stream`, which schemathesis applies
  to each parsed SSE *event* ({"data": ...}), so its schema check would always fail there.
  Streams are checked here instead (`sse_chunks`): every `data:` payload against
  CreateChatCompletionStreamResponse (or ErrorResponse for a mid-stream error), then `[DONE]`.
- 4xx answers are undocumented in the spec (only 429 is), so schemathesis would skip them;
  `error_shape` validates them against the spec's ErrorResponse, which the OpenAI SDKs parse.
A negative run (spec-*invalid* bodies, and requests without the key) checks only that nothing is
a 5xx and that errors keep that shape.

Shrinking is off: a chat body shrinks for minutes, and the failure report already carries the
generated request as a curl command.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.deserialization import deserialize_yaml  # the loader from_path uses
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.conftest import APP_KEY, RunningGateway

SPEC = Path(__file__).resolve().parents[1].parent / "shared/data/openai-openapi/openapi.yaml"
if not SPEC.is_file():
    pytest.skip(f"the OpenAI OpenAPI spec is not at {SPEC}", allow_module_level=True)


def keep(generated: Any) -> Any:
    """Leave the generated value alone."""
    return generated


def fold(limit: int, start: int = 0) -> Callable[[Any], Any]:
    """Fold generated integers (also inside lists) into start..start+limit-1."""
    def folded(value: Any) -> Any:
        if isinstance(value, list):
            return [folded(v) for v in value]
        return start + value % limit if type(value) is int else value
    return folded


# operationId -> body field -> what to draw: a value to set, or a function of the generated value.
NUDGES: dict[str, dict[str, list[Any]]] = {
    "createChatCompletion": {"model": ["chat", "chat", "chat", "premium", "auto", keep],
                             "stream": [keep, keep, True]},
    "createEmbedding": {"model": ["embed", "embed", "embed", "embed", keep],
                        "encoding_format": ["float"], "input": [fold(100_000)],
                        "dimensions": [fold(256, start=1)]},
    "listModels": {},
}
EXAMPLES = {GenerationMode.POSITIVE: 50, GenerationMode.NEGATIVE: 25}
AUTH = {"Authorization": f"Bearer {APP_KEY}"}

Check = Callable[[Any, Any, Any], None]


def without_discriminators(node: Any) -> Any:
    """Drop `discriminator`s: the spec's have no `mapping`, so schemathesis maps by schema name and
    rejects e.g. a tool call of type "function" (SOURCE.md's quirk). oneOf still validates."""
    if isinstance(node, dict):
        if isinstance(node.get("discriminator"), dict):
            del node["discriminator"]
        for value in node.values():
            without_discriminators(value)
    elif isinstance(node, list):
        for value in node:
            without_discriminators(value)
    return node


@pytest.fixture(scope="module")
def schema() -> Any:
    with SPEC.open(encoding="utf-8") as spec:
        raw = without_discriminators(deserialize_yaml(spec))
    # Read whole streams (the default stops after 20 events), and ignore any schemathesis.toml.
    config = schemathesis.Config.from_dict({"max-stream-events": 100_000})
    return schemathesis.openapi.from_dict(raw, config=config).include(operation_id=list(NUDGES))


def spec_validator(operation: Any, status: int, media_type: str) -> jsonschema_rs.Validator:
    """A validator for the schema the spec documents for one response of `operation`."""
    resolved = operation.responses.find_by_status_code(status).get_schema(media_type)
    return jsonschema_rs.validator_for(resolved.schema)


def conform(validator: jsonschema_rs.Validator, payload: Any, what: str) -> None:
    problems = [f"{'/'.join(map(str, e.instance_path))}: {e.message}"
                for e in validator.iter_errors(payload)]
    assert not problems, f"{what} violates the spec: " + "; ".join(problems[:5])


def error_shape(errors: jsonschema_rs.Validator) -> Check:
    def error_shape(ctx: Any, response: Any, case: Any) -> None:
        if 400 <= response.status_code < 500:
            conform(errors, json.loads(response.content), "error body")
    return error_shape


def sse_chunks(chunks: jsonschema_rs.Validator, errors: jsonschema_rs.Validator) -> Check:
    def sse_chunks(ctx: Any, response: Any, case: Any) -> None:
        if response.status_code != 200:
            return
        events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e.strip()]
        assert events and events[-1] == "[DONE]", f"stream does not end with [DONE]: {events[-1:]}"
        for i, event in enumerate(events[:-1]):
            payload = json.loads(event)
            conform(errors if "error" in payload else chunks, payload, f"SSE event #{i}")
    return sse_chunks


def nudge(body: Any, values: dict[str, Any]) -> None:
    """Apply the drawn nudges to a generated body (see the module docstring)."""
    if not isinstance(body, dict):
        return
    for field, value in values.items():
        if not callable(value):
            body[field] = value
        elif field in body:
            body[field] = value(body[field])


def is_stream(body: Any) -> bool:
    return isinstance(body, dict) and body.get("stream") is True


def run(schema: Any, operation_id: str, mode: GenerationMode, base_url: str) -> Counter[int]:
    """One hypothesis run against one operation; returns how often each status was seen."""
    operation = schema.find_operation_by_id(operation_id)
    chat = schema.find_operation_by_id("createChatCompletion")
    errors = spec_validator(chat, 429, "application/json")  # the spec's ErrorResponse
    checks: list[Check] = [not_a_server_error, error_shape(errors)]
    on_json = on_sse = checks
    if mode is GenerationMode.POSITIVE:
        on_json = [*checks, content_type_conformance, response_schema_conformance]
        stream_chunks = spec_validator(chat, 200, "text/event-stream")
        on_sse = [*checks, content_type_conformance, sse_chunks(stream_chunks, errors)]
    nudges = st.fixed_dictionaries(
        {field: st.sampled_from(values) for field, values in NUDGES[operation_id].items()})
    statuses: Counter[int] = Counter()

    # derandomize: the same cases on every run; the seed is derived from this function's source.
    @settings(max_examples=EXAMPLES[mode], deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), drawn=nudges)
    def conforms(case: Any, drawn: dict[str, Any]) -> None:
        nudge(case.body, drawn)
        response = case.call(base_url=base_url, headers=AUTH, session=session, timeout=10)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=on_sse if is_stream(case.body) else on_json,
                               headers=AUTH)

    with requests.Session() as session:
        conforms()
    return statuses


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=str)
@pytest.mark.parametrize("operation_id", list(NUDGES))
async def test_gateway_conforms_to_the_openai_spec(schema: Any, gateway: RunningGateway,
                                                  operation_id: str, mode: GenerationMode) -> None:
    statuses = await asyncio.to_thread(run, schema, operation_id, mode, gateway.url)
    print(f"{operation_id} [{mode}]: {dict(sorted(statuses.items()))}")
    if mode is GenerationMode.POSITIVE:
        # A third of spec-valid requests must reach a 200, or the schema checks check little.
        assert statuses[200] >= sum(statuses.values()) // 3, statuses
