"""The Anthropic Messages API as a translation around Chat Completions.

    to_chat(request)                         → the chat body the pipeline runs
    from_completion(request, completion)     → the Anthropic `message` object
    MessagesStream(request).feed/finish      → Anthropic's stream events (anthropic_stream)
    count_tokens(request)                    → the `count_tokens` answer
    render_error(err) / error_body(err)      → errors in Anthropic's shape

Decisions where the APIs differ:
- `top_k` has no Chat Completions equivalent and OpenAI-compatible servers reject unknown
  parameters, so it is dropped: it narrows sampling, it does not change what is asked.
- `temperature` keeps its value: Anthropic's 0-1 range lies inside OpenAI's 0-2, and 1 is the
  default of both.
- `metadata.user_id` becomes chat's `user`; `stop_sequences` become `stop`; `max_tokens`
  becomes `max_completion_tokens` (see responses.py for why).
- `thinking` and `cache_control` are ignored: a chat model answers without them.
- Server tools (web search, code execution, bash, ...) and `mcp_servers` are refused by name.
- Tool-call arguments that are not a JSON object (a broken model output) keep their raw text
  under "_unparsed_arguments" rather than vanish, since `tool_use.input` must be an object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import BadRequest, PodiumError, UnsupportedRequest
from gateway.translate.anthropic_input import to_messages
from gateway.translate.anthropic_models import CountTokensRequest, MessagesRequest, ToolChoice
from gateway.translate.ids import new_id
from routing.tokens import TokenGauge

Json = dict[str, Any]


# ---- request → chat body --------------------------------------------------------------------

def to_chat(request: MessagesRequest) -> Json:
    """The chat body for a Messages request."""
    body: Json = {"model": request.model, "messages": chat_messages(request),
                  "max_completion_tokens": request.max_tokens}
    body.update(_tools(request))
    if request.stop_sequences:
        body["stop"] = list(request.stop_sequences)
    for name in ("temperature", "top_p"):
        if getattr(request, name) is not None:
            body[name] = getattr(request, name)
    if request.metadata is not None and request.metadata.user_id:
        body["user"] = request.metadata.user_id
    if request.stream:
        # Usage arrives in a last chunk only when asked for; message_delta carries it.
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def chat_messages(request: CountTokensRequest) -> list[Json]:
    """The system prompt and the messages as chat messages."""
    _refuse_unsupported(request)
    messages = to_messages(request.messages)
    system = request.system
    if isinstance(system, list):
        system = "\n".join(block.text for block in system)
    return [{"role": "system", "content": system}, *messages] if system else messages


def _refuse_unsupported(request: CountTokensRequest) -> None:
    if (request.model_extra or {}).get("mcp_servers"):
        raise UnsupportedRequest("MCP servers are not supported by Podium; call the tools "
                                 "from the client.", param="mcp_servers")


def _tools(request: CountTokensRequest) -> Json:
    if not request.tools:
        return {}
    tools = []
    for i, tool in enumerate(request.tools):
        if tool.type not in (None, "custom"):
            raise UnsupportedRequest(
                f"Server tools ({tool.type!r}) are not supported: Podium serves the Messages "
                f"API through chat models, which call client tools only.",
                param=f"tools[{i}].type")
        if tool.input_schema is None:
            raise BadRequest("A client tool needs an 'input_schema'.",
                             param=f"tools[{i}].input_schema")
        function = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description:
            function["description"] = tool.description
        tools.append({"type": "function", "function": function})
    out: Json = {"tools": tools}
    if request.tool_choice is not None:
        out.update(_tool_choice(request.tool_choice))
    return out


def _tool_choice(choice: ToolChoice) -> Json:
    out: Json = {}
    if choice.type == "tool":
        if not choice.name:
            raise BadRequest("tool_choice of type 'tool' needs a 'name'.",
                             param="tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use and choice.type != "none":
        out["parallel_tool_calls"] = False
    return out


# ---- chat.completion → message --------------------------------------------------------------

def from_completion(request: MessagesRequest, completion: Mapping[str, Any], *,
                    message_id: str | None = None) -> Json:
    """The Anthropic `message` for a `chat.completion` (its first choice)."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[Json] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        content.append(tool_use_block(call.get("id") or new_id("toolu"), fn.get("name", ""),
                                      fn.get("arguments") or ""))
    reason, sequence = stop_reason(request, choice.get("finish_reason"),
                                   choice.get("stop_reason"), bool(message.get("tool_calls")))
    return message_object(message_id or new_id("msg"),
                          str(completion.get("model") or request.model), content, reason,
                          sequence, usage(completion.get("usage")))


def message_object(message_id: str, model: str, content: list[Json], reason: str | None,
                   sequence: str | None, used: Json) -> Json:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reason, "stop_sequence": sequence,
            "usage": used}


def tool_use_block(call_id: str, name: str, arguments: str) -> Json:
    return {"type": "tool_use", "id": call_id, "name": name, "input": tool_input(arguments)}


def tool_input(arguments: str) -> Json:
    if not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"_unparsed_arguments": arguments}


def stop_reason(request: MessagesRequest, finish_reason: str | None, matched: Any,
                called_tools: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for a chat finish_reason. `matched` is the stop string
    an upstream reports (vLLM's `stop_reason`); without it a stop sequence cannot be told
    from a natural end, and the answer says end_turn."""
    if called_tools or finish_reason in ("tool_calls", "function_call"):
        return "tool_use", None
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "content_filter":
        return "refusal", None
    if isinstance(matched, str) and matched in (request.stop_sequences or ()):
        return "stop_sequence", matched
    return "end_turn", None


def usage(chat_usage: Mapping[str, Any] | None) -> Json:
    """Chat usage → Anthropic usage; Anthropic counts cache reads apart from input tokens."""
    chat_usage = chat_usage or {}
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    cached = int((chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {"input_tokens": max(0, prompt - cached),
            "output_tokens": int(chat_usage.get("completion_tokens") or 0),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


# ---- count_tokens ---------------------------------------------------------------------------

def count_tokens(request: CountTokensRequest) -> Json:
    """The `count_tokens` answer: the prompt counted exactly with cl100k_base (Claude's own
    tokenizer is not public; this is what Podium's routing and limits count too), tool
    definitions included."""
    messages = chat_messages(request)
    tools = _tools(request).get("tools")
    if tools:
        # Tool definitions are prompt tokens too: counted as the JSON the model is shown.
        messages = [{"role": "system", "content": orjson.dumps(tools).decode()}, *messages]
    return {"input_tokens": TokenGauge(exact_from=0).messages(messages).tokens}


# ---- errors ---------------------------------------------------------------------------------

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                402: "billing_error", 403: "permission_error", 404: "not_found_error",
                413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
                504: "timeout_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    """Anthropic's error `type` for an HTTP status."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(err: PodiumError, request_id: str | None = None) -> Json:
    # Anthropic's errors have no `param`; like Anthropic's own, the message starts with it.
    named = err.param is None or err.param in err.message
    message = err.message if named else f"{err.param}: {err.message}"
    body: Json = {"type": "error", "error": {"type": error_type(err.status), "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


def render_error(err: PodiumError, request_id: str | None = None) -> web.Response:
    """`gateway.errors.render` for the Messages endpoints: same status and headers,
    Anthropic's body shape."""
    headers = dict(err.headers)
    if request_id:
        # The Anthropic SDK reads `request-id`; the rest of Podium says `x-request-id`.
        headers.update({"x-request-id": request_id, "request-id": request_id})
    return web.Response(status=err.status, body=orjson.dumps(error_body(err, request_id)),
                        content_type="application/json", headers=headers)
