"""Clusters: ``outbound|<port>|<subset>|<host>`` per service port (and DestinationRule
subset), ``inbound|<port>||`` per port of the proxy's own workload, BlackHoleCluster and
PassthroughCluster.

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
from translators.model.names import (
    AUTO,
    BLACKHOLE,
    HTTP2_UPSTREAM,
    PASSTHROUGH,
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
    elif discovery == "ORIGINAL_DST":
        _original_dst(c, port)
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
    if discovery == "ORIGINAL_DST":
        c.lb_policy = Cluster.CLUSTER_PROVIDED  # type: ignore[assignment]  # Istio skips the DR's loadBalancer too
    else:
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


#: Where an HTTP request to a ``resolution: NONE`` service names its destination.
ORIGINAL_DST_HEADER = "x-envoy-original-dst-host"


def _original_dst(c: cluster_pb2.Cluster, port: MeshPort) -> None:
    """``resolution: NONE``: Istio's ORIGINAL_DST cluster. Without traffic capture the
    connection's own destination is the proxy's listener, which Envoy does not take as an
    original destination (it was not restored by a listener filter), so an HTTP request
    names its destination in ``x-envoy-original-dst-host: <ip>:<port>``; a request without
    it, and any TCP connection, finds no upstream. The port's targetPort overrides the
    destination port, as Istio's PassthroughTargetPorts do."""
    c.type = Cluster.ORIGINAL_DST
    if carries_http(port.protocol):
        c.original_dst_lb_config.use_http_header = True
    if isinstance(port.target, int):
        c.original_dst_lb_config.upstream_port_override.value = port.target


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
    """Kubernetes services and MESH_INTERNAL ServiceEntries: the ones auto mTLS may apply to
    (Istio infers mTLS disabled for a MESH_EXTERNAL service)."""
    return not svc.shape.mesh_external


def mesh_identities(svc: MeshService) -> tuple[str, ...]:
    """The SANs the destination's certificate may carry (Istio's push.ServiceAccounts): the
    SPIFFE IDs of its workloads' service accounts and a ServiceEntry's subjectAltNames;
    none when unknown (any mesh identity)."""
    shape = svc.shape
    ids = {spiffe_id(shape.namespace, sa) for sa in shape.service_accounts} | set(shape.subject_alt_names)
    return tuple(sorted(ids))


def blackhole() -> cluster_pb2.Cluster:
    return Cluster(
        name=BLACKHOLE,
        type=Cluster.STATIC,
        connect_timeout=CONNECT_TIMEOUT,
        load_assignment=load_assignment(BLACKHOLE, ()),
    )


#: The header PassthroughCluster takes a request's original destination from. Without
#: capture there is no socket original destination, so the request names it: the
#: ``Host``/``:authority`` it was sent with (``127.0.0.5:8080``, an IP and port).
ORIGINAL_DST_HEADER = ":authority"


def passthrough() -> cluster_pb2.Cluster:
    """ALLOW_ANY's cluster (istiod's PassthroughCluster): straight to the original
    destination, here the address the request's authority names."""
    c = Cluster(
        name=PASSTHROUGH,
        type=Cluster.ORIGINAL_DST,
        lb_policy=Cluster.CLUSTER_PROVIDED,
        connect_timeout=CONNECT_TIMEOUT,
    )
    c.original_dst_lb_config.use_http_header = True
    c.original_dst_lb_config.http_header_name = ORIGINAL_DST_HEADER
    options = hpo.HttpProtocolOptions()
    options.use_downstream_protocol_config.SetInParent()
    _attach_protocol_options(c, options)
    return c


def captured_passthrough() -> cluster_pb2.Cluster:
    """PassthroughCluster for a proxy whose traffic is captured: the connection's own
    original destination (restored by the virtual listener), as istiod's."""
    c = passthrough()
    c.ClearField("original_dst_lb_config")
    return c


def inbound_passthrough(name: str, bind: str) -> cluster_pb2.Cluster:
    """Captured inbound traffic to a port no service declares: to where it was going (the
    pod's own address), from ``bind`` (127.0.0.6) so the app sees a local, recognisable
    source, as istiod's InboundPassthroughCluster."""
    c = Cluster(name=name, type=Cluster.ORIGINAL_DST, lb_policy=Cluster.CLUSTER_PROVIDED,
                connect_timeout=CONNECT_TIMEOUT)
    c.upstream_bind_config.source_address.address = bind
    c.upstream_bind_config.source_address.port_value = 0
    options = hpo.HttpProtocolOptions()
    options.use_downstream_protocol_config.SetInParent()
    _attach_protocol_options(c, options)
    return c


def inbound(port: int, app_address: str, protocol: str, app_port: int | None = None) -> cluster_pb2.Cluster:
    """The proxy's own application on ``app_address:port`` (no capture: a plain static host);
    ``app_port`` when the app listens elsewhere (a Sidecar ingress defaultEndpoint)."""
    name = inbound_cluster(port)
    c = Cluster(
        name=name,
        type=Cluster.STATIC,
        connect_timeout=CONNECT_TIMEOUT,
        load_assignment=load_assignment(name, (Endpoint(app_address, app_port or port),)),
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
