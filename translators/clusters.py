"""Clusters: ``outbound|<port>|<subset>|<host>`` per service port (and DestinationRule
subset), ``inbound|<port>||`` per port of the proxy's own workload, and BlackHoleCluster.

Each outbound cluster gets the DestinationRule policy effective for its port and subset
(features.traffic_policy), applied by one feature module per part.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2, protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo

from translators.endpoints import in_subset, load_assignment
from translators.features._proto import to_any
from translators.features.connection_pool import (
    CONNECT_TIMEOUT,
    HTTP_OPTIONS,
    apply_connection_pool,
    http2_upstream,
)
from translators.features.load_balancer import apply_load_balancer
from translators.features.mtls import apply_mesh_tls, sni, spiffe_id
from translators.features.outlier import apply_outlier_detection
from translators.features.tls import apply_tls
from translators.features.traffic_policy import NO_POLICY, ClusterPolicy
from translators.model import ServiceEntry
from translators.model.names import (
    AUTO,
    BLACKHOLE,
    HTTP2_UPSTREAM,
    carries_http,
    inbound_cluster,
    outbound_cluster,
)
from translators.model.registry import Endpoint, MeshPort, MeshService
from translators.policies import DestinationPolicy

Cluster = cluster_pb2.Cluster  # (a value here; annotations spell cluster_pb2.Cluster)

ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
)


def _attach_protocol_options(c: cluster_pb2.Cluster, options: hpo.HttpProtocolOptions) -> None:
    if not options.ListFields():
        return  # nothing to say: Envoy's default, HTTP/1.1
    if options.WhichOneof("upstream_protocol_options") is None:  # Envoy requires one
        options.explicit_http_config.http_protocol_options.SetInParent()
    c.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(to_any(options))


def _cluster(name: str, port: MeshPort, svc: MeshService, policy: ClusterPolicy, endpoints: tuple[Endpoint, ...],
             subset: str = "", auto_mtls: bool = False) -> cluster_pb2.Cluster:
    c = Cluster(name=name)
    discovery = svc.shape.discovery
    if discovery == "EDS":
        c.type = Cluster.EDS
        c.eds_cluster_config.eds_config.CopyFrom(ADS)
        c.eds_cluster_config.service_name = name
    else:
        c.type = Cluster.STRICT_DNS if discovery == "STRICT_DNS" else Cluster.LOGICAL_DNS
        c.dns_lookup_family = Cluster.V4_ONLY  # as Istio, without dual-stack
        c.load_assignment.CopyFrom(load_assignment(name, endpoints))
    options = hpo.HttpProtocolOptions()
    if carries_http(port.protocol):  # (auto: HTTP/2 upstream when it came downstream)
        h2 = http2_upstream(policy.connection_pool, port.protocol in HTTP2_UPSTREAM)
        if h2 is None:
            options.use_downstream_protocol_config.SetInParent()
        elif h2:
            options.explicit_http_config.http2_protocol_options.SetInParent()
    apply_connection_pool(c, policy.connection_pool, options)
    apply_outlier_detection(c, policy.outlier_detection)
    apply_load_balancer(c, policy.load_balancer)
    setting = policy.load_balancer.localityLbSetting if policy.load_balancer is not None else None
    if setting is not None and setting.distribute and setting.enabled is not False:
        c.common_lb_config.locality_weighted_lb_config.SetInParent()  # weights come with the endpoints
    apply_tls(c, policy.tls, options)
    tls = policy.tls
    apply_mesh_tls(c, tls.mode if tls is not None else None, auto=auto_mtls,
                   server_name=(tls.sni if tls is not None and tls.sni else sni(port.number, svc.host, subset)),
                   sans=mesh_identities(svc), explicit_sans=tls.subjectAltNames if tls is not None else (),
                   http2=options.explicit_http_config.HasField("http2_protocol_options"))
    if carries_http(port.protocol):
        _attach_protocol_options(c, options)
    return c


def service_clusters(
    svc: MeshService, policy: DestinationPolicy | None, auto_mtls: bool = False
) -> list[tuple[str, cluster_pb2.Cluster]]:
    """Every outbound cluster of ``svc``: one per port, plus one per port and subset.
    ``auto_mtls``: originate mTLS to its endpoints that have a sidecar (features.mtls)."""
    out = []
    subsets = policy.subsets if policy else ()
    for port, eps in zip(svc.shape.ports, svc.endpoints, strict=True):
        name = outbound_cluster(port.number, svc.host)
        out.append((name, _cluster(name, port, svc, policy.cluster_policy(port.number) if policy else NO_POLICY, eps,
                                   auto_mtls=auto_mtls)))
        for s in subsets:
            name = outbound_cluster(port.number, svc.host, s.name)
            subset_eps = tuple(e for e in eps if in_subset(s.labels, e))
            out.append((name, _cluster(name, port, svc, policy.cluster_policy(port.number, s.name), subset_eps,  # type: ignore[union-attr]
                                       s.name, auto_mtls)))
    return out


def in_mesh(svc: MeshService) -> bool:
    """Kubernetes services and MESH_INTERNAL ServiceEntries: the ones auto mTLS may apply to."""
    res = svc.resource
    return svc.shape.kubernetes or (isinstance(res, ServiceEntry) and res.spec.location == "MESH_INTERNAL")


def mesh_identities(svc: MeshService) -> tuple[str, ...]:
    """The SPIFFE IDs the destination's certificate may carry: those of its workloads'
    service accounts when the registry knows them, else none (any mesh identity)."""
    return tuple(spiffe_id(svc.shape.namespace, sa) for sa in svc.shape.service_accounts)


def blackhole() -> cluster_pb2.Cluster:
    return Cluster(
        name=BLACKHOLE,
        type=Cluster.STATIC,
        connect_timeout=CONNECT_TIMEOUT,
        load_assignment=load_assignment(BLACKHOLE, ()),
    )


def inbound(port: int, app_address: str, protocol: str) -> cluster_pb2.Cluster:
    """The proxy's own application on ``app_address:port`` (no capture: a plain static host)."""
    name = inbound_cluster(port)
    c = Cluster(
        name=name,
        type=Cluster.STATIC,
        connect_timeout=CONNECT_TIMEOUT,
        load_assignment=load_assignment(name, (Endpoint(app_address, port),)),
    )
    if protocol in HTTP2_UPSTREAM:
        options = hpo.HttpProtocolOptions()
        options.explicit_http_config.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
        c.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(to_any(options))
    elif protocol == AUTO:  # detected HTTP goes on as it came (HTTP/1.1 or h2c)
        options = hpo.HttpProtocolOptions()
        options.use_downstream_protocol_config.SetInParent()
        c.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(to_any(options))
    return c
