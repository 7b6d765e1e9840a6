"""Scripted Chat Completions answers, as a stream of chunks and as one completion.

The translation tests feed these to the Responses and Anthropic translators and compare what
comes out (and what the official SDKs make of it) with the script itself. Chunks are shaped
as OpenAI sends them: a role chunk first, text in pieces, each tool call opened by a chunk
carrying its id and name, arguments in pieces, the finish_reason in its own chunk, and usage
in a last chunk with no choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODEL = "upstream-model-1"


@dataclass(frozen=True)
class Call:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Script:
    text: str = ""
    calls: tuple[Call, ...] = ()
    finish: str = "stop"
    usage: dict[str, Any] | None = field(default_factory=lambda: {
        "prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    interleave: bool = False      # send the calls' argument pieces in turns, not one by one
    piece: int = 4                # characters per delta

    def chunks(self) -> list[dict[str, Any]]:
        out = [_chunk({"role": "assistant", "content": ""})]
        out += [_chunk({"content": part}) for part in _pieces(self.text, self.piece)]
        out += self._call_chunks()
        out.append(_chunk({}, finish=self.finish))
        if self.usage is not None:
            out.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                        "model": MODEL, "choices": [], "usage": self.usage})
        return out

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}} for c in self.calls]
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish}],
                "usage": self.usage}

    def _call_chunks(self) -> list[dict[str, Any]]:
        openers = [_chunk({"tool_calls": [{"index": i, "id": c.id, "type": "function",
                                           "function": {"name": c.name, "arguments": ""}}]})
                   for i, c in enumerate(self.calls)]
        pieces = [[_chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
                   for part in _pieces(c.arguments, self.piece)]
                  for i, c in enumerate(self.calls)]
        if not self.interleave:
            return [chunk for opener, own in zip(openers, pieces, strict=True)
                    for chunk in (opener, *own)]
        out = list(openers)
        for turn in range(max((len(p) for p in pieces), default=0)):
            out += [own[turn] for own in pieces if turn < len(own)]
        return out


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


WEATHER = Call("call_weather", "get_weather", '{"city": "Paris", "unit": "celsius"}')
TIME = Call("call_time", "get_time", '{"timezone": "Europe/Paris"}')

SCRIPTS: dict[str, Script] = {
    "text": Script(text="Hello from the scripted upstream, in several pieces."),
    "one-tool": Script(calls=(WEATHER,), finish="tool_calls"),
    "two-tools": Script(calls=(WEATHER, TIME), finish="tool_calls", interleave=True),
    "text-and-tool": Script(text="Let me look that up.", calls=(WEATHER,),
                            finish="tool_calls"),
    "cut-short": Script(text="This answer runs out of", finish="length"),
    "no-usage": Script(text="No usage reported.", usage=None),
}

FUNCTION_PARAMETERS = {
    "get_weather": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "f"]}},
        "required": ["city", "unit"], "additionalProperties": False},
    "get_time": {"type": "object", "properties": {"timezone": {"type": "string"}},
                 "required": ["timezone"], "additionalProperties": False},
}
