"""Sidecar routes: one RouteConfiguration per HTTP service port, named ``"<port>"``.

Each service host on that port is a virtual host ``<host>:<port>``. Its routes come from
the VirtualService for the host, or are one default route to ``outbound|<port>||<host>``.
Virtual hosts only differ between namespaces by their short domains (``reviews`` answers
only in ``reviews``'s own namespace), so the routes are built once per host and port and
the per-namespace work is picking the right VirtualHost variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from translators.errors import ConfigError
from translators.model import HTTPMatchRequest, HTTPRoute, StringMatch, VirtualService
from translators.names import outbound_cluster, resolve_host
from translators.policies import DestinationPolicy
from translators.registry import MeshPort, ServiceShape

#: Istio disables the route timeout by default.
NO_TIMEOUT = duration_pb2.Duration(seconds=0)

#: host -> (its service shape or None, its DestinationPolicy or None)
Destinations = dict[str, tuple[ServiceShape | None, DestinationPolicy | None]]


def destination_hosts(vs: VirtualService) -> list[str]:
    """Every destination host of ``vs``, resolved against its namespace, in order, once."""
    ns = vs.metadata.namespace
    return list(dict.fromkeys(resolve_host(d.destination.host, ns) for h in vs.spec.http for d in h.route))


@dataclass(eq=False)
class VirtualHostPart:
    """The routes of one host on one port, and the VirtualHost protos made from them."""

    shape: ServiceShape
    port: MeshPort
    routes: tuple[rc.Route, ...]
    errors: tuple[ConfigError, ...]
    _variants: dict[bool, rc.VirtualHost] = field(default_factory=dict)
    _encoded: dict[bool, bytes] = field(default_factory=dict)

    def virtual_host(self, local: bool) -> rc.VirtualHost:
        """``local``: the proxy is in the service's namespace, so the bare name is a domain too."""
        local = local and self.shape.kubernetes
        vh = self._variants.get(local)
        if vh is None:
            vh = rc.VirtualHost(name=f"{self.shape.host}:{self.port.number}", domains=self.domains(local), routes=self.routes)
            self._variants[local] = vh
        return vh

    def encoded(self, local: bool) -> bytes:
        """The VirtualHost as it sits serialized inside a RouteConfiguration (field and length
        included): assembling a RouteConfiguration from these is one parse, not a deep copy."""
        local = local and self.shape.kubernetes
        data = self._encoded.get(local)
        if data is None:
            data = route_pb2.RouteConfiguration(virtual_hosts=[self.virtual_host(local)]).SerializeToString(deterministic=True)
            self._encoded[local] = data
        return data

    def domains(self, local: bool) -> list[str]:
        s = self.shape
        names = [s.host]
        if s.kubernetes:
            names += [f"{s.name}.{s.namespace}.svc", f"{s.name}.{s.namespace}"]
            if local:
                names.append(s.name)
        return [d for n in names for d in (n, f"{n}:{self.port.number}")]


def virtual_host_part(
    shape: ServiceShape, port: MeshPort, vs: VirtualService | None, dests: Destinations
) -> VirtualHostPart:
    if vs is None or not vs.spec.http:
        default = rc.Route(
            name="default",
            match=rc.RouteMatch(prefix="/"),
            route=rc.RouteAction(cluster=outbound_cluster(port.number, shape.host), timeout=NO_TIMEOUT),
        )
        return VirtualHostPart(shape, port, (default,), ())
    errors: list[ConfigError] = []
    routes: list[rc.Route] = []
    for i, http in enumerate(vs.spec.http):
        routes.extend(_http_routes(vs, i, http, port, dests, errors))
    return VirtualHostPart(shape, port, tuple(routes), tuple(errors))


def _http_routes(
    vs: VirtualService, i: int, http: HTTPRoute, port: MeshPort, dests: Destinations, errors: list[ConfigError]
) -> list[rc.Route]:
    def error(f: str, message: str, severity: str = "error") -> None:
        errors.append(ConfigError(vs.source, str(vs.key), f"spec.http[{i}]{f}", message, severity))  # type: ignore[arg-type]

    if not http.route:
        error("", "only 'route' destinations are supported yet; this entry is skipped", "warning")
        return []
    action = _action(vs, i, http, port, dests, error)
    base_name = http.name or f"{vs.metadata.namespace}/{vs.metadata.name}.http[{i}]"
    if not http.match:
        return [rc.Route(name=base_name, match=rc.RouteMatch(prefix="/"), route=action)]
    out = []
    for j, m in enumerate(http.match):
        if m.port is not None and m.port != port.number:
            continue  # the match is for another port of the host
        if m.sourceLabels or m.sourceNamespace:
            # Per-source matches cannot be expressed in routes shared by a namespace;
            # dropping the match (rather than the condition) keeps the route from widening.
            error(f".match[{j}]", "sourceLabels/sourceNamespace are not supported yet; this match is skipped", "warning")
            continue
        name = f"{base_name}.{m.name}" if m.name else base_name
        out.append(rc.Route(name=name, match=_match(m), route=action))
    return out


def _action(vs: VirtualService, i: int, http: HTTPRoute, port: MeshPort, dests: Destinations, error) -> rc.RouteAction:  # type: ignore[no-untyped-def]
    weighted: list[tuple[str, int]] = []
    for j, rd in enumerate(http.route):
        if len(http.route) > 1 and not rd.weight:
            continue  # Istio drops weight-0 destinations
        weighted.append((_cluster_name(vs, rd.destination, port, dests, f".route[{j}].destination", error), rd.weight or 0))
    if len(weighted) == 1:
        return rc.RouteAction(cluster=weighted[0][0], timeout=NO_TIMEOUT)
    clusters = [rc.WeightedCluster.ClusterWeight(name=n, weight=wrappers_pb2.UInt32Value(value=w)) for n, w in weighted]
    return rc.RouteAction(weighted_clusters=rc.WeightedCluster(clusters=clusters), timeout=NO_TIMEOUT)


def _cluster_name(vs: VirtualService, d, listener: MeshPort, dests: Destinations, f: str, error) -> str:  # type: ignore[no-untyped-def]
    """The cluster a destination names. A destination we cannot resolve still gets its
    (non-existent) cluster name, as Istio does: Envoy then answers 503 NC, which makes the
    mistake visible, and the ConfigError says why."""
    host = resolve_host(d.host, vs.metadata.namespace)
    shape, policy = dests.get(host, (None, None))
    number = d.port.number if d.port else None
    if shape is None:
        error(f"{f}.host", f"host {host} is not in the service registry")
    elif number is not None:
        if all(p.number != number for p in shape.ports):
            error(f"{f}.port.number", f"service {host} has no port {number}")
    elif len(shape.ports) == 1:
        number = shape.ports[0].number
    elif all(p.number != listener.number for p in shape.ports):
        error(f"{f}.port", f"service {host} has several ports and none is {listener.number}; set destination.port")
    if d.subset and (policy is None or policy.subset(d.subset) is None):
        error(f"{f}.subset", f"subset {d.subset!r} is not defined by any DestinationRule for host {host}")
    return outbound_cluster(number or listener.number, host, d.subset)


def _string_matcher(m: StringMatch, ignore_case: bool = False) -> string_pb2.StringMatcher:
    if m.exact is not None:
        return string_pb2.StringMatcher(exact=m.exact, ignore_case=ignore_case)
    if m.prefix is not None:
        return string_pb2.StringMatcher(prefix=m.prefix, ignore_case=ignore_case)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=m.regex))


def _match(m: HTTPMatchRequest) -> rc.RouteMatch:
    out = rc.RouteMatch()
    uri = m.uri
    if uri is None or uri.prefix is not None:
        out.prefix = uri.prefix if uri is not None else "/"  # type: ignore[assignment]
    elif uri.exact is not None:
        out.path = uri.exact
    else:
        out.safe_regex.regex = uri.regex  # type: ignore[assignment]
    if m.ignoreUriCase:
        out.case_sensitive.value = False
    headers = dict(sorted(m.headers.items()))
    if m.method is not None:
        headers[":method"] = m.method
    if m.authority is not None:
        headers[":authority"] = m.authority
    for name, sm in headers.items():
        out.headers.append(rc.HeaderMatcher(name=name.lower(), string_match=_string_matcher(sm)))
    for name, sm in sorted(m.queryParams.items()):
        out.query_parameters.append(rc.QueryParameterMatcher(name=name, string_match=_string_matcher(sm)))
    return out


def colliding_domains(row: Sequence[VirtualHostPart]) -> frozenset[str]:
    """Short names on a port that are also some service's full host there (rare: a
    ServiceEntry host ``foo.bar`` next to Service ``foo`` in namespace ``bar``)."""
    hosts = {part.shape.host for part in row}
    colliding: set[str] = set()
    for part in row:
        s = part.shape
        if s.kubernetes:
            colliding.update(n for n in (f"{s.name}.{s.namespace}.svc", f"{s.name}.{s.namespace}", s.name) if n in hosts)
    port = row[0].port.number if row else 0
    return frozenset(d for n in colliding for d in (n, f"{n}:{port}"))


def route_configuration(port: int, encoded: Sequence[bytes]) -> route_pb2.RouteConfiguration:
    out = route_pb2.RouteConfiguration(name=str(port))
    out.MergeFromString(b"".join(encoded))
    return out


def route_configuration_deduplicated(
    port: int, row: Sequence[VirtualHostPart], namespace: str, colliding: frozenset[str]
) -> route_pb2.RouteConfiguration:
    """Envoy rejects a RouteConfiguration where two virtual hosts share a domain: the full
    host keeps it, the short form is dropped."""
    vhosts = []
    for part in row:
        vh = part.virtual_host(part.shape.namespace == namespace)
        domains = vh.domains[:2] + [d for d in vh.domains[2:] if d not in colliding]
        if len(domains) != len(vh.domains):
            vh = rc.VirtualHost(name=vh.name, domains=domains, routes=vh.routes)
        vhosts.append(vh)
    return route_pb2.RouteConfiguration(name=str(port), virtual_hosts=vhosts)
