"""Anthropic messages and content blocks → Chat Completions messages.

Where the two differ in shape, and what is done about it:
- A user turn's `tool_result` blocks become `tool` messages, placed first (chat requires them
  right after the assistant message that called the tools); the turn's other blocks follow as
  one user message. Images inside a tool result move into that user message, because chat's
  `tool` messages carry text only.
- `is_error: true` prefixes the result with "Error: ", the only way to tell a chat model.
- An assistant turn's text blocks are joined and its `tool_use` blocks become `tool_calls`
  (arguments as JSON text); `thinking` blocks are dropped, since no chat model reads them back.
- Other block types (documents, server-tool results, ...) are refused with a 400 naming them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.errors import UnsupportedRequest
from gateway.translate.anthropic_models import (
    ImageBlock,
    MessageParam,
    OtherBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)

Json = dict[str, Any]


def to_messages(messages: Sequence[MessageParam]) -> list[Json]:
    out: list[Json] = []
    for i, message in enumerate(messages):
        at = f"messages[{i}]"
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
        elif message.role == "assistant":
            out.append(_assistant(message.content, at))
        else:
            out += _user(message.content, at)
    return out


def _assistant(blocks: Sequence[Any], at: str) -> Json:
    texts: list[str] = []
    calls: list[Json] = []
    for j, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append({"id": block.id, "type": "function", "function": {
                "name": block.name, "arguments": orjson.dumps(block.input).decode()}})
        elif not isinstance(block, ThinkingBlock):
            _refuse(block, f"{at}.content[{j}]", "assistant")
    message: Json = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _user(blocks: Sequence[Any], at: str) -> list[Json]:
    tools: list[Json] = []
    parts: list[Json] = []
    for j, block in enumerate(blocks):
        where = f"{at}.content[{j}]"
        if isinstance(block, ToolResultBlock):
            tools.append(_tool_result(block, where, parts))
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(image_part(block, where))
        elif not isinstance(block, ThinkingBlock):
            _refuse(block, where, "user")
    if not parts:
        return tools
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tools, {"role": "user", "content": parts[0]["text"]}]
    return [*tools, {"role": "user", "content": parts}]


def _tool_result(block: ToolResultBlock, at: str, images: list[Json]) -> Json:
    """The `tool` message; images in the result are appended to `images`."""
    if isinstance(block.content, str) or block.content is None:
        text = block.content or ""
    else:
        texts = []
        for k, inner in enumerate(block.content):
            if isinstance(inner, TextBlock):
                texts.append(inner.text)
            elif isinstance(inner, ImageBlock):
                images.append(image_part(inner, f"{at}.content[{k}]"))
            else:
                _refuse(inner, f"{at}.content[{k}]", "tool_result")
        text = "\n".join(texts)
    if block.is_error:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def image_part(block: ImageBlock, at: str) -> Json:
    source = block.source
    if source.type == "base64" and source.data and source.media_type:
        return {"type": "image_url",
                "image_url": {"url": f"data:{source.media_type};base64,{source.data}"}}
    if source.type == "url" and source.url:
        return {"type": "image_url", "image_url": {"url": source.url}}
    raise UnsupportedRequest(
        f"Image sources of type {source.type!r} are not supported (or are incomplete); send "
        f"base64 data with media_type, or a url.", param=f"{at}.source")


def _refuse(block: OtherBlock | ImageBlock | ToolUseBlock | ToolResultBlock | TextBlock,
            at: str, where: str) -> None:
    raise UnsupportedRequest(
        f"Content blocks of type {block.type!r} are not supported in {where} content: "
        f"Podium serves the Messages API through chat models, which take text, images, tool "
        f"use and tool results.", param=f"{at}.type")
