"""Responses input items → Chat Completions messages.

The item list is flatter than chat's messages: an assistant turn that calls two functions is
three items (a message and two `function_call`s) but one chat message with two `tool_calls`,
and chat requires the `tool` messages to follow that one message. So consecutive calls (and
the assistant text before them) are merged into one assistant message here.

Dropped on purpose: `reasoning` items, which a client replays from an earlier answer and which
no chat model can read back. Refused with a 400 naming the field: hosted-tool items, item
references, files, and images inside function outputs (chat `tool` messages carry text only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter

from gateway.errors import UnsupportedRequest
from gateway.translate.responses_models import (
    FunctionCallItem,
    FunctionCallOutputItem,
    ImagePart,
    InputItem,
    MessageItem,
    OtherPart,
    Part,
    ReasoningItem,
    RefusalPart,
    TextPart,
)

_ITEMS: TypeAdapter[list[InputItem]] = TypeAdapter(list[InputItem])
# Chat Completions knows these image details; the Responses API has grown "original" too.
_DETAILS = frozenset({"auto", "low", "high"})


def parse_items(items: Iterable[Mapping[str, Any]]) -> list[InputItem]:
    """Stored conversation items (plain dicts) back into typed items."""
    return _ITEMS.validate_python(list(items))


def to_messages(items: Sequence[InputItem], where: str) -> list[dict[str, Any]]:
    """Items → chat messages; `where` names the list in errors (`input`)."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if isinstance(item, MessageItem):
            messages.append(_message(item, at))
        elif isinstance(item, FunctionCallItem):
            _add_call(messages, item)
        elif isinstance(item, FunctionCallOutputItem):
            messages.append(_tool_message(item, at))
        elif not isinstance(item, ReasoningItem):
            raise UnsupportedRequest(
                f"Input items of type {item.type!r} are not supported: Podium serves the "
                f"Responses API through chat models, which take messages, function calls and "
                f"function call outputs.", param=f"{at}.type")
    return messages


def _message(item: MessageItem, at: str) -> dict[str, Any]:
    # "developer" is OpenAI's newer name for "system"; most other chat servers know only system.
    role = "system" if item.role == "developer" else item.role
    if isinstance(item.content, str):
        return {"role": role, "content": item.content}
    parts = [_part(part, f"{at}.content[{j}]", role) for j, part in enumerate(item.content)]
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": role, "content": parts[0]["text"]}
    return {"role": role, "content": parts}


def _part(part: Part, at: str, role: str) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, RefusalPart):
        return {"type": "text", "text": part.refusal}
    if isinstance(part, ImagePart) and role == "user":
        return _image(part, at)
    if isinstance(part, ImagePart):
        raise UnsupportedRequest("Images are supported in user messages only.", param=at)
    assert isinstance(part, OtherPart)
    raise UnsupportedRequest(
        f"Content parts of type {part.type!r} are not supported (files cannot be passed to "
        f"chat models); send text or images.", param=f"{at}.type")


def _image(part: ImagePart, at: str) -> dict[str, Any]:
    if not part.image_url:
        raise UnsupportedRequest("Images by file_id are not supported; send the image as a "
                                 "URL or a base64 data URL in image_url.",
                                 param=f"{at}.file_id" if part.file_id else f"{at}.image_url")
    image: dict[str, Any] = {"url": part.image_url}
    if part.detail in _DETAILS:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _add_call(messages: list[dict[str, Any]], item: FunctionCallItem) -> None:
    call = {"id": item.call_id, "type": "function",
            "function": {"name": item.name, "arguments": item.arguments}}
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _tool_message(item: FunctionCallOutputItem, at: str) -> dict[str, Any]:
    if isinstance(item.output, str):
        return {"role": "tool", "tool_call_id": item.call_id, "content": item.output}
    texts = []
    for j, part in enumerate(item.output):
        if not isinstance(part, TextPart):
            raise UnsupportedRequest(
                "Function call outputs may hold text only here: chat models take tool "
                "results as text.", param=f"{at}.output[{j}].type")
        texts.append(part.text)
    return {"role": "tool", "tool_call_id": item.call_id, "content": "".join(texts)}
