"""Convergence per applied change: how many proxies a change had to reach, and when each ACKed it.

A change (a world generation) is begun with the number of streams the cache notified. Each
of those streams reports the nonces of the responses it sent for that generation; once all
of them are ACKed the proxy has converged (one histogram observation), and a NACK of any of
them counts the proxy as rejecting. Every step is a dict lookup: the ACK path stays O(1).

A stream notified again before it sends (bursts merge) sends only the newest generation;
the older changes it was told of are settled with it, each timed from its own start.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram

CONVERGENCE_SECONDS = Histogram(
    "meshpilot_proxy_convergence_seconds",
    "Time from applying a config change to a proxy ACKing every response carrying it",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


@dataclass
class Change:
    generation: int
    at: float  # wall clock, for people
    started: float  # monotonic, for durations
    proxies: int
    #: the resources the change added, changed or removed ("Kind ns/name", their file): what a
    #: NACK of its responses is tied back to
    resources: tuple[tuple[str, str], ...] = ()
    acked: list[float] = field(default_factory=list)  # seconds to ACK, one per converged proxy
    nacked: int = 0
    #: bytes of the responses sent for this change, in all, and to the proxy that got the most
    bytes: int = 0
    max_bytes: int = 0
    #: stream id -> responses of this change it has not had answered yet
    outstanding: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        times = sorted(self.acked)

        def pct(p: float) -> float | None:
            if not times:
                return None
            return round(times[max(0, math.ceil(p * len(times)) - 1)] * 1000, 1)  # nearest rank

        return {
            "version": self.generation,
            "time": self.at,
            "proxies": self.proxies,
            "acked": len(times),
            "nacked": self.nacked,
            "pending": max(0, self.proxies - len(times) - self.nacked),
            "ack_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
            "bytes": {"total": self.bytes, "max_per_proxy": self.max_bytes},
        }


class ConvergenceTracker:
    def __init__(self, keep: int = 50) -> None:
        self.changes: deque[Change] = deque()
        self.keep = keep
        self._by_generation: dict[int, Change] = {}
        #: stream id -> nonce -> generation of the response sent with that nonce
        self._nonces: dict[int, dict[str, int]] = {}
        #: (stream, generation) -> older changes that stream skipped, settled with that generation
        self._covers: dict[tuple[int, int], list[Change]] = {}

    def begin(self, generation: int, proxies: int, resources: Iterable[tuple[str, str]] = ()) -> None:
        """A change was applied and ``proxies`` streams were told about it."""
        if generation in self._by_generation:
            return
        change = Change(generation, time.time(), time.monotonic(), proxies, tuple(resources))
        self.changes.append(change)
        self._by_generation[generation] = change
        while len(self.changes) > self.keep:
            self._by_generation.pop(self.changes.popleft().generation, None)

    def sent(self, stream: int, generation: int, nonces: list[str], notified: Iterable[int] = (),
             size: int = 0) -> None:
        """``stream`` sent responses built from ``generation`` (none: it had nothing to send), of
        ``size`` bytes; ``notified``: the generations it was told of since it last sent, settled by these too."""
        change = self._by_generation.get(generation)
        if change is None or stream in change.outstanding:
            return
        change.bytes += size
        change.max_bytes = max(change.max_bytes, size)
        older = [c for g in notified if g != generation and (c := self._by_generation.get(g)) is not None
                 and stream not in c.outstanding]
        for c in older:
            c.outstanding[stream] = 0  # settled through ``change``
        if not nonces:  # the view changed but nothing it subscribes to did: already there
            for c in (change, *older):
                self._converged(c)
            return
        if older:
            self._covers[(stream, generation)] = older
        change.outstanding[stream] = len(nonces)
        mine = self._nonces.setdefault(stream, {})
        for nonce in nonces:
            mine[nonce] = generation

    def answered(self, stream: int, nonce: str, accepted: bool) -> Change | None:
        """Settle one response; returns the change it carried (if still remembered)."""
        mine = self._nonces.get(stream)
        generation = mine.pop(nonce, None) if mine is not None else None
        change = self._by_generation.get(generation) if generation is not None else None
        if change is None:
            if generation is not None:  # answered after its change was forgotten: forget what it covered
                self._covers.pop((stream, generation), None)
            return None
        left = change.outstanding.get(stream)
        if left is None or left <= 0:
            return change
        if accepted and left > 1:
            change.outstanding[stream] = left - 1
            return change
        change.outstanding[stream] = 0  # settled; after a NACK its other answers are ignored
        for c in (change, *self._covers.pop((stream, change.generation), ())):
            if accepted:
                self._converged(c)
            else:
                c.nacked += 1
        return change

    def _converged(self, change: Change) -> None:
        seconds = time.monotonic() - change.started
        change.acked.append(seconds)
        CONVERGENCE_SECONDS.observe(seconds)

    def closed(self, stream: int) -> None:
        mine = self._nonces.pop(stream, None)
        for generation in set(mine.values()) if mine else ():
            self._covers.pop((stream, generation), None)

    def as_list(self) -> list[dict[str, Any]]:
        """Newest first."""
        return [c.as_dict() for c in reversed(self.changes)]
