"""A stream of `chat.completion.chunk` dicts → the Anthropic Messages API's stream events.

    message_start                      (usage.input_tokens: the caller's estimate, or 0)
    per content block, one at a time (see `chunks.Sequencer`):
      content_block_start, content_block_delta (text_delta | input_json_delta)...,
      content_block_stop
    message_delta                      (stop_reason, stop_sequence, usage from the upstream)
    message_stop

Anthropic reports the stop reason and the final usage together in `message_delta`; a chat
upstream sends its finish_reason first and its usage in a later chunk, so both wait for
`finish`. A stream that fails after it started ends with Anthropic's `error` event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import PodiumError
from gateway.translate import chunks
from gateway.translate.anthropic import (
    error_body,
    message_object,
    stop_reason,
    tool_use_block,
    usage,
)
from gateway.translate.anthropic_models import MessagesRequest
from gateway.translate.chunks import Sequencer, Slot, Step, StreamState
from gateway.translate.ids import new_id

Json = dict[str, Any]


class MessagesStream:
    """One message's stream: feed it every chunk, then call `finish` (or `fail`)."""

    def __init__(self, request: MessagesRequest, *, message_id: str | None = None,
                 input_tokens: int = 0) -> None:
        self.request = request
        self.message_id = message_id or new_id("msg")
        self.input_tokens = input_tokens   # message_start's count, before the upstream's
        self.message: Json | None = None   # the final message object, once finished
        self._sequencer = Sequencer()
        self._state = StreamState()
        self._started = False

    def feed(self, chunk: Mapping[str, Any]) -> list[Json]:
        """The events one chunk causes (the first chunk also starts the message)."""
        steps = chunks.feed(self._sequencer, self._state, chunk)
        events = self._start()
        for step in steps:
            events.append(_event(step))
        return events

    def finish(self) -> list[Json]:
        """The closing events, after the last chunk; sets `self.message`."""
        events = self._start()
        events += [_event(step) for step in self._sequencer.close()]
        slots = self._sequencer.slots()
        reason, sequence = stop_reason(
            self.request, self._state.finish_reason, self._state.stop_reason,
            any(slot.kind == "tool" for slot in slots))
        used = self._usage()
        self.message = message_object(self.message_id, self._model(),
                                      [_block(slot) for slot in slots], reason, sequence, used)
        events.append({"type": "message_delta",
                       "delta": {"stop_reason": reason, "stop_sequence": sequence},
                       "usage": used})
        events.append({"type": "message_stop"})
        return events

    def fail(self, err: PodiumError) -> list[Json]:
        """The events that end a stream broken off by `err`."""
        return [*self._start(), error_body(err)]

    def _start(self) -> list[Json]:
        if self._started:
            return []
        self._started = True
        used = {"input_tokens": self.input_tokens, "output_tokens": 0}
        message = message_object(self.message_id, self._model(), [], None, None, used)
        return [{"type": "message_start", "message": message}]

    def _usage(self) -> Json:
        used = usage(self._state.usage)
        if self._state.usage is None:   # the upstream never said: keep the estimate
            used["input_tokens"] = self.input_tokens
        return used

    def _model(self) -> str:
        return self._state.model or self.request.model


def _event(step: Step) -> Json:
    slot = step.slot
    if step.action == "open":
        block = {"type": "text", "text": ""} if slot.kind == "text" \
            else {"type": "tool_use", "id": slot.call_id, "name": slot.name, "input": {}}
        return {"type": "content_block_start", "index": slot.position, "content_block": block}
    if step.action == "delta":
        delta = {"type": "text_delta", "text": step.text} if slot.kind == "text" \
            else {"type": "input_json_delta", "partial_json": step.text}
        return {"type": "content_block_delta", "index": slot.position, "delta": delta}
    return {"type": "content_block_stop", "index": slot.position}


def _block(slot: Slot) -> Json:
    if slot.kind == "text":
        return {"type": "text", "text": slot.text}
    return tool_use_block(slot.call_id, slot.name, slot.text)
