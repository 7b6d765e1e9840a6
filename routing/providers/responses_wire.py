"""Reading a deployment that speaks the OpenAI Responses API itself (`supports: [responses]`).

A Responses request from a client goes to such a deployment as it is (`Attempt.wire`); its
answer comes back in the Responses shape. The rest of the pipeline reads chat completions
(output guardrails, the cache, usage and cost, cascade checks), so the answer is also read as
one here: `completion_of` for a whole response, `StreamBridge` for a stream of typed events.
The whole response itself is handed on too (`ChatAnswer.native`), so a non-streamed client
receives exactly what the upstream said.

Only what chat can say is read: message text and refusals, function calls, the finish state
and usage. Anything else (reasoning items, annotations) stays in the native response only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import ProviderError

Json = dict[str, Any]


def completion_of(response: Mapping[str, Any]) -> Json:
    """A whole `response` object as a `chat.completion` with one choice."""
    if response.get("status") == "failed" or response.get("error"):
        raise ProviderError("server", _error_text(response.get("error")))
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[Json] = []
    for item in _dicts(response.get("output")):
        if item.get("type") == "message":
            for part in _dicts(item.get("content")):
                if part.get("type") == "output_text":
                    texts.append(str(part.get("text") or ""))
                elif part.get("type") == "refusal":
                    refusals.append(str(part.get("refusal") or ""))
        elif item.get("type") == "function_call":
            calls.append(_tool_call(item))
    message: Json = {"role": "assistant", "content": "".join(texts) or None,
                     "refusal": "".join(refusals) or None}
    if calls:
        message["tool_calls"] = calls
    choice = {"index": 0, "message": message, "logprobs": None,
              "finish_reason": _finish(response, bool(calls))}
    return {**_head(response), "object": "chat.completion", "choices": [choice],
            "usage": chat_usage(response.get("usage"))}


def chat_usage(usage: Any) -> Json | None:
    """Responses usage → chat usage (None when the upstream reported none)."""
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": usage.get("total_tokens"),
            "prompt_tokens_details": {"cached_tokens": cached}}


class StreamBridge:
    """A Responses event stream as `chat.completion.chunk`s: feed each event's JSON."""

    def __init__(self) -> None:
        self._head: Json = {}
        self._calls: dict[int, int] = {}   # output_index → tool_calls index

    def feed(self, event: Mapping[str, Any]) -> list[Json]:
        kind = event.get("type")
        if kind == "response.created":
            self._head = _head(event.get("response") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "response.output_text.delta":
            return [self._chunk({"content": str(event.get("delta") or "")})]
        if kind == "response.output_item.added":
            return self._added(event)
        if kind == "response.function_call_arguments.delta":
            index = self._calls.get(_int(event.get("output_index")))
            if index is None:
                return []
            return [self._chunk({"tool_calls": [
                {"index": index, "function": {"arguments": str(event.get("delta") or "")}}]})]
        if kind in ("response.completed", "response.incomplete"):
            return self._finished(event.get("response") or {})
        if kind in ("response.failed", "error"):
            raise ProviderError("server", _error_text(
                (event.get("response") or {}).get("error") if kind != "error" else event))
        return []  # the other events repeat what the deltas said

    def _added(self, event: Mapping[str, Any]) -> list[Json]:
        item = event.get("item")
        if not isinstance(item, Mapping) or item.get("type") != "function_call":
            return []
        index = self._calls[_int(event.get("output_index"))] = len(self._calls)
        call = {**_tool_call(item), "index": index}
        call["function"]["arguments"] = ""
        return [self._chunk({"tool_calls": [call]})]

    def _finished(self, response: Mapping[str, Any]) -> list[Json]:
        finish = _finish(response, bool(self._calls))
        chunks = [self._chunk({}, finish)]
        if (used := chat_usage(response.get("usage"))) is not None:
            chunks.append({**self._head, "object": "chat.completion.chunk", "choices": [],
                           "usage": used})
        return chunks

    def _chunk(self, delta: Json, finish: str | None = None) -> Json:
        return {**self._head, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def _head(response: Mapping[str, Any]) -> Json:
    return {"id": str(response.get("id") or "resp"), "created": _int(response.get("created_at")),
            "model": str(response.get("model") or "")}


def _tool_call(item: Mapping[str, Any]) -> Json:
    return {"id": str(item.get("call_id") or item.get("id") or ""), "type": "function",
            "function": {"name": str(item.get("name") or ""),
                         "arguments": str(item.get("arguments") or "")}}


def _finish(response: Mapping[str, Any], called: bool) -> str:
    if called:
        return "tool_calls"
    reason = (response.get("incomplete_details") or {}).get("reason")
    if response.get("status") == "incomplete":
        return "content_filter" if reason == "content_filter" else "length"
    return "stop"


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _error_text(error: Any) -> str:
    message = error.get("message") if isinstance(error, Mapping) else None
    return f"the upstream's response failed: {message or 'no reason given'}"
