"""ClusterLoadAssignments: one per EDS cluster, named like it."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2

from translators.features import locality
from translators.features.mtls import endpoint_metadata
from translators.model.names import outbound_cluster
from translators.model.registry import Endpoint, MeshService
from translators.policies import DestinationPolicy


def _lb_endpoint(e: Endpoint) -> ec.LbEndpoint:
    lb = ec.LbEndpoint(
        endpoint=ec.Endpoint(
            address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=e.address, port_value=e.port))
        )
    )
    if e.weight:
        lb.load_balancing_weight.value = e.weight
    metadata = endpoint_metadata(e.labels)  # tlsMode: istio, for auto mTLS
    if metadata is not None:
        lb.metadata.CopyFrom(metadata)
    return lb


def load_assignment(name: str, endpoints: Iterable[Endpoint]) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints grouped by locality (in locality order), as istiod groups them. An empty
    service still gets an (empty) assignment so the cluster finishes warming."""
    groups: dict[str, list[ec.LbEndpoint]] = {}
    for e in endpoints:
        groups.setdefault(e.locality, []).append(_lb_endpoint(e))
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    for loc in sorted(groups):
        g = out.endpoints.add(lb_endpoints=groups[loc])
        if any(e.load_balancing_weight.value for e in g.lb_endpoints):
            # As istiod: a locality weighs what its endpoints weigh (unset counts 1).
            g.load_balancing_weight.value = sum(e.load_balancing_weight.value or 1 for e in g.lb_endpoints)
        if loc:
            g.locality.region, g.locality.zone, g.locality.sub_zone = locality.parse(loc)
    return out


def in_subset(subset_labels: tuple[tuple[str, str], ...], endpoint: Endpoint) -> bool:
    """Endpoints whose labels are a superset of the subset's labels belong to it."""
    if not subset_labels:
        return True
    labels = dict(endpoint.labels)
    return all(labels.get(k) == v for k, v in subset_labels)


def service_assignments(
    svc: MeshService, policy: DestinationPolicy | None
) -> list[tuple[str, endpoint_pb2.ClusterLoadAssignment]]:
    """The assignments of every EDS cluster of ``svc``, its DestinationRule subsets included."""
    if svc.shape.discovery != "EDS":
        return []  # DNS clusters carry their endpoints inline, ORIGINAL_DST ones have none
    out = []
    subsets = policy.subsets if policy else ()
    for port, eps in zip(svc.shape.ports, svc.endpoints, strict=True):
        name = outbound_cluster(port.number, svc.host)
        out.append((name, load_assignment(name, eps)))
        for s in subsets:
            name = outbound_cluster(port.number, svc.host, s.name)
            out.append((name, load_assignment(name, (e for e in eps if in_subset(s.labels, e)))))
    return out
