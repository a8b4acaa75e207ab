"""Bounded concurrency with a bounded wait queue: excess work is refused at once, never parked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class QueueFull(Exception):
    """The queue is at its bound; the caller should answer 503 with Retry-After."""


class Admission:
    """At most ``concurrency`` holders at a time and at most ``max_queue`` waiting.

    Guards against overload turning into unbounded queues and memory: a request
    that would be the ``max_queue + 1``-th waiter is rejected immediately.
    ``slot()`` yields the seconds the holder waited in the queue.
    """

    def __init__(
        self, concurrency: int, max_queue: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if concurrency < 1 or max_queue < 0:
            raise ValueError("concurrency must be >= 1 and max_queue >= 0")
        self._semaphore = asyncio.Semaphore(concurrency)
        self._max_queue = max_queue
        self._clock = clock
        self.waiting = 0
        self.running = 0
        self.rejected = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        if self._semaphore.locked() and self.waiting >= self._max_queue:
            self.rejected += 1
            raise QueueFull(f"queue full ({self.waiting} waiting)")
        start = self._clock()
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield self._clock() - start
        finally:
            self.running -= 1
            self._semaphore.release()
