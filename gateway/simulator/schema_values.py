"""Leaf values for schema_instance: strings (formats, patterns, lengths) and numbers (bounds,
exclusive bounds, multiples) that satisfy one schema's constraints.

A `variant` makes siblings differ (the n-th date, the next multiple, the next class member of
a pattern), for arrays that ask for `uniqueItems`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from gateway.simulator import schema_pattern


class SchemaUnsatisfiable(ValueError):
    """No instance could be built for the schema (it has none, or is beyond this builder)."""


_FORMATS: dict[str, Callable[[int], str]] = {
    "date-time": lambda v: f"2024-01-{1 + v % 28:02d}T12:00:00Z",
    "date": lambda v: f"2024-01-{1 + v % 28:02d}",
    "time": lambda v: f"12:00:{v % 60:02d}Z",
    "duration": lambda v: f"P{v + 1}D",
    "email": lambda v: f"user{v}@example.com",
    "idn-email": lambda v: f"user{v}@example.com",
    "hostname": lambda v: f"host{v}.example.com",
    "idn-hostname": lambda v: f"host{v}.example.com",
    "ipv4": lambda v: f"192.0.2.{v % 256}",
    "ipv6": lambda v: f"2001:db8::{v + 1:x}",
    "uri": lambda v: f"https://example.com/{v}",
    "iri": lambda v: f"https://example.com/{v}",
    "uri-reference": lambda v: f"https://example.com/{v}",
    "iri-reference": lambda v: f"https://example.com/{v}",
    "url": lambda v: f"https://example.com/{v}",
    "uuid": lambda v: f"00000000-0000-4000-8000-{v:012x}",
    "uri-template": lambda v: f"https://example.com/{{id{v}}}",
    "json-pointer": lambda v: f"/item{v}",
    "relative-json-pointer": lambda v: str(v),
    "regex": lambda v: f"^item{v}$",
    "byte": lambda v: "AAAA" if v == 0 else f"AAA{chr(65 + v % 26)}",
}


def string(schema: Mapping[str, Any], variant: int) -> str:
    fmt = schema.get("format")
    pattern = schema.get("pattern")
    if isinstance(fmt, str) and fmt in _FORMATS:
        text = _FORMATS[fmt](variant)
    elif isinstance(pattern, str):
        text = schema_pattern.example(pattern, variant)
    else:
        text = "text" if variant == 0 else f"text{variant}"
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    if len(text) < low:
        text = _pad(text, low, pattern)
    if isinstance(high, int) and len(text) > high:
        text = text[:high]
    return text


def _pad(text: str, length: int, pattern: str | None) -> str:
    # After the text keeps a prefix-anchored pattern matching, before it a suffix-anchored one.
    after = text + "x" * (length - len(text))
    if pattern is None or re.search(pattern, after):
        return after
    return "x" * (length - len(text)) + text


class _Bounds(NamedTuple):
    low: float | None
    high: float | None
    low_open: bool
    high_open: bool

    def allows(self, value: float) -> bool:
        above = self.low is None or value > self.low or (value == self.low and not self.low_open)
        below = self.high is None or value < self.high \
            or (value == self.high and not self.high_open)
        return above and below


def _bounds(schema: Mapping[str, Any]) -> _Bounds:
    low, high = _num(schema.get("minimum")), _num(schema.get("maximum"))
    flags = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    # Draft 4: booleans that make minimum/maximum exclusive. Not `True in flags`: 1 == True, so
    # that would read Draft 2020's `exclusiveMinimum: 1` as a Draft 4 flag.
    if any(flag is True for flag in flags):
        return _Bounds(low, high, flags[0] is True, flags[1] is True)
    xlow, xhigh = _num(flags[0]), _num(flags[1])
    low_open = high_open = False
    if xlow is not None and (low is None or xlow >= low):
        low, low_open = xlow, True
    if xhigh is not None and (high is None or xhigh <= high):
        high, high_open = xhigh, True
    return _Bounds(low, high, low_open, high_open)


def _num(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def number(schema: Mapping[str, Any], variant: int, *, integer: bool) -> int | float:
    bounds = _bounds(schema)
    step = _num(schema.get("multipleOf"))
    if step is not None and step > 0:
        return _multiple(bounds, step, variant, integer=integer)
    if integer:
        return _integer(bounds, variant)
    low, high = bounds.low, bounds.high
    # A non-integral number where the bounds allow: it tells a `number` branch from an
    # `integer` one in a oneOf, and it looks like what a float field holds.
    if low is not None and high is not None:
        if low == high and bounds.allows(low):
            return low
        return low + (high - low) * (variant + 1) / (variant + 2)
    if low is not None:
        return math.floor(low) + variant + 1.5
    if high is not None:
        return math.ceil(high) - variant - 1.5
    return variant + 0.5


def _integer(bounds: _Bounds, variant: int) -> int:
    low = high = None
    if bounds.low is not None:
        low = math.floor(bounds.low) + 1 if bounds.low_open else math.ceil(bounds.low)
    if bounds.high is not None:
        high = math.ceil(bounds.high) - 1 if bounds.high_open else math.floor(bounds.high)
    if low is not None and high is not None:
        if low > high:
            raise SchemaUnsatisfiable(f"no integer between {bounds.low} and {bounds.high}")
        return low + variant % (high - low + 1)
    if low is not None:
        return max(low, 0) + variant
    if high is not None:
        return min(high, 0) - variant
    return variant


def _multiple(bounds: _Bounds, step: float, variant: int, *, integer: bool) -> int | float:
    """A multiple of `step` within the bounds that jsonschema also accepts: it checks a float
    step by `value / step` being integral, which rounding can defeat (0.07 / 0.01)."""
    exact = Decimal(str(step))
    if bounds.low is not None:
        ks = itertools.count(math.ceil(bounds.low / step) - 1)
    elif bounds.high is not None:
        ks = itertools.count(math.floor(bounds.high / step) + 1, -1)
    else:
        ks = itertools.count(0)
    found: list[int | float] = []
    for k in itertools.islice(ks, 256):
        value = exact * k
        if integer and value != value.to_integral_value():
            continue
        number: int | float = int(value) if value == value.to_integral_value() else float(value)
        if bounds.allows(number) and (isinstance(step, int) or number / step == int(number / step)):
            found.append(number)
            if len(found) > variant:
                return found[variant]
    if found:
        return found[variant % len(found)]
    raise SchemaUnsatisfiable(f"no multiple of {step} found within the bounds")
