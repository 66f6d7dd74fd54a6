"""Sidecar listeners, without traffic capture (Istio's Sidecar ``captureMode: NONE``).

* outbound: one listener ``<ip>_<port>`` per service port number of the registry, bound
  to the proxy's IP: HTTP ports route by Host header through RDS ``"<port>"``; a TCP port
  goes to its service when exactly one service uses it (nothing else can tell them apart).
* inbound: one listener ``inbound|<ip>_<targetPort>`` per port of the services that select
  the proxy's own workload, forwarding to the application at its local address.

The virtual listeners 15001/15006 of Istio need capture and are not generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf.message import Message

from translators.clusters import ADS
from translators.errors import ConfigError
from translators.features import cors, fault, mtls
from translators.features._proto import to_any
from translators.features.timeout import NO_TIMEOUT
from translators.model import Pod, Resource, WorkloadEntry
from translators.model.names import (
    BLACKHOLE,
    inbound_cluster,
    inbound_listener,
    is_http,
    outbound_cluster,
    outbound_listener,
)
from translators.model.registry import MeshService
from translators.security import NO_POLICY, InboundPolicy

APP_ADDRESS_ANNOTATION = "sidecar.meshpilot.io/app-address"


#: The HTTP filters of every HTTP listener, in Istio's order: fault injection and CORS
#: stay inert until a route's typed_per_filter_config turns them on. Fault comes first, so
#: an injected abort or delay hits CORS preflights too, as it does under istiod.
HTTP_FILTERS = (
    hcm.HttpFilter(name=fault.FILTER, typed_config=to_any(fault.filter_config())),
    hcm.HttpFilter(name=cors.FILTER, typed_config=to_any(cors.filter_config())),
    hcm.HttpFilter(name="envoy.filters.http.router", typed_config=to_any(router_pb2.Router())),
)


def _listener(name: str, ip: str, port: int, direction: int, network_filter: Message, filter_name: str,
              before: Sequence[lc.Filter] = ()) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port)),
        traffic_direction=direction,  # type: ignore[arg-type]
        filter_chains=[lc.FilterChain(filters=[*before, lc.Filter(name=filter_name, typed_config=to_any(network_filter))])],
    )


def _stat_prefix(direction: int, port: int) -> str:
    # Istio's names (its listeners bind 0.0.0.0), so dashboards built for Istio's stats work.
    return f"{'inbound' if direction == base_pb2.INBOUND else 'outbound'}_0.0.0.0_{port}"


def _http(name: str, ip: str, port: int, direction: int, policy: InboundPolicy = NO_POLICY,
          **route: Message | str) -> listener_pb2.Listener:
    manager = hcm.HttpConnectionManager(stat_prefix=_stat_prefix(direction, port),
                                        http_filters=[*policy.http_filters, *HTTP_FILTERS], **route)  # type: ignore[arg-type]
    if policy.http_filters:
        manager.normalize_path.value = True  # policies match the path the app will see (istiod's default)
    if direction == base_pb2.INBOUND:
        # The app learns the mTLS caller's SPIFFE ID; what a caller sends itself is dropped.
        manager.forward_client_cert_details = hcm.HttpConnectionManager.SANITIZE_SET
        manager.set_current_client_cert_details.uri = True
    return _listener(name, ip, port, direction, manager, "envoy.filters.network.http_connection_manager")


def _tcp(name: str, ip: str, port: int, direction: int, cluster: str, policy: InboundPolicy = NO_POLICY) -> listener_pb2.Listener:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
    return _listener(name, ip, port, direction, proxy, "envoy.filters.network.tcp_proxy", policy.network_filters)


# ---------------------------------------------------------------- outbound


@dataclass(frozen=True, slots=True)
class OutboundPort:
    number: int
    http: bool
    cluster: str  # the tcp_proxy target; "" for HTTP
    hosts: tuple[str, ...]  # the services on this port, for messages


def outbound_ports(services: Iterable[MeshService]) -> tuple[dict[int, OutboundPort], list[ConfigError]]:
    """What every outbound listener does, by port number."""
    by_port: dict[int, list[tuple[MeshService, bool]]] = {}
    for svc in services:
        for p in svc.shape.ports:
            by_port.setdefault(p.number, []).append((svc, is_http(p.protocol)))
    table: dict[int, OutboundPort] = {}
    errors: list[ConfigError] = []
    for number in sorted(by_port):
        users = by_port[number]
        hosts = tuple(s.host for s, _ in users)
        tcp = [s for s, http in users if not http]
        if len(tcp) < len(users):
            # HTTP routes by Host header; a TCP service sharing the port cannot be told apart.
            for s in tcp:
                errors.append(_warn(s.resource, f"TCP port {number} is also used by HTTP services; "
                                    "the outbound listener routes HTTP only and this service is unreachable on it"))
            table[number] = OutboundPort(number, True, "", hosts)
        elif len(tcp) == 1:
            table[number] = OutboundPort(number, False, outbound_cluster(number, tcp[0].host), hosts)
        else:
            for s in tcp:
                errors.append(_warn(s.resource, f"TCP port {number} is used by {len(tcp)} services "
                                    f"({', '.join(hosts)}); without capture they cannot be told apart, "
                                    "the outbound listener goes to BlackHoleCluster"))
            table[number] = OutboundPort(number, False, BLACKHOLE, hosts)
    return table, errors


def outbound(ip: str, port: OutboundPort) -> listener_pb2.Listener:
    name = outbound_listener(ip, port.number)
    direction = base_pb2.OUTBOUND
    if port.http:
        rds = hcm.Rds(config_source=ADS, route_config_name=str(port.number))
        return _http(name, ip, port.number, direction, rds=rds)
    return _tcp(name, ip, port.number, direction, port.cluster)


# ---------------------------------------------------------------- inbound


@dataclass(frozen=True, slots=True)
class InboundPort:
    target: int
    http: bool
    protocol: str
    service: MeshService


def workload_labels(workload: Pod | WorkloadEntry | None, proxy_labels: Mapping[str, str]) -> dict[str, str]:
    labels = dict(workload.spec.labels if isinstance(workload, WorkloadEntry) else workload.metadata.labels) if workload else {}
    labels.update(proxy_labels)  # what the proxy says about itself wins
    return labels


def app_address(workload: Pod | WorkloadEntry | None) -> str:
    if workload is None:
        return "127.0.0.1"
    return workload.metadata.annotations.get(APP_ADDRESS_ANNOTATION, "127.0.0.1")


def inbound_ports(
    services: Iterable[MeshService], workload: Pod | WorkloadEntry | None
) -> tuple[list[InboundPort], list[ConfigError]]:
    """The ports the selecting ``services`` expose on this workload, by target port."""
    ports: dict[int, InboundPort] = {}
    errors: list[ConfigError] = []
    for svc in services:
        for p in svc.shape.ports:
            target = _target(svc, p.name, p.number, p.target, workload)
            if target is None:
                errors.append(_warn(svc.resource, f"targetPort {p.target!r} of port {p.number} is not a port of "
                                    "this proxy's workload; no inbound listener for it"))
                continue
            first = ports.get(target)
            if first is None:
                ports[target] = InboundPort(target, is_http(p.protocol), p.protocol, svc)
            elif first.http != is_http(p.protocol):
                errors.append(_warn(svc.resource, f"port {target} is {p.protocol} here but {first.protocol} "
                                    f"for {first.service.host}; the inbound listener uses {first.protocol}"))
    return [ports[t] for t in sorted(ports)], errors


def _target(svc: MeshService, name: str, number: int, target: int | str | None, workload: Pod | WorkloadEntry | None) -> int | None:
    if isinstance(workload, WorkloadEntry) and workload.spec.ports.get(name):
        return workload.spec.ports[name]
    if target is None or target == "":
        return number
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    if isinstance(workload, Pod):
        for c in workload.spec.containers:
            for cp in c.ports:
                if cp.name == target:
                    return cp.containerPort
    return None


def inbound(ip: str, port: InboundPort, policy: InboundPolicy = NO_POLICY, mtls_mode: str = "DISABLE",
            has_identity: bool = False) -> listener_pb2.Listener:
    """``policy``: the workload's AuthorizationPolicies and RequestAuthentications (security.py);
    ``mtls_mode``: its PeerAuthentication mode on this port (peer_auth.py), which needs
    ``has_identity`` (a certificate over SDS) to terminate mTLS (features/mtls.py)."""
    name = inbound_listener(ip, port.target)
    cluster = inbound_cluster(port.target)
    direction = base_pb2.INBOUND
    if not port.http:
        listener = _tcp(name, ip, port.target, direction, cluster, policy)
    else:
        route = rc.Route(name="default", match=rc.RouteMatch(prefix="/"),
                         route=rc.RouteAction(cluster=cluster, timeout=NO_TIMEOUT))
        config = route_pb2.RouteConfiguration(
            name=cluster,
            virtual_hosts=[rc.VirtualHost(name=f"inbound|http|{port.target}", domains=["*"], routes=[route])],
        )
        listener = _http(name, ip, port.target, direction, policy, route_config=config)
    mtls.secure_inbound(listener, mtls_mode, has_identity, port.http)
    return listener


def selects_workload(svc: MeshService, labels: Mapping[str, str]) -> bool:
    """A Service selector, or a ServiceEntry workloadSelector, that the workload's labels satisfy."""
    selector = svc.shape.selector
    return bool(selector) and all(labels.get(k) == v for k, v in selector)  # type: ignore[union-attr]


def _warn(res: Resource, message: str, field: str = "spec.ports") -> ConfigError:
    return ConfigError(res.source, str(res.key), field, message, "warning")
