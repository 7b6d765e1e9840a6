"""What the simulator answers: a chat completion built deterministically from the request, and
the chunks a stream of it carries (derived from the whole answer, so streamed and plain answers
always agree). A user message containing `[[say:TEXT]]` is answered with exactly TEXT, and
`[[long:N]]` with N words (a long answer from a short prompt; `max_tokens` still cuts it); a model
name containing one of `_KEYWORD_ANSWERS`' keywords gets a scripted poor answer, for cascade
checks to catch, and one containing `fails-on-WORD` refuses just the prompts that mention WORD;
"tinychunks" models stream 4 characters at a time.

Structured output is honoured: `response_format` `json_schema` with a schema is answered with a
valid instance of it (`schema_instance`), so `parse(Model)` clients work offline; `json_object`
(or a schema-less `json_schema`) with a small JSON object; an "offschema" model answers JSON
that ignores the schema, for cascade checks to catch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.simulator.schema_instance import SchemaUnsatisfiable, instance

Json = dict[str, Any]

CREATED = 1_700_000_000  # fixed, so whole responses are reproducible across runs
_FINGERPRINT = "podium-sim"
_IMAGE_TOKENS = 85
_WORDS_PER_CHUNK = 3
_ARGUMENT_FRAGMENT = 7
_SAY_MARKER = re.compile(r"\[\[say:(.*?)\]\]", re.DOTALL)
_LONG_MARKER = re.compile(r"\[\[long:(\d{1,6})\]\]")
_BAD = "invalid_request_error"

# keyword -> a scripted poor answer, for cascade checks to catch.
_KEYWORD_ANSWERS: tuple[tuple[str, str], ...] = (
    ("badjson", "this is not JSON {"),
    ("refuse", "I'm sorry, but I can't help with that."),
    ("empty", ""),
)
_REFUSAL = _KEYWORD_ANSWERS[1][1]
# "fails-on-WORD" in a model name: it refuses every prompt whose last user turn contains WORD
# (case-insensitive) and answers the rest normally: a cheap model that fails one kind of task.
_FAILS_ON = re.compile(r"fails-on-([a-z0-9]+)")


@dataclass(eq=False)  # exceptions must stay hashable
class SimError(Exception):
    """An OpenAI-shaped error: raised anywhere, rendered once by the server's middleware."""

    status: int
    message: str
    err_type: str = _BAD
    code: str | None = None
    headers: Mapping[str, str] | None = None


def ceil_tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def positive_int(body: Json, name: str, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not int or value < 1:
        raise SimError(400, f"Invalid value for '{name}': expected a positive integer.")
    return value


def _parts(content: Any) -> list[Json]:
    """Message content as a list of parts; a plain string is a single text part."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [p for p in content if isinstance(p, dict)] if isinstance(content, list) else []


def _texts(content: Any) -> list[str]:
    parts = _parts(content)
    return [p["text"] for p in parts if p.get("type") == "text" and isinstance(p.get("text"), str)]


def _prompt_tokens(messages: list[Json]) -> int:
    parts = [p for m in messages for p in _parts(m.get("content"))]
    images = sum(p.get("type") in ("image_url", "input_image") for p in parts)
    chars = sum(len(text) for m in messages for text in _texts(m.get("content")))
    return ceil_tokens(chars) + images * _IMAGE_TOKENS


def _answer_text(body: Json) -> str:
    model = body["model"]
    for keyword, answer in _KEYWORD_ANSWERS:
        if keyword in model:
            return answer
    users = [m for m in body["messages"] if m.get("role") == "user"]
    last_user = " ".join(_texts(users[-1].get("content"))) if users else ""
    weak_spot = _FAILS_ON.search(model)
    if weak_spot and weak_spot.group(1) in last_user.lower():
        return _REFUSAL   # a model that cannot do this kind of prompt, for a cascade to catch
    if marker := _SAY_MARKER.search(last_user):  # a scripted answer overrides every other rule
        return marker.group(1)
    if marker := _LONG_MARKER.search(last_user):
        return "word " * int(marker.group(1))
    text = f"Simulated answer from {model}: {last_user[:200]}"
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        return text
    schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" \
        else None
    if schema is None or "offschema" in model:   # "offschema": valid JSON, wrong shape
        return orjson.dumps({"answer": text, "model": model}).decode()
    try:
        return orjson.dumps(instance(schema)).decode()
    except SchemaUnsatisfiable as exc:
        raise SimError(400, f"Invalid schema for response_format: {exc}",
                       code="invalid_json_schema") from None


def _truncate(content: str, body: Json) -> tuple[str, str]:
    limit = positive_int(body, "max_tokens", positive_int(body, "max_completion_tokens", None))
    if limit is not None and ceil_tokens(len(content)) > limit:
        return content[: limit * 4], "length"
    return content, "stop"


def _fake_arguments(function: Json) -> str:
    params = function.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    args = {}
    for name, schema in (props or {}).items():
        kind = schema.get("type") if isinstance(schema, dict) else None
        fakes = {"string": f"sim-{name}", "integer": 42, "number": 42, "boolean": True}
        args[name] = fakes.get(kind) if isinstance(kind, str) else None
    return orjson.dumps(args).decode()


def _chosen_functions(body: Json) -> list[Json]:
    """The function definitions to call, or [] when the model should answer in text."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return []
    if body["messages"][-1].get("role") == "tool":
        return []  # the tool result is in: answer in text, as a real model would
    functions = [t["function"] for t in tools if isinstance(t, dict) and "function" in t]
    functions = [f for f in functions if isinstance(f, dict)]
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        if not (named := [f for f in functions if f.get("name") == wanted]):
            raise SimError(400, f"Invalid value for 'tool_choice': no function named {wanted!r}.")
        return named
    return functions[: 1 if body.get("parallel_tool_calls") is False else 2]


def _choice(index: int, body: Json, ids: Iterator[int]) -> tuple[Json, int]:
    """One choice plus its completion-token count."""
    message: Json = {"role": "assistant", "content": None, "refusal": None}
    if functions := _chosen_functions(body):
        message["tool_calls"] = [
            {
                "id": f"call_sim_{next(ids)}",
                "type": "function",
                "function": {"name": f.get("name", ""), "arguments": _fake_arguments(f)},
            }
            for f in functions
        ]
        finish = "tool_calls"
        chars = sum(len(c["function"]["arguments"]) for c in message["tool_calls"])
    else:
        message["content"], finish = _truncate(_answer_text(body), body)
        chars = len(message["content"])
    choice = {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
    return choice, ceil_tokens(chars)


def completion(body: Json, ids: Iterator[int]) -> Json:
    completion_id = f"chatcmpl-sim-{next(ids)}"
    scored = [_choice(index, body, ids) for index in range(positive_int(body, "n", 1) or 1)]
    prompt = _prompt_tokens(body["messages"])
    generated = sum(tokens for _, tokens in scored)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": body["model"],
        "system_fingerprint": _FINGERPRINT,
        "choices": [choice for choice, _ in scored],
        "usage": dict(
            prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated
        ),
    }


def _pieces(text: str, size: int) -> list[str]:
    """Split text into runs of `size` words that concatenate back to exactly `text`."""
    words = re.split(r"(?<=\s)(?=\S)", text) if text else []
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def _choice_deltas(message: Json, tiny: bool) -> Iterator[Json]:
    yield {"role": "assistant", "content": ""}
    for i, call in enumerate(message.get("tool_calls") or []):
        head = {"name": call["function"]["name"], "arguments": ""}
        yield {"tool_calls": [{"index": i, "id": call["id"], "type": "function", "function": head}]}
        args = call["function"]["arguments"]
        for start in range(0, len(args), _ARGUMENT_FRAGMENT):
            fragment = args[start : start + _ARGUMENT_FRAGMENT]
            yield {"tool_calls": [{"index": i, "function": {"arguments": fragment}}]}
    content = message["content"] or ""
    # "tinychunks" models stream 4 characters at a time: words split across chunks.
    pieces = ([content[i : i + 4] for i in range(0, len(content), 4)] if tiny
              else _pieces(content, _WORDS_PER_CHUNK))
    for piece in pieces:
        yield {"content": piece}


def stream_chunks(completion: Json, include_usage: bool) -> Iterator[Json]:
    """Derive the chunks from the full answer, so streamed and plain answers always agree."""
    base = {k: completion[k] for k in ("id", "object", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    usage = {"usage": None} if include_usage else {}
    for choice in completion["choices"]:
        index = choice["index"]
        tiny = "tinychunks" in completion["model"]
        deltas = [(d, None) for d in _choice_deltas(choice["message"], tiny)]
        for delta, finish in [*deltas, ({}, choice["finish_reason"])]:
            entry = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            yield {**base, "choices": [entry], **usage}
    if include_usage:
        yield {**base, "choices": [], "usage": completion["usage"]}
