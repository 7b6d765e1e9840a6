"""A string that a JSON-schema `pattern` (a regular expression) matches, for schema_instance.

Walks the expression as Python's own parser reads it and takes the shortest way through:
each repeat at its minimum count, each alternation's first branch. `variant` is spent like a
counter, so that siblings in a `uniqueItems` array differ: each character class takes the
next digit of it (its n-th member), and what remains adds repeats where a repeat allows
more. The result is checked with `re.search`; a pattern this walk cannot follow
(back-references, exotic classes) yields a plain word instead, which the caller's final
validation then judges.
"""

from __future__ import annotations

import re
from typing import Any

try:  # the parser behind `re`; `sre_parse` is its deprecated public name until 3.13
    import re._parser as _parser  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover
    import sre_parse as _parser  # type: ignore[no-redef,unused-ignore]

_CATEGORY_CHARS = {
    "CATEGORY_DIGIT": "0123456789", "CATEGORY_NOT_DIGIT": "abcdefghij",
    "CATEGORY_WORD": "abcdefghij", "CATEGORY_NOT_WORD": "-.,:;!?+=/",
    "CATEGORY_SPACE": " ", "CATEGORY_NOT_SPACE": "abcdefghij",
}
_POOL = "a0A_- .xZ9"


class _Stuck(Exception):
    """The walk met a construct it does not follow."""


def example(pattern: str, variant: int = 0) -> str:
    try:
        text = _walk(_parser.parse(pattern), [variant])
    except (re.error, _Stuck, ValueError, OverflowError):
        return "text"
    return text if re.search(pattern, text) else "text"


def _walk(items: Any, extra: list[int]) -> str:
    return "".join(_one(op, av, extra) for op, av in items)


def _one(op: Any, av: Any, extra: list[int]) -> str:
    name = str(op)
    if name == "LITERAL":
        return chr(av)
    if name == "ANY":
        return _spend(list(_POOL), extra)
    if name == "NOT_LITERAL":
        return _spend([c for c in _POOL if ord(c) != av], extra)
    if name == "IN":
        return _spend(_members(av), extra)
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        low, high, sub = av
        more = min(extra[0], high - low) if extra[0] and high > low else 0
        extra[0] -= more
        return str(_walk(sub, extra) * (low + more))
    if name == "SUBPATTERN":
        return _walk(av[-1], extra)
    if name == "ATOMIC_GROUP":
        return _walk(av, extra)
    if name == "BRANCH":
        return _walk(av[1][0], extra)
    if name in ("AT", "ASSERT", "ASSERT_NOT"):
        return ""   # anchors and lookarounds take no characters; re.search judges the rest
    raise _Stuck(name)


def _spend(choices: list[str], extra: list[int]) -> str:
    """The choice picked by the counter's next digit."""
    if not choices:
        raise _Stuck("empty class")
    pick = choices[extra[0] % len(choices)]
    extra[0] //= len(choices)
    return pick


def _members(items: Any) -> list[str]:
    """Some characters the class `[...]` matches (enough to tell siblings apart)."""
    if items and str(items[0][0]) == "NEGATE":
        return [c for c in _POOL if not _in_class(items[1:], c)]
    out: list[str] = []
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(av))
        elif name == "RANGE":
            out += [chr(c) for c in range(av[0], min(av[1], av[0] + 25) + 1)]
        elif name == "CATEGORY" and str(av) in _CATEGORY_CHARS:
            out += _CATEGORY_CHARS[str(av)]
        else:
            raise _Stuck(name)
    return list(dict.fromkeys(out))


def _in_class(items: Any, char: str) -> bool:
    code = ord(char)
    for op, av in items:
        name = str(op)
        if (name == "LITERAL" and av == code) or (name == "RANGE" and av[0] <= code <= av[1]):
            return True
        if name == "CATEGORY" and re.match(_category_regex(str(av)), char):
            return True
    return False


def _category_regex(category: str) -> str:
    return {"CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_WORD": r"\w",
            "CATEGORY_NOT_WORD": r"\W", "CATEGORY_SPACE": r"\s",
            "CATEGORY_NOT_SPACE": r"\S"}.get(category, r"(?!)")
