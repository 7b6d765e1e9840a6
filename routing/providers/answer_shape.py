"""What an upstream's answer must look like before Podium reads it.

An upstream is untrusted input like a request body: a broken server, a proxy in between or a
hostile endpoint can send `choices: [1]`, `usage.prompt_tokens: "lots"` or a negative count.
Every field the pipeline reads (choices, messages, deltas, tool calls, usage, embeddings) is
checked here, on both provider paths, and a malformed answer becomes a `ProviderError` of kind
`server`: the attempt loop falls back to the next deployment, and the client gets 502 if every
deployment misbehaves, never a 500. Fields Podium does not read pass through untouched.

Usage is money, so it is never trusted blindly: a count that is not a whole number between 0
and `MAX_TOKENS` counts as missing, and missing usage is estimated locally by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import ProviderError

MAX_TOKENS = 100_000_000   # more than any context window or answer; beyond it a count is garbage


def malformed(where: str) -> ProviderError:
    return ProviderError("server", f"the upstream's answer is malformed ({where})")


def token_count(value: Any) -> int | None:
    """A sane token count, or None: whole, non-negative, not a bool, not absurd."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def usage_counts(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens from an OpenAI `usage` object, or None if it is missing or
    not to be trusted."""
    if not isinstance(usage, Mapping):
        return None
    prompt = token_count(usage.get("prompt_tokens"))
    completion = token_count(usage.get("completion_tokens", 0))
    if prompt is None or completion is None:
        return None
    return prompt, completion


def clean_usage(body: dict[str, Any]) -> None:
    """Replace an untrustworthy `usage` by nothing, so nobody downstream reads it."""
    counts = usage_counts(body.get("usage"))
    if counts is None:
        body.pop("usage", None)
    else:
        body["usage"] = {"prompt_tokens": counts[0], "completion_tokens": counts[1],
                         "total_tokens": counts[0] + counts[1]}


def check_completion(body: dict[str, Any]) -> dict[str, Any]:
    choices = body.get("choices")
    if not isinstance(choices, list):
        raise malformed("choices is not a list")
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise malformed(f"choices[{i}]")
        _check_message(choice["message"], f"choices[{i}].message")
        if not isinstance(choice.get("finish_reason"), str):
            raise malformed(f"choices[{i}].finish_reason")
        if not isinstance(choice.get("index"), int):
            raise malformed(f"choices[{i}].index")
    _check_ids(body)
    clean_usage(body)
    return body


def check_chunk(chunk: dict[str, Any]) -> dict[str, Any]:
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise malformed("chunk choices is not a list")
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict) or not isinstance(choice.get("delta"), dict):
            raise malformed(f"chunk choices[{i}]")
        if not isinstance(choice.get("index"), int) or isinstance(choice["index"], bool):
            raise malformed(f"chunk choices[{i}].index")
        reason = choice.get("finish_reason")
        if reason is not None and not isinstance(reason, str):
            raise malformed(f"chunk choices[{i}].finish_reason")
        _check_message(choice["delta"], f"chunk choices[{i}].delta", delta=True)
    _check_ids(chunk)
    if chunk.get("usage") is not None:
        clean_usage(chunk)
    return chunk


def check_embeddings(data: Any) -> list[dict[str, Any]]:
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise malformed("embeddings data is not a list of objects")
    return data


def check_vector(vector: Any) -> list[float]:
    if not isinstance(vector, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in vector):
        raise malformed("an embedding is not a list of numbers")
    return vector


def _check_message(message: dict[str, Any], where: str, *, delta: bool = False) -> None:
    content = message.get("content")
    if isinstance(content, list):  # text parts, as some servers send: one string for the SDKs
        if not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
            raise malformed(f"{where}.content")
        message["content"] = "".join(p["text"] for p in content)
    elif content is not None and not isinstance(content, str):
        raise malformed(f"{where}.content")
    for name in ("refusal", "role"):
        if message.get(name) is not None and not isinstance(message[name], str):
            raise malformed(f"{where}.{name}")
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise malformed(f"{where}.tool_calls")
        for j, call in enumerate(calls):
            _check_call(call, f"{where}.tool_calls[{j}]", delta)


def _check_call(call: Any, where: str, delta: bool) -> None:
    if not isinstance(call, dict):
        raise malformed(where)
    fn = call.get("function")
    if fn is None and delta:
        return
    if not isinstance(fn, dict):
        raise malformed(f"{where}.function")
    for name in ("name", "arguments"):
        if fn.get(name) is not None and not isinstance(fn[name], str):
            raise malformed(f"{where}.function.{name}")
    if delta and not isinstance(call.get("index"), int):
        raise malformed(f"{where}.index")


def _check_ids(body: dict[str, Any]) -> None:
    for name in ("id", "model", "system_fingerprint"):
        if body.get(name) is not None and not isinstance(body[name], str):
            body.pop(name)  # cosmetic fields: drop rather than fail the answer
    if body.get("created") is not None and not isinstance(body["created"], int):
        body.pop("created")
