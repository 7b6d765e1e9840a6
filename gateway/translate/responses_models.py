"""The typed body of `POST /v1/responses` (the OpenAI Responses API).

Like the Chat Completions models in ingress: frozen, strict (no "1" for 1), and open to fields
Podium does not know, because the API grows faster than any gateway. Item, part and tool types
Podium cannot translate still parse (as `OtherItem`, `OtherPart`, `OtherTool`), so that the
translation can refuse them with a 400 that names the exact field, rather than a generic
"does not match any of the expected tags".
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, Tag, model_validator

from gateway.translate.base import OpenModel, by_type

# ---- content parts --------------------------------------------------------------------------

class TextPart(OpenModel):
    # output_text: an assistant message replayed as input (the Agents SDK sends them back).
    type: Literal["input_text", "output_text"]
    text: str


class ImagePart(OpenModel):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class RefusalPart(OpenModel):
    type: Literal["refusal"]
    refusal: str


class OtherPart(OpenModel):
    type: str


Part = Annotated[
    Annotated[TextPart, Tag("text")] | Annotated[ImagePart, Tag("input_image")]
    | Annotated[RefusalPart, Tag("refusal")] | Annotated[OtherPart, Tag("other")],
    by_type({"input_text": "text", "output_text": "text", "input_image": "input_image",
             "refusal": "refusal"}),
]


# ---- input items ----------------------------------------------------------------------------

class MessageItem(OpenModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]


class FunctionCallItem(OpenModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None


class FunctionCallOutputItem(OpenModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[Part]


class ReasoningItem(OpenModel):
    type: Literal["reasoning"]


class OtherItem(OpenModel):
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

class FunctionTool(OpenModel):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class OtherTool(OpenModel):
    type: str


Tool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[OtherTool, Tag("other")],
    by_type({"function": "function"}),
]


class ToolChoiceObject(OpenModel):
    type: str
    name: str | None = None


class TextFormat(OpenModel):
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


class TextConfig(OpenModel):
    format: TextFormat | None = None


class Reasoning(OpenModel):
    effort: str | None = None


class ResponsesRequest(OpenModel):
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
