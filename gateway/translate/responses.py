"""The OpenAI Responses API as a translation around Chat Completions.

    to_chat(request, history)                    → the chat body the pipeline runs
    from_completion(request, completion)         → the `response` object
    ResponsesStream(request).feed(chunk)/finish  → the typed stream events (responses_stream)
    conversation_items(history, request, response) → what `previous_response_id` continues from

Conversation state is plain data: a list of Responses items (the inputs of every turn and the
outputs of every answer, in order). The caller stores it under the response id and passes it
back as `history` for a request naming that id. `instructions` are deliberately not part of
it: the API does not carry them over to the next response.

Parameters with no chat equivalent are refused by name (`background`, `conversation`,
`prompt`, hosted tools); `metadata` and `store` describe the response object and stay here
(OpenAI's chat endpoint refuses `metadata` without `store`); `max_output_tokens` becomes
`max_completion_tokens`, the name OpenAI's reasoning models require and litellm maps for
every other provider.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.errors import BadRequest, UnsupportedRequest
from gateway.translate.ids import new_id
from gateway.translate.responses_input import parse_items, to_messages
from gateway.translate.responses_models import (
    FunctionTool,
    InputItem,
    MessageItem,
    ResponsesRequest,
    TextPart,
    ToolChoiceObject,
)

Json = dict[str, Any]


# ---- request → chat body --------------------------------------------------------------------

def to_chat(request: ResponsesRequest, history: Sequence[Mapping[str, Any]] = ()) -> Json:
    """The chat body for `request`, continuing the conversation `history` (stored items)."""
    _refuse_unsupported(request)
    messages: list[Json] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    messages += to_messages(parse_items(history), "previous_response_id")
    messages += to_messages(_input(request), "input")
    if not messages:
        raise BadRequest("'input' is required: the conversation is empty.", param="input")
    body: Json = {"model": request.model, "messages": messages}
    body.update(_tools(request))
    body.update(_options(request))
    return body


def _refuse_unsupported(request: ResponsesRequest) -> None:
    if request.background:
        raise UnsupportedRequest("Background responses are not supported by Podium; "
                                 "stream the response instead.", param="background")
    if request.conversation is not None:
        raise UnsupportedRequest("The Conversations API is not supported by Podium; "
                                 "use previous_response_id.", param="conversation")
    if request.prompt is not None:
        raise UnsupportedRequest("Stored prompt templates are not supported by Podium; "
                                 "send instructions and input.", param="prompt")


def _input(request: ResponsesRequest) -> list[InputItem]:
    if isinstance(request.input, str):
        return [MessageItem(role="user", content=[TextPart(type="input_text",
                                                            text=request.input)])]
    return list(request.input)


def _tools(request: ResponsesRequest) -> Json:
    if not request.tools:
        return {}
    tools = []
    for i, tool in enumerate(request.tools):
        if not isinstance(tool, FunctionTool):
            raise UnsupportedRequest(
                f"Tools of type {tool.type!r} are not supported: Podium serves the Responses "
                f"API through chat models, which call function tools only.",
                param=f"tools[{i}].type")
        function = {"name": tool.name, "description": tool.description,
                    "parameters": tool.parameters, "strict": tool.strict}
        tools.append({"type": "function",
                      "function": {k: v for k, v in function.items() if v is not None}})
    out: Json = {"tools": tools}
    if request.tool_choice is not None:
        out["tool_choice"] = _tool_choice(request.tool_choice)
    if request.parallel_tool_calls is not None:
        out["parallel_tool_calls"] = request.parallel_tool_calls
    return out


def _tool_choice(choice: str | ToolChoiceObject) -> str | Json:
    if isinstance(choice, str):
        return choice
    if choice.type != "function":
        raise UnsupportedRequest(f"tool_choice of type {choice.type!r} is not supported; "
                                 f"name a function tool.", param="tool_choice.type")
    if not choice.name:
        raise BadRequest("tool_choice of type 'function' needs a 'name'.",
                         param="tool_choice.name")
    return {"type": "function", "function": {"name": choice.name}}


def _options(request: ResponsesRequest) -> Json:
    out: Json = {}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"),
                         ("max_output_tokens", "max_completion_tokens"), ("user", "user")):
        if getattr(request, ours) is not None:
            out[theirs] = getattr(request, ours)
    if request.reasoning and request.reasoning.effort:
        out["reasoning_effort"] = request.reasoning.effort
    fmt = request.text.format if request.text else None
    if fmt is not None and fmt.type == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema = {"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict,
                  "description": fmt.description}
        out["response_format"] = {"type": "json_schema", "json_schema": {
            k: v for k, v in schema.items() if v is not None}}
    if request.stream:
        # Usage arrives in a last chunk only when asked for; response.completed carries it.
        out.update(stream=True, stream_options={"include_usage": True})
    return out


# ---- chat.completion → response -------------------------------------------------------------

def from_completion(request: ResponsesRequest, completion: Mapping[str, Any], *,
                    response_id: str | None = None, created_at: int | None = None) -> Json:
    """The `response` object for a `chat.completion` (its first choice)."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    status, incomplete = status_for(choice.get("finish_reason"))
    item_status = "completed" if status == "completed" else "incomplete"
    output: list[Json] = []
    if message.get("content") or message.get("refusal"):
        output.append(message_item(new_id("msg"), message.get("content") or "", item_status,
                                   refusal=message.get("refusal")))
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        output.append(function_call_item(new_id("fc"), call.get("id") or new_id("call"),
                                         fn.get("name", ""), fn.get("arguments") or "",
                                         item_status))
    return response_object(
        request, response_id=response_id or new_id("resp"),
        created_at=created_at or int(time.time()),
        model=str(completion.get("model") or request.model), status=status, output=output,
        usage=usage(completion.get("usage")), incomplete=incomplete)


def status_for(finish_reason: str | None) -> tuple[str, str | None]:
    """(response status, incomplete_details.reason) for a chat finish_reason."""
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    if finish_reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def message_item(item_id: str, text: str, status: str, *, refusal: str | None = None) -> Json:
    content: list[Json] = []
    if text:
        content.append({"type": "output_text", "text": text, "annotations": [],
                        "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": content}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str,
                       status: str) -> Json:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def usage(chat_usage: Mapping[str, Any] | None) -> Json | None:
    """Chat usage → Responses usage; None when the upstream reported none."""
    if not chat_usage:
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": int(cached), "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": int(reasoning)},
            "total_tokens": int(chat_usage.get("total_tokens") or prompt + completion)}


def response_object(request: ResponsesRequest, *, response_id: str, created_at: int,
                    model: str, status: str, output: list[Json], usage: Json | None,
                    incomplete: str | None = None) -> Json:
    """The `response` object, echoing the request's settings as the API does."""
    finished = status in ("completed", "incomplete", "failed")
    return {
        "id": response_id, "object": "response", "created_at": created_at,
        "completed_at": int(time.time()) if finished else None,
        "status": status, "error": None,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "model": model, "output": output, "usage": usage,
        "instructions": request.instructions, "metadata": dict(request.metadata or {}),
        "max_output_tokens": request.max_output_tokens,
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "store": request.store is not False, "temperature": request.temperature,
        "top_p": request.top_p, "user": request.user, "truncation": "disabled",
        "text": {"format": _format_echo(request)},
        "tool_choice": _tool_choice_echo(request),
        "tools": [t.model_dump(exclude_none=True) for t in request.tools or ()
                  if isinstance(t, FunctionTool)],
        "reasoning": {"effort": request.reasoning.effort if request.reasoning else None},
    }


def _format_echo(request: ResponsesRequest) -> Json:
    fmt = request.text.format if request.text else None
    return fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}


def _tool_choice_echo(request: ResponsesRequest) -> str | Json:
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceObject):
        return choice.model_dump(exclude_none=True)
    return choice or "auto"


# ---- conversation state ---------------------------------------------------------------------

def input_items(request: ResponsesRequest) -> list[Json]:
    """The request's input as items (a plain string is one user message)."""
    return [item.model_dump(mode="json", by_alias=True, exclude_none=True)
            for item in _input(request)]


def conversation_items(history: Sequence[Mapping[str, Any]], request: ResponsesRequest,
                       response: Mapping[str, Any]) -> list[Json]:
    """What to store under `response["id"]` for a later `previous_response_id`: the
    conversation before, this request's input, and this response's output, as JSON data."""
    return [dict(item) for item in history] + input_items(request) \
        + [dict(item) for item in response.get("output") or ()]
