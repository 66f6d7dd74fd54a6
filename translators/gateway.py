"""Gateway proxies: listeners from the Gateways that select them, routes from the
VirtualServices bound to those Gateways (istiod: networking/core/gateway.go,
model.MergeGateways).

* Selection: every Gateway, in any namespace, whose ``selector`` the proxy's labels satisfy
  (istiod's default, PILOT_SCOPE_GATEWAY_TO_NAMESPACE off).
* Merging: servers are grouped by port number, one listener ``<ip>_<port>`` per port. A
  port serves one kind of traffic: plaintext HTTP (HTTP, HTTP2, GRPC) or TLS terminated
  here (HTTPS); a later server of another kind on the same port is dropped, with a warning.
* Plaintext HTTP servers of a port share the route config ``http.<port>``; each HTTPS
  server is a filter chain matching its hosts as SNI, with its certificate over SDS
  (features/server_tls.py) and its own route config ``https.<port>.<portName>.<gw>.<ns>``.
* Routes: each VirtualService bound to the server's gateway (``gateways: [ns/name]``, a
  bare ``name`` meaning the VirtualService's namespace) contributes its routes to the
  hosts where its ``hosts`` and the server's ``hosts`` intersect; a server host
  ``ns/host`` admits only VirtualServices of ``ns`` (``*/`` any, ``./`` the Gateway's).
  Several VirtualServices for one host are concatenated in istiod's order, catch-all routes
  last. The routes are translated by routes.build_routes, as for sidecars.

Layers are memoized per (namespace, labels) of the proxy, so replicas of a gateway share
their route configs; listeners bind the proxy's IP and are per proxy, their protos reused
while unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from translators import api, routes
from translators.clusters import ADS
from translators.errors import ConfigError
from translators.features import delegate, l4, server_tls
from translators.features._proto import to_any
from translators.features.match import is_catch_all
from translators.listeners import HTTP_FILTERS
from translators.model import (
    Destination,
    DestinationRule,
    Gateway,
    ResourceKey,
    Server,
    ServerTLSSettings,
    VirtualService,
)
from translators.model.gateway import HTTP_PROTOCOLS, TLS_PROTOCOLS
from translators.model.names import host_matches, outbound_cluster, outbound_listener, resolve_host
from translators.model.registry import MeshPort

if TYPE_CHECKING:
    from translators.model.world import Proxy
    from translators.translate import Translator

MESH = "mesh"
#: Gateway views and listeners not asked for during this many gateway-touching changes are forgotten.
FORGET_AFTER = 8


# ---------------------------------------------------------------- merging servers


@dataclass(frozen=True)
class BoundServer:
    """One server of one Gateway, its hosts as ``namespace/host`` (istiod's merge form)."""

    gateway: Gateway
    index: int
    server: Server
    protocol: str
    hosts: tuple[tuple[str, str], ...]
    route_name: str  # the RDS name of an HTTP or HTTPS server; "" otherwise

    @property
    def gateway_name(self) -> str:
        return f"{self.gateway.metadata.namespace}/{self.gateway.metadata.name}"

    @property
    def number(self) -> int:
        assert self.server.port is not None
        return self.server.port.number

    def error(self, f: str, message: str, severity: str = "warning") -> ConfigError:
        g = self.gateway
        return ConfigError(g.source, str(g.key), f"spec.servers[{self.index}]{f}", message, severity)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PortPlan:
    number: int
    kind: str  # "http": one chain through RDS http.<port>; "tls": chains by SNI; "tcp": tcp routes
    servers: tuple[BoundServer, ...]


def selects(gateway: Gateway, labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in gateway.spec.selector.items())


def _hosts(gateway: Gateway, server: Server) -> tuple[tuple[str, str], ...]:
    out = []
    for h in server.hosts:
        ns, slash, name = h.partition("/")
        if not slash:
            ns, name = "*", h
        elif ns == ".":
            ns = gateway.metadata.namespace
        out.append((ns, name.lower()))
    return tuple(out)


def _kind(proto: str, tls: ServerTLSSettings | None) -> str | None:
    """What a server needs of its port: plaintext HTTP, TLS (terminated or passed through,
    told apart by SNI) or plain TCP; None for what is not supported."""
    if proto in HTTP_PROTOCOLS:
        return "http"
    if proto in TLS_PROTOCOLS:
        return "tls" if tls is not None and (tls.terminates or tls.mode == "PASSTHROUGH") else None
    return "tcp"  # TCP, and the opaque ones (MONGO, REDIS, MYSQL) istiod also serves with tcp routes


def merge(gateways: Sequence[Gateway]) -> tuple[dict[int, PortPlan], list[ConfigError]]:
    """The listeners' plan: servers by port, what each port serves, and what was dropped."""
    by_port: dict[int, list[BoundServer]] = {}
    kinds: dict[int, str] = {}
    claimed: dict[int, dict[str, BoundServer]] = {}  # TLS port -> SNI name -> terminating server holding it
    errors: list[ConfigError] = []
    for gw in gateways:
        for i, s in enumerate(gw.spec.servers):
            assert s.port is not None  # validated
            proto, tls, number = s.port.proto, s.tls, s.port.number
            bound = BoundServer(gw, i, s, proto, _hosts(gw, s), "")
            for f, message in server_tls.warnings(tls, proto in HTTP_PROTOCOLS) if tls is not None else ():
                errors.append(bound.error(f".tls.{f}", message))
            kind = _kind(proto, tls)
            if kind is None:
                errors.append(bound.error(".tls.mode", f"{proto} with TLS mode {tls.mode if tls else None} is not "
                                          "supported; server ignored"))
                continue
            if kinds.setdefault(number, kind) != kind or (kind == "tcp" and number in by_port):
                first = by_port[number][0]
                errors.append(bound.error(".port", f"port {number} already serves {first.protocol} for "
                                          f"{first.gateway.key} spec.servers[{first.index}]; server ignored"))
                continue
            name = ""
            if kind == "http":
                name = f"http.{number}"
            elif proto == "HTTPS" and tls is not None and tls.terminates:
                name = f"https.{number}.{s.port.name}.{gw.metadata.name}.{gw.metadata.namespace}"
            bound = BoundServer(gw, i, s, proto, bound.hosts, name)
            if kind == "tls" and tls is not None and tls.terminates:
                names = claimed.setdefault(number, {})
                sni = _server_names(bound)
                taken = [n for n in sni or ["*"] if n in names]
                if taken:
                    holder = names[taken[0]]
                    errors.append(bound.error(".hosts", f"host {taken[0]} on port {number} is already served by "
                                              f"{holder.gateway.key} spec.servers[{holder.index}]; server ignored"))
                    continue
                names.update((n, bound) for n in sni or ["*"])
            by_port.setdefault(number, []).append(bound)
    return {n: PortPlan(n, kinds[n], tuple(servers)) for n, servers in sorted(by_port.items())}, errors


def _server_names(s: BoundServer) -> list[str]:
    """The SNI names a TLS server's filter chain matches; none (any name) if a host is ``*``."""
    names = list(dict.fromkeys(h for _, h in s.hosts))
    return [] if "*" in names else names


# ---------------------------------------------------------------- listeners


def _manager(port: int, route_name: str) -> lc.Filter:
    manager = hcm.HttpConnectionManager(
        stat_prefix=f"outbound_0.0.0.0_{port}", http_filters=HTTP_FILTERS,
        rds=hcm.Rds(config_source=ADS, route_config_name=route_name),
        use_remote_address=wrappers_pb2.BoolValue(value=True),  # the edge: the client's address is the peer's
    )
    return lc.Filter(name="envoy.filters.network.http_connection_manager", typed_config=to_any(manager))


#: The l4 routes of the VirtualServices bound to a server: (VirtualService, its tcp or tls routes
#: resolved to clusters); from the generator, which knows the registry.
L4Routes = Callable[[BoundServer, str], list[tuple[VirtualService, tuple[l4.Route, ...]]]]


def accepts(server: BoundServer, vs: VirtualService, labels: Mapping[str, str], namespace: str) -> Callable[[l4.Match], bool]:
    """istiod's l4SingleMatch at a gateway: the match's port is the server's, its gateways
    (if any) name the server's gateway, and its source conditions hold for the proxy."""
    ns = vs.metadata.namespace

    def accept(m: l4.Match) -> bool:
        return ((m.port is None or m.port == server.number)
                and (not m.gateways or server.gateway_name in (g if "/" in g else f"{ns}/{g}" for g in m.gateways))
                and all(labels.get(k) == v for k, v in m.source_labels) and m.source_namespace in (None, namespace))
    return accept


def filter_chains(plan: PortPlan, l4_routes: L4Routes, labels: Mapping[str, str], namespace: str
                  ) -> tuple[list[lc.FilterChain], list[ConfigError]]:
    """The filter chains of one port (istiod's buildGatewayTCPBasedFilterChains)."""
    number = plan.number
    stat = f"outbound_0.0.0.0_{number}"
    if plan.kind == "http":
        return [lc.FilterChain(filters=[_manager(number, f"http.{number}")])], []
    chains: list[lc.FilterChain] = []
    errors: list[ConfigError] = []
    claimed: set[tuple[str, tuple[str, ...]]] = set()  # (SNI, subnets): Envoy refuses a match twice
    for s in plan.servers:
        tls = s.server.tls
        if plan.kind == "tcp" or (tls is not None and tls.terminates and not s.route_name):
            # TCP, or TLS terminated here and then proxied: the first tcp route that applies
            found: list[lc.FilterChain] = []
            for vs, routes_ in l4_routes(s, "tcp"):
                found, _ = l4.tcp_filter_chains(routes_, stat, accepts(s, vs, labels, namespace))
                if found:
                    break
            if not found:
                errors.append(s.error("", f"no VirtualService tcp route for this server (port {number}); "
                                      "its connections are refused"))
                continue
            if tls is not None:  # terminated here: the server's names, its certificate
                names = _server_names(s)
                claimed.update((n, ()) for n in names)
                socket = server_tls.transport_socket(tls, http=False)
                for chain in found:
                    chain.filter_chain_match.server_names.extend(names)
                    chain.transport_socket.CopyFrom(socket)
            chains += found
        elif tls is not None and tls.terminates:
            names = _server_names(s)
            claimed.update((n, ()) for n in names)
            chain = lc.FilterChain(filters=[_manager(number, s.route_name)],
                                   transport_socket=server_tls.transport_socket(tls, http=True))
            chain.filter_chain_match.server_names.extend(names)
            chains.append(chain)
        else:  # PASSTHROUGH: by SNI, from tls routes
            before = len(chains)
            for vs, routes_ in l4_routes(s, "tls"):
                chains += l4.sni_chains(routes_, stat, accepts(s, vs, labels, namespace), claimed=claimed)
            if len(chains) == before:
                errors.append(s.error("", f"no VirtualService tls route for this PASSTHROUGH server (port {number}); "
                                      "its connections are refused"))
    return chains, errors


def listener(ip: str, plan: PortPlan, chains: Sequence[lc.FilterChain]) -> listener_pb2.Listener:
    out = listener_pb2.Listener(
        name=outbound_listener(ip, plan.number),
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=plan.number)),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=chains,
    )
    if any(c.filter_chain_match.server_names for c in chains):
        out.listener_filters.append(l4.TLS_INSPECTOR)
    return out


# ---------------------------------------------------------------- routes


def bound_names(vs: VirtualService) -> list[str]:
    """The gateways ``vs`` binds to, as ``namespace/name`` (``mesh`` left out)."""
    ns = vs.metadata.namespace
    return [g if "/" in g else f"{ns}/{g}" for g in vs.spec.gateways if g != MESH]


def _intersect(server_host: str, vs_host: str) -> str | None:
    """The narrower of two hosts when one covers the other (istiod's host.Names.Intersection)."""
    if host_matches(server_host, vs_host):
        return vs_host
    if host_matches(vs_host, server_host):
        return server_host
    return None


def matching_hosts(server: BoundServer, vs: VirtualService) -> list[str]:
    """The hosts ``vs`` routes on ``server``: its hosts intersected with the server's hosts
    that admit ``vs``'s namespace."""
    ns = vs.metadata.namespace
    allowed = [h for sns, h in server.hosts if sns in ("*", ns)]
    out = []
    for vh in vs.spec.hosts:
        for sh in allowed:
            hit = _intersect(sh, resolve_host(vh, ns).lower())
            if hit is not None:
                out.append(hit)
    return list(dict.fromkeys(out))


#: (routes of one VirtualService for one gateway and port, errors): built once per
#: (VirtualService, gateway, port) per update.
BuildRoutes = Callable[[VirtualService, str, int], tuple[list[tuple[rc.Route, routes.SourceCondition | None]], list[ConfigError]]]


def route_configuration(name: str, servers: Sequence[BoundServer], bound: Callable[[str], Sequence[VirtualService]],
                        build: BuildRoutes, labels: Mapping[str, str], namespace: str) -> route_pb2.RouteConfiguration:
    """The route config ``name`` of ``servers`` (istiod's buildGatewayHTTPRouteConfig)."""
    hosts: dict[str, tuple[list[rc.Route], list[bool]]] = {}  # host -> (routes, [TLS required])
    port = servers[0].number
    for s in servers:
        redirect = s.server.tls is not None and s.server.tls.httpsRedirect
        for vs in bound(s.gateway_name):
            matched = matching_hosts(s, vs)
            if not matched:
                continue
            built, _ = build(vs, s.gateway_name, s.number)
            chosen = [r for r, c in built if c is None or c.holds(labels, namespace)]
            for h in matched:
                found, tls = hosts.setdefault(h, ([], [False]))
                found += chosen
                tls[0] |= redirect
        if redirect:  # the server's own hosts answer 301 even where no VirtualService routes
            for _, h in s.hosts:
                hosts.setdefault(h, ([], [False]))[1][0] = True
    out = route_pb2.RouteConfiguration(name=name)
    out.MergeFrom(routes.CONFIG_DEFAULTS)
    if not hosts:  # istiod: a 404 for everything rather than no route config
        out.virtual_hosts.append(rc.VirtualHost(name=f"blackhole:{port}", domains=["*"]))
        return out
    for h in sorted(hosts, key=_host_order):
        found, tls = hosts[h]
        vh = out.virtual_hosts.add(name=f"{h}:{port}", domains=[h])
        if found:
            vh.retry_policy.CopyFrom(routes.DEFAULT_RETRIES)
            vh.routes.extend(sorted(found, key=lambda r: is_catch_all(r.match)))  # stable: catch-alls last
        if tls[0]:
            vh.require_tls = rc.VirtualHost.ALL
    return out


def _host_order(h: str) -> tuple[bool, str]:
    return (h.startswith("*"), h)  # exact hosts before wildcards; Envoy picks the most specific anyway


# ---------------------------------------------------------------- the generator


@dataclass(eq=False)
class _View:
    epoch: int
    gateways: tuple[Gateway, ...]
    plans: dict[int, PortPlan]
    chains: dict[int, list[lc.FilterChain]]  # per port; the same object while equal
    routes: api.Layer
    errors: tuple[ConfigError, ...]
    listeners: dict[str, tuple[dict[int, list[lc.FilterChain]], api.Layer]] = field(default_factory=dict)  # by IP
    used: dict[str, int] = field(default_factory=dict)  # IP -> the epoch a proxy there last asked


class GatewayGenerator:
    """Gateway listeners and routes for ``role == "gateway"`` proxies; reads the translator's
    stages (registry, DestinationRules, delegates) and forgets its results when a Gateway,
    VirtualService, DestinationRule or service shape changes (``invalidate``)."""

    def __init__(self, translator: Translator) -> None:
        self._t = translator
        self._epoch = 0
        self._by_gateway: dict[str, list[VirtualService]] | None = None
        self._built: dict[tuple[int, str, int], tuple[list, list[ConfigError]]] = {}
        self._views: dict[tuple, _View] = {}

    def invalidate(self) -> None:
        self._epoch += 1
        self._by_gateway = None
        self._built = {}
        # Forget gateways not asked for during a few changes (their proxies went away).
        horizon = self._epoch - FORGET_AFTER
        for key, view in list(self._views.items()):
            view.used = {ip: e for ip, e in view.used.items() if e > horizon}
            view.listeners = {ip: v for ip, v in view.listeners.items() if ip in view.used}
            if not view.used:
                del self._views[key]

    def affected(self, changed: Iterable[ResourceKey], before: Mapping[ResourceKey, object],
                 after: Mapping[ResourceKey, object], shapes: bool) -> bool:
        """Can this change touch a gateway's config? A Gateway, a VirtualService bound to a
        gateway (before or after), or services and DestinationRules while some are bound."""
        bound = self._by_gateway is None or bool(self._by_gateway)
        for key in changed:
            if key.kind == Gateway.KIND or (key.kind == DestinationRule.KIND and bound):
                return True
            if key.kind == VirtualService.KIND and any(
                    isinstance(vs, VirtualService) and (bound_names(vs) or (bound and not vs.spec.hosts))
                    for vs in (before.get(key), after.get(key))):
                return True  # bound to a gateway, or a delegate (which a bound one may use)
        return shapes and bound

    def errors(self) -> list[ConfigError]:
        found = [e for v in self._views.values() if v.epoch == self._epoch for e in v.errors]
        found += [e for _, errs in self._built.values() for e in errs]
        gateways = {f"{g.metadata.namespace}/{g.metadata.name}" for g in self._t._index.all(Gateway.KIND)}
        for vs in self._t._index.all(VirtualService.KIND):
            if isinstance(vs, VirtualService):
                found += unbound(vs, gateways)
        return found

    def for_proxy(self, proxy: Proxy, labels: Mapping[str, str]) -> tuple[api.Layer, api.Layer]:
        """(listeners, routes) of a gateway proxy."""
        key = (proxy.namespace, tuple(sorted(labels.items())))
        view = self._views.get(key)
        if view is None or view.epoch != self._epoch:
            view = self._build_view(proxy.namespace, labels, view)
            self._views[key] = view
        view.used[proxy.ip] = self._epoch
        hit = view.listeners.get(proxy.ip)
        if hit is not None and hit[0] is view.chains:
            return hit[1], view.routes
        old = hit[1] if hit is not None else None
        parts = []
        for number, chains in view.chains.items():
            built = listener(proxy.ip, view.plans[number], chains)
            prev = old.resources.get(built.name) if old is not None else None
            parts.append((built.name, prev if prev is not None and prev == built else built))
        layer = old if old is not None and _same_parts(old, parts) else _layer(("gateway-listeners", proxy.ip, key), parts)
        view.listeners[proxy.ip] = (view.chains, layer)
        return layer, view.routes

    def _build_view(self, namespace: str, labels: Mapping[str, str], old: _View | None) -> _View:
        index = self._t._index
        chosen = tuple(g for g in index.all(Gateway.KIND) if isinstance(g, Gateway) and selects(g, labels))
        plans, errors = merge(chosen)
        chains: dict[int, list[lc.FilterChain]] = {}
        for number, plan in plans.items():
            found, problems = filter_chains(plan, self._l4_routes_for(namespace), labels, namespace)
            errors += problems
            if found:  # Envoy refuses a listener without chains: a TCP server nothing routes has none
                chains[number] = found
        if old is not None and old.chains == chains:
            chains = old.chains  # the same listeners
        by_route: dict[str, list[BoundServer]] = {}
        for plan in plans.values():
            for s in plan.servers:
                if s.route_name:
                    by_route.setdefault(s.route_name, []).append(s)

        def bound(gateway_name: str) -> list[VirtualService]:
            return self._bound(gateway_name, namespace)

        parts = []
        for name, servers in by_route.items():
            config = route_configuration(name, servers, bound, self._routes_of, labels, namespace)
            prev = old.routes.resources.get(name) if old is not None else None
            parts.append((name, prev if prev is not None and prev == config else config))
        layer = old.routes if old is not None and _same_parts(old.routes, parts) else \
            _layer(("gateway-routes", namespace, tuple(sorted(labels.items()))), parts)
        if old is None:
            return _View(self._epoch, chosen, plans, chains, layer, tuple(errors))
        return _View(self._epoch, chosen, plans, chains, layer, tuple(errors), old.listeners, old.used)

    def _l4_routes_for(self, namespace: str) -> L4Routes:
        def l4_routes(server: BoundServer, kind: str) -> list[tuple[VirtualService, tuple[l4.Route, ...]]]:
            out = []
            for vs in self._bound(server.gateway_name, namespace):
                entries = vs.spec.tcp if kind == "tcp" else vs.spec.tls
                if entries and matching_hosts(server, vs):
                    out.append((vs, l4.resolve(entries, self._cluster_of(vs, server.number))))
            return out
        return l4_routes

    def _cluster_of(self, vs: VirtualService, port: int) -> Callable[[Destination], str]:
        services = self._t._registry.services

        def cluster_of(d: Destination) -> str:
            # istiod: the destination's port, else the service's only port, else the server's
            host = resolve_host(d.host, vs.metadata.namespace)
            svc = services.get(host)
            ports = svc.shape.ports if svc is not None else ()
            number = d.port.number if d.port is not None else ports[0].number if len(ports) == 1 else port
            return outbound_cluster(number, host, d.subset)
        return cluster_of

    def _bound(self, gateway_name: str, namespace: str) -> list[VirtualService]:
        """The VirtualServices bound to ``gateway_name`` that a proxy in ``namespace`` sees,
        in istiod's order: its own namespace's private ones, those exported to it, then public."""
        if self._by_gateway is None:
            by: dict[str, list[VirtualService]] = {}
            for vs in self._t._index.all(VirtualService.KIND):
                if isinstance(vs, VirtualService) and vs.spec.hosts:
                    for g in dict.fromkeys(bound_names(vs)):
                        by.setdefault(g, []).append(vs)
            self._by_gateway = by
        found = self._by_gateway.get(gateway_name, [])

        def rank(vs: VirtualService) -> int | None:
            export = vs.spec.exportTo
            if not export or "*" in export:
                return 2
            own = vs.metadata.namespace
            if namespace == own and "." in export:
                return 0
            return 1 if namespace in export else None

        ranked = [(r, vs) for vs in found if (r := rank(vs)) is not None]
        return [vs for _, vs in sorted(ranked, key=lambda p: p[0])]

    def _routes_of(self, vs: VirtualService, gateway_name: str, port: int):  # type: ignore[no-untyped-def]
        """The routes of ``vs`` at ``gateway_name`` on ``port``, once per update."""
        key = (id(vs), gateway_name, port)
        hit = self._built.get(key)
        if hit is not None:
            return hit
        t = self._t
        problems: list[ConfigError] = []
        entries = None
        if any(h.delegate is not None for h in vs.spec.http):
            flat, found, _ = delegate.flatten(vs, t._delegate)
            entries = [routes.OwnedRoute(v, f, h) for v, f, h in flat]
            problems = [ConfigError(vs.source, str(vs.key), f, m, "warning") for f, m in found]
        dests: routes.Destinations = {}
        for h in routes.destination_hosts(vs, entries):
            dests[h] = t._destination(h)
        errors = list(problems)
        built = routes.build_routes(entries if entries is not None else routes.owned_routes(vs),
                                    MeshPort(port, "", "HTTP"), dests, errors, context=gateway_name)
        routes.factor_retries([r for r, _ in built])
        self._built[key] = (built, errors)
        return built, errors


def unbound(vs: VirtualService, gateways: set[str]) -> list[ConfigError]:
    """A VirtualService naming a gateway that does not exist (a typo routes nothing)."""
    out = []
    for i, g in enumerate(vs.spec.gateways):
        if g == MESH:
            continue
        name = g if "/" in g else f"{vs.metadata.namespace}/{g}"
        if name not in gateways:
            out.append(ConfigError(vs.source, str(vs.key), f"spec.gateways[{i}]", f"gateway {name} does not exist",
                                   "warning"))
    return out


def _layer(key: object, parts: Sequence[tuple[str, Message]]) -> api.Layer:
    return api.Layer(key, MappingProxyType(dict(parts)))


def _same_parts(layer: api.Layer, parts: Sequence[tuple[str, Message]]) -> bool:
    return len(layer.resources) == len(parts) and all(layer.resources.get(n) is m for n, m in parts)
