"""The one walker over the strings of an OpenAI chat request (and of an answer's messages).

Everything that reads or rewrites the text a request carries goes through here: the PII
scan and its masking (permissions), input and output guardrails, the semantic cache's
embedded text and scope, the routing facts, token estimates and un-masking answers. Each
string is a `Text` of a `Kind`, and each consumer picks the kinds it needs, so a new place
where text reaches the upstream is one more kind here, and one more name in the consumers'
sets, never another hand-written walk.

    message kinds   content (a string content), text (a text part's text), refusal (an
                    assistant's refusal, as a field or a part), tool_name and tool_arguments
                    (tool calls), function_call (the legacy field's name and arguments),
                    image (an image part's URL)
    request kinds   user, metadata (its values), tool_description (tools' and functions'),
                    prediction (predicted output, a string or text parts)

`strings` reads; `rewrite` returns a copy with each chosen string replaced (or, for content
and text parts, removed when the replacement is None), leaving everything else as it was.
Image URLs are found (token estimates count images) but never rewritten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["content", "text", "refusal", "tool_name", "tool_arguments", "function_call",
               "image", "user", "metadata", "tool_description", "prediction"]
# What the conversation says, as people wrote it: the messages' text.
SPOKEN: frozenset[Kind] = frozenset({"content", "text"})
# The strings of the messages' text and tool calls (an answer's are these).
CARRIED: frozenset[Kind] = frozenset({"content", "text", "tool_arguments"})
# Everything the model reads: the messages (refusals and legacy function calls included), the
# tools' and functions' descriptions, and a predicted output.
PROMPTED: frozenset[Kind] = CARRIED | {"refusal", "function_call", "tool_description",
                                       "prediction"}
# Every string that leaves for the upstream: what the model reads, plus `user` and `metadata`.
# Image URLs are out of scope (they name where an image is, and are not rewritten).
SENT: frozenset[Kind] = PROMPTED | {"user", "metadata"}


@dataclass(frozen=True, slots=True)
class Text:
    kind: Kind
    value: str
    role: str | None = None            # the message's role; None for a request-level field


Rewrite = Callable[[Text], str | None]


def strings(message: Any, kinds: frozenset[Kind]) -> Iterator[Text]:
    """The strings of one message (a request's, or an answer's), in order."""
    if not isinstance(message, Mapping):
        return
    role = message.get("role") if isinstance(message.get("role"), str) else None
    content = message.get("content")
    if isinstance(content, str):
        if "content" in kinds:
            yield Text("content", content, role)
    elif isinstance(content, list):
        for part in content:
            yield from _part_strings(part, kinds, role)
    if "refusal" in kinds and isinstance(message.get("refusal"), str):
        yield Text("refusal", message["refusal"], role)
    for call in _calls(message):
        yield from _call_strings(call, kinds, role)
    legacy = message.get("function_call")
    if "function_call" in kinds and isinstance(legacy, Mapping):
        yield from (Text("function_call", legacy[f], role) for f in ("name", "arguments")
                    if isinstance(legacy.get(f), str))


def conversation(messages: Any, kinds: frozenset[Kind]) -> Iterator[Text]:
    """The strings of every message, in order."""
    for message in messages if isinstance(messages, list) else ():
        yield from strings(message, kinds)


def request_strings(body: Mapping[str, Any], kinds: frozenset[Kind]) -> Iterator[Text]:
    """Every chosen string of a chat request: its messages' and its request-level fields'."""
    yield from conversation(body.get("messages"), kinds)
    if "user" in kinds and isinstance(body.get("user"), str):
        yield Text("user", body["user"])
    metadata = body.get("metadata")
    if "metadata" in kinds and isinstance(metadata, Mapping):
        yield from (Text("metadata", v) for v in metadata.values() if isinstance(v, str))
    if "tool_description" in kinds:
        for fn in _functions(body):
            if isinstance(fn.get("description"), str):
                yield Text("tool_description", fn["description"])
    prediction = body.get("prediction")
    if "prediction" in kinds and isinstance(prediction, Mapping):
        content = prediction.get("content")
        parts = [content] if isinstance(content, str) else [
            p["text"] for p in content if isinstance(p, Mapping)
            and isinstance(p.get("text"), str)] if isinstance(content, list) else []
        yield from (Text("prediction", p) for p in parts)


def text_of(message: Any, separator: str = " ") -> str:
    """A message's spoken text: its string content, or its text parts joined."""
    if isinstance(message, dict):
        content = message.get("content")
        if isinstance(content, str):  # the usual message: its content is all it says
            return content
    return separator.join(t.value for t in strings(message, SPOKEN))


def rewrite(message: Any, kinds: frozenset[Kind], fn: Rewrite) -> Any:
    """A copy of one message with each chosen string replaced by `fn(text)`."""
    if not isinstance(message, Mapping):
        return message
    role = message.get("role") if isinstance(message.get("role"), str) else None
    out = dict(message)
    content = message.get("content")
    if isinstance(content, str) and "content" in kinds:
        out["content"] = fn(Text("content", content, role))
    elif isinstance(content, list):
        out["content"] = [_rewrite_part(p, kinds, fn, role) for p in content]
    if "refusal" in kinds and isinstance(message.get("refusal"), str):
        out["refusal"] = fn(Text("refusal", message["refusal"], role))
    if isinstance(message.get("tool_calls"), list) and message["tool_calls"]:
        out["tool_calls"] = [_rewrite_call(c, kinds, fn, role) for c in message["tool_calls"]]
    legacy = message.get("function_call")
    if "function_call" in kinds and isinstance(legacy, Mapping):
        out["function_call"] = {**legacy, **{
            f: fn(Text("function_call", legacy[f], role)) for f in ("name", "arguments")
            if isinstance(legacy.get(f), str)}}
    return out


def rewrite_conversation(messages: Iterable[Any], kinds: frozenset[Kind],
                         fn: Rewrite) -> list[Any]:
    return [rewrite(m, kinds, fn) for m in messages]


def rewrite_request(body: Mapping[str, Any], kinds: frozenset[Kind],
                    fn: Rewrite) -> dict[str, Any]:
    """A copy of a chat request with each chosen string replaced: its messages' and its
    request-level fields' (the same strings `request_strings` finds)."""
    out = dict(body)
    if isinstance(body.get("messages"), list):
        out["messages"] = rewrite_conversation(body["messages"], kinds, fn)
    if "user" in kinds and isinstance(body.get("user"), str):
        out["user"] = fn(Text("user", body["user"]))
    if "metadata" in kinds and isinstance(body.get("metadata"), Mapping):
        out["metadata"] = {k: fn(Text("metadata", v)) if isinstance(v, str) else v
                           for k, v in body["metadata"].items()}
    if "tool_description" in kinds:
        for field in ("tools", "functions"):
            if isinstance(body.get(field), list):
                out[field] = [_rewrite_described(t, fn) for t in body[field]]
    prediction = body.get("prediction")
    if "prediction" in kinds and isinstance(prediction, Mapping):
        out["prediction"] = _rewrite_prediction(prediction, fn)
    return out


# ---- where the strings are --------------------------------------------------------------

def _part_strings(part: Any, kinds: frozenset[Kind], role: str | None) -> Iterator[Text]:
    if not isinstance(part, Mapping):
        return
    if "text" in kinds and isinstance(part.get("text"), str):
        yield Text("text", part["text"], role)
    if "refusal" in kinds and part.get("type") == "refusal" and isinstance(
            part.get("refusal"), str):
        yield Text("refusal", part["refusal"], role)
    image = part.get("image_url")
    if "image" in kinds and part.get("type") == "image_url":
        url = image.get("url") if isinstance(image, Mapping) else image
        yield Text("image", url if isinstance(url, str) else "", role)


def _calls(message: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The functions of a message's tool calls: {name, arguments} objects."""
    calls = message.get("tool_calls")
    found = [c.get("function") for c in calls if isinstance(c, Mapping)] \
        if isinstance(calls, list) else []
    return [fn for fn in found if isinstance(fn, Mapping)]


def _call_strings(fn: Mapping[str, Any], kinds: frozenset[Kind],
                  role: str | None) -> Iterator[Text]:
    for kind, field in (("tool_name", "name"), ("tool_arguments", "arguments")):
        if kind in kinds and isinstance(fn.get(field), str):
            yield Text(kind, fn[field], role)


def _functions(body: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for tool in body.get("tools") or ():
        if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping):
            yield tool["function"]
    for fn in body.get("functions") or ():
        if isinstance(fn, Mapping):
            yield fn


def _rewrite_described(item: Any, fn: Rewrite) -> Any:
    """A tool (`{"function": {...}}`) or a legacy function, its description rewritten."""
    if not isinstance(item, Mapping):
        return item
    if isinstance(item.get("function"), Mapping):
        return {**item, "function": _rewrite_described(item["function"], fn)}
    if not isinstance(item.get("description"), str):
        return item
    return {**item, "description": fn(Text("tool_description", item["description"]))}


def _rewrite_prediction(prediction: Mapping[str, Any], fn: Rewrite) -> dict[str, Any]:
    content = prediction.get("content")
    if isinstance(content, str):
        return {**prediction, "content": fn(Text("prediction", content))}
    if not isinstance(content, list):
        return dict(prediction)
    return {**prediction, "content": [
        {**p, "text": fn(Text("prediction", p["text"]))}
        if isinstance(p, Mapping) and isinstance(p.get("text"), str) else p for p in content]}


def _rewrite_part(part: Any, kinds: frozenset[Kind], fn: Rewrite, role: str | None) -> Any:
    if not isinstance(part, Mapping):
        return part
    out = dict(part)
    if "text" in kinds and isinstance(part.get("text"), str):
        text = fn(Text("text", part["text"], role))
        if text is None:
            del out["text"]
        else:
            out["text"] = text
    if "refusal" in kinds and part.get("type") == "refusal" and isinstance(
            part.get("refusal"), str):
        out["refusal"] = fn(Text("refusal", part["refusal"], role))
    return out


def _rewrite_call(call: Any, kinds: frozenset[Kind], fn: Rewrite, role: str | None) -> Any:
    if not isinstance(call, Mapping) or not isinstance(call.get("function"), Mapping):
        return call
    return {**call, "function": _rewrite_function(call["function"], kinds, fn, role)}


def _rewrite_function(function: Mapping[str, Any], kinds: frozenset[Kind], fn: Rewrite,
                      role: str | None) -> dict[str, Any]:
    out = dict(function)
    for kind, field in (("tool_name", "name"), ("tool_arguments", "arguments")):
        if kind in kinds and isinstance(function.get(field), str):
            out[field] = fn(Text(kind, function[field], role))
    return out
