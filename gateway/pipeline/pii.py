"""PII and secret detection, and reversible pseudonymization.

Detectors: e-mail addresses, phone numbers, payment cards (Luhn-checked), IBANs (mod-97
checked), US SSNs, IPv4/IPv6 addresses, and secrets (well-known key prefixes and long
high-entropy tokens). Checksums keep ordinary numbers from being taken for cards or IBANs.

A `Pseudonymizer` replaces each distinct value with a stable placeholder such as `[EMAIL_1]`
before text leaves for a deployment not cleared for it, and restores the originals in the answer,
also across stream chunks (a placeholder split over two chunks is held back until complete).
Values are never logged or traced: only counts per kind leave this module.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

PII_KINDS = ("email", "phone", "card", "iban", "ssn", "ip", "secret")

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# Cards as people write them: 4-4-4-4 (one separator style), Amex 4-6-5, or 13-19 plain digits.
_CARD = re.compile(r"\b(?:\d{4}([ -]?)\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?|\d{4}([ -]?)\d{6}\2\d{5}"
                   r"|\d{13,19})\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])"
                    r"\d{2,4}[ .-]?\d{2,4}(?:[ .-]?\d{1,4})?(?!\w)")
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_IPV6 = re.compile(r"(?<![\w:])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}(?![\w:])")
_SECRET_PREFIX = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{16,}|sk_(?:live|test)_[A-Za-z0-9]{16,}|AKIA[0-9A-Z]{16}|"
    r"gh[pousr]_[A-Za-z0-9]{30,}|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|"
    r"glpat-[A-Za-z0-9_-]{20,})")
_TOKEN = re.compile(r"\b[A-Za-z0-9+/_=-]{32,}\b")
_PLACEHOLDER = re.compile(r"\[(EMAIL|PHONE|CARD|IBAN|SSN|IP|SECRET)_(\d+)\]")
_LONGEST_PLACEHOLDER = len("[SECRET_99999]")


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    start: int
    end: int
    value: str


def _luhn(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(value: str) -> bool:
    compact = value.replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


def _entropy(token: str) -> float:
    counts = Counter(token)
    return -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())


def _is_secret_token(token: str) -> bool:
    # Long, mixed-class, high-entropy: keys and tokens; not words, hex hashes of ids, or paths.
    classes = sum(bool(re.search(p, token)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
    return classes == 3 and _entropy(token) > 4.2


def _phone_ok(value: str) -> bool:
    return 9 <= sum(c.isdigit() for c in value) <= 15 and not _DATE.match(value)


def _longest_valid(value: str, valid: Callable[[str], bool]) -> str | None:
    """A greedy match can run into the next number: cut it back at separators until valid."""
    while value:
        if valid(value):
            return value
        cut = max(value.rfind(" "), value.rfind("-"), value.rfind("."))
        if cut <= 0:
            return None
        value = value[:cut]
    return None


def _ip_ok(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _candidates(text: str) -> Iterable[Finding]:
    for m in _SECRET_PREFIX.finditer(text):
        yield Finding("secret", m.start(), m.end(), m.group())
    for m in _TOKEN.finditer(text):
        if _is_secret_token(m.group()):
            yield Finding("secret", m.start(), m.end(), m.group())
    for m in _EMAIL.finditer(text):
        yield Finding("email", m.start(), m.end(), m.group())
    for m in _IBAN.finditer(text):
        value = _longest_valid(m.group(), _iban_ok)
        if value:
            yield Finding("iban", m.start(), m.start() + len(value), value)
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and _luhn(digits):
            yield Finding("card", m.start(), m.end(), m.group())
    for m in _SSN.finditer(text):
        yield Finding("ssn", m.start(), m.end(), m.group())
    for pattern in (_IPV4, _IPV6):
        for m in pattern.finditer(text):
            if _ip_ok(m.group()):
                yield Finding("ip", m.start(), m.end(), m.group())
    for m in _PHONE.finditer(text):
        value = _longest_valid(m.group(), _phone_ok)
        if value:
            yield Finding("phone", m.start(), m.start() + len(value), value)


def detect(text: str, kinds: Iterable[str] = PII_KINDS) -> list[Finding]:
    """Non-overlapping findings, earlier detectors (secrets first) winning overlaps."""
    wanted = set(kinds)
    taken: list[Finding] = []
    for f in _candidates(text):
        if f.kind in wanted and all(f.end <= t.start or f.start >= t.end for t in taken):
            taken.append(f)
    return sorted(taken, key=lambda f: f.start)


@dataclass
class Pseudonymizer:
    """Per-request mapping value ↔ placeholder; the same value always gets the same one."""
    kinds: tuple[str, ...] = PII_KINDS
    by_value: dict[str, str] = field(default_factory=dict)
    by_placeholder: dict[str, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def mask(self, text: str) -> str:
        out, last = [], 0
        for f in detect(text, self.kinds):
            out.append(text[last:f.start])
            out.append(self._placeholder(f))
            last = f.end
        out.append(text[last:])
        return "".join(out)

    def _placeholder(self, f: Finding) -> str:
        self.counts[f.kind] += 1
        if f.value not in self.by_value:
            n = sum(1 for p in self.by_placeholder if p.startswith(f"[{f.kind.upper()}_")) + 1
            placeholder = f"[{f.kind.upper()}_{n}]"
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
