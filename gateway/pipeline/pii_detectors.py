"""The PII detectors: patterns that run in linear time, and the checks that confirm a match.

Every pattern here is built so that Python's backtracking engine stays linear in the text:
- a match may only *start* where a run of its characters starts (a negative look-behind on the
  run's own class), so the engine never rescans the inside of a long run from each position;
- unbounded runs are possessive (`++`, `{n,m}+`) or bounded, so a failed match never backtracks
  through the run it consumed;
- no nested unbounded quantifiers.
`tests/security/test_no_stall.py` times each detector on adversarial inputs at two sizes and
fails if the cost grows faster than linearly. Checksums (Luhn, mod-97) and validators keep
ordinary numbers from being taken for cards, IBANs or phones.

In front of the patterns, a pre-check with plain substring tests (`Marks`) skips every detector
that cannot find anything in a window: most prompts have no `@`, many no digit, almost none a
key prefix, and the pre-check costs under a microsecond where the patterns cost tens.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

PII_KINDS = ("email", "phone", "card", "iban", "ssn", "ip", "secret")
# The longest finding any detector can report; windows overlap by more than this.
MAX_FINDING = 4096


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    start: int
    end: int
    value: str


# Unicode-aware (`\w`, `[^\W\d_]`): internationalised addresses such as josé@exämple.de count.
_EMAIL = re.compile(r"(?<![\w.%+'-])[\w.%+'-]{1,64}+@[\w-]{1,63}+(?:\.[\w-]{1,63}+){1,8}+"
                    r"(?![\w-])")
# Cards as people write them: 4-4-4-4 (one separator style: space, dash or dot), Amex 4-6-5, or
# 13-19 plain digits.
_CARD = re.compile(r"(?<![\w.-])(?:\d{4}([ .-]?)\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?"
                   r"|\d{4}([ .-]?)\d{6}\2\d{5}|\d{13,19})(?![\w-]|\.\d)")
_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}+(?: ?[A-Z0-9]{1,3})?(?!\w)")
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f:]{2,39}+(?![\w:])")
# National and international formats: (415) 555-2671, 020 7946 0958, 06 12 34 56 78,
# +44 (0)20 7946 0958, +1-415-555-2671; every quantifier bounded.
# Not inside an identifier or a dashed code (ORD-2024-000123, an ISBN's 978-3-16-148410-0).
_PHONE = re.compile(r"(?<![\w+/.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?|\d{1,4}[ .-])"
                    r"(?:\d{1,4}[ .-]){0,4}\d{2,8}(?![\w-]|\.\d)")
# E.164 written without separators: +14155552671.
_E164 = re.compile(r"(?<![\w+])\+[1-9]\d{7,14}(?!\d)")
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
_SECRET_PREFIX = re.compile(
    r"(?<![\w-])(?:sk-[A-Za-z0-9_-]{16,4000}+|sk_(?:live|test)_[A-Za-z0-9]{16,4000}+|"
    r"AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,4000}+|xox[abposr]-[A-Za-z0-9-]{10,4000}+|"
    r"AIza[0-9A-Za-z_-]{35}|glpat-[A-Za-z0-9_-]{20,4000}+)(?![\w-])")
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_=-]{32,4096}+(?![A-Za-z0-9+/_=-])")
_DIGIT = re.compile(r"\d")


def _luhn(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# IBAN length by country (the SWIFT IBAN registry): a match is cut to its country's length and
# checked once, instead of being cut back and re-checked at every separator.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
_BASE36 = {c: str(int(c, 36)) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"}


def _iban_at(match: str) -> str | None:
    """The IBAN at the start of a match (cut to its country's length), if it checks out."""
    length = IBAN_LENGTHS.get(match[:2])
    if length is None:
        return None
    taken = 0
    for end, char in enumerate(match):
        taken += char != " "
        if taken == length:
            value = match[:end + 1]
            compact = value.replace(" ", "")
            rearranged = compact[4:] + compact[:4]
            return value if int("".join(_BASE36[c] for c in rearranged)) % 97 == 1 else None
    return None


def _entropy(token: str) -> float:
    counts = Counter(token)
    return -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())


def _is_secret_token(token: str) -> bool:
    # Long, mixed-class, high-entropy: keys and tokens; not words, hex hashes of ids, or paths.
    mixed = (any(c.islower() for c in token) and any(c.isupper() for c in token)
             and any(c.isdigit() for c in token))
    return mixed and _entropy(token) > 4.2


def _email_ok(value: str) -> bool:
    # The local part is not judged: a detector that errs should err towards masking.
    labels = value.rpartition("@")[2].split(".")
    tld = labels[-1]
    return (len(tld) >= 2 and all(c.isalpha() for c in tld)
            and all(label and label[0] != "-" and label[-1] != "-" for label in labels))


def _phone_ok(value: str) -> bool:
    digits = sum(c.isdigit() for c in value)
    return 9 <= digits <= 15 and not _DATE.match(value)


def _longest_valid(value: str, valid: Callable[[str], bool]) -> str | None:
    """A match can run into the next number: cut it back at separators until valid (bounded:
    a match holds at most a few separators)."""
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


Scan = Iterator[Finding]


class Marks(NamedTuple):
    """What a window of text contains, found with plain substring tests and no regex. Every
    detector needs one of these to find anything, so a window without them skips its regex:
    a digit (cards, IBANs, SSNs, phones, IPv4, and the long tokens taken for secrets, which must
    mix in a digit), an `@` (e-mail), two colons (IPv6), a well-known key prefix (secrets).
    A NamedTuple, not a frozen dataclass: it is built once per window and that is 5x cheaper."""
    digit: bool = True
    at: bool = True
    colons: bool = True
    secret_prefix: bool = True
    token_room: bool = True     # room for a 32-character token


EVERYTHING = Marks()  # every detector runs every pattern: the ungated reference


# The `in` tests below are unrolled: each is a C scan, and a generator over a tuple of needles
# costs twice as much as the scans themselves on a short prompt.
def _has_digit(w: str) -> bool:
    if ("0" in w or "1" in w or "2" in w or "3" in w or "4" in w or "5" in w or "6" in w
            or "7" in w or "8" in w or "9" in w):
        return True
    # `\d` also takes other scripts' decimal digits: only then is the regex asked.
    return not w.isascii() and _DIGIT.search(w) is not None


def _has_secret_prefix(w: str) -> bool:
    # A superset of _SECRET_PREFIX's literal starts (sk_live_/sk_test_ in sk_, gh?_ in gh + _).
    return ("sk-" in w or "sk_" in w or "AKIA" in w or "AIza" in w or "xox" in w
            or "glpat-" in w or ("gh" in w and "_" in w))


def marks_of(text: str, start: int, end: int) -> Marks:
    """The marks of text[start:end]."""
    w = text if start == 0 and end == len(text) else text[start:end]
    colon = w.find(":")
    return Marks(_has_digit(w), "@" in w, colon >= 0 and w.find(":", colon + 1) >= 0,
                 _has_secret_prefix(w), end - start >= 32)


def _secrets(text: str, start: int, end: int, marks: Marks) -> Scan:
    if marks.secret_prefix:
        for m in _SECRET_PREFIX.finditer(text, start, end):
            yield Finding("secret", m.start(), m.end(), m.group())
    if marks.digit and marks.token_room:
        for m in _TOKEN.finditer(text, start, end):
            if _is_secret_token(m.group()):
                yield Finding("secret", m.start(), m.end(), m.group())


def _emails(text: str, start: int, end: int, marks: Marks) -> Scan:
    for m in _EMAIL.finditer(text, start, end):
        if _email_ok(m.group()):
            yield Finding("email", m.start(), m.end(), m.group())


def _ibans(text: str, start: int, end: int, marks: Marks) -> Scan:
    for m in _IBAN.finditer(text, start, end):
        value = _iban_at(m.group())
        if value:
            yield Finding("iban", m.start(), m.start() + len(value), value)


def _cards(text: str, start: int, end: int, marks: Marks) -> Scan:
    for m in _CARD.finditer(text, start, end):
        digits = "".join(c for c in m.group() if c.isdigit())
        if 13 <= len(digits) <= 19 and _luhn(digits):
            yield Finding("card", m.start(), m.end(), m.group())


def _ssns(text: str, start: int, end: int, marks: Marks) -> Scan:
    for m in _SSN.finditer(text, start, end):
        yield Finding("ssn", m.start(), m.end(), m.group())


def _ips(text: str, start: int, end: int, marks: Marks) -> Scan:
    if marks.digit:
        for m in _IPV4.finditer(text, start, end):
            if _ip_ok(m.group()):
                yield Finding("ip", m.start(), m.end(), m.group())
    if marks.colons:
        for m in _IPV6.finditer(text, start, end):
            if m.group().count(":") >= 2 and _ip_ok(m.group()):
                yield Finding("ip", m.start(), m.end(), m.group())


def _phones(text: str, start: int, end: int, marks: Marks) -> Scan:
    for m in _PHONE.finditer(text, start, end):
        value = _longest_valid(m.group(), _phone_ok)
        if value:
            yield Finding("phone", m.start(), m.start() + len(value), value)
    for m in _E164.finditer(text, start, end):
        yield Finding("phone", m.start(), m.end(), m.group())


def _digit(marks: Marks) -> bool:
    return marks.digit


@dataclass(frozen=True, slots=True)
class Detector:
    kind: str
    wanted: Callable[[Marks], bool]     # False: the scan cannot find anything, skip it
    scan: Callable[[str, int, int, Marks], Scan]


# In priority order: where two findings overlap, the earlier detector's wins.
DETECTORS: tuple[Detector, ...] = (
    Detector("secret", lambda m: m.secret_prefix or (m.digit and m.token_room), _secrets),
    Detector("email", lambda m: m.at, _emails),
    Detector("iban", _digit, _ibans),
    Detector("card", _digit, _cards),
    Detector("ssn", _digit, _ssns),
    Detector("ip", lambda m: m.digit or m.colons, _ips),
    Detector("phone", _digit, _phones),
)


def run_detectors(text: str, start: int, end: int,
                  kinds: frozenset[str]) -> Iterator[tuple[str, list[Finding]]]:
    """(kind, findings in text[start:end]) for each wanted detector that can find anything
    there, in priority order, one detector at a time (the caller yields to the event loop in
    between). A window without the marks a detector needs never reaches its regex."""
    marks = marks_of(text, start, end)
    for detector in DETECTORS:
        if detector.kind in kinds and detector.wanted(marks):
            found = detector.scan(text, start, end, marks)
            yield detector.kind, sorted(found, key=lambda f: f.start)
