"""What each stream has sent, and what its proxy accepted or rejected: the /debug/syncz view."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

from translators.api import SHORT_NAMES

if TYPE_CHECKING:
    from xds_server.xds.convergence import ConvergenceTracker

log = structlog.get_logger("xds")

PUSHES = Counter("meshpilot_xds_pushes_total", "xDS responses sent", ["type", "protocol"])
ACKS = Counter("meshpilot_xds_acks_total", "xDS responses accepted by proxies", ["type"])
NACKS = Counter("meshpilot_xds_nacks_total", "xDS responses rejected by proxies", ["type"])
STREAMS = Gauge("meshpilot_xds_streams", "Open xDS streams", ["protocol"])
PUSH_BYTES = Counter("meshpilot_xds_push_bytes_total", "Bytes of xDS responses sent", ["type"])
CONFIG_ERRORS = Gauge("meshpilot_config_errors", "Current configuration problems", ["severity"])
WATCH_FAILURES = Counter(
    "meshpilot_source_watch_failures_total",
    "Times the config directory watcher failed (it restarts with backoff)",
)
WATCHING = Gauge(
    "meshpilot_source_watching",
    "1 while the config directory watcher runs, 0 while it is failing",
)
RESCANS = Counter(
    "meshpilot_source_rescans_total",
    "Periodic full rescans of the config directory (changed: found what the watcher had not reported)",
    ["result"],
)
PROTOCOL_ERRORS = Counter(
    "meshpilot_xds_protocol_errors_total",
    "Client requests the xDS protocol says to ignore (unknown type, stale or unknown nonce, ...)",
    ["kind"],
)
TRANSLATE_SECONDS = Histogram(
    "meshpilot_translate_seconds",
    "Time to apply a new config snapshot (translate + cache + notify)",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def short(type_url: str) -> str:
    return SHORT_NAMES.get(type_url) or type_url.rsplit(".", 1)[-1]


@functools.cache
def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: every response and ACK counts, on a thousand
    streams, and ``labels`` takes a lock and builds a key each time."""
    return metric.labels(*labels)


@dataclass
class TypeStatus:
    sent_version: str = ""
    sent_nonce: str = ""
    sent_resources: int = 0
    sent_bytes: int = 0  # of the latest response: what one change cost this proxy
    acked_version: str = ""
    acked_nonce: str = ""
    nack: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", None)}


@dataclass
class StreamStatus:
    proxy_id: str
    protocol: str  # "sotw" | "delta"
    connected_at: float = field(default_factory=time.time)
    types: dict[str, TypeStatus] = field(default_factory=dict)
    #: kinds of protocol error already logged for this stream: a misbehaving client repeats itself
    reported: set[str] = field(default_factory=set)
    #: told of every ACK and NACK, to time each change's convergence
    convergence: ConvergenceTracker | None = None
    stream_id: int = 0

    def of(self, type_url: str) -> TypeStatus:
        st = self.types.get(type_url)
        if st is None:
            st = self.types[type_url] = TypeStatus()
        return st

    def sent(self, type_url: str, version: str, nonce: str, count: int, size: int) -> None:
        st = self.of(type_url)
        st.sent_version, st.sent_nonce, st.sent_resources, st.sent_bytes = version, nonce, count, size
        _child(PUSHES, short(type_url), self.protocol).inc()
        _child(PUSH_BYTES, short(type_url)).inc(size)

    def acked(self, type_url: str, version: str, nonce: str) -> None:
        st = self.of(type_url)
        st.acked_version, st.acked_nonce = version, nonce
        _child(ACKS, short(type_url)).inc()
        if self.convergence is not None:
            self.convergence.answered(self.stream_id, nonce, True)

    def nacked(self, type_url: str, version: str, nonce: str, message: str) -> None:
        # The proxy keeps its last accepted config; nothing is re-sent until the config changes.
        nack: dict[str, Any] = {"version": version, "nonce": nonce, "message": message, "at": time.time()}
        NACKS.labels(short(type_url)).inc()
        change = self.convergence.answered(self.stream_id, nonce, False) if self.convergence is not None else None
        if change is not None:  # the change that response carried: what the NACK is tied back to
            nack["generation"], nack["resources"] = change.generation, [list(r) for r in change.resources]
        self.of(type_url).nack = nack
        log.warning("config rejected by proxy", proxy=self.proxy_id, type=short(type_url), version=version, error=message)

    def protocol_error(self, kind: str, type_url: str, **details: Any) -> None:
        """A request the protocol says to ignore: counted every time, logged once per stream and kind."""
        PROTOCOL_ERRORS.labels(kind).inc()
        if kind not in self.reported:
            self.reported.add(kind)
            log.warning("xds request ignored", reason=kind, proxy=self.proxy_id, protocol=self.protocol,
                        type=short(type_url), note="logged once per stream", **details)

    def as_dict(self) -> dict[str, Any]:
        return {
            "proxy": self.proxy_id,
            "protocol": self.protocol,
            "connected_at": self.connected_at,
            "types": {short(t): s.as_dict() for t, s in sorted(self.types.items())},
        }
