"""VHDS: for delta clients, route configurations leave as a small stub plus one resource per
virtual host, so a VirtualService edit sends the virtual hosts it changed, not the port's table.

How Envoy uses it (source/common/router/vhds.cc, route_config_update_receiver_impl.cc,
config/watch_map.cc):

* a RouteConfiguration carrying ``vhds`` (config source ADS; Envoy insists the ADS stream
  is delta) makes Envoy subscribe, on the same stream, to type VirtualHost with the route
  configuration's *name*. Names are matched as namespaces (everything before the last
  ``/``), so that one subscription asks for every ``<route config>/<anything>``: we send
  them all at once, and nothing is fetched when the first request arrives;
* Envoy keeps the virtual hosts it got by their ``name`` and removes them by resource
  name, so each VirtualHost is renamed to its resource name ``<route config>/<first domain>``;
* the stub's own virtual hosts (here the catch-all ``*``, so REGISTRY_ONLY/ALLOW_ANY still
  answer for unknown hosts) are kept beside VHDS's;
* on demand (the on_demand HTTP filter, for a Host no virtual host matches) Envoy subscribes
  to ``<route config>/<Host>``: the answer carries the virtual host with that domain and the
  alias, or an empty resource holding only the alias (``alias_entry``).

Splitting works on the route configuration's encoded bytes (top-level fields only), so it
costs a scan of the bytes, not a parse; virtual hosts whose bytes did not change keep their
``Resource`` (and version, and encoded entries) across changes and across namespaces.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3.config_source_pb2 import V3, AggregatedConfigSource, ConfigSource
from envoy.config.route.v3.route_components_pb2 import VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration, Vhds

from translators.api import ROUTE, VIRTUAL_HOST
from xds_server.xds.cache import ProxyView, Resource, ResourceSet, TypeView, WireResource, length_delimited

#: RouteConfiguration.vhds (field 9): virtual hosts come over the ADS stream.
_VHDS_FIELD = length_delimited(9, Vhds(config_source=ConfigSource(
    ads=AggregatedConfigSource(), resource_api_version=V3)).SerializeToString(deterministic=True))
#: Derived layers not asked for during this many generations are forgotten.
_KEEP_GENERATIONS = 8


def _varint(data: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = data[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(field number, start of the field, start of its value, end) of each top-level field."""
    i, n = 0, len(data)
    while i < n:
        start = i
        key, i = _varint(data, i)
        wire = key & 7
        if wire == 2:
            size, i = _varint(data, i)
            yield key >> 3, start, i, i + size
            i += size
            continue
        if wire == 0:
            _, i = _varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
        yield key >> 3, start, i, i


@dataclass(frozen=True, eq=False)
class RouteSplit:
    """One route configuration, split."""

    stub: Resource
    hosts: tuple[Resource, ...]
    #: the encoded VirtualHost each of ``hosts`` was made from (before renaming): the memo's keys
    sources: tuple[bytes, ...]
    #: every domain of ``hosts`` -> the name of the virtual host resource that has it
    domains: Mapping[str, str]


#: What a piece of a route configuration's bytes splits into: bytes that stay in the stub, or
#: (virtual host resource, its encoded VirtualHost, its domains).
_Piece = tuple[bytes | tuple[Resource, bytes, tuple[str, ...]], ...]


def _split_piece(route: str, data: bytes, memo: dict[tuple[str, bytes], Resource]) -> _Piece:
    out: list[bytes | tuple[Resource, bytes, tuple[str, ...]]] = []
    for number, start, value, end in fields(data):
        if number != 2:  # not a virtual host
            out.append(data[start:end])
            continue
        vh = data[value:end]
        names: list[str] = []
        name_span = (0, 0)
        for f, s, v, e in fields(vh):
            if f == 1:
                name_span = (s, e)
            elif f == 2:
                names.append(vh[v:e].decode())
        if not names or "*" in names:  # the catch-all stays in the route configuration
            out.append(data[start:end])
            continue
        resource_name = f"{route}/{names[0]}"
        res = memo.get((resource_name, vh))
        if res is None:
            body = length_delimited(1, resource_name.encode()) + vh[: name_span[0]] + vh[name_span[1] :]
            res = memo[(resource_name, vh)] = WireResource(resource_name, VIRTUAL_HOST, body, VirtualHost)
        out.append((res, vh, tuple(names)))
    return tuple(out)


def split_route(rc: Resource, memo: dict[tuple[str, bytes], Resource],
                pieces: dict[tuple[str, bytes], _Piece] | None = None) -> RouteSplit:
    """``rc`` as a stub (its catch-all virtual hosts kept, ``vhds`` added) and its other virtual
    hosts as resources; ``memo`` (name, encoded virtual host) -> resource keeps those alike shared.
    A route configuration that translation assembled from pieces (``WireResource.pieces``) is
    split piece by piece, each remembered in ``pieces``: a change scans only the new ones."""
    stub: list[bytes] = []
    hosts: list[Resource] = []
    sources: list[bytes] = []
    domains: dict[str, str] = {}
    chunks: tuple[bytes, ...] = (rc.data,)
    keep = None  # where pieces are remembered: only for a configuration made of them
    if pieces is not None and isinstance(rc, WireResource) and len(rc.pieces) > 1:
        chunks, keep = rc.pieces, pieces
    for chunk in chunks:
        done = keep.get((rc.name, chunk)) if keep is not None else None
        if done is None:
            done = _split_piece(rc.name, chunk, memo)
            if keep is not None:
                keep[(rc.name, chunk)] = done
        for item in done:
            if isinstance(item, bytes):
                stub.append(item)
                continue
            res, vh, names = item
            hosts.append(res)
            sources.append(vh)
            for d in names:
                domains[d] = res.name
    if not hosts:  # nothing for VHDS: the route configuration goes whole, with no subscription to wait for
        return RouteSplit(rc, (), (), {})
    stub.append(_VHDS_FIELD)
    return RouteSplit(WireResource(rc.name, ROUTE, b"".join(stub), RouteConfiguration), tuple(hosts),
                      tuple(sources), domains)


@dataclass(eq=False)
class VirtualHostSet(ResourceSet):
    """The virtual hosts of one route layer, and the splits they came from (whose domains
    answer on-demand requests)."""

    splits: Mapping[str, RouteSplit] = field(default_factory=dict, repr=False)


@dataclass(eq=False)
class _Layer:
    source: ResourceSet  # the route configurations
    stubs: ResourceSet
    hosts: VirtualHostSet
    splits: dict[str, RouteSplit]
    used: int  # generation it was last asked for


class VhdsSplitter:
    """Turns proxies' views into their VHDS form, once per route layer: streams of proxies that
    share route layers share the derived sets (and so the encoded responses)."""

    def __init__(self) -> None:
        self._layers: dict[object, _Layer] = {}
        self._splits: dict[tuple[str, str], RouteSplit] = {}  # (route config, version) -> split
        self._hosts: dict[tuple[str, bytes], Resource] = {}
        self._pieces: dict[tuple[str, bytes], _Piece] = {}  # (route config, piece of it) -> its split
        self._views: dict[tuple[int, ...], tuple[tuple[ResourceSet, ...], TypeView, TypeView]] = {}
        #: id(ProxyView) -> (it, its VHDS form): a stream asks again for every response and ACK
        self._proxy_views: dict[int, tuple[ProxyView, ProxyView]] = {}
        self._generation = -1

    def view(self, pv: ProxyView) -> ProxyView:
        """``pv`` with its route configurations as stubs and their virtual hosts as VirtualHost resources."""
        routes = pv.types.get(ROUTE)
        if routes is None:
            return pv
        if pv.generation > self._generation:  # (a proxy whose view did not change keeps its old one)
            self._generation = pv.generation
            self._views.clear()
            self._proxy_views.clear()
            self._forget(pv.generation)
        done = self._proxy_views.get(id(pv))
        if done is not None and done[0] is pv:
            return done[1]
        key = tuple(id(s) for s in routes.layers)
        hit = self._views.get(key)
        if hit is None:
            derived = [self._layer(s, self._generation) for s in routes.layers]
            hit = (routes.layers, TypeView(ROUTE, tuple(d.stubs for d in derived)),
                   TypeView(VIRTUAL_HOST, tuple(d.hosts for d in derived)))
            self._views[key] = hit
        out = ProxyView(pv.generation, {**pv.types, ROUTE: hit[1], VIRTUAL_HOST: hit[2]})
        self._proxy_views[id(pv)] = (pv, out)
        return out

    def _layer(self, rs: ResourceSet, generation: int) -> _Layer:
        old = self._layers.get(rs.key)
        if old is not None and old.source is rs:
            old.used = generation
            return old
        since = rs.changes_since(old.source) if old is not None else None
        splits: dict[str, RouteSplit] = {}
        for name, res in rs.resources.items():
            if "/" in name:  # Envoy reads the namespace up to the last "/": such a name cannot have VHDS
                splits[name] = RouteSplit(res, (), (), {})
                continue
            prior = old.splits.get(name) if old is not None else None
            if prior is not None and (since is not None and name not in since):
                splits[name] = prior
                continue
            found = self._splits.get((name, res.version))
            if found is None:
                found = self._splits[(name, res.version)] = split_route(res, self._hosts, self._pieces)
            splits[name] = found
        stubs = {n: s.stub for n, s in splits.items()}
        hosts = {h.name: h for s in splits.values() for h in s.hosts}
        candidates: set[str] | None = None
        if since is not None and old is not None:
            candidates = {h.name for n in since for s in (old.splits.get(n), splits.get(n)) if s for h in s.hosts}
        stub_set = ResourceSet.of(("vhds-routes", rs.key), ROUTE, stubs, old.stubs if old else None,
                                  set(since) if since is not None else None)
        if old is not None and not stub_set.changed and stub_set.resources.keys() == old.stubs.resources.keys():
            stub_set = old.stubs  # streams then see the very same set: nothing to diff for RDS
        host_set = VirtualHostSet.of(("vhds", rs.key), VIRTUAL_HOST, hosts, old.hosts if old else None, candidates)
        assert isinstance(host_set, VirtualHostSet)
        host_set.splits = splits
        if old is not None and not host_set.changed and host_set.resources.keys() == old.hosts.resources.keys():
            host_set = old.hosts  # likewise for VHDS (its splits have the same virtual hosts)
        layer = self._layers[rs.key] = _Layer(rs, stub_set, host_set, splits, generation)
        return layer

    def _forget(self, generation: int) -> None:
        """Drop derived layers no proxy asked for lately, and the splits only they used."""
        self._layers = {k: v for k, v in self._layers.items() if v.used > generation - _KEEP_GENERATIONS}
        live = [s for layer in self._layers.values() for s in layer.splits.values()]
        if len(self._splits) > 2 * len(live) + 16:
            ids = {id(s) for s in live}
            self._splits = {k: s for k, s in self._splits.items() if id(s) in ids}
        hosts = sum(len(s.hosts) for s in live)
        if len(self._hosts) > 2 * hosts + 1024:
            self._hosts = {(h.name, src): h for s in live for h, src in zip(s.hosts, s.sources, strict=True)}
        if len(self._pieces) > 2 * hosts + 1024:  # (pieces are virtual hosts, mostly)
            self._pieces = {}


def resolve(view: TypeView, alias: str) -> Resource | None:
    """The virtual host an on-demand name ``<route config>/<Host header>`` stands for."""
    route, _, host = alias.rpartition("/")
    host = host.lower()
    candidates = [host]
    if ":" in host:  # route configs ignore the port in Host
        candidates.append(host.rsplit(":", 1)[0])
    for h in list(candidates):  # Envoy's suffix wildcards: *.example.com
        parts = h.split(".")
        candidates += ["*." + ".".join(parts[i:]) for i in range(1, len(parts))]
    for layer in view.layers:
        found = layer.splits.get(route) if isinstance(layer, VirtualHostSet) else None
        if found is None:
            continue
        for c in candidates:
            name = found.domains.get(c)
            if name is not None:
                return layer.resources.get(name)
    return None


def alias_entry(alias: str, res: Resource | None) -> bytes:
    """DeltaDiscoveryResponse.resources entry answering an on-demand name: the virtual host with
    the alias, or (none has that domain) a resource with no body, named by the alias."""
    aliases = length_delimited(4, alias.encode())
    if res is None:
        body = length_delimited(3, alias.encode()) + aliases
    else:
        body = length_delimited(1, res.version.encode()) + length_delimited(2, res.any_bytes)
        body += length_delimited(3, res.name.encode()) + aliases
    return length_delimited(2, body)
