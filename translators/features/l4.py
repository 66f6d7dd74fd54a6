"""L4 traffic: protocol detection, tcp_proxy to weighted destinations, SNI routing.

Pure builders for VirtualService ``tcp`` and ``tls`` routes, shared by sidecar listeners
(translators/listeners.py) and gateway servers (TCP and TLS PASSTHROUGH):

* ``resolve`` turns the routes of a VirtualService into frozen, comparable ``Route``s
  (destinations already cluster names), so a port table can memoize on them;
* ``tcp_filter_chains`` (``tcp_route_chains`` from the models): istiod's
  buildSidecarOutboundTCPFilterChainOpts - the first route whose match applies wins; a
  match with ``destinationSubnets`` becomes a chain matching those prefixes, a match
  without (or a route without matches) the catch-all chain;
* ``sni_chains`` (``sni_filter_chains`` from the models): one chain per TLS match, by
  ``server_names`` (SNI); an SNI already claimed by an earlier route stays with it
  (Envoy refuses duplicate matches);
* ``sidecar_accepts`` / ``gateway_accepts``: which matches apply where;
* ``sniffing``: a TCP listener and an HTTP listener for the same port (both already
  secured by features/mtls.py) as one listener that detects HTTP on the wire, as istiod
  does for ``auto`` ports: each plaintext chain gets an HTTP twin matching the
  application protocols the http_inspector reports. Mesh mTLS chains stay TCP: our
  clients announce no HTTP in their ALPN (istiod's clients send ``istio-http/1.1``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from translators.features._proto import to_any, u32
from translators.model import Destination, L4MatchAttributes, RouteDestination, TCPRoute, TLSRoute

TCP_PROXY = "envoy.filters.network.tcp_proxy"
HTTP_INSPECTOR = lc.ListenerFilter(
    name="envoy.filters.listener.http_inspector", typed_config=to_any(http_inspector_pb2.HttpInspector()))
TLS_INSPECTOR = lc.ListenerFilter(
    name="envoy.filters.listener.tls_inspector", typed_config=to_any(tls_inspector_pb2.TlsInspector()))
#: What the http_inspector reports for HTTP (istiod's plaintext HTTP ALPNs).
SNIFFED_HTTP = ("http/1.0", "http/1.1", "h2c")

ClusterOf = Callable[[Destination], str]
Weighted = tuple[tuple[str, int], ...]  # (cluster, weight)


@dataclass(frozen=True, slots=True)
class Match:
    """An L4MatchAttributes / TLSMatchAttributes, frozen."""

    port: int | None = None
    subnets: tuple[str, ...] = ()
    sni_hosts: tuple[str, ...] = ()
    source_labels: tuple[tuple[str, str], ...] = ()
    source_namespace: str | None = None
    gateways: tuple[str, ...] = ()

    @classmethod
    def of(cls, m: L4MatchAttributes) -> Match:
        return cls(m.port, tuple(m.destinationSubnets), tuple(getattr(m, "sniHosts", ())),
                   tuple(sorted(m.sourceLabels.items())), m.sourceNamespace, tuple(m.gateways))

    @property
    def source_dependent(self) -> bool:
        return bool(self.source_labels) or self.source_namespace is not None


@dataclass(frozen=True, slots=True)
class Route:
    matches: tuple[Match, ...]
    destinations: Weighted


def resolve(routes: Iterable[TCPRoute | TLSRoute], cluster_of: ClusterOf) -> tuple[Route, ...]:
    return tuple(Route(tuple(Match.of(m) for m in r.match), weighted(r.route, cluster_of)) for r in routes)


def weighted(destinations: Sequence[RouteDestination], cluster_of: ClusterOf) -> Weighted:
    """(cluster, weight) of ``destinations``; a lone destination needs no weight, and a zero
    weight is left out (Envoy's weighted clusters need at least 1), as istiod does."""
    if len(destinations) == 1:
        return ((cluster_of(destinations[0].destination), 1),)
    return tuple((cluster_of(d.destination), d.weight) for d in destinations if d.weight > 0)


def sidecar_accepts(port: int, labels: Mapping[str, str], namespace: str) -> Callable[[Match], bool]:
    """Which matches apply to a sidecar's outbound listener on ``port``: the mesh gateway
    only, and only for the proxy the source conditions describe."""
    def accept(m: Match) -> bool:
        return ((m.port is None or m.port == port) and (not m.gateways or "mesh" in m.gateways)
                and all(labels.get(k) == v for k, v in m.source_labels)
                and m.source_namespace in (None, namespace))
    return accept


def gateway_accepts(port: int, names: Collection[str]) -> Callable[[Match], bool]:
    """Which matches apply to a gateway server on ``port``: a match naming gateways must
    name this one (``names``: how it may be written, e.g. ``ns/gw``); one naming none
    follows its VirtualService's ``gateways``, which the caller has checked."""
    def accept(m: Match) -> bool:
        return (m.port is None or m.port == port) and (not m.gateways or any(g in names for g in m.gateways))
    return accept


# ---------------------------------------------------------------- filters


def tcp_proxy(stat_prefix: str, destinations: Weighted) -> lc.Filter:
    """A tcp_proxy to one cluster (its stats under the cluster's name, as istiod names
    them), or split over several by weight (under ``stat_prefix``)."""
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    if len(destinations) == 1:
        proxy.cluster = proxy.stat_prefix = destinations[0][0]
    else:
        proxy.weighted_clusters.clusters.extend(
            tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=c, weight=w) for c, w in destinations)
    return lc.Filter(name=TCP_PROXY, typed_config=to_any(proxy))


def tcp_proxy_filter(stat_prefix: str, destinations: Sequence[RouteDestination], cluster_of: ClusterOf) -> lc.Filter:
    """``tcp_proxy`` for the ``route`` of a TCPRoute/TLSRoute."""
    return tcp_proxy(stat_prefix, weighted(destinations, cluster_of))


def _prefix_ranges(subnets: Iterable[str]) -> list[address_pb2.CidrRange]:
    out = []
    for s in subnets:
        net = ipaddress.ip_network(s, strict=False)
        out.append(address_pb2.CidrRange(address_prefix=str(net.network_address), prefix_len=u32(net.prefixlen)))
    return out


def _chain(route: Route, stat_prefix: str, before: Sequence[lc.Filter], subnets: Iterable[str] = (),
           sni: Sequence[str] = ()) -> lc.FilterChain:
    chain = lc.FilterChain(filters=[*before, tcp_proxy(stat_prefix, route.destinations)])
    if subnets:
        chain.filter_chain_match.prefix_ranges.extend(_prefix_ranges(subnets))
    if sni:
        chain.filter_chain_match.server_names.extend(sni)
        chain.filter_chain_match.transport_protocol = "tls"
    return chain


def tcp_filter_chains(routes: Sequence[Route], stat_prefix: str, accept: Callable[[Match], bool],
                      before: Sequence[lc.Filter] = ()) -> tuple[list[lc.FilterChain], bool]:
    """The chains of VirtualService tcp ``routes`` and whether one of them is the default
    (catch-all) chain; after the default, later routes can never match."""
    chains: list[lc.FilterChain] = []
    seen: set[tuple[str, ...]] = set()
    for route in routes:
        if not route.destinations:
            continue
        if not route.matches:
            chains.append(_chain(route, stat_prefix, before))
            return chains, True
        for m in route.matches:
            if not accept(m):
                continue
            if not m.subnets:
                chains.append(_chain(route, stat_prefix, before))
                return chains, True
            key = tuple(sorted(m.subnets))
            if key not in seen:  # the first route for these subnets wins
                seen.add(key)
                chains.append(_chain(route, stat_prefix, before, m.subnets))
    return chains, False


def tcp_route_chains(tcp_routes: Sequence[TCPRoute], cluster_of: ClusterOf, stat_prefix: str,
                     accept: Callable[[Match], bool] = lambda m: True,
                     before: Sequence[lc.Filter] = ()) -> tuple[list[lc.FilterChain], bool]:
    """``tcp_filter_chains`` of a VirtualService's ``tcp`` routes (for a TCP gateway server)."""
    return tcp_filter_chains(resolve(tcp_routes, cluster_of), stat_prefix, accept, before)


def sni_chains(routes: Sequence[Route], stat_prefix: str, accept: Callable[[Match], bool],
               before: Sequence[lc.Filter] = (), claimed: set[tuple[str, tuple[str, ...]]] | None = None
               ) -> list[lc.FilterChain]:
    """One chain per applying TLS match, by SNI (and destinationSubnets). ``claimed``:
    (SNI, subnets) already routed, updated with what these chains take."""
    claimed = set() if claimed is None else claimed
    chains = []
    for route in routes:
        if not route.destinations:
            continue
        for m in route.matches:
            if not accept(m):
                continue
            subnets = tuple(sorted(m.subnets))
            sni = [h for h in dict.fromkeys(m.sni_hosts) if (h, subnets) not in claimed]
            if not sni:
                continue
            claimed.update((h, subnets) for h in sni)
            chains.append(_chain(route, stat_prefix, before, m.subnets, sni))
    return chains


def sni_filter_chains(tls_routes: Sequence[TLSRoute], cluster_of: ClusterOf, stat_prefix: str,
                      accept: Callable[[Match], bool] = lambda m: True,
                      before: Sequence[lc.Filter] = ()) -> list[lc.FilterChain]:
    """``sni_chains`` of a VirtualService's ``tls`` routes (for a TLS PASSTHROUGH server,
    ``accept`` keeps the matches naming that gateway and port)."""
    return sni_chains(resolve(tls_routes, cluster_of), stat_prefix, accept, before)


# ---------------------------------------------------------------- detection


def sniffing(tcp: listener_pb2.Listener, http: listener_pb2.Listener) -> listener_pb2.Listener:
    """``tcp`` with, ahead of its first plaintext catch-all chain of each name, the twin of
    that name from ``http``, taking what the http_inspector reports as HTTP."""
    twins = {c.name: c for c in http.filter_chains}
    chains = []
    for chain in tcp.filter_chains:
        match = chain.filter_chain_match
        twin = twins.pop(chain.name, None) if not (
            chain.HasField("transport_socket") or match.server_names or match.prefix_ranges
            or match.transport_protocol == "tls") else None
        if twin is not None:
            sniffed = lc.FilterChain()
            sniffed.CopyFrom(twin)
            sniffed.name = f"{twin.name}-http" if twin.name else "http"
            # (Same transport_protocol as the chain it shadows: Envoy narrows the chains
            # level by level and would not come back to a less specific one.)
            sniffed.filter_chain_match.application_protocols.extend(SNIFFED_HTTP)
            chains.append(sniffed)
        chains.append(chain)
    del tcp.filter_chains[:]
    tcp.filter_chains.extend(chains)
    tcp.listener_filters.append(HTTP_INSPECTOR)  # after a tls_inspector: it skips TLS
    # A server-speaks-first protocol sends nothing to inspect: serve it as TCP after the wait.
    tcp.continue_on_listener_filters_timeout = True
    return tcp
