"""Hop 1, ingress: the raw HTTP body → a typed, validated request that keeps the original body.

The typed model is what the pipeline reads; the original JSON object is what is forwarded, so a
field Podium does not know (a new OpenAI parameter, a provider extension) passes through untouched
to OpenAI-compatible upstreams. Which top-level fields were neither read by Podium nor among
OpenAI's documented parameters is logged at debug level (and only worked out when debug is on).
Validation is strict (no "1" for 1, no 0 for false) because the OpenAI API is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import orjson
from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.config_base import format_loc
from gateway.errors import BadRequest, InvalidJSON, PayloadTooLarge

log = logging.getLogger("podium.ingress")
_LOGGED_FIELDS = 20                    # at most this many names per debug line


class _Open(BaseModel):
    # Unknown fields are allowed and forwarded: the OpenAI API grows faster than any gateway.
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    # Parameters of the API that Podium forwards without reading (not "unrecognised").
    documented: ClassVar[frozenset[str]] = frozenset()


# Fields that would choose where a call goes or what it carries if a provider library took them
# from the body: litellm reads all of these as keyword arguments. They come from the config only;
# a body that names one is refused, whatever the provider path, so that an attacker's
# `{"api_base": "http://evil/v1"}` can never receive a deployment's key or a prompt.
CONTROL_FIELDS = frozenset({
    "api_base", "base_url", "api_key", "api_version", "organization", "project",
    "extra_headers", "extra_body", "extra_query", "headers", "custom_llm_provider", "timeout",
    "request_timeout", "num_retries", "max_retries", "mock_response", "mock_tool_calls",
    "client", "proxy", "http_client", "deployment_id", "region_name", "api_type",
    "input_cost_per_token", "output_cost_per_token", "model_list", "fallbacks",
    "context_window_fallbacks", "cache", "caching", "callbacks", "logger_fn",
    "drop_params", "additional_drop_params", "allowed_openai_params", "_skip_mcp_handler",
})
# Prefixes of provider credentials and library settings (aws_access_key_id, vertex_credentials,
# azure_ad_token, litellm_logging_obj, ...).
CONTROL_PREFIXES = ("litellm_", "aws_", "vertex_", "azure_", "watsonx_", "_")
# Nesting beyond this cannot be re-encoded for the upstream (orjson stops at 255 levels), and no
# real request comes near it: refuse it at the door instead of failing after routing.
MAX_DEPTH = 128


class FunctionDef(_Open):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    type: str = Field(min_length=1)
    function: FunctionDef | None = None

    @model_validator(mode="after")
    def _function_tools_name_a_function(self) -> Tool:
        if self.type == "function" and self.function is None:
            raise ValueError("a tool of type 'function' needs a 'function' object")
        return self


class ContentPart(_Open):
    type: str = Field(min_length=1)
    text: str | None = None


class ToolCallMessage(_Open):
    type: str = "function"
    function: dict[str, Any] | None = None


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallMessage] | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(_Open):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=0)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    tools: list[Tool] | None = None
    functions: list[FunctionDef] | None = None
    response_format: ResponseFormat | None = None
    metadata: dict[str, str] | None = None
    documented = frozenset({
        "audio", "frequency_penalty", "function_call", "logit_bias", "logprobs", "modalities",
        "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
        "reasoning_effort", "safety_identifier", "seed", "service_tier", "stop", "store",
        "tool_choice", "top_logprobs", "user", "verbosity", "web_search_options"})

    @property
    def wants_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def capabilities_needed(self) -> frozenset[str]:
        needs = set()
        if self.tools or self.functions:
            needs.add("tools")
        if self.response_format and self.response_format.type != "text":
            needs.add("json_schema")
        if any(_has_image(m.content) for m in self.messages):
            needs.add("vision")
        if self.stream:
            needs.add("streaming")
        return frozenset(needs)


def _has_image(content: object) -> bool:
    return isinstance(content, list) and any(
        isinstance(p, ContentPart) and p.type == "image_url" for p in content)


# OpenAI's own limits: at most 2048 inputs per request; no model has more dimensions than this.
MAX_EMBEDDING_INPUTS = 2048
MAX_DIMENSIONS = 16384


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1, le=MAX_DIMENSIONS)
    documented = frozenset({"user"})

    @field_validator("input")
    @classmethod
    def _input_size(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("'input' must not be empty")
        if isinstance(value, list) and isinstance(value[0], str | list) \
                and len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items")
        return value


T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Parsed(Generic[T]):
    """A validated request and the original JSON object it came from."""
    typed: T
    body: dict[str, Any]


async def read_json(request: web.Request, limit: int) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body is {request.content_length} bytes; "
                              f"the limit is {limit} bytes.")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.") from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidJSON("The request body must be a JSON object.")
    return body


def refuse_control_fields(body: dict[str, Any]) -> None:
    """400 for a body that names a connection or library setting (see CONTROL_FIELDS)."""
    for name in body:
        if name in CONTROL_FIELDS or name.startswith(CONTROL_PREFIXES):
            raise BadRequest(f"The field {name!r} is not accepted in a request body: connection "
                             "settings come from the gateway's config.", param=name,
                             code="forbidden_parameter")


def refuse_deep_nesting(body: Any) -> None:
    """400 for JSON nested deeper than MAX_DEPTH; iterative, so any depth is safe to check."""
    # Only containers are stacked, each with its depth; a plain loop, no generator per level.
    stack: list[tuple[Any, int]] = [(body, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        value, depth = pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"The request body is nested more than {MAX_DEPTH} levels deep.",
                             code="too_deeply_nested")
        children = value.values() if isinstance(value, dict) else (
            value if isinstance(value, list) else ())
        for v in children:
            if isinstance(v, dict | list):
                push((v, depth + 1))


def validate_call(model: type[T], body: dict[str, Any]) -> Parsed[T]:
    """`validate` for a body that will be sent to a model: no control fields, bounded nesting."""
    refuse_control_fields(body)
    refuse_deep_nesting(body)
    parsed = validate(model, body)
    if log.isEnabledFor(logging.DEBUG):
        unrecognised = unrecognised_fields(parsed.typed)
        if unrecognised:
            log.debug("request fields not recognised, passed through as they are: %s",
                      ", ".join(unrecognised[:_LOGGED_FIELDS]))
    return parsed


def unrecognised_fields(typed: BaseModel) -> list[str]:
    """Top-level fields that Podium neither reads nor knows as documented parameters."""
    documented = typed.documented if isinstance(typed, _Open) else frozenset()
    return sorted(name[:64] for name in typed.model_extra or {} if name not in documented)


def validate(model: type[T], body: dict[str, Any]) -> Parsed[T]:
    try:
        return Parsed(typed=model.model_validate(body), body=body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        where = [f"{format_loc(e['loc'])}: {e['msg']}" for e in errors[:3]]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise BadRequest("Invalid request: " + "; ".join(where) + more,
                         param=format_loc(errors[0]["loc"])) from None
