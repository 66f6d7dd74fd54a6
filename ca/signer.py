"""Asynchronous issuance: signing runs on worker threads, never on the event loop.

The event loop that pushes xDS to every proxy must not wait for key generation: a burst of
2,000 new proxies would otherwise freeze pushes to all the others for the whole burst.
:class:`Signer` queues each issuance for a signing thread and the loop only waits on a
future. Two costs stay on the loop and both are kept small:

* handing work over: a ``SimpleQueue.put`` per request. ``loop.run_in_executor`` costs ten
  times more on the loop (a ``concurrent.futures`` future, its asyncio wrapper, the
  executor's locks) and, measured, stalled the loop ~85 ms for a 2,000-request burst;
* handing results back: the thread batches finished certs (those done within
  :data:`BATCH_WINDOW`) into one ``call_soon_threadsafe``, instead of one wake-up each.

What is left is the GIL: the signing thread holds it for the Python parts of building a
certificate and the loop gets it back within the interpreter's switch interval (5 ms).
OpenSSL's heavy part runs outside it for RSA key generation. A process pool would remove
even that but pays pickling per certificate, needs the CA key copied into every worker
and re-synced on rotation; ``benchmarks/bench_ca.py`` has the numbers that made threads
the choice.

The signer also keeps the current certificate per identity: :meth:`Signer.get` re-issues
once a certificate passes half its life or the signing root has rotated, concurrent
requests for one identity share one issuance, and :meth:`Signer.run_refresher` re-issues
due certificates in the background and hands them to a callback (which pushes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import queue
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from cryptography import x509

from ca.authority import DEFAULT_WORKLOAD_TTL, CertificateAuthority
from ca.certs import IssuedCertificate
from ca.identity import WorkloadIdentity
from ca.keys import KeyType, check_key_type

log = logging.getLogger("meshpilot.ca")

T = TypeVar("T")
_Key = tuple[WorkloadIdentity, KeyType]
OnRefresh = Callable[[list[IssuedCertificate]], Awaitable[None] | None]

#: The refresher wakes at least this often, to notice a rotation done behind its back.
MAX_REFRESH_SLEEP = timedelta(seconds=60)
#: Results finished within this window (seconds) reach the loop in one wake-up.
BATCH_WINDOW = 0.002
BATCH_MAX = 64

# (loop, future, work); None tells a thread to stop.
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]
# (future, succeeded, result or exception)
_Done = tuple["asyncio.Future[Any]", bool, Any]


class _SigningThreads:
    """A few daemon threads draining one queue; see the module docstring for why not an executor."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("a signer needs at least one worker")
        self._workers = workers
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, work: Callable[[], T]) -> asyncio.Future[T]:
        if self._closed:
            raise RuntimeError("the signer is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, future, work))
        if len(self._threads) < self._workers:
            thread = threading.Thread(target=self._run, name="meshpilot-signer", daemon=True)
            self._threads.append(thread)
            thread.start()
        return future

    def close(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            batch = {job[0]: [self._do(job)]}
            deadline = time.monotonic() + BATCH_WINDOW
            while time.monotonic() < deadline and sum(map(len, batch.values())) < BATCH_MAX:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # leave the stop for the outer loop
                    break
                batch.setdefault(job[0], []).append(self._do(job))
            for loop, done in batch.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, done)

    @staticmethod
    def _do(job: _Job) -> _Done:
        _, future, work = job
        if future.cancelled():  # a benign race: at worst we sign one cert nobody wants
            return (future, False, None)
        try:
            return (future, True, work())
        except BaseException as e:  # delivered to the awaiting coroutine, not lost here
            return (future, False, e)


def _settle(done: list[_Done]) -> None:
    for future, ok, value in done:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        elif value is not None:
            future.set_exception(value)
        else:
            future.cancel()


class Signer:
    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        ttl: timedelta = DEFAULT_WORKLOAD_TTL,
        workers: int = 1,
    ) -> None:
        """``workers``: signing threads. One keeps GIL contention with the loop lowest;
        more only help with RSA, whose key generation runs outside the GIL."""
        self.ca = ca
        self.ttl = ttl
        self._threads = _SigningThreads(workers)
        self._cache: dict[_Key, IssuedCertificate] = {}
        self._inflight: dict[_Key, asyncio.Future[IssuedCertificate]] = {}
        # The refresher sleeps until _wake_at; _changed cuts that short when something is
        # due earlier (a cert with an earlier half life, a rotation). Not on every insert:
        # a burst of 2,000 would wake it 2,000 times.
        self._changed = asyncio.Event()
        self._wake_at: datetime | None = None
        weakref.finalize(self, self._threads.close)  # no stranded threads if close() is forgotten

    async def issue(
        self, identity: WorkloadIdentity, *, key_type: KeyType | None = None
    ) -> IssuedCertificate:
        """A new certificate for ``identity``, signed on a worker thread; not cached."""
        return await self._threads.submit(
            functools.partial(self.ca.issue, identity, ttl=self.ttl, key_type=key_type)
        )

    async def server_certificate(
        self, dns_names: list[str], *, ip_addresses: list[str] | None = None, ttl: timedelta | None = None
    ) -> IssuedCertificate:
        return await self._threads.submit(
            functools.partial(
                self.ca.server_certificate, dns_names, ip_addresses=ip_addresses or [], ttl=ttl or self.ttl
            )
        )

    async def get(self, identity: WorkloadIdentity, *, key_type: KeyType | None = None) -> IssuedCertificate:
        """The current certificate for ``identity``, issued now if none is fresh."""
        key = (identity, check_key_type(key_type or self.ca.key_type))
        cert = self._cache.get(key)
        if cert is not None and not self.is_due(cert):
            return cert
        future = self._inflight.get(key)
        if future is None:
            future = self._threads.submit(
                functools.partial(self.ca.issue, identity, ttl=self.ttl, key_type=key[1])
            )
            self._inflight[key] = future
            future.add_done_callback(functools.partial(self._store, key))
        # shield: one caller giving up must not cancel the issuance others are waiting for.
        return await asyncio.shield(future)

    def _store(self, key: _Key, future: asyncio.Future[IssuedCertificate]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled() and future.exception() is None:
            cert = self._cache[key] = future.result()
            if self._wake_at is not None and cert.refresh_at < self._wake_at:
                self._changed.set()

    def cached(
        self, identity: WorkloadIdentity, *, key_type: KeyType | None = None
    ) -> IssuedCertificate | None:
        """The cached certificate, fresh or not, without issuing anything."""
        return self._cache.get((identity, check_key_type(key_type or self.ca.key_type)))

    def is_due(self, cert: IssuedCertificate, now: datetime | None = None) -> bool:
        """Past half life, or signed by a signer that is no longer current."""
        now = now or self.ca.now()
        return now >= cert.refresh_at or cert.signer_id != self.ca.signer_id

    def forget(self, identity: WorkloadIdentity) -> None:
        """Drop every cached cert of ``identity`` (its last proxy went away)."""
        for key in [k for k in self._cache if k[0] == identity]:
            del self._cache[key]

    def next_refresh_at(self, now: datetime | None = None) -> datetime | None:
        if not self._cache:
            return None
        signer = self.ca.signer_id
        now = now or self.ca.now()
        return min(now if c.signer_id != signer else c.refresh_at for c in self._cache.values())

    async def refresh_due(self) -> list[IssuedCertificate]:
        """Re-issue every cached certificate that is due; returns the new ones."""
        now = self.ca.now()
        due = [key for key, cert in self._cache.items() if self.is_due(cert, now)]
        return list(await asyncio.gather(*(self.get(ident, key_type=kt) for ident, kt in due)))

    async def run_refresher(self, on_refresh: OnRefresh) -> None:
        """Forever: sleep until the next half life, re-issue what is due, call ``on_refresh``.

        Run it as a task and cancel it to stop. A failing callback or issuance is logged
        and retried a second later rather than ending the loop: certificates must renew.
        """
        while True:
            self._changed.clear()
            now = self.ca.now()
            # The same ``now``: a rotated signer makes everything due "now", which read later
            # would be a microsecond ahead and the loop would sleep forever in tiny steps.
            wake = self.next_refresh_at(now)
            delay = MAX_REFRESH_SLEEP if wake is None else min(wake - now, MAX_REFRESH_SLEEP)
            if delay > timedelta(0):
                self._wake_at = now + delay
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), delay.total_seconds())
                finally:
                    self._wake_at = None
                continue
            try:
                fresh = await self.refresh_due()
                if fresh:
                    result = on_refresh(fresh)
                    if inspect.isawaitable(result):
                        await result
            except Exception:
                log.exception("certificate refresh failed; retrying")
                await asyncio.sleep(1.0)

    async def rotate_root(
        self, *, overlap: timedelta | None = None, key_type: KeyType | None = None
    ) -> x509.Certificate:
        """:meth:`CertificateAuthority.rotate_root` off the loop; cached certs become due."""
        root = await self._threads.submit(
            functools.partial(self.ca.rotate_root, overlap=overlap, key_type=key_type)
        )
        self._changed.set()
        return root

    def wake(self) -> None:
        """Have the refresher look again now (the signer changed behind its back)."""
        self._changed.set()

    def close(self) -> None:
        """Stop the signing threads once queued work is done; later requests fail."""
        self._threads.close()

    def __repr__(self) -> str:
        return f"Signer({self.ca!r}, cached={len(self._cache)}, in_flight={len(self._inflight)})"
