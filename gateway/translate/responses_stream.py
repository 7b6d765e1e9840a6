"""A stream of `chat.completion.chunk` dicts → the Responses API's typed stream events.

The events come in the order OpenAI's own server sends them and the SDK's accumulator
(`openai.lib.streaming.responses`) relies on, each with a `sequence_number` from 0:

    response.created, response.in_progress
    per output item, one at a time (see `chunks.Sequencer`):
      message:       output_item.added, content_part.added, output_text.delta...,
                     output_text.done, content_part.done, output_item.done
      function_call: output_item.added, function_call_arguments.delta...,
                     function_call_arguments.done, output_item.done
    response.completed (or response.incomplete when the answer was cut short), with usage

A stream that fails after it started ends with an `error` event and `response.failed`,
since the HTTP status has already been sent.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from gateway.errors import PodiumError
from gateway.translate import chunks
from gateway.translate.chunks import Sequencer, Slot, Step, StreamState
from gateway.translate.ids import new_id
from gateway.translate.responses import (
    function_call_item,
    message_item,
    response_object,
    status_for,
    usage,
)
from gateway.translate.responses_models import ResponsesRequest

Json = dict[str, Any]


class ResponsesStream:
    """One response's stream: feed it every chunk, then call `finish` (or `fail`)."""

    def __init__(self, request: ResponsesRequest, *, response_id: str | None = None,
                 created_at: int | None = None) -> None:
        self.request = request
        self.response_id = response_id or new_id("resp")
        self.created_at = created_at or int(time.time())
        self.response: Json | None = None   # the final response object, once finished
        self._sequencer = Sequencer()
        self._state = StreamState()
        self._item_ids: dict[int, str] = {}
        self._sequence = 0
        self._started = False

    def feed(self, chunk: Mapping[str, Any]) -> list[Json]:
        """The events one chunk causes (the first chunk also opens the response)."""
        steps = chunks.feed(self._sequencer, self._state, chunk)
        events = self._start()
        for step in steps:
            events += self._play(step, "completed")
        return events

    def finish(self) -> list[Json]:
        """The closing events, after the last chunk; sets `self.response`."""
        events = self._start()
        status, incomplete = status_for(self._state.finish_reason)
        item_status = "completed" if status == "completed" else "incomplete"
        for step in self._sequencer.close():
            events += self._play(step, item_status)
        output = [self._item(slot, item_status) for slot in self._sequencer.slots()]
        self.response = self._snapshot(status, output, usage(self._state.usage), incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=self.response))
        return events

    def fail(self, err: PodiumError) -> list[Json]:
        """The events that end a stream broken off by `err`."""
        events = self._start()
        code = "rate_limit_exceeded" if err.status == 429 else "server_error"
        events.append(self._event("error", code=err.code or code, message=err.message,
                                  param=err.param))
        self.response = self._snapshot("failed", [], usage(self._state.usage), None)
        self.response["error"] = {"code": code, "message": err.message}
        events.append(self._event("response.failed", response=self.response))
        return events

    # ---- events -----------------------------------------------------------------------------

    def _start(self) -> list[Json]:
        if self._started:
            return []
        self._started = True
        shell = self._snapshot("in_progress", [], None, None)
        return [self._event("response.created", response=shell),
                self._event("response.in_progress", response=shell)]

    def _play(self, step: Step, item_status: str) -> list[Json]:
        slot = step.slot
        if step.action == "open":
            self._item_ids[slot.key] = new_id("msg" if slot.kind == "text" else "fc")
            return self._opened(slot)
        at = {"item_id": self._item_ids[slot.key], "output_index": slot.position}
        if step.action == "delta" and slot.kind == "text":
            return [self._event("response.output_text.delta", **at, content_index=0,
                                delta=step.text, logprobs=[])]
        if step.action == "delta":
            return [self._event("response.function_call_arguments.delta", **at,
                                delta=step.text)]
        return self._closed(slot, item_status)

    def _opened(self, slot: Slot) -> list[Json]:
        item = self._item(slot, "in_progress", empty=True)
        events = [self._event("response.output_item.added", output_index=slot.position,
                              item=item)]
        if slot.kind == "text":
            events.append(self._event(
                "response.content_part.added", item_id=item["id"], output_index=slot.position,
                content_index=0, part=_text_part("")))
        return events

    def _closed(self, slot: Slot, item_status: str) -> list[Json]:
        item = self._item(slot, item_status)
        at = {"item_id": item["id"], "output_index": slot.position}
        if slot.kind == "text":
            events = [
                self._event("response.output_text.done", **at, content_index=0,
                            text=slot.text, logprobs=[]),
                self._event("response.content_part.done", **at, content_index=0,
                            part=_text_part(slot.text)),
            ]
        else:
            events = [self._event("response.function_call_arguments.done", **at,
                                  name=slot.name, arguments=slot.text)]
        events.append(self._event("response.output_item.done", output_index=slot.position,
                                  item=item))
        return events

    def _item(self, slot: Slot, status: str, *, empty: bool = False) -> Json:
        item_id = self._item_ids[slot.key]
        if slot.kind == "text":
            return message_item(item_id, "" if empty else slot.text, status)
        return function_call_item(item_id, slot.call_id, slot.name,
                                  "" if empty else slot.text, status)

    def _snapshot(self, status: str, output: list[Json], used: Json | None,
                  incomplete: str | None) -> Json:
        return response_object(
            self.request, response_id=self.response_id, created_at=self.created_at,
            model=self._state.model or self.request.model, status=status, output=output,
            usage=used, incomplete=incomplete)

    def _event(self, kind: str, **fields: Any) -> Json:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event


def _text_part(text: str) -> Json:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
