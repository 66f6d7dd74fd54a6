"""LoadBalancerSettings -> the cluster's lb_policy and lb config, and (for consistent
hashing) the route's hash policy.

Istio's default is LEAST_REQUEST. consistentHash picks RING_HASH (or MAGLEV) on the
cluster and puts the hash key (header, cookie, source IP, query parameter) on every
route that sends to it. warmup becomes Envoy's slow start.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.v3 import percent_pb2

from translators.model import ConsistentHash, LoadBalancerSettings

Cluster = cluster_pb2.Cluster

_SIMPLE = {
    "ROUND_ROBIN": Cluster.ROUND_ROBIN,
    "LEAST_REQUEST": Cluster.LEAST_REQUEST,
    "LEAST_CONN": Cluster.LEAST_REQUEST,  # Istio's deprecated alias
    "RANDOM": Cluster.RANDOM,
}
DEFAULT = Cluster.LEAST_REQUEST  # Istio's default since 1.14
RING_SIZE = 1024


def _slow_start(lb: LoadBalancerSettings) -> cluster_pb2.Cluster.SlowStartConfig | None:
    if lb.warmup is not None:
        w = lb.warmup
        return Cluster.SlowStartConfig(
            slow_start_window=w.duration.proto(),
            aggression=base_pb2.RuntimeDouble(default_value=w.aggression if w.aggression is not None else 1.0,
                                              runtime_key="("),
            min_weight_percent=percent_pb2.Percent(value=w.minimumPercent if w.minimumPercent is not None else 10.0),
        )
    if lb.warmupDurationSecs is not None:
        return Cluster.SlowStartConfig(slow_start_window=lb.warmupDurationSecs.proto())
    return None


def apply_load_balancer(c: cluster_pb2.Cluster, lb: LoadBalancerSettings | None) -> None:
    """Set ``c``'s policy. PASSTHROUGH needs an original-destination cluster, which needs
    traffic capture; the translator reports it and keeps the default."""
    c.lb_policy = DEFAULT  # type: ignore[assignment]
    if lb is None:
        return
    if lb.consistentHash is not None:
        ch = lb.consistentHash
        if ch.maglev is not None:
            c.lb_policy = Cluster.MAGLEV  # type: ignore[assignment]
            if ch.maglev.tableSize:
                c.maglev_lb_config.table_size.value = ch.maglev.tableSize
        else:
            c.lb_policy = Cluster.RING_HASH  # type: ignore[assignment]
            # Without ringHash, istiod writes the deprecated minimumRingSize or Envoy's default.
            size = ch.ringHash.minimumRingSize if ch.ringHash is not None else (ch.minimumRingSize or RING_SIZE)
            if size:
                c.ring_hash_lb_config.minimum_ring_size.value = size
        return
    c.lb_policy = _SIMPLE.get(lb.simple or "", DEFAULT)  # type: ignore[assignment]
    slow_start = _slow_start(lb)
    if slow_start is not None:
        if c.lb_policy == Cluster.ROUND_ROBIN:
            c.round_robin_lb_config.slow_start_config.CopyFrom(slow_start)
        elif c.lb_policy == Cluster.LEAST_REQUEST:
            c.least_request_lb_config.slow_start_config.CopyFrom(slow_start)


def hash_policy(ch: ConsistentHash | None) -> rc.RouteAction.HashPolicy | None:
    if ch is None:
        return None
    if ch.httpHeaderName is not None:
        return rc.RouteAction.HashPolicy(header=rc.RouteAction.HashPolicy.Header(header_name=ch.httpHeaderName))
    if ch.httpCookie is not None:
        cookie = rc.RouteAction.HashPolicy.Cookie(name=ch.httpCookie.name, path=ch.httpCookie.path)
        if ch.httpCookie.ttl is not None:
            cookie.ttl.CopyFrom(ch.httpCookie.ttl.proto())
        return rc.RouteAction.HashPolicy(cookie=cookie)
    if ch.useSourceIp:
        return rc.RouteAction.HashPolicy(connection_properties=rc.RouteAction.HashPolicy.ConnectionProperties(source_ip=True))
    if ch.httpQueryParameterName is not None:
        return rc.RouteAction.HashPolicy(
            query_parameter=rc.RouteAction.HashPolicy.QueryParameter(name=ch.httpQueryParameterName))
    return None
