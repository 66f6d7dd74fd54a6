"""Clusters: ``outbound|<port>|<subset>|<host>`` per service port (and DestinationRule
subset), ``inbound|<port>||`` per port of the proxy's own workload, and BlackHoleCluster."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2, protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from google.protobuf import any_pb2, duration_pb2

from translators.endpoints import in_subset, load_assignment
from translators.names import BLACKHOLE, HTTP2_UPSTREAM, inbound_cluster, outbound_cluster
from translators.policies import DEFAULT_LB, DestinationPolicy, LbPolicy
from translators.registry import Endpoint, MeshPort, MeshService

Cluster = cluster_pb2.Cluster  # (a value here; annotations spell cluster_pb2.Cluster)

CONNECT_TIMEOUT = duration_pb2.Duration(seconds=10)  # Istio's default
ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
)
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _http2_options() -> dict[str, any_pb2.Any]:
    opts = any_pb2.Any()
    opts.Pack(
        hpo.HttpProtocolOptions(
            explicit_http_config=hpo.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
    )
    return {_HTTP_OPTIONS: opts}


_HTTP2 = _http2_options()


def _cluster(name: str, port: MeshPort, svc: MeshService, lb: LbPolicy, endpoints: tuple[Endpoint, ...]) -> cluster_pb2.Cluster:
    c = Cluster(name=name, connect_timeout=CONNECT_TIMEOUT, lb_policy=lb)  # type: ignore[arg-type]
    discovery = svc.shape.discovery
    if discovery == "EDS":
        c.type = Cluster.EDS
        c.eds_cluster_config.eds_config.CopyFrom(ADS)
        c.eds_cluster_config.service_name = name
    else:
        c.type = Cluster.STRICT_DNS if discovery == "STRICT_DNS" else Cluster.LOGICAL_DNS
        c.dns_lookup_family = Cluster.V4_ONLY  # as Istio, without dual-stack
        c.load_assignment.CopyFrom(load_assignment(name, endpoints))
    if port.protocol in HTTP2_UPSTREAM:
        for key, value in _HTTP2.items():
            c.typed_extension_protocol_options[key].CopyFrom(value)
    return c


def service_clusters(svc: MeshService, policy: DestinationPolicy | None) -> list[tuple[str, cluster_pb2.Cluster]]:
    """Every outbound cluster of ``svc``: one per port, plus one per port and subset."""
    out = []
    lb = policy.lb if policy else DEFAULT_LB
    subsets = policy.subsets if policy else ()
    for port, eps in zip(svc.shape.ports, svc.endpoints, strict=True):
        name = outbound_cluster(port.number, svc.host)
        out.append((name, _cluster(name, port, svc, lb, eps)))
        for s in subsets:
            name = outbound_cluster(port.number, svc.host, s.name)
            subset_eps = tuple(e for e in eps if in_subset(s.labels, e))
            out.append((name, _cluster(name, port, svc, s.lb, subset_eps)))
    return out


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
        for key, value in _HTTP2.items():
            c.typed_extension_protocol_options[key].CopyFrom(value)
    return c
