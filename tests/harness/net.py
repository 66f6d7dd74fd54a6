"""Addresses for tests: every proxy gets its own loopback IP, every server a free port.

All of 127.0.0.0/8 reaches the loopback interface on Linux, so a test can give each
Envoy its own IP and let it bind well-known ports (15000 for admin, the service port for
outbound listeners) without colliding with other proxies of the same test, other tests,
or ``meshpilot demo`` (127.0.0.1, 127.0.10.x and 127.0.20.x are never handed out).
"""

from __future__ import annotations

import itertools
import os
import threading

from xds_server.local.processes import can_bind, free_port, port_is_free

__all__ = ["LoopbackAllocator", "can_bind", "free_port", "port_is_free", "privileged_ports_allowed", "session_octet"]


def session_octet() -> int:
    """The second octet for this test session (127.<octet>.x.y), in 64..243.

    Derived from the pid, so concurrent sessions (pytest-xdist workers, two checkouts on
    one machine) almost never share addresses.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    return 64 + (os.getpid() + 37 * index) % 180


class LoopbackAllocator:
    """Hands out 127.<octet>.<a>.<b> addresses, each once per session."""

    def __init__(self, octet: int | None = None) -> None:
        self.octet = session_octet() if octet is None else octet
        if not 1 <= self.octet <= 254 or self.octet in (10, 20):
            raise ValueError(f"second octet {self.octet} clashes with the demo's addresses or is invalid")
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def allocate(self) -> str:
        with self._lock:
            n = next(self._counter)
        a, b = divmod(n, 250)
        if a > 254:
            raise RuntimeError("loopback addresses exhausted for this session")
        return f"127.{self.octet}.{a + 1}.{b + 2}"


def privileged_ports_allowed(ip: str = "127.0.0.1") -> bool:
    """Whether this process may listen below 1024 (root, or a lowered unprivileged port start)."""
    return can_bind(ip, 80) is not None
