"""Lease-based leader election among meshpilot replicas (``coordination.k8s.io/v1`` Lease).

Every replica serves xDS, SDS and the webhooks at all times; the leader only does what must
have a single writer: creating the CA root Secret (``ca_secret``), and writing it back if it
is deleted. The rules are client-go's ``leaderelection``:

* a replica takes the Lease when it is absent, released (no holder), or when its record
  (holder, renew time, transitions) has not changed for ``lease_duration`` seconds *as this
  replica observed it* (its own monotonic clock, so clock skew between nodes does not matter);
* the holder renews every ``retry_period``; one that has not renewed for ``renew_deadline``
  stops calling itself leader before anybody else may take over (``renew_deadline <
  lease_duration``);
* every write is a replace carrying the resourceVersion read, so of two replicas racing for
  an expired Lease the API server accepts one (the other gets 409 Conflict).

The Kubernetes client blocks: :meth:`LeaseElector.run` calls it in a worker thread, and
:meth:`LeaseElector.try_acquire_or_renew` is for callers with no event loop yet (start-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

log = structlog.get_logger("leader")

DEFAULT_LEASE = "meshpilot-leader"
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 15.0, 10.0, 2.0
REQUEST_TIMEOUT = 5.0


def default_identity() -> str:
    """The pod's name (its hostname) and a random suffix: a restarted pod is a new candidate."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class LeaseElector:
    def __init__(self, api_client: Any, namespace: str, name: str = DEFAULT_LEASE, *, identity: str | None = None,
                 lease_duration: float = LEASE_DURATION, renew_deadline: float | None = None,
                 retry_period: float = RETRY_PERIOD, clock: Callable[[], float] = time.monotonic) -> None:
        if lease_duration < 1 or retry_period <= 0:
            raise ValueError("the lease duration must be at least 1 s and the retry period positive")
        self._api = api_client
        self.namespace, self.name = namespace, name
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        # client-go's ratio by default (10 s of 15): stop leading well before others may take over.
        self.renew_deadline = renew_deadline if renew_deadline is not None else lease_duration * 2 / 3
        if not retry_period < self.renew_deadline < lease_duration:
            raise ValueError("need retry period < renew deadline < lease duration")
        self.retry_period = retry_period
        self._clock = clock
        self._renewed_at: float | None = None  # when this replica last wrote the Lease as holder
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        #: The Lease's holder as last read ("" when none), for /debug/leader.
        self.holder = ""
        self.transitions = 0
        self.last_error = ""
        self.became_leader = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self._renewed_at is not None and self._clock() - self._renewed_at < self.renew_deadline

    # ------------------------------------------------------------ one round

    def try_acquire_or_renew(self) -> bool:
        """Read the Lease and take or renew it if this replica may; True if it leads now.

        Blocking (one or two API calls): run it in a thread when an event loop is running."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        api = client.CoordinationV1Api(self._api)
        now = datetime.now(UTC)
        try:
            lease = api.read_namespaced_lease(self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=client.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=self._seconds,
                                        acquire_time=now, renew_time=now, lease_transitions=0))
            try:
                api.create_namespaced_lease(self.namespace, body, _request_timeout=REQUEST_TIMEOUT)
            except ApiException as e2:
                if e2.status == 409:  # another replica created it first
                    return self._lost()
                raise
            return self._won(0)
        self.last_error = ""  # the API server answered
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        record = (holder, spec.renew_time, spec.acquire_time, spec.lease_transitions)
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        self.holder, self.transitions = holder, spec.lease_transitions or 0
        duration = spec.lease_duration_seconds or self._seconds
        if holder and holder != self.identity and self._clock() - self._observed_at < duration:
            return self._lost()  # somebody else's, and alive as far as this replica can tell
        if holder != self.identity:
            spec.holder_identity = self.identity
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.renew_time = now
        spec.lease_duration_seconds = self._seconds
        lease.spec = spec
        try:  # carries the resourceVersion read: a concurrent writer makes this a 409
            api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status == 409:
                return self._lost()
            raise
        if holder != self.identity:
            log.info("took the lease", lease=f"{self.namespace}/{self.name}", identity=self.identity,
                     previous=holder or None, transitions=spec.lease_transitions)
        return self._won(spec.lease_transitions or 0)

    @property
    def _seconds(self) -> int:
        return max(1, round(self.lease_duration))

    def _won(self, transitions: int) -> bool:
        self._renewed_at = self._clock()
        self.holder, self.transitions, self.last_error = self.identity, transitions, ""
        return True

    def _lost(self) -> bool:
        return self.is_leader  # a leader that failed one round still leads until its renew deadline

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        """Take part in the election until cancelled; release the Lease when stopped gracefully."""
        was = self.is_leader
        try:
            while True:
                try:
                    await asyncio.to_thread(self.try_acquire_or_renew)
                except Exception as e:  # the API server unreachable, RBAC...: try again next round
                    self.last_error = f"{type(e).__name__}: {str(e)[:200]}"
                    log.warning("leader election round failed", lease=f"{self.namespace}/{self.name}",
                                error=self.last_error)
                now = self.is_leader
                if now != was:
                    log.info("leadership changed", leader=now, identity=self.identity,
                             lease=f"{self.namespace}/{self.name}")
                    was = now
                if now:
                    self.became_leader.set()
                else:
                    self.became_leader.clear()
                await asyncio.sleep(self.retry_period)
        except asyncio.CancelledError:
            if self.is_leader:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.to_thread(self.release), REQUEST_TIMEOUT)
            raise

    def release(self) -> None:
        """Give the Lease up (holder emptied), so another replica need not wait for it to expire."""
        from kubernetes import client

        api = client.CoordinationV1Api(self._api)
        lease = api.read_namespaced_lease(self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT)
        if lease.spec is None or lease.spec.holder_identity != self.identity:
            return
        lease.spec.holder_identity = ""
        api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=REQUEST_TIMEOUT)
        self._renewed_at = None
        log.info("released the lease", lease=f"{self.namespace}/{self.name}", identity=self.identity)

    def describe(self) -> dict[str, Any]:
        return {"lease": f"{self.namespace}/{self.name}", "identity": self.identity, "leader": self.is_leader,
                "holder": self.holder, "transitions": self.transitions,
                "lease_duration_seconds": self.lease_duration, "renew_deadline_seconds": self.renew_deadline,
                "retry_period_seconds": self.retry_period, "last_error": self.last_error or None}
