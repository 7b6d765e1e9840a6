"""The in-process hops of a request, recorded on its SERVER span.

A trace has a span per network hop (DESIGN.md, "The request, hop by hop"): the request's SERVER
span and one CLIENT span per upstream attempt. What happens in between (identity, permissions,
route, the plugins, the cache) is recorded on the SERVER span instead:

- `podium.hop.<name>.ms`: how long the hop took, in milliseconds (summed when it ran twice);
  a plugin's hop is named by its hook too (`podium.hop.plugin.budget.on_request.ms`);
- the hop's decision attributes (the route rule and chain, the data class, the cache result...);
- an event where something notable happens: a candidate dropped, a breaker changing state, an
  escalation, a hold.

Why not a span each: on the event loop an SDK span costs about 35 µs to start and end, an event
about 13 µs and an attribute about 3 µs. A hop here is two `perf_counter_ns` calls, and writes its
attributes into a plain dict that goes onto the SERVER span in one `set_attributes` call when the
request ends. With `telemetry.hop_spans: true` each hop is also a child INTERNAL span
(`podium.<name>`, the span name the hop is opened with) that carries its own attributes and
events; its time still goes on the SERVER span.

The request's record is found through a context variable that the middleware sets (and a shadow
trial, for its own span). With tracing off nothing sets it, and every hop is one shared no-op.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from time import perf_counter_ns
from types import TracebackType
from typing import Protocol

from opentelemetry import trace
from opentelemetry.util.types import Attributes, AttributeValue


class HopRecord(Protocol):
    """Where a hop writes its decision: the request's SERVER span, or the hop's own span."""

    def is_recording(self) -> bool:
        """Whether anything is kept: build attributes only when it is."""
        ...

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Record one decision attribute (a later value for the same key wins)."""
        ...

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Record several decision attributes."""
        ...

    def add_event(self, name: str, attributes: Attributes = None) -> None:
        """Record something notable, now (an event costs more than an attribute: rare things)."""
        ...


class SpanFactory(Protocol):
    """Opens an in-process hop by its span name (`podium.route`); `hook` names the plugin hook
    it runs. What the hops and the plugin chain are given (`Telemetry.span`)."""

    def __call__(self, name: str,
                 hook: str | None = None) -> AbstractContextManager[HopRecord]:
        """The hop, timed from `__enter__` to `__exit__`; its record is what `__enter__` gives."""
        ...


class RequestTrace:
    """One request's SERVER span and what its hops recorded for it, until the request ends.

    Entered, it is the current request's record (for the code under it, tasks it starts
    included); on exit everything buffered goes onto the span at once, and later writes (from a
    task that outlived the request) are dropped."""
    __slots__ = ("_token", "hops", "open", "span", "tracer", "values")

    def __init__(self, span: trace.Span, tracer: trace.Tracer | None = None) -> None:
        self.span = span
        self.tracer = tracer          # set: a child span per hop (`telemetry.hop_spans`)
        self.values: dict[str, AttributeValue] = {}
        self.hops: dict[str, float] = {}
        self.open = True
        self._token: Token[RequestTrace | None] | None = None

    def __enter__(self) -> RequestTrace:
        self._token = _REQUEST.set(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token is not None:
            _REQUEST.reset(self._token)
        self.open = False
        for key, ms in self.hops.items():
            self.values[key] = round(ms, 3)
        self.span.set_attributes(self.values)

    def is_recording(self) -> bool:
        return self.open

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.values[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.values.update(attributes)

    def add_event(self, name: str, attributes: Attributes = None) -> None:
        if self.open:
            self.span.add_event(name, attributes)


class _Hop:
    """One run of a hop: its time goes to the request's record; its decision too, or, with
    hop spans, to a child span of its own."""
    __slots__ = ("_child", "_hook", "_key", "_name", "_request", "_started")

    def __init__(self, request: RequestTrace, name: str, hook: str | None) -> None:
        self._request = request
        self._name = name
        self._hook = hook
        short = name.removeprefix("podium.")
        self._key = f"podium.hop.{short}.{hook}.ms" if hook else f"podium.hop.{short}.ms"
        self._child: AbstractContextManager[trace.Span] | None = None
        self._started = 0

    def __enter__(self) -> HopRecord:
        self._started = perf_counter_ns()
        tracer = self._request.tracer
        if tracer is None:
            return self._request
        self._child = tracer.start_as_current_span(
            self._name, attributes={"podium.plugin.hook": self._hook} if self._hook else None)
        return self._child.__enter__()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool | None:
        handled = self._child.__exit__(kind, exc, tb) if self._child is not None else None
        hops = self._request.hops
        hops[self._key] = hops.get(self._key, 0.0) + (perf_counter_ns() - self._started) / 1e6
        return handled


class _NoHop:
    """A hop with tracing off (or outside a request): nothing timed, nothing kept."""
    __slots__ = ()

    def __enter__(self) -> _NoHop:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        return None

    def add_event(self, name: str, attributes: Attributes = None) -> None:
        return None


NO_HOP = _NoHop()
_REQUEST: ContextVar[RequestTrace | None] = ContextVar("podium_request_trace", default=None)


def hop(name: str, hook: str | None = None) -> AbstractContextManager[HopRecord]:
    """The hop `name` of the current request; the shared no-op outside a traced request."""
    request = _REQUEST.get()
    if request is None or not request.open:
        return NO_HOP
    return _Hop(request, name, hook)


def current() -> RequestTrace | None:
    """The current request's record on its SERVER span (for what no hop owns: the config
    version, a task, a breaker's change during a call); None outside a traced request."""
    request = _REQUEST.get()
    return request if request is not None and request.open else None


def note(name: str, attributes: Attributes = None) -> None:
    """Something notable the call hop saw (a breaker's change, an escalation), as an event on
    the request's SERVER span; nothing outside a traced request."""
    request = _REQUEST.get()
    if request is not None:
        request.add_event(name, attributes)
