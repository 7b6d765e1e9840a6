"""Writes batched off the request path.

A request only appends to a list; a background task hands the batch to a writer every
`interval_s` (or sooner when `max_batch` items wait): a plain function runs in a worker thread
(SQLite), a coroutine function on the loop (asyncpg). `close()` flushes what is left, so a clean
shutdown loses nothing; `flush()` gives read-your-writes to admin queries. A batch whose write
fails is put back and retried with the next one.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("podium.batch")


class BatchWriter(Generic[T]):
    def __init__(self, write: Callable[[list[T]], None] | Callable[[list[T]], Awaitable[None]],
                 *, name: str,
                 interval_s: float = 0.2, max_batch: int = 500) -> None:
        self._write = write
        self._name = name
        self._interval = interval_s
        self._max = max_batch
        self._pending: list[T] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"podium-{self._name}-writer")

    def submit(self, item: T) -> None:
        self._pending.append(item)
        if len(self._pending) >= self._max:
            self._wake.set()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            write = asyncio.ensure_future(self._start_write(batch))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                # A write in progress is not abandoned: hold the lock until it is done, so no
                # second batch ever runs beside it; put the batch back if it failed.
                await asyncio.wait({write})
                if write.cancelled() or write.exception() is not None:
                    self._pending = batch + self._pending
                raise
            except BaseException:
                self._pending = batch + self._pending  # nothing is dropped: retried next time
                raise

    def _start_write(self, batch: list[T]) -> Awaitable[Any]:
        if inspect.iscoroutinefunction(self._write):
            return self._write(batch)
        return asyncio.to_thread(self._write, batch)

    async def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # keep the writer alive; the items are retried with the next batch
                log.exception("%s writer failed; will retry", self._name)
