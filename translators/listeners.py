"""Sidecar listeners, without traffic capture (Istio's Sidecar ``captureMode: NONE``).

* outbound: one listener ``<ip>_<port>`` per service port number of the registry, bound
  to the proxy's IP: HTTP routes by Host header through RDS ``"<port>"``; TCP goes to the
  one TCP (or ``auto``) service of the port, when there is exactly one (nothing else can
  tell them apart), through its VirtualService ``tcp`` routes; TLS (``https``/``tls``
  ports) is routed by SNI: the VirtualService ``tls`` routes, then each TLS service by
  its host name. Where both HTTP and something else arrive (``auto`` ports, or services
  of several protocols on one port number) the listener detects HTTP (features/l4.py).
* inbound: one listener ``inbound|<ip>_<targetPort>`` per port of the services that select
  the proxy's own workload, forwarding to the application at its local address; an
  ``auto`` port detects HTTP (which then gets the HTTP policies) from the rest, in
  plaintext by inspection and inside mesh mTLS by the ALPN its clients announce.

A proxy whose pod's traffic iptables captures (node metadata INTERCEPTION_MODE=REDIRECT,
set by the injected bootstrap) gets Istio's virtual listeners 15001/15006 instead, built
from these same listeners (capture.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
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
from translators.features import cors, fault, l4, mtls
from translators.features._proto import to_any
from translators.features.timeout import NO_TIMEOUT
from translators.model import (
    Destination,
    L4MatchAttributes,
    Pod,
    Resource,
    TCPRoute,
    TLSRoute,
    VirtualService,
    WorkloadEntry,
)
from translators.model.names import (
    AUTO,
    BLACKHOLE,
    carries_http,
    inbound_cluster,
    inbound_listener,
    is_http,
    is_tls,
    outbound_cluster,
    outbound_listener,
    resolve_host,
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
#: Ahead of them on a sniffed outbound port: HTTP says so in its upstream mTLS ALPN.
_ANNOUNCE = (l4.announce_http(),)


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
          first: Sequence[hcm.HttpFilter] = (), **route: Message | str) -> listener_pb2.Listener:
    manager = hcm.HttpConnectionManager(stat_prefix=_stat_prefix(direction, port),
                                        http_filters=[*first, *policy.http_filters, *HTTP_FILTERS], **route)  # type: ignore[arg-type]
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
    """What the outbound listener on one port number does (compared by value: a VirtualService
    change that leaves it equal keeps the old object, and the proxies' listeners)."""

    number: int
    http: bool  # an HTTP connection manager, RDS "<port>"
    cluster: str  # where TCP goes (tcp_proxy); "" when only HTTP arrives
    hosts: tuple[str, ...]  # the services on this port, for messages
    tcp_routes: tuple[l4.Route, ...] = ()  # the TCP service's VirtualService tcp routes
    tls: tuple[tuple[str, str], ...] = ()  # TLS services: (SNI host, cluster)
    tls_routes: tuple[l4.Route, ...] = ()  # their VirtualServices' tls routes

    @property
    def source_dependent(self) -> bool:
        """Its listener differs between proxies (sourceLabels / sourceNamespace)."""
        return any(m.source_dependent for r in (*self.tcp_routes, *self.tls_routes) for m in r.matches)


#: The VirtualService for a service host (and its namespace), or None.
VirtualServiceOf = Callable[[str, str], "VirtualService | None"]


def outbound_ports(services: Iterable[MeshService], vs_of: VirtualServiceOf | None = None,
                   ports_of: Mapping[str, tuple[int, ...]] | None = None,
                   ) -> tuple[dict[int, OutboundPort], list[ConfigError]]:
    """What every outbound listener does, by port number; ``vs_of`` gives the tcp/tls
    routes of the TCP and TLS services, whose destinations without a port take the only
    port of their service in ``ports_of`` (default: of ``services``)."""
    by_port: dict[int, list[tuple[MeshService, str]]] = {}
    ports_of = dict(ports_of) if ports_of is not None else {}
    for svc in services:
        ports_of[svc.host] = tuple(p.number for p in svc.shape.ports)
        for p in svc.shape.ports:
            by_port.setdefault(p.number, []).append((svc, p.protocol))
    table: dict[int, OutboundPort] = {}
    errors: list[ConfigError] = []
    for number in sorted(by_port):
        table[number] = outbound_port(number, by_port[number], vs_of, ports_of, errors)
    return table, errors


def outbound_port(number: int, users: Sequence[tuple[MeshService, str]], vs_of: VirtualServiceOf | None,
                  ports_of: Mapping[str, tuple[int, ...]], errors: list[ConfigError]) -> OutboundPort:
    """What the outbound listener of port ``number`` does, for the services on it (in host
    order, with each one's protocol there); problems are added to ``errors``."""
    hosts = tuple(s.host for s, _ in users)
    http = any(carries_http(proto) for _, proto in users)
    tls = [s for s, proto in users if is_tls(proto)]
    tcp = [s for s, proto in users if not carries_http(proto) and not is_tls(proto)]
    auto = [s for s, proto in users if proto == AUTO]
    if len(tcp) == 1:
        # An auto service's detected HTTP still reaches it; its other traffic cannot.
        for s in auto:
            errors.append(_warn(s.resource, f"port {number} has no protocol (auto): HTTP to it is routed, "
                                f"other TCP on the outbound listener goes to {tcp[0].host}, the port's TCP service"))
    elif not tcp:
        tcp = auto  # no declared TCP service: an auto one is the TCP target
    cluster = ""
    tcp_routes: tuple[l4.Route, ...] = ()
    if len(tcp) == 1:
        cluster = outbound_cluster(number, tcp[0].host)
        tcp_routes = _l4_routes(tcp[0], number, vs_of, ports_of, "tcp", errors)
    elif len(tcp) > 1:
        names = ", ".join(x.host for x in tcp)
        for s in tcp:
            if s in auto:  # its HTTP is fine: say what is not, and how to say what it is
                message = (f"port {number} has no protocol (auto) and {len(tcp)} such services use it ({names}): "
                           "HTTP to it is detected and routed, other TCP on the outbound listener goes to "
                           "BlackHoleCluster; name the port (http-..., tcp-...) to say which it is")
            else:
                message = (f"TCP port {number} is used by {len(tcp)} services ({names}); without capture they "
                           "cannot be told apart, TCP on the outbound listener goes to BlackHoleCluster")
            errors.append(_warn(s.resource, message))
        cluster = BLACKHOLE
    elif len(tls) == 1:  # TLS without a known SNI: the TLS service, by its tcp routes (as istiod)
        cluster = outbound_cluster(number, tls[0].host)
        tcp_routes = _l4_routes(tls[0], number, vs_of, ports_of, "tcp", errors)
    elif tls:
        cluster = BLACKHOLE
    tls_routes = tuple(r for s in tls for r in _l4_routes(s, number, vs_of, ports_of, "tls", errors))
    return OutboundPort(number, http, cluster, hosts, tcp_routes=tcp_routes, tls_routes=tls_routes,
                        tls=tuple((s.host, outbound_cluster(number, s.host)) for s in tls))


def _l4_routes(svc: MeshService, number: int, vs_of: VirtualServiceOf | None, ports_of: Mapping[str, tuple[int, ...]],
               kind: str, errors: list[ConfigError]) -> tuple[l4.Route, ...]:
    vs = vs_of(svc.host, svc.shape.namespace) if vs_of is not None else None
    if vs is None:
        return ()
    entries: list[TCPRoute] | list[TLSRoute] = vs.spec.tcp if kind == "tcp" else vs.spec.tls
    ns = vs.metadata.namespace
    if kind == "tcp":
        first = next((i for i, r in enumerate(vs.spec.tcp) if not r.match or any(_matches_all(m) for m in r.match)), None)
        if first is not None:
            errors += [_warn(vs, f"unreachable: spec.tcp[{first}] before it takes every connection", f"spec.tcp[{i}]")
                       for i in range(first + 1, len(entries))]

    def cluster_of(d: Destination) -> str:
        # istiod: the destination's port, else the service's only port, else the listener's
        host = resolve_host(d.host, ns)
        ports = ports_of.get(host, ())
        port = d.port.number if d.port is not None else ports[0] if len(ports) == 1 else number
        return outbound_cluster(port, host, d.subset)

    return l4.resolve(entries, cluster_of)


def _matches_all(m: L4MatchAttributes) -> bool:
    return not (m.destinationSubnets or m.port or m.sourceLabels or m.sourceNamespace
                or any(g != "mesh" for g in m.gateways))


def outbound(ip: str, port: OutboundPort, labels: Mapping[str, str] | None = None,
             namespace: str = "") -> listener_pb2.Listener:
    """The listener of ``port`` for a proxy with ``labels`` in ``namespace`` (they choose the
    tcp/tls route matches with source conditions)."""
    name = outbound_listener(ip, port.number)
    direction = base_pb2.OUTBOUND
    stat = _stat_prefix(direction, port.number)
    if port.http and not port.cluster:
        rds = hcm.Rds(config_source=ADS, route_config_name=str(port.number))
        return _http(name, ip, port.number, direction, rds=rds)
    accept = l4.sidecar_accepts(port.number, labels or {}, namespace)
    chains: list[lc.FilterChain] = []
    filters: list[lc.ListenerFilter] = []
    if port.tls:
        claimed: set[tuple[str, tuple[str, ...]]] = set()
        chains += l4.sni_chains(port.tls_routes, stat, accept, claimed=claimed)
        # Each TLS service by its name, where several share the port (one alone is the
        # catch-all, through its tcp routes if it has some, as under istiod).
        own = [l4.Route((l4.Match(sni_hosts=(host,)),), ((cluster, 1),)) for host, cluster in port.tls
               if cluster != port.cluster]
        chains += l4.sni_chains(own, stat, accept, claimed=claimed)
        if chains:
            filters.append(l4.TLS_INSPECTOR)
    tcp_chains, has_default = l4.tcp_filter_chains(port.tcp_routes, stat, accept)
    if not has_default and port.cluster:
        tcp_chains.append(lc.FilterChain(filters=[l4.tcp_proxy(stat, ((port.cluster, 1),))]))
    listener = listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port.number)),
        traffic_direction=direction,  # type: ignore[arg-type]
        listener_filters=filters, filter_chains=[*chains, *tcp_chains])
    if port.http:  # and TCP or TLS too: detect HTTP
        rds = hcm.Rds(config_source=ADS, route_config_name=str(port.number))
        listener = l4.sniffing(listener, _http(name, ip, port.number, direction, first=_ANNOUNCE, rds=rds))
    return listener


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
    tcp = http = None
    if not port.http:
        tcp = _tcp(name, ip, port.target, direction, cluster, policy)
        mtls.secure_inbound(tcp, mtls_mode, has_identity, False)
    if port.http or port.protocol == AUTO:
        route = rc.Route(name="default", match=rc.RouteMatch(prefix="/"),
                         route=rc.RouteAction(cluster=cluster, timeout=NO_TIMEOUT))
        config = route_pb2.RouteConfiguration(
            name=cluster,
            virtual_hosts=[rc.VirtualHost(name=f"inbound|http|{port.target}", domains=["*"], routes=[route])],
        )
        http = _http(name, ip, port.target, direction, policy, route_config=config)
        mtls.secure_inbound(http, mtls_mode, has_identity, True)
    if tcp is not None and http is not None:  # auto: detect HTTP
        return l4.sniffing(tcp, http)
    listener = tcp or http
    assert listener is not None
    return listener


def selects_workload(svc: MeshService, labels: Mapping[str, str]) -> bool:
    """A Service selector, or a ServiceEntry workloadSelector, that the workload's labels satisfy."""
    selector = svc.shape.selector
    return bool(selector) and all(labels.get(k) == v for k, v in selector)  # type: ignore[union-attr]


def _warn(res: Resource, message: str, field: str = "spec.ports") -> ConfigError:
    return ConfigError(res.source, str(res.key), field, message, "warning")
