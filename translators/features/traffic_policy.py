"""Which parts of a DestinationRule apply to one cluster: Istio's precedence of
port-level settings and subset policies.

For port P and subset S: start from the rule's trafficPolicy; if it has a
portLevelSettings entry for P, that entry replaces the four parts wholesale (omitted
parts fall back to defaults, not to the top level). Then the subset's own policy,
resolved for P the same way, overrides part by part (a port-level entry in the subset
again replaces all four).
"""

from __future__ import annotations

from dataclasses import dataclass

from translators.model import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    LoadBalancerSettings,
    OutlierDetection,
    TrafficPolicy,
)


@dataclass(frozen=True, slots=True)
class ClusterPolicy:
    """The effective policy of one cluster (one port, maybe one subset)."""

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


NO_POLICY = ClusterPolicy()


def _for_port(policy: TrafficPolicy | None, port: int) -> tuple[ClusterPolicy | None, bool]:
    if policy is None:
        return None, False
    for pls in policy.portLevelSettings:
        if pls.port.number == port:
            return ClusterPolicy(pls.loadBalancer, pls.connectionPool, pls.outlierDetection, pls.tls), True
    return ClusterPolicy(policy.loadBalancer, policy.connectionPool, policy.outlierDetection, policy.tls), False


def cluster_policy(top: TrafficPolicy | None, subset: TrafficPolicy | None, port: int) -> ClusterPolicy:
    base, _ = _for_port(top, port)
    over, port_level = _for_port(subset, port)
    if over is None:
        return base or NO_POLICY
    if base is None or port_level:
        return over
    return ClusterPolicy(
        over.load_balancer if over.load_balancer is not None else base.load_balancer,
        over.connection_pool if over.connection_pool is not None else base.connection_pool,
        over.outlier_detection if over.outlier_detection is not None else base.outlier_detection,
        over.tls if over.tls is not None else base.tls,
    )
