"""What a caller's limits mean for the rate-limit and budget hooks, worked out once per key.

The windows a request is counted in and the budgets it is claimed against depend on who calls
(the key, its team, their limits), not on the request. Building them (scope names, checks,
claims) on every request, twice (admission and settling), cost more than using them. A
`PerKey` map, owned by a plugin and so by one config version (a reload builds new plugins),
keeps them by key id, and takes an entry only if it was made from the very limits object the
caller has now, and for the same team: a key changed in the key store (through the admin API,
another worker, an operator's tool) comes back from the store as a new object, and a JWT
caller may name another team in its next token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

from cachetools import LRUCache

from gateway.pipeline.identity import Principal
from plugins.settings import Limits

V = TypeVar("V")
# Keys kept per plugin: past it the least recently used is prepared again on its next request.
PER_KEY_SIZE = 4096


class _Entry(NamedTuple, Generic[V]):
    own: Limits | None
    team: str | None
    value: V


class PerKey(Generic[V]):
    """`make(principal, own limits)`, kept by key id while the limits and team stay the same."""

    def __init__(self, make: Callable[[Principal, Limits | None], V]) -> None:
        self._make = make
        self._entries: LRUCache[str, _Entry[V]] = LRUCache(PER_KEY_SIZE)

    def get(self, principal: Principal, own: Limits | None,
            fresh: Callable[[V], bool] | None = None) -> V:
        """The caller's prepared value; made again if absent, made from other limits or for
        another team, or no longer `fresh` (e.g. a budget period has ended)."""
        entry = self._entries.get(principal.key_id)
        if (entry is not None and entry.own is own and entry.team == principal.team
                and (fresh is None or fresh(entry.value))):
            return entry.value
        value = self._make(principal, own)
        self._entries[principal.key_id] = _Entry(own, principal.team, value)
        return value
