"""The typed bodies of `POST /v1/messages` and `POST /v1/messages/count_tokens` (Anthropic).

Frozen, strict and open to unknown fields, like the other request models (Anthropic adds
fields such as `cache_control`, `thinking` and `service_tier` often; Podium ignores what it
cannot translate unless ignoring it would change the answer's meaning). Block and tool types
that cannot be translated still parse, as `OtherBlock` or a `Tool` with a server `type`, so
that the translation refuses them with a 400 naming the exact field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, Tag

from gateway.translate.base import OpenModel, by_type


class TextBlock(OpenModel):
    type: Literal["text"]
    text: str


class ImageSource(OpenModel):
    type: str                      # base64 | url | file
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(OpenModel):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(OpenModel):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ThinkingBlock(OpenModel):
    type: Literal["thinking", "redacted_thinking"]


class OtherBlock(OpenModel):
    type: str


ResultBlock = Annotated[
    Annotated[TextBlock, Tag("text")] | Annotated[ImageBlock, Tag("image")]
    | Annotated[OtherBlock, Tag("other")],
    by_type({"text": "text", "image": "image"}),
]


class ToolResultBlock(OpenModel):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ResultBlock] | None = None
    is_error: bool | None = None


Block = Annotated[
    Annotated[TextBlock, Tag("text")] | Annotated[ImageBlock, Tag("image")]
    | Annotated[ToolUseBlock, Tag("tool_use")] | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")] | Annotated[OtherBlock, Tag("other")],
    by_type({"text": "text", "image": "image", "tool_use": "tool_use",
             "tool_result": "tool_result", "thinking": "thinking",
             "redacted_thinking": "thinking"}),
]


class MessageParam(OpenModel):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(OpenModel):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None        # absent or "custom" for client tools; else a server tool


class ToolChoice(OpenModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(OpenModel):
    user_id: str | None = None


class CountTokensRequest(OpenModel):
    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)   # required, as Anthropic requires it
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None
    stream: bool | None = None
