"""Counting in fixed sub-buckets: the in-process shape of every rate-limit window and every
budget's reservations, in constant memory whatever the traffic.

A `SlidingWindow` of n buckets of `width` seconds counts what was added in the newest n buckets
(the current one included): a minute window is 60 one-second buckets, as Kong's and Envoy's
limiters count. An amount is kept in the bucket it went into, so a later correction (a tpm
refund, a settled reservation) lands exactly where the amount is and leaves with it. Memory is
n floats; adding is O(1); advancing clears at most n buckets; the wait until an amount fits
walks at most n buckets. Accuracy: an amount leaves between (n - 1) x width and n x width
seconds after it was added, never later (see the README, "Rate limits").

`IdleMap` holds such windows by scope and forgets one that has not been touched for longer than
its window (it is empty by then), oldest first, in O(1) amortised per touch, without a scan.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class SlidingWindow:
    __slots__ = ("_counts", "_n", "_width", "head", "total")

    def __init__(self, buckets: int, width: float) -> None:
        self._counts = array("d", bytes(8 * buckets))
        self._n = buckets
        self._width = width
        self.head = -buckets      # the index of the newest bucket seen (floor(t / width))
        self.total = 0.0          # the sum of the live buckets

    def bucket_at(self, now: float) -> int:
        return math.floor(now / self._width)

    def advance(self, now: float) -> int:
        """Move the window to `now`: buckets that fell out of it are emptied. Returns the
        current bucket index."""
        head = math.floor(now / self._width)  # bucket_at(now), without the call
        if head <= self.head:
            return self.head       # a clock that steps back keeps the newer window
        if head - self.head >= self._n:
            self._counts = array("d", bytes(8 * self._n))
            self.total = 0.0
        else:
            for b in range(self.head + 1, head + 1):
                i = b % self._n
                self.total -= self._counts[i]
                self._counts[i] = 0.0
        self.head = head
        return head

    def add(self, amount: float) -> int:
        """Count `amount` in the current bucket (after `advance`); returns that bucket."""
        self._counts[self.head % self._n] += amount
        self.total += amount
        return self.head

    def adjust(self, bucket: int, delta: float) -> bool:
        """Correct what `bucket` holds by `delta`, if that bucket is still in the window
        (an amount that already left needs no correction). True if it was."""
        if not self.head - self._n < bucket <= self.head:
            return False
        self._counts[bucket % self._n] += delta
        self.total += delta
        return True

    def wait(self, amount: float, limit: float, now: float) -> float:
        """Seconds from `now` until `amount` fits under `limit` (0.0 if it fits now): the
        oldest buckets leave first; an amount over the limit on its own waits a whole window."""
        if self.total + amount <= limit:
            return 0.0
        freed = 0.0
        for b in range(self.head - self._n + 1, self.head + 1):
            freed += self._counts[b % self._n]
            if self.total - freed + amount <= limit:
                return max(0.001, (b + self._n) * self._width - now)
        return self._n * self._width


class IdleMap(Generic[V]):
    """Values by scope, each forgotten once untouched for `idle_s` (lazily, oldest first)."""

    def __init__(self, idle_s: float, make: Callable[[], V]) -> None:
        self._idle_s = idle_s
        self._make = make
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def touch(self, key: str, now: float) -> V:
        """The value for `key` (made if absent), marked as used at `now`."""
        items = self._items
        if items:
            first = next(iter(items.values()))
            if first[0] <= now - self._idle_s:  # the oldest is idle: forget what is
                self._forget_idle(now)
        item = items.get(key)
        if item is None:
            value = self._make()
        else:
            value = item[1]
            items.move_to_end(key)  # newest last, as a pop and re-insert would leave it
        items[key] = (now, value)
        return value

    def peek(self, key: str) -> V | None:
        """The value for `key` if it is held, without marking it used."""
        item = self._items.get(key)
        return None if item is None else item[1]

    def _forget_idle(self, now: float) -> None:
        horizon = now - self._idle_s
        while self._items:
            first = next(iter(self._items.values()))
            if first[0] > horizon:
                return
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
