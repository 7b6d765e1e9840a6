"""The typed body of `POST /v1/responses` (the OpenAI Responses API).

Like the Chat Completions models in ingress: frozen, strict (no "1" for 1), and open to fields
Podium does not know, because the API grows faster than any gateway. Item, part and tool types
Podium cannot translate still parse (as `OtherItem`, `OtherPart`, `OtherTool`), so that the
translation can refuse them with a 400 that names the exact field, rather than a generic
"does not match any of the expected tags".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True, populate_by_name=True)


def by_type(tags: Mapping[str, str], default: str | None = None) -> Discriminator:
    """Routes a dict to the model tagged for its `type`, or to the catch-all tagged "other"."""
    def pick(value: Any) -> str:
        kind = value.get("type", default) if isinstance(value, dict) \
            else getattr(value, "type", default)
        return tags.get(kind, "other") if isinstance(kind, str) else "other"
    return Discriminator(pick)


# ---- content parts --------------------------------------------------------------------------

class TextPart(_Open):
    # output_text: an assistant message replayed as input (the Agents SDK sends them back).
    type: Literal["input_text", "output_text"]
    text: str


class ImagePart(_Open):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class RefusalPart(_Open):
    type: Literal["refusal"]
    refusal: str


class OtherPart(_Open):
    type: str


Part = Annotated[
    Annotated[TextPart, Tag("text")] | Annotated[ImagePart, Tag("input_image")]
    | Annotated[RefusalPart, Tag("refusal")] | Annotated[OtherPart, Tag("other")],
    by_type({"input_text": "text", "output_text": "text", "input_image": "input_image",
             "refusal": "refusal"}),
]


# ---- input items ----------------------------------------------------------------------------

class MessageItem(_Open):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]


class FunctionCallItem(_Open):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None


class FunctionCallOutputItem(_Open):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[Part]


class ReasoningItem(_Open):
    type: Literal["reasoning"]


class OtherItem(_Open):
    type: str


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[OtherItem, Tag("other")],
    # An item without `type` is a message: the API's "easy input message" ({role, content}).
    by_type({t: t for t in ("message", "function_call", "function_call_output", "reasoning")},
            default="message"),
]


# ---- tools, formats, options ----------------------------------------------------------------

class FunctionTool(_Open):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class OtherTool(_Open):
    type: str


Tool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[OtherTool, Tag("other")],
    by_type({"function": "function"}),
]


class ToolChoiceObject(_Open):
    type: str
    name: str | None = None


class TextFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _json_schema_has_one(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("a 'json_schema' format needs 'name' and 'schema'")
        return self


class TextConfig(_Open):
    format: TextFormat | None = None


class Reasoning(_Open):
    effort: str | None = None


class ResponsesRequest(_Open):
    model: str = Field(min_length=1)
    input: str | list[InputItem] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)
    stream: bool | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    reasoning: Reasoning | None = None
    # Accepted only so that asking for them is refused by name (see translation).
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
