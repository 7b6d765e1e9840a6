"""Reading a stream of `chat.completion.chunk` dicts as content slots opened one at a time.

Chat Completions streams text and any number of tool calls as deltas keyed by a tool-call
`index`, and nothing forbids a provider from interleaving the argument deltas of two calls.
The Responses and Anthropic streams, by contrast, open one output item (content block) at a
time and close it before the next one starts, and their SDKs index deltas by position.

`Sequencer` bridges the two without dropping or mixing anything: the first slot that can open
(text, or a tool call once its name is known) streams live; deltas for any other slot are
buffered, and those slots are opened, filled and closed one after another when the stream
ends. Upstreams that stream one call after another (OpenAI does) lose nothing but the live
streaming of the second and later tool calls' arguments, which clients only show as progress.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from gateway.translate.ids import new_id

TEXT_KEY = -1  # the text slot's key; tool-call slots are keyed by their chunk `index`


@dataclass
class Slot:
    """One output item being assembled: the assistant's text, or one tool call."""
    kind: Literal["text", "tool"]
    key: int
    position: int = -1              # its index in the output, set when it opens
    call_id: str = ""
    name: str = ""
    pieces: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The text so far, or the tool call's arguments so far."""
        return "".join(self.pieces)

    @property
    def ready(self) -> bool:
        # A tool-call item names its function when it opens, so it waits for the name.
        return self.kind == "text" or bool(self.name)


class Step(NamedTuple):
    action: Literal["open", "delta", "close"]
    slot: Slot
    text: str = ""


class Sequencer:
    """Chat deltas in, open/delta/close steps out, with one slot open at a time."""

    def __init__(self) -> None:
        self._slots: dict[int, Slot] = {}
        self._live: Slot | None = None
        self._opened = 0

    def text(self, piece: str) -> list[Step]:
        slot = self._slot("text", TEXT_KEY)
        return self._add(slot, piece)

    def tool(self, delta: Mapping[str, Any]) -> list[Step]:
        """One entry of a chunk's `delta.tool_calls`."""
        slot = self._slot("tool", self._tool_key(delta))
        fn = delta.get("function") or {}
        if delta.get("id") and not slot.call_id:
            slot.call_id = str(delta["id"])
        if fn.get("name") and not slot.name:
            slot.name = str(fn["name"])
        return self._add(slot, str(fn.get("arguments") or ""))

    def close(self) -> list[Step]:
        """Ends the stream: closes the live slot, then plays every buffered slot in order."""
        steps: list[Step] = []
        if self._live is not None:
            steps.append(Step("close", self._live))
        for slot in self._slots.values():
            if slot.position < 0:
                steps += self._open(slot)
                steps.append(Step("close", slot))
        self._live = None
        return steps

    def slots(self) -> list[Slot]:
        """The opened slots in output order."""
        return sorted((s for s in self._slots.values() if s.position >= 0),
                      key=lambda s: s.position)

    def _tool_key(self, delta: Mapping[str, Any]) -> int:
        if isinstance(delta.get("index"), int):
            return int(delta["index"])
        # No index (some non-OpenAI upstreams): a new id starts a call, anything else continues
        # the latest one.
        tools = [s for s in self._slots.values() if s.kind == "tool"]
        if tools and not (delta.get("id") and delta["id"] != tools[-1].call_id):
            return tools[-1].key
        return max((s.key for s in tools), default=-1) + 1

    def _slot(self, kind: Literal["text", "tool"], key: int) -> Slot:
        if key not in self._slots:
            self._slots[key] = Slot(kind, key)
        return self._slots[key]

    def _add(self, slot: Slot, piece: str) -> list[Step]:
        if piece:
            slot.pieces.append(piece)
        if slot is self._live:
            return [Step("delta", slot, piece)] if piece else []
        if self._live is None and slot.ready and (slot.kind == "tool" or slot.pieces):
            self._live = slot
            return self._open(slot)
        return []

    def _open(self, slot: Slot) -> list[Step]:
        slot.position = self._opened
        self._opened += 1
        if slot.kind == "tool" and not slot.call_id:
            slot.call_id = new_id("call")   # some upstreams send no id; the client needs one
        steps = [Step("open", slot)]
        if slot.text:
            steps.append(Step("delta", slot, slot.text))
        return steps


@dataclass
class StreamState:
    """What the chunks said besides content: the model, why it stopped, the usage."""
    model: str | None = None
    finish_reason: str | None = None
    stop_reason: Any = None      # vLLM's matched stop string, where the upstream reports it
    usage: dict[str, Any] | None = None

    def note(self, chunk: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Records the chunk's metadata; returns choice 0's delta, if the chunk has one."""
        if chunk.get("model") and self.model is None:
            self.model = str(chunk["model"])
        if isinstance(chunk.get("usage"), Mapping):
            self.usage = dict(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # these APIs have no `n`: only the first choice is an answer
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
                self.stop_reason = choice.get("stop_reason")
            delta = choice.get("delta")
            return delta if isinstance(delta, Mapping) else None
        return None


def feed(sequencer: Sequencer, state: StreamState, chunk: Mapping[str, Any]) -> list[Step]:
    """One chunk → the steps it causes."""
    delta = state.note(chunk)
    if delta is None:
        return []
    steps: list[Step] = []
    if isinstance(delta.get("content"), str) and delta["content"]:
        steps += sequencer.text(delta["content"])
    for call in delta.get("tool_calls") or ():
        if isinstance(call, Mapping):
            steps += sequencer.tool(call)
    return steps
