"""PII and secret detection, and reversible pseudonymization.

Detectors (gateway/pipeline/pii_detectors.py): e-mail addresses (internationalised too),
phone numbers (national formats and E.164), payment cards (Luhn-checked), IBANs (mod-97
checked), US SSNs, IPv4/IPv6 addresses, and secrets (well-known key prefixes and long
high-entropy tokens).

Text is normalised before detection (NFKC, invisible format characters removed), so that
`jane\\u200b.doe@…` or full-width digits are found whole; findings are mapped back to the
original text, so masking replaces exactly what the caller sent.

No single request may stall the gateway: every detector is linear-time, and a long text is
scanned in windows of `WINDOW` characters. `scan` yields to the event loop after each detector
on each window, so a 4 MB prompt costs other connections at most one detector's pass over one
window at a time (see bench/loop_lag.py); `detect` is the same scan run to completion.

A `Pseudonymizer` replaces each distinct value with a stable placeholder such as `[EMAIL_1]`
before text leaves for a deployment not cleared for it, and restores the originals in the answer,
also across stream chunks (a placeholder split over two chunks is held back until complete).
Values are never logged or traced: only counts per kind leave this module.
"""

from __future__ import annotations

import asyncio
import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from gateway.pipeline.pii_detectors import MAX_FINDING, PII_KINDS, Finding, run_detectors

__all__ = ["PII_KINDS", "Finding", "Pseudonymizer", "StreamUnmasker", "detect", "scan"]

WINDOW = 16 * 1024              # characters scanned between two yields to the event loop
_OVERLAP = MAX_FINDING + 64     # so a finding cut by one window is whole in the next
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_PLACEHOLDER = re.compile(r"\[(EMAIL|PHONE|CARD|IBAN|SSN|IP|SECRET)_(\d+)\]")
_LONGEST_PLACEHOLDER = len("[SECRET_99999]")
_MASK_BATCH = 4096              # findings replaced between two yields to the event loop


@dataclass(frozen=True, slots=True)
class _Normalized:
    text: str
    origin: list[int] | None    # origin[i]: index in the original text of normalized char i

    def span(self, start: int, end: int) -> tuple[int, int]:
        if self.origin is None:
            return start, end
        return self.origin[start], self.origin[end - 1] + 1


@functools.lru_cache(maxsize=4096)
def _nfkc(char: str) -> str:
    return "" if _INVISIBLE.match(char) else unicodedata.normalize("NFKC", char)


def _normalize(text: str) -> Iterator[_Normalized | None]:
    """NFKC without invisible characters, with a map back to the original; yields None between
    windows of work (the slow path is a Python loop over the characters)."""
    if text.isascii() or (not _INVISIBLE.search(text)
                          and unicodedata.is_normalized("NFKC", text)):
        yield _Normalized(text, None)
        return
    pieces: list[str] = []
    origin: list[int] = []
    for i, char in enumerate(text):
        if char.isascii():
            pieces.append(char)
            origin.append(i)
        else:
            mapped = _nfkc(char)
            pieces.append(mapped)
            origin.extend([i] * len(mapped))
        if i % WINDOW == WINDOW - 1:
            yield None
    yield _Normalized("".join(pieces), origin)


def _windows(length: int) -> Iterator[tuple[int, int, int]]:
    """(scan start, scan end, owned end): findings starting before `owned end` belong to this
    window; the scan runs on past it so that they are seen whole."""
    start = 0
    while True:
        owned = min(start + WINDOW, length)
        yield start, min(owned + _OVERLAP, length), owned
        if owned >= length:
            return
        start = owned


def _merge(taken: list[Finding], new: list[Finding]) -> list[Finding]:
    """`new` (sorted) without what overlaps `taken` (sorted, disjoint) or an earlier new one;
    one linear sweep instead of comparing every pair."""
    kept: list[Finding] = []
    i = 0
    for f in new:
        while i < len(taken) and taken[i].end <= f.start:
            i += 1
        if i < len(taken) and taken[i].start < f.end:
            continue
        if kept and kept[-1].end > f.start:
            continue
        kept.append(f)
    return sorted(taken + kept, key=lambda f: f.start)  # two sorted runs: linear for Timsort


def _scan_steps(text: str, kinds: frozenset[str]) -> Iterator[list[Finding] | None]:
    """The scan as steps: None after each window of work, the findings at the end.

    Overlaps are settled per window, earlier detectors winning; a finding that runs past its
    window's end is carried into the next window and wins there (so across a boundary, the
    earlier finding wins whatever its detector)."""
    norm: _Normalized | None = None
    for step in _normalize(text):
        if step is None:
            yield None
        norm = step
    if norm is None:
        return
    found: list[Finding] = []
    carry: list[Finding] = []
    for start, end, owned in _windows(len(norm.text)):
        taken = carry
        for _, findings in run_detectors(norm.text, start, end, kinds):
            taken = _merge(taken, [f for f in findings if f.start < owned])
            yield None
        new = [f for f in taken if f.start >= start]
        found.extend(_original(norm, text, f) for f in new)
        carry = [f for f in new if f.end > owned]
    yield found


def _original(norm: _Normalized, text: str, f: Finding) -> Finding:
    start, end = norm.span(f.start, f.end)
    return Finding(f.kind, start, end, text[start:end])


def detect(text: str, kinds: Iterable[str] = PII_KINDS) -> list[Finding]:
    """Non-overlapping findings, earlier detectors (secrets first) winning overlaps."""
    result: list[Finding] = []
    for step in _scan_steps(text, frozenset(kinds)):
        if step is not None:
            result = step
    return result


async def scan(texts: Iterable[str], kinds: Iterable[str] = PII_KINDS) -> list[list[Finding]]:
    """`detect` for each text, yielding to the event loop between windows of work, so that a
    long text never holds the loop for more than one window."""
    wanted, out = frozenset(kinds), []
    for text in texts:
        result: list[Finding] = []
        for step in _scan_steps(text, wanted):
            if step is None:
                if len(text) > WINDOW:
                    await asyncio.sleep(0)
            else:
                result = step
        out.append(result)
    return out


@dataclass
class Pseudonymizer:
    """Per-request mapping value ↔ placeholder; the same value always gets the same one."""
    kinds: tuple[str, ...] = PII_KINDS
    by_value: dict[str, str] = field(default_factory=dict)
    by_placeholder: dict[str, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    distinct: Counter[str] = field(default_factory=Counter)
    # Findings already made for a text (by the permissions hop), so masking does not rescan it.
    known: dict[str, list[Finding]] = field(default_factory=dict)
    # Texts masked ahead of time by `prepare`, so that an attempt never masks on the loop.
    masked: dict[str, str] = field(default_factory=dict)

    def mask(self, text: str) -> str:
        done = self.masked.get(text)
        if done is not None:
            return done
        for step in self._mask_steps(text):
            if step is not None:
                return step
        return text  # unreachable: the last step is the masked text

    async def prepare(self, texts: Iterable[str]) -> None:
        """Mask every text now, yielding to the loop on long ones (a 4 MB prompt can hold
        100,000 findings); `mask` then only looks the result up."""
        for text in texts:
            if text in self.masked:
                continue
            for step in self._mask_steps(text):
                if step is None:
                    await asyncio.sleep(0)
                else:
                    self.masked[text] = step

    def _mask_steps(self, text: str) -> Iterator[str | None]:
        findings = self.known.get(text)
        if findings is None:
            findings = detect(text, self.kinds)
        out, last = [], 0
        for i, f in enumerate(findings, 1):
            out.append(text[last:f.start])
            out.append(self._placeholder(f))
            last = f.end
            if i % _MASK_BATCH == 0:
                yield None
        out.append(text[last:])
        yield "".join(out)

    def _placeholder(self, f: Finding) -> str:
        self.counts[f.kind] += 1
        if f.value not in self.by_value:
            self.distinct[f.kind] += 1
            placeholder = f"[{f.kind.upper()}_{self.distinct[f.kind]}]"
            self.by_value[f.value] = placeholder
            self.by_placeholder[placeholder] = f.value
        return self.by_value[f.value]

    def unmask(self, text: str) -> str:
        if not self.by_placeholder:
            return text
        return _PLACEHOLDER.sub(lambda m: self.by_placeholder.get(m.group(), m.group()), text)


class StreamUnmasker:
    """Restores placeholders in a stream of text pieces, holding back a possible partial one."""

    def __init__(self, pseudonymizer: Pseudonymizer) -> None:
        self._p = pseudonymizer
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece
        cut = text.rfind("[")
        if cut != -1 and "]" not in text[cut:] and len(text) - cut < _LONGEST_PLACEHOLDER:
            self._held, text = text[cut:], text[:cut]
        else:
            self._held = ""
        return self._p.unmask(text)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return self._p.unmask(held)
