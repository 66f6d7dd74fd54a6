"""ConnectionPoolSettings -> circuit breakers, connect timeout, TCP keepalive and the
upstream HTTP protocol options.

Istio always sets the circuit-breaker thresholds, to the maximum unless configured
(Envoy's own defaults, 1024 and 3 retries, are too low for pod churn).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from google.protobuf import duration_pb2

from translators.features._proto import u32
from translators.model import ConnectionPoolSettings

MAX = 2**32 - 1
CONNECT_TIMEOUT = duration_pb2.Duration(seconds=10)  # Istio's mesh default connectTimeout
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


_DEFAULT_BREAKERS = circuit_breaker_pb2.CircuitBreakers(thresholds=[circuit_breaker_pb2.CircuitBreakers.Thresholds(
    max_connections=u32(MAX), max_pending_requests=u32(MAX), max_requests=u32(MAX), max_retries=u32(MAX),
    track_remaining=True,
)])


def thresholds(pool: ConnectionPoolSettings | None) -> circuit_breaker_pb2.CircuitBreakers:
    """The circuit breakers (callers copy from it: the default is one shared message)."""
    if pool is None or (pool.http is None and (pool.tcp is None or not pool.tcp.maxConnections)):
        return _DEFAULT_BREAKERS
    out = circuit_breaker_pb2.CircuitBreakers()
    out.CopyFrom(_DEFAULT_BREAKERS)
    t = out.thresholds[0]
    if pool is not None:
        if pool.http is not None:
            h = pool.http
            if h.http2MaxRequests:
                t.max_requests.value = h.http2MaxRequests
            if h.http1MaxPendingRequests:
                t.max_pending_requests.value = h.http1MaxPendingRequests
            if h.maxRetries:
                t.max_retries.value = h.maxRetries
        if pool.tcp is not None and pool.tcp.maxConnections:
            t.max_connections.value = pool.tcp.maxConnections
    return out


def http2_upstream(pool: ConnectionPoolSettings | None, port_is_http2: bool) -> bool | None:
    """True: speak HTTP/2 upstream; False: HTTP/1.1; None: use the downstream protocol."""
    h = pool.http if pool is not None else None
    if h is not None and h.useClientProtocol:
        return None
    if port_is_http2:
        return True
    return h is not None and h.h2UpgradePolicy == "UPGRADE"


def apply_connection_pool(c: cluster_pb2.Cluster, pool: ConnectionPoolSettings | None, options: hpo.HttpProtocolOptions) -> None:
    """Thresholds, timeouts and keepalive onto ``c``; HTTP-level limits onto ``options``."""
    c.connect_timeout.CopyFrom(CONNECT_TIMEOUT)
    c.circuit_breakers.CopyFrom(thresholds(pool))
    if pool is None:
        return
    tcp, http = pool.tcp, pool.http
    common = protocol_pb2.HttpProtocolOptions()
    if tcp is not None:
        if tcp.connectTimeout is not None:
            c.connect_timeout.CopyFrom(tcp.connectTimeout.proto())
        if tcp.tcpKeepalive is not None:
            ka = c.upstream_connection_options.tcp_keepalive
            k = tcp.tcpKeepalive
            if k.probes is not None:
                ka.keepalive_probes.value = k.probes
            if k.time is not None:
                ka.keepalive_time.value = max(1, k.time.nanos // 1_000_000_000)
            if k.interval is not None:
                ka.keepalive_interval.value = max(1, k.interval.nanos // 1_000_000_000)
            if not ka.ListFields():
                c.upstream_connection_options.tcp_keepalive.SetInParent()
        if tcp.maxConnectionDuration is not None:
            common.max_connection_duration.CopyFrom(tcp.maxConnectionDuration.proto())
    idle = http.idleTimeout if http is not None else None
    if idle is None and tcp is not None:
        idle = tcp.idleTimeout
    if idle is not None:
        common.idle_timeout.CopyFrom(idle.proto())
    if http is not None and http.maxRequestsPerConnection:
        common.max_requests_per_connection.value = http.maxRequestsPerConnection
    if common.ListFields():
        options.common_http_protocol_options.CopyFrom(common)
    if http is not None and http.maxConcurrentStreams and options.explicit_http_config.HasField("http2_protocol_options"):
        options.explicit_http_config.http2_protocol_options.max_concurrent_streams.value = http.maxConcurrentStreams
