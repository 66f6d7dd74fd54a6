"""Sidecar routes: one RouteConfiguration per HTTP service port, named ``"<port>"``.

Each service host on that port is a virtual host ``<host>:<port>``. Its routes come from
the VirtualService for the host, or are one default route to ``outbound|<port>||<host>``.
Virtual hosts only differ between namespaces by their short domains (``reviews`` answers
only in ``reviews``'s own namespace), so the routes are built once per host and port and
the per-namespace work is picking the right VirtualHost variant. The last virtual host
catches every other Host, as the proxy's outboundTrafficPolicy says (``CATCH_ALL``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from google.protobuf import wrappers_pb2

from translators.errors import ConfigError
from translators.features._proto import to_any
from translators.features.cors import FILTER as CORS_FILTER
from translators.features.cors import cors_policy
from translators.features.fault import FILTER as FAULT_FILTER
from translators.features.fault import http_fault
from translators.features.headers import apply_edits, header_edits
from translators.features.load_balancer import hash_policy
from translators.features.match import is_catch_all, route_match
from translators.features.mirror import mirror_policies
from translators.features.retries import retry_policy
from translators.features.rewrite import apply_rewrite, direct_response, redirect_action
from translators.features.timeout import NO_TIMEOUT, apply_timeout
from translators.model import Destination, HTTPRoute, VirtualService
from translators.model.names import PASSTHROUGH, outbound_cluster, resolve_host
from translators.model.registry import MeshPort, ServiceShape
from translators.policies import DestinationPolicy

#: host -> (its service shape or None, its DestinationPolicy or None)
#: host -> (its service, the rule most clients see, the subsets some client has a cluster for)
Destinations = dict[str, tuple[ServiceShape | None, DestinationPolicy | None, frozenset[str]]]
NO_DESTINATION: tuple[None, None, frozenset[str]] = (None, None, frozenset())


@dataclass(frozen=True, slots=True)
class SourceCondition:
    """A match's ``sourceLabels``/``sourceNamespace``: which proxies get the route."""

    labels: tuple[tuple[str, str], ...]
    namespace: str | None

    def holds(self, labels: Mapping[str, str], namespace: str) -> bool:
        return all(labels.get(k) == v for k, v in self.labels) and self.namespace in (None, namespace)


def destination_hosts(vs: VirtualService, entries: Sequence[OwnedRoute] | None = None) -> list[str]:
    """Every destination host (routes and mirrors) of ``vs``'s http entries, or of ``entries``
    (delegates merged in), each resolved against the namespace of the VirtualService it is
    written in; in order, once."""
    if entries is None:
        entries = [OwnedRoute(vs, "", h) for h in vs.spec.http]
    hosts = []
    for e in entries:
        h, ns = e.http, e.vs.metadata.namespace
        names = [d.destination.host for d in h.route] + [m.destination.host for m in h.mirrors]
        if h.mirror is not None:
            names.append(h.mirror.host)
        hosts += [resolve_host(n, ns) for n in names]
    return list(dict.fromkeys(hosts))


@dataclass(eq=False)
class VirtualHostPart:
    """The routes of one host on one port, and the VirtualHost protos made from them.

    ``conditions[i]`` says which proxies get ``routes[i]`` (None: all of them); a variant
    of the virtual host is made per set of conditions a proxy satisfies.
    """

    shape: ServiceShape
    port: MeshPort
    routes: tuple[rc.Route, ...]
    errors: tuple[ConfigError, ...]
    conditions: tuple[SourceCondition | None, ...] = ()
    _variants: dict[tuple, rc.VirtualHost] = field(default_factory=dict)
    _encoded: dict[tuple, bytes] = field(default_factory=dict)
    #: the conditions without repeats (set once: asked of every part whenever the table is rebuilt)
    _distinct: tuple[SourceCondition, ...] = field(init=False)

    def __post_init__(self) -> None:
        self._distinct = tuple(dict.fromkeys(c for c in self.conditions if c is not None))

    @property
    def source_dependent(self) -> bool:
        return bool(self._distinct)

    def distinct_conditions(self) -> tuple[SourceCondition, ...]:
        return self._distinct

    def virtual_host(self, local: bool, satisfied: frozenset[SourceCondition] = frozenset()) -> rc.VirtualHost:
        """``local``: the proxy is in the service's namespace, so the bare name is a domain too;
        ``satisfied``: the source conditions the proxy meets."""
        local = local and self.shape.kubernetes
        key = (local, satisfied)
        vh = self._variants.get(key)
        if vh is None:
            chosen = self.routes
            if self.source_dependent:
                chosen = tuple(r for r, c in zip(self.routes, self.conditions, strict=True) if c is None or c in satisfied)
            vh = rc.VirtualHost(name=f"{self.shape.host}:{self.port.number}", domains=self.domains(local), routes=chosen,
                                retry_policy=DEFAULT_RETRIES)
            self._variants[key] = vh
        return vh

    def encoded(self, local: bool, satisfied: frozenset[SourceCondition] = frozenset()) -> bytes:
        """The VirtualHost as it sits serialized inside a RouteConfiguration (field and length
        included): a RouteConfiguration's bytes are these joined (see ``route_configuration``)."""
        key = (local and self.shape.kubernetes, satisfied)
        data = self._encoded.get(key)
        if data is None:
            vh = self.virtual_host(local, satisfied)
            data = route_pb2.RouteConfiguration(virtual_hosts=[vh]).SerializeToString(deterministic=True)
            self._encoded[key] = data
        return data

    def domains(self, local: bool) -> list[str]:
        s = self.shape
        names = [s.host]
        if s.kubernetes:
            names += [f"{s.name}.{s.namespace}.svc", f"{s.name}.{s.namespace}"]
            if local:
                names.append(s.name)
        return names  # no host:port forms: the route config ignores the port in Host (as istiod's)


def default_route(shape: ServiceShape, port: MeshPort, policy: DestinationPolicy | None = None) -> rc.Route:
    """Istio's route for a service no VirtualService routes: everything to the service,
    no timeout, the default retries, and the hash key of its DestinationRule's consistent
    hashing if it has one."""
    action = rc.RouteAction(cluster=outbound_cluster(port.number, shape.host))
    apply_timeout(action, None)
    lb = policy.cluster_policy(port.number).load_balancer if policy is not None else None
    hp = hash_policy(lb.consistentHash if lb is not None else None)
    if hp is not None:
        action.hash_policy.append(hp)
    action.retry_policy.CopyFrom(retry_policy(None, consistent_hash=hp is not None))  # type: ignore[arg-type]
    return rc.Route(name="default", match=route_match(None), route=action)


def virtual_host_part(
    shape: ServiceShape, port: MeshPort, vs: VirtualService | None, dests: Destinations,
    http_routes: Sequence[OwnedRoute] | None = None, problems: Sequence[ConfigError] = (),
    own_policy: DestinationPolicy | None = None,
) -> VirtualHostPart:
    """``http_routes``: the VirtualService's http entries with delegates already merged in
    (``problems``: what merging them found)."""
    if vs is None or not (http_routes or vs.spec.http):
        return VirtualHostPart(shape, port, factor_retries((default_route(shape, port, own_policy),)), tuple(problems))
    entries = http_routes if http_routes is not None else owned_routes(vs)
    errors: list[ConfigError] = list(problems)
    out = build_routes(entries, port, dests, errors)
    if not out:
        # Istio: a VirtualService with no route for this port leaves the host unrouted here.
        errors.append(ConfigError(vs.source, str(vs.key), "spec.http", f"no route applies to port {port.number} "
                                  f"of {shape.host}; requests to it get 404", "warning"))
    return VirtualHostPart(shape, port, factor_retries([r for r, _ in out]), tuple(errors), tuple(c for _, c in out))


def owned_routes(vs: VirtualService) -> list[OwnedRoute]:
    return [OwnedRoute(vs, f"spec.http[{i}]", h) for i, h in enumerate(vs.spec.http)]


def build_routes(entries: Sequence[OwnedRoute], port: MeshPort, dests: Destinations, errors: list[ConfigError],
                 context: str = "mesh") -> list[tuple[rc.Route, SourceCondition | None]]:
    """The routes of ``entries`` for ``port``, in order, each with who gets it; unreachable
    ones dropped with a warning. ``context``: where they apply, ``mesh`` (sidecars) or a
    gateway's ``namespace/name`` (a match's ``gateways`` must then name it)."""
    out: list[tuple[rc.Route, SourceCondition | None]] = []
    catch_all: str | None = None
    warn_after = True
    seen: dict[tuple[bytes, SourceCondition | None], str] = {}
    for entry in entries:
        if catch_all is not None:
            if warn_after:
                errors.append(entry.error("", f"unreachable: {catch_all} before it matches every request", "warning"))
            continue
        for r, cond, where in _http_routes(entry, port, dests, errors, context):
            if catch_all is not None:
                if warn_after:
                    errors.append(entry.error(where, f"unreachable: {catch_all} before it matches every request",
                                              "warning"))
                continue
            key = (r.match.SerializeToString(deterministic=True), cond)
            if key in seen:
                errors.append(entry.error(where, f"unreachable: {seen[key]} has the same match", "warning"))
                continue
            seen[key] = f"{entry.field}{where}"
            out.append((r, cond))
            if cond is None and is_catch_all(r.match):
                catch_all = f"{entry.field}{where}"
                if _port_limited(entry.http, where):
                    warn_after = False  # other ports still reach what follows: no warning
    return out


#: Istio's default retry policy sits once on each virtual host instead of on each of its
#: routes (Envoy applies a virtual host's policy to routes without their own): the same
#: behaviour in about half the bytes of a mesh's route configs.
DEFAULT_RETRIES: rc.RetryPolicy = retry_policy(None)  # type: ignore[assignment]  # never None without a policy
_DEFAULT_BYTES = DEFAULT_RETRIES.SerializeToString(deterministic=True)
_NO_RETRIES = rc.RetryPolicy(num_retries=wrappers_pb2.UInt32Value(value=0))


def factor_retries(built: Sequence[rc.Route]) -> tuple[rc.Route, ...]:
    for r in built:
        if not r.HasField("route"):
            continue
        if not r.route.HasField("retry_policy"):
            r.route.retry_policy.CopyFrom(_NO_RETRIES)  # retries turned off: do not inherit the default
        elif r.route.retry_policy.SerializeToString(deterministic=True) == _DEFAULT_BYTES:
            r.route.ClearField("retry_policy")
    return tuple(built)


@dataclass(frozen=True)
class OwnedRoute:
    """One http entry with the VirtualService it came from (a delegate's own entries keep
    their delegate, so errors and short host names refer to it)."""

    vs: VirtualService
    field: str
    http: HTTPRoute

    def error(self, f: str, message: str, severity: str = "error") -> ConfigError:
        return ConfigError(self.vs.source, str(self.vs.key), f"{self.field}{f}", message, severity)  # type: ignore[arg-type]


def _port_limited(http: HTTPRoute, where: str) -> bool:
    """The match at ``where`` (".match[j]", or "" for none) applies to one port only."""
    if not where:
        return False
    return http.match[int(where[len(".match["):-1])].port is not None


def _http_routes(
    entry: OwnedRoute, port: MeshPort, dests: Destinations, errors: list[ConfigError], context: str = "mesh"
) -> list[tuple[rc.Route, SourceCondition | None, str]]:
    """(route, who gets it, the match's field under the entry) per match for this port."""
    http = entry.http
    base_name = http.name  # as istiod: unnamed entries make unnamed routes (bytes in every proxy's RDS)
    out = []
    for j, m in enumerate(http.match or [None]):  # type: ignore[list-item]
        if m is not None and m.port is not None and m.port != port.number:
            continue  # the match is for another port of the host
        if m is not None and m.gateways and not _names_context(m.gateways, context, entry.vs.metadata.namespace):
            continue  # for other gateways (or the mesh) only
        cond = SourceCondition(tuple(sorted(m.sourceLabels.items())), m.sourceNamespace) \
            if m is not None and (m.sourceLabels or m.sourceNamespace) else None
        name = f"{base_name}.{m.name}" if m is not None and m.name else base_name
        route = rc.Route(name=name, match=route_match(m))
        if m is not None and m.statPrefix:
            route.stat_prefix = m.statPrefix
        where = f".match[{j}]" if m is not None else ""
        _apply_http(route, entry, port, dests, errors, where)
        out.append((route, cond, where))
    return out


def _names_context(gateways: Sequence[str], context: str, namespace: str) -> bool:
    """``gateways`` (a match's, or a VirtualService's) names ``context``: ``mesh``, or a
    gateway ``namespace/name``, which a bare ``name`` names in the VirtualService's namespace."""
    if context == "mesh":
        return "mesh" in gateways
    return any(g != "mesh" and (g if "/" in g else f"{namespace}/{g}") == context for g in gateways)


def _apply_http(route: rc.Route, entry: OwnedRoute, port: MeshPort, dests: Destinations,
                errors: list[ConfigError], _match_field: str) -> None:
    """Everything an http entry says, onto ``route`` (the match is already there)."""
    http = entry.http

    def cluster_of(d: Destination, f: str) -> str:
        return _cluster_name(entry, d, port, dests, f, errors)

    edits = header_edits(http.headers)
    apply_edits(route, edits)
    if http.redirect is not None:
        route.redirect.CopyFrom(redirect_action(http.redirect, port.number))
    elif http.directResponse is not None:
        route.direct_response.CopyFrom(direct_response(http.directResponse))
    else:
        action = route.route
        apply_timeout(action, http.timeout)
        authority = apply_rewrite(action, http.rewrite) or edits.authority
        if authority:
            action.host_rewrite_literal = authority
        action.request_mirror_policies.extend(mirror_policies(http, cluster_of))
        hashed = _destinations(route, action, entry, port, dests, cluster_of)
        policy = retry_policy(http.retries, consistent_hash=hashed)
        if policy is not None:
            action.retry_policy.CopyFrom(policy)
    if http.fault is not None:
        fault = http_fault(http.fault)
        if fault is not None:
            route.typed_per_filter_config[FAULT_FILTER].CopyFrom(to_any(fault))
        if http.fault.abort is not None and http.fault.abort.http2Error is not None:
            errors.append(entry.error(".fault.abort.http2Error", "Envoy cannot inject HTTP/2 errors; ignored", "warning"))
        if http.fault.delay is not None and http.fault.delay.fixedDelay is None:
            errors.append(entry.error(".fault.delay.exponentialDelay", "not supported by Envoy; ignored", "warning"))
    if http.corsPolicy is not None:
        route.typed_per_filter_config[CORS_FILTER].CopyFrom(to_any(cors_policy(http.corsPolicy)))


def _destinations(route: rc.Route, action: rc.RouteAction, entry: OwnedRoute, port: MeshPort,
                  dests: Destinations, cluster_of: Callable[[Destination, str], str]) -> bool:
    """The cluster (or weighted clusters) and hash policies; True when a single destination
    is consistent-hashed (the retry then stays on the hashed host)."""
    http = entry.http
    if len(http.route) == 1:
        rd = http.route[0]
        action.cluster = cluster_of(rd.destination, ".route[0].destination")
        d_edits = header_edits(rd.headers)
        apply_edits(route, d_edits)
        if d_edits.authority and not action.host_rewrite_literal:
            action.host_rewrite_literal = d_edits.authority
        return _add_hash(action, rd.destination, entry, port, dests)
    for j, rd in enumerate(http.route):
        if not rd.weight:
            continue  # Istio drops weight-0 destinations of a split
        cw = rc.WeightedCluster.ClusterWeight(name=cluster_of(rd.destination, f".route[{j}].destination"),
                                              weight=wrappers_pb2.UInt32Value(value=rd.weight))
        d_edits = header_edits(rd.headers)
        apply_edits(cw, d_edits)
        if d_edits.authority:
            cw.host_rewrite_literal = d_edits.authority
        action.weighted_clusters.clusters.append(cw)
        _add_hash(action, rd.destination, entry, port, dests)
    return False  # as istiod: a split keeps the retry host predicate


def _add_hash(action: rc.RouteAction, d: Destination, entry: OwnedRoute, port: MeshPort, dests: Destinations) -> bool:
    host = resolve_host(d.host, entry.vs.metadata.namespace)
    _, policy, _ = dests.get(host, NO_DESTINATION)
    if policy is None:
        return False
    number = d.port.number if d.port else port.number
    lb = policy.cluster_policy(number, d.subset).load_balancer
    hp = hash_policy(lb.consistentHash if lb is not None else None)
    if hp is None:
        return False
    action.hash_policy.append(hp)
    return True


def _cluster_name(entry: OwnedRoute, d: Destination, listener: MeshPort, dests: Destinations, f: str,
                  errors: list[ConfigError]) -> str:
    """The cluster a destination names. A destination we cannot resolve still gets its
    (non-existent) cluster name, as Istio does: Envoy then answers 503 for that route
    alone, which makes the mistake visible, and the ConfigError says why."""
    host = resolve_host(d.host, entry.vs.metadata.namespace)
    shape, _, subsets = dests.get(host, NO_DESTINATION)
    number = d.port.number if d.port else None
    if shape is None:
        errors.append(entry.error(f"{f}.host", f"host {host} is not in the service registry"))
    elif number is not None:
        if all(p.number != number for p in shape.ports):
            errors.append(entry.error(f"{f}.port.number", f"service {host} has no port {number}"))
    elif len(shape.ports) == 1:
        number = shape.ports[0].number
    elif all(p.number != listener.number for p in shape.ports):
        errors.append(entry.error(f"{f}.port", f"service {host} has several ports and none is {listener.number}; "
                                  "set destination.port"))
    if d.subset and d.subset not in subsets:
        errors.append(entry.error(f"{f}.subset", f"subset {d.subset!r} is not defined by any DestinationRule for "
                                  f"host {host}; requests on this route get 503"))
    return outbound_cluster(number or listener.number, host, d.subset)


def colliding_domains(row: Sequence[VirtualHostPart]) -> frozenset[str]:
    """Short names on a port that are also some service's full host there (rare: a
    ServiceEntry host ``foo.bar`` next to Service ``foo`` in namespace ``bar``)."""
    hosts = {part.shape.host for part in row}
    colliding: set[str] = set()
    for part in row:
        s = part.shape
        if s.kubernetes:
            colliding.update(n for n in (f"{s.name}.{s.namespace}.svc", f"{s.name}.{s.namespace}", s.name) if n in hosts)
    return frozenset(colliding)


#: As istiod's sidecar route configs: 1 MiB direct-response bodies, clusters not
#: validated (a route to a cluster not there yet answers 503, not a rejected config),
#: and ``Host: reviews:9080`` matching domain ``reviews``.
CONFIG_DEFAULTS = route_pb2.RouteConfiguration(
    validate_clusters=wrappers_pb2.BoolValue(value=False),
    max_direct_response_body_size_bytes=wrappers_pb2.UInt32Value(value=1024 * 1024),
    ignore_port_in_host_matching=True,
)


def _config(port: int) -> route_pb2.RouteConfiguration:
    out = route_pb2.RouteConfiguration(name=str(port))
    out.MergeFrom(CONFIG_DEFAULTS)
    return out


#: The last virtual host of every outbound route config, for a Host no service has
#: (istiod's): ALLOW_ANY passes the request to its original destination, REGISTRY_ONLY
#: answers 502.
CATCH_ALL = {
    "ALLOW_ANY": rc.VirtualHost(name="allow_any", domains=["*"], routes=[rc.Route(
        name="allow_any", match=rc.RouteMatch(prefix="/"),
        route=rc.RouteAction(cluster=PASSTHROUGH, timeout=NO_TIMEOUT))]),
    "REGISTRY_ONLY": rc.VirtualHost(name="block_all", domains=["*"], routes=[rc.Route(
        name="block_all", match=rc.RouteMatch(prefix="/"), direct_response=rc.DirectResponseAction(status=502))]),
}
_CATCH_ALL_ENCODED = {mode: route_pb2.RouteConfiguration(virtual_hosts=[vh]).SerializeToString(deterministic=True)
                      for mode, vh in CATCH_ALL.items()}


#: CONFIG_DEFAULTS' fields all come after virtual_hosts (2): a config's bytes are its name,
#: its virtual hosts, then these (the order deterministic serialization writes).
_DEFAULTS_ENCODED = CONFIG_DEFAULTS.SerializeToString(deterministic=True)
assert min(f.number for f, _ in CONFIG_DEFAULTS.ListFields()) > 2


def route_configuration(port: int, encoded: Sequence[bytes], mode: str = "ALLOW_ANY") -> tuple[bytes, ...]:
    """The serialized RouteConfiguration of ``port`` from its encoded virtual hosts, as the
    pieces whose concatenation it is (name, the virtual hosts, the catch-all, the defaults):
    nothing is parsed or re-serialized (at 5000 hosts that was 20 ms per change), and VHDS
    splits it by those pieces. ``mode``: the proxy's outboundTrafficPolicy, which picks the
    catch-all virtual host."""
    name = route_pb2.RouteConfiguration(name=str(port)).SerializeToString(deterministic=True)
    return (name, *encoded, _CATCH_ALL_ENCODED[mode], _DEFAULTS_ENCODED)


def route_configuration_deduplicated(
    port: int, row: Sequence[VirtualHostPart], namespace: str, colliding: frozenset[str],
    satisfied: frozenset[SourceCondition] = frozenset(), mode: str = "ALLOW_ANY",
) -> route_pb2.RouteConfiguration:
    """Envoy rejects a RouteConfiguration where two virtual hosts share a domain: the full
    host keeps it, the short form is dropped."""
    out = _config(port)
    for part in row:
        vh = part.virtual_host(part.shape.namespace == namespace, satisfied)
        domains = vh.domains[:1] + [d for d in vh.domains[1:] if d not in colliding]
        if len(domains) != len(vh.domains):
            vh = rc.VirtualHost(name=vh.name, domains=domains, routes=vh.routes, retry_policy=vh.retry_policy)
        out.virtual_hosts.append(vh)
    out.virtual_hosts.append(CATCH_ALL[mode])
    return out
