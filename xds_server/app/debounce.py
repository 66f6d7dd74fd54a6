"""Push pacing: a lone change goes at once, bursts of changes are merged into one push.

A change that finds the pipeline idle (no push running, none ended in the last ``quiet``
seconds) is pushed at once: the leading edge, so one edit reaches the proxies without
waiting. Changes that follow a push closely (a burst) are merged: their push starts once
they have been quiet for ``quiet`` seconds, or ``max_delay`` after the first of them if
they never go quiet (istiod's PILOT_DEBOUNCE_MAX). One push runs at a time; changes that
arrive meanwhile are merged into the next. Sources hand over their whole current state,
so merging keeps only the latest value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Debouncer(Generic[T]):
    def __init__(
        self,
        push: Callable[[T, int], Awaitable[None]],
        quiet: float = 0.1,
        max_delay: float = 10.0,
        clock: Clock | None = None,
    ):
        """``push(latest, merged)`` gets the latest value and how many submissions it stands for."""
        self._push = push
        self.quiet = quiet
        self.max_delay = max_delay
        self._clock = clock or MonotonicClock()
        self._latest: T | None = None
        self._merged = 0
        self._first_at = 0.0
        self._last_at = 0.0
        self._pushed_at = float("-inf")  # when the last push ended
        self._wake = asyncio.Event()

    def submit(self, value: T) -> None:
        now = self._clock.now()
        if self._merged == 0:
            self._first_at = now
        self._latest = value
        self._merged += 1
        self._last_at = now
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # A burst (its first change came within ``quiet`` of the last push) waits to be
            # quiet; a change that found the pipeline idle skips this and goes at once.
            while self._first_at < self._pushed_at + self.quiet:
                deadline = min(self._last_at + self.quiet, self._first_at + self.max_delay)
                remaining = deadline - self._clock.now()
                if remaining < 0.0005:  # rounding, not time worth waiting for
                    break
                await self._clock.sleep(remaining)
            value, merged = self._latest, self._merged
            self._latest, self._merged = None, 0
            self._wake.clear()
            try:
                await self._push(value, merged)  # type: ignore[arg-type]
            finally:
                self._pushed_at = self._clock.now()
