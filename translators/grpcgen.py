"""Proxyless gRPC: the config gRPC's own xDS client reads (node metadata ``GENERATOR=grpc``).

gRPC subscribes to resources by name and checks each against what it implements (gRFC
A27 xDS, A28 routing, A31 timeouts, A33 fault injection, A36 xDS servers, A42 ring hash,
A44 retries); one field it does not accept and the whole resource is NACKed. So nothing
here is new translation: it reads the Envoy translation's stages (the same route table,
clusters and assignments) and keeps what gRPC reads, in the form it accepts.

* LDS ``<host>:<port>`` per service port, plus ``<name>.<ns>.svc:<port>``,
  ``<name>.<ns>:<port>`` and, in the client's own namespace, ``<name>:<port>`` (the
  channel target names the listener): an ``api_listener`` whose HttpConnectionManager has
  the fault and router filters and RDS ``outbound|<port>||<host>`` over ADS.
  ``xds.istio.io/grpc/lds/inbound/<ip>:<port>`` for an xDS-enabled server on a port its
  services target: that address, one plaintext filter chain, a non-forwarding route.
* RDS ``outbound|<port>||<host>``: the host's one virtual host, its domains with and
  without the port (gRPC matches the channel's authority, port included); the matches,
  weighted clusters, header hashing, the timeout as ``max_stream_duration``, retries on
  the gRPC status codes gRPC knows, and fault injection.
* CDS the EDS clusters (subsets included) with ROUND_ROBIN or RING_HASH and max_requests;
  a DNS service with a single endpoint as LOGICAL_DNS. Nothing else: gRPC refuses other
  lb policies and cluster types.
* EDS the same endpoints, in one locality with a load-balancing weight (gRPC gives no
  traffic to a locality without one).

What of a VirtualService or DestinationRule gRPC cannot apply is reported as a warning
while a gRPC client is connected.

``GrpcGenerator`` reads the Translator's stage state (route table, cluster and endpoint
layers, registry, rules) directly: it is a second view of the same stages, not a second
translation, and mypy keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf.message import Message

from translators import api, listeners
from translators.clusters import ADS
from translators.errors import ConfigError
from translators.features import fault
from translators.features._proto import to_any
from translators.model import DestinationRule, HTTPRoute, TrafficPolicy, VirtualService
from translators.model.names import carries_http, outbound_cluster
from translators.model.registry import MeshPort, ServiceShape
from translators.routes import default_route

if TYPE_CHECKING:
    from translators.model.world import Proxy
    from translators.translate import Translator

#: istio-agent's ``server_listener_resource_name_template`` without its ``%s``.
INBOUND_PREFIX = "xds.istio.io/grpc/lds/inbound/"
#: The retry conditions gRPC implements (gRFC A44); Envoy's others mean nothing to it.
GRPC_RETRY_ON = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
#: gRPC's ring sizes are bounded (gRFC A42).
MAX_RING_SIZE = 8 * 1024 * 1024
#: A hash policy on gRPC's channel id: every call of one channel lands on the same host,
#: the nearest gRPC has to Envoy's source-IP hashing.
CHANNEL_ID = "io.grpc.channel_id"
#: Memo entries not used for this many translator generations are dropped.
KEEP_GENERATIONS = 8

Cluster = cluster_pb2.Cluster
_ROUTER = hcm.HttpFilter(name="envoy.filters.http.router", typed_config=to_any(router_pb2.Router()))
_CLIENT_FILTERS = (hcm.HttpFilter(name=fault.FILTER, typed_config=to_any(fault.filter_config())), _ROUTER)
#: A route with no retry policy inherits its virtual host's; retry_on without gRPC codes retries nothing.
_NO_RETRIES = rc.RetryPolicy(retry_on="")


# ---------------------------------------------------------------- clusters and endpoints


def grpc_cluster(c: cluster_pb2.Cluster) -> cluster_pb2.Cluster | None:
    """The cluster as gRPC takes it; None for what it cannot use (static, original
    destination, DNS with several hosts)."""
    out = Cluster(name=c.name)
    kind = c.type if c.WhichOneof("cluster_discovery_type") == "type" else None
    if kind == Cluster.EDS:
        out.type = Cluster.EDS
        out.eds_cluster_config.eds_config.CopyFrom(ADS)
        out.eds_cluster_config.service_name = c.eds_cluster_config.service_name or c.name
    elif kind in (Cluster.STRICT_DNS, Cluster.LOGICAL_DNS):
        hosts = [e for loc in c.load_assignment.endpoints for e in loc.lb_endpoints]
        if len(hosts) != 1:
            return None  # gRPC's LOGICAL_DNS wants exactly one host name (gRFC A37)
        out.type = Cluster.LOGICAL_DNS
        out.load_assignment.cluster_name = c.name
        out.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(hosts[0].endpoint.address)
    else:
        return None
    if c.lb_policy in (Cluster.RING_HASH, Cluster.MAGLEV):
        out.lb_policy = Cluster.RING_HASH  # type: ignore[assignment]
        ring = c.ring_hash_lb_config
        if c.lb_policy == Cluster.RING_HASH and ring.HasField("minimum_ring_size"):
            out.ring_hash_lb_config.minimum_ring_size.value = min(max(ring.minimum_ring_size.value, 1), MAX_RING_SIZE)
    else:
        out.lb_policy = Cluster.ROUND_ROBIN  # type: ignore[assignment]
    for t in c.circuit_breakers.thresholds:
        if t.priority == base_pb2.DEFAULT and t.HasField("max_requests"):
            # Without it gRPC allows 1024 concurrent calls per cluster; Istio's default is no limit.
            out.circuit_breakers.thresholds.append(
                circuit_breaker_pb2.CircuitBreakers.Thresholds(max_requests=t.max_requests))
            break
    return out


def grpc_assignment(cla: endpoint_pb2.ClusterLoadAssignment) -> endpoint_pb2.ClusterLoadAssignment:
    """One locality per (locality, priority), each with a weight, and no address twice:
    gRPC ignores a locality without a weight and NACKs duplicates."""
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=cla.cluster_name)
    groups: dict[tuple, list[ec.LbEndpoint]] = {}
    seen: set[tuple[str, int]] = set()
    for loc in cla.endpoints:
        key = (loc.locality.region, loc.locality.zone, loc.locality.sub_zone, loc.priority)
        for e in loc.lb_endpoints:
            a = e.endpoint.address.socket_address
            if (a.address, a.port_value) in seen:
                continue
            seen.add((a.address, a.port_value))
            lb = ec.LbEndpoint(endpoint=ec.Endpoint(address=e.endpoint.address))
            if e.HasField("load_balancing_weight") and e.load_balancing_weight.value:
                lb.load_balancing_weight.value = e.load_balancing_weight.value
            groups.setdefault(key, []).append(lb)
    for (region, zone, sub_zone, priority), eps in groups.items():
        loc = out.endpoints.add(lb_endpoints=eps, priority=priority)
        loc.locality.SetInParent()  # required, even empty
        loc.locality.region, loc.locality.zone, loc.locality.sub_zone = region, zone, sub_zone
        loc.load_balancing_weight.value = sum(e.load_balancing_weight.value or 1 for e in eps)
    return out


# ---------------------------------------------------------------- routes


def grpc_retry(policy: rc.RetryPolicy) -> rc.RetryPolicy:
    """Envoy's retry policy as gRPC reads it: only gRPC's status codes; num_retries 0
    (retries off) as a policy that retries nothing, since gRPC NACKs 0."""
    if policy.HasField("num_retries") and policy.num_retries.value == 0:
        return _NO_RETRIES
    codes = [c.strip() for c in policy.retry_on.split(",") if c.strip() in GRPC_RETRY_ON]
    out = rc.RetryPolicy(retry_on=",".join(codes))
    if policy.HasField("num_retries"):
        out.num_retries.value = policy.num_retries.value
    backoff = policy.retry_back_off
    if policy.HasField("retry_back_off") and (backoff.base_interval.seconds or backoff.base_interval.nanos):
        out.retry_back_off.base_interval.CopyFrom(backoff.base_interval)
        if backoff.HasField("max_interval"):
            out.retry_back_off.max_interval.CopyFrom(backoff.max_interval)
    return out


def _hash_policy(hp: rc.RouteAction.HashPolicy) -> rc.RouteAction.HashPolicy | None:
    which = hp.WhichOneof("policy_specifier")
    if which == "header":
        return rc.RouteAction.HashPolicy(header=rc.RouteAction.HashPolicy.Header(header_name=hp.header.header_name),
                                         terminal=hp.terminal)
    if which == "connection_properties" and hp.connection_properties.source_ip:
        return rc.RouteAction.HashPolicy(filter_state=rc.RouteAction.HashPolicy.FilterState(key=CHANNEL_ID))
    return None  # cookies and query parameters: gRPC has neither


def grpc_route(r: rc.Route) -> rc.Route | None:
    """None for a route gRPC would skip anyway (a query-parameter match)."""
    if r.match.query_parameters:
        return None
    out = rc.Route(name=r.name, match=r.match)
    if r.HasField("route"):
        a, o = r.route, out.route
        which = a.WhichOneof("cluster_specifier")
        if which == "cluster":
            o.cluster = a.cluster
        elif which == "weighted_clusters":
            for cw in a.weighted_clusters.clusters:
                o.weighted_clusters.clusters.add(name=cw.name, weight=cw.weight)
        for hp in a.hash_policy:
            g = _hash_policy(hp)
            if g is not None:
                o.hash_policy.append(g)
        if a.timeout.seconds or a.timeout.nanos:
            # gRPC reads max_stream_duration, not the route timeout (gRFC A31).
            o.max_stream_duration.max_stream_duration.CopyFrom(a.timeout)
            o.max_stream_duration.grpc_timeout_header_max.CopyFrom(a.timeout)
        if a.HasField("retry_policy"):
            o.retry_policy.CopyFrom(grpc_retry(a.retry_policy))
    # A redirect or direct response is left without an action: gRPC fails those calls with UNAVAILABLE.
    if fault.FILTER in r.typed_per_filter_config:
        out.typed_per_filter_config[fault.FILTER].CopyFrom(r.typed_per_filter_config[fault.FILTER])
    return out


def domains(shape: ServiceShape, port: int) -> list[str]:
    """Every authority a channel may have for the service: the names its listeners carry,
    with and without the port."""
    names = [shape.host]
    if shape.kubernetes:
        names += [f"{shape.name}.{shape.namespace}.svc", f"{shape.name}.{shape.namespace}", shape.name]
    return [d for n in names for d in (n, f"{n}:{port}")]


def route_configuration(name: str, vh: rc.VirtualHost, shape: ServiceShape, port: int) -> route_pb2.RouteConfiguration:
    out = rc.VirtualHost(name=vh.name, domains=domains(shape, port))
    out.routes.extend(g for g in (grpc_route(r) for r in vh.routes) if g is not None)
    if vh.HasField("retry_policy"):
        out.retry_policy.CopyFrom(grpc_retry(vh.retry_policy))
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[out])


def _default_configuration(name: str, shape: ServiceShape, port: MeshPort) -> route_pb2.RouteConfiguration:
    vh = rc.VirtualHost(name=f"{shape.host}:{port.number}", routes=[default_route(shape, port)])
    return route_configuration(name, vh, shape, port.number)


# ---------------------------------------------------------------- listeners


def _api_listener(name: str, route_config: str) -> listener_pb2.Listener:
    manager = hcm.HttpConnectionManager(
        stat_prefix=name, http_filters=_CLIENT_FILTERS, rds=hcm.Rds(config_source=ADS, route_config_name=route_config))
    return listener_pb2.Listener(name=name, api_listener=api_listener_pb2.ApiListener(api_listener=to_any(manager)))


def listener_names(shape: ServiceShape, port: int, client_namespace: str) -> list[str]:
    """The listener names a channel to the service may ask for, full host first."""
    names = [shape.host]
    if shape.kubernetes:
        names += [f"{shape.name}.{shape.namespace}.svc", f"{shape.name}.{shape.namespace}"]
        if shape.namespace == client_namespace:
            names.append(shape.name)
    return [f"{n}:{port}" for n in names]


_INBOUND_ROUTES = route_pb2.RouteConfiguration(name="inbound", virtual_hosts=[rc.VirtualHost(
    name="inbound", domains=["*"],
    routes=[rc.Route(match=rc.RouteMatch(prefix="/"), non_forwarding_action=rc.NonForwardingAction())])])
_INBOUND_CHAIN = lc.FilterChain(name="inbound-plaintext", filters=[lc.Filter(
    name="inbound-hcm", typed_config=to_any(hcm.HttpConnectionManager(
        stat_prefix="inbound", route_config=_INBOUND_ROUTES, http_filters=[_ROUTER])))])


def inbound_listener(address: str, port: int) -> listener_pb2.Listener:
    """What an xDS-enabled gRPC server listening on ``address:port`` waits for (gRFC A36):
    the listener with its exact address; the server accepts calls once it has it."""
    host = address.strip("[]")
    return listener_pb2.Listener(
        name=f"{INBOUND_PREFIX}{address}:{port}",
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port)),
        filter_chains=[_INBOUND_CHAIN],
    )


# ---------------------------------------------------------------- warnings


def rule_warnings(dr: DestinationRule) -> list[ConfigError]:
    """What of a DestinationRule proxyless gRPC clients do not apply."""
    out: list[ConfigError] = []

    def warn(field: str, message: str) -> None:
        out.append(ConfigError(dr.source, str(dr.key), field, f"proxyless gRPC clients {message}", "warning"))

    policies: list[tuple[str, TrafficPolicy | None]] = [("spec.trafficPolicy", dr.spec.trafficPolicy)]
    policies += [(f"spec.subsets[{i}].trafficPolicy", s.trafficPolicy) for i, s in enumerate(dr.spec.subsets)]
    for where, tp in policies:
        if tp is None:
            continue
        parts: list[tuple[str, Any]] = [(where, tp)]
        parts += [(f"{where}.portLevelSettings[{i}]", p) for i, p in enumerate(tp.portLevelSettings)]
        for at, p in parts:
            lb = p.loadBalancer
            if lb is not None:
                if lb.simple in ("LEAST_REQUEST", "LEAST_CONN", "RANDOM"):
                    warn(f"{at}.loadBalancer.simple", f"balance with ROUND_ROBIN: gRPC has no {lb.simple}")
                ch = lb.consistentHash
                if ch is not None and ch.maglev is not None:
                    warn(f"{at}.loadBalancer.consistentHash.maglev", "hash with RING_HASH: gRPC has no MAGLEV")
                if ch is not None and (ch.httpCookie is not None or ch.httpQueryParameterName is not None):
                    warn(f"{at}.loadBalancer.consistentHash", "cannot hash on a cookie or query parameter: "
                         "each call lands on a random point of the ring")
                if lb.warmup is not None or lb.warmupDurationSecs is not None:
                    warn(f"{at}.loadBalancer.warmup", "have no slow start; ignored for them")
            if p.outlierDetection is not None:
                warn(f"{at}.outlierDetection", "eject hosts only by success rate or failure percentage, "
                     "which Istio's API does not set; ignored for them")
            pool = p.connectionPool
            if pool is not None and (pool.tcp is not None or (pool.http is not None and any(
                    v is not None and k != "http2MaxRequests" for k, v in pool.http))):
                warn(f"{at}.connectionPool", "apply only http.http2MaxRequests (as max_requests); "
                     "the other limits are ignored for them")
            if p.tls is not None and p.tls.mode not in (None, "DISABLE"):
                warn(f"{at}.tls", "connect in plaintext: TLS for proxyless gRPC is not served yet")
    return out


def _http_warnings(i: int, h: HTTPRoute) -> Iterator[tuple[str, str]]:
    at = f"spec.http[{i}]"
    if h.redirect is not None or h.directResponse is not None:
        yield at, "cannot redirect or answer directly: their calls matching this route fail with UNAVAILABLE"
    if h.mirror is not None or h.mirrors:
        yield f"{at}.mirror", "do not mirror calls; ignored for them"
    if h.corsPolicy is not None:
        yield f"{at}.corsPolicy", "have no CORS; ignored for them"
    if h.headers is not None:
        yield f"{at}.headers", "do not edit headers; ignored for them"
    if h.rewrite is not None:
        yield f"{at}.rewrite", "do not rewrite paths or authorities; ignored for them"
    for j, m in enumerate(h.match):
        if m.queryParams:
            yield f"{at}.match[{j}].queryParams", "skip routes that match query parameters"
    r = h.retries
    if r is not None and r.attempts > 0 and r.retryOn and not any(
            c.strip() in GRPC_RETRY_ON for c in r.retryOn.split(",")):
        yield f"{at}.retries.retryOn", f"retry only on {', '.join(GRPC_RETRY_ON)}: this policy retries nothing"
    if r is not None and r.perTryTimeout is not None:
        yield f"{at}.retries.perTryTimeout", "have no per-try timeout; ignored for them"


def route_warnings(vs: VirtualService) -> list[ConfigError]:
    """What of a VirtualService proxyless gRPC clients do not apply."""
    return [ConfigError(vs.source, str(vs.key), f, f"proxyless gRPC clients {m}", "warning")
            for i, h in enumerate(vs.spec.http) for f, m in _http_warnings(i, h)]


# ---------------------------------------------------------------- the generator


@dataclass(eq=False)
class _Memo:
    """A value built from ``inputs`` (compared by identity), and when it was last used."""

    inputs: tuple
    value: Any
    used: int


def _same(a: tuple, b: tuple) -> bool:
    """Element-wise identity (numbers, such as epochs, by value)."""
    return len(a) == len(b) and all(
        x is y or (type(x) is int and type(y) is int and x == y) for x, y in zip(a, b, strict=True))


class _Memos:
    def __init__(self) -> None:
        self.entries: dict[Any, _Memo] = {}

    def get(self, key: Any, inputs: tuple, generation: int, build: Callable[[], Any]) -> Any:
        m = self.entries.get(key)
        if m is None or not _same(m.inputs, inputs):
            m = self.entries[key] = _Memo(inputs, build(), generation)
        m.used = generation
        return m.value

    def prune(self, generation: int) -> None:
        self.entries = {k: m for k, m in self.entries.items() if m.used > generation - KEEP_GENERATIONS}


def _layer(key: object, parts: Iterable[tuple[str, Message]]) -> api.Layer:
    return api.Layer(key, MappingProxyType(dict(parts)))


class GrpcGenerator:
    """Per-type layers for gRPC clients, built from (and memoized on) the Translator's
    stages, so a change costs gRPC clients what it costs Envoy sidecars: what it touches."""

    def __init__(self, translator: Translator) -> None:
        self._t = translator
        self._generation = -1
        self._shapes: tuple = ()
        self._shape_epoch = 0
        self._served = -1  # the last generation a gRPC client was translated in
        self._layers = _Memos()  # converted cluster/endpoint layers (and their protos), by source layer key
        self._protos = _Memos()  # listeners and route configs, by name
        self._routes = _Memos()  # route layers, by (namespace, satisfied conditions)
        self._listeners = _Memos()  # listener layers, by namespace
        self._inbound = _Memos()  # inbound listener layers, by proxy key
        self._warnings = _Memos()  # by resource key
        self._errors: tuple[ConfigError, ...] = ()

    def for_proxy(self, proxy: Proxy) -> dict[str, list[api.Layer]]:
        self._sync()
        t = self._t
        clusters: list[api.Layer] = [t._clusters]
        endpoints: list[api.Layer] = [t._endpoints]
        split = t._split_for(proxy)
        if split is not None:
            clusters.append(split[0])
            endpoints.append(split[1])
        out: dict[str, list[api.Layer]] = {
            api.CLUSTER: [self._transformed(layer, grpc_cluster) for layer in clusters],
            api.ENDPOINT: [self._transformed(layer, grpc_assignment) for layer in endpoints],
            api.LISTENER: [self._outbound_listeners(proxy.namespace)],
            api.ROUTE: [self._route_layer(proxy)],
        }
        inbound = self._inbound_listeners(proxy)
        if inbound.resources:
            out[api.LISTENER].append(inbound)
        if self._served != self._generation:
            self._served = self._generation
            if self.errors():
                t._errors = None  # the Translator's error list now includes ours
        return out

    def errors(self) -> tuple[ConfigError, ...]:
        """Warnings for what gRPC clients do not apply; only while one is being served."""
        return self._errors if self._served == self._t._generation else ()

    # ------------------------------------------------------------ bookkeeping

    def _sync(self) -> None:
        t = self._t
        if t._generation == self._generation:
            return
        self._generation = g = t._generation
        shapes = tuple(s.shape for s in t._registry.services.values())
        if not _same(shapes, self._shapes):
            self._shapes = shapes
            self._shape_epoch += 1
        for memos in (self._layers, self._protos, self._routes, self._listeners, self._inbound, self._warnings):
            memos.prune(g)
        found: list[ConfigError] = []
        for p in t._policies.values():
            dr = p.resource
            found += self._warnings.get(("dr", dr.key), (dr,), g, partial(rule_warnings, dr))
        for vs, _ in t._mesh_vs.values():
            found += self._warnings.get(("vs", vs.key), (vs,), g, partial(route_warnings, vs))
        self._errors = tuple(found)

    def _transformed(self, layer: api.Layer, convert: Callable[[Any], Message | None]) -> api.Layer:
        """``layer`` with each proto converted; a new version of a layer converts only the
        protos that are new in it (by identity), so unchanged ones keep their bytes."""
        old = self._layers.entries.get(layer.key)

        def build() -> tuple[api.Layer, dict[int, tuple[Message, Message | None]]]:
            before = old.value[1] if old is not None else {}
            by_id: dict[int, tuple[Message, Message | None]] = {}
            parts = []
            for name, msg in layer.resources.items():
                hit = before.get(id(msg))
                out = hit[1] if hit is not None and hit[0] is msg else convert(msg)
                by_id[id(msg)] = (msg, out)
                if out is not None:
                    parts.append((name, out))
            return _layer(("grpc", layer.key), parts), by_id

        return self._layers.get(layer.key, (layer,), self._generation, build)[0]  # type: ignore[no-any-return]

    # ------------------------------------------------------------ listeners

    def _outbound_listeners(self, namespace: str) -> api.Layer:
        def build() -> api.Layer:
            parts: dict[str, listener_pb2.Listener] = {}
            for shape in self._shapes:
                for p in shape.ports:
                    rds = outbound_cluster(p.number, shape.host)
                    for name in listener_names(shape, p.number, namespace):
                        if name not in parts:  # a full host keeps its name over another's short form
                            parts[name] = self._protos.get(
                                ("lds", name), (rds,), self._generation, partial(_api_listener, name, rds))
            return _layer(("grpc-listeners", namespace), sorted(parts.items()))

        return self._listeners.get(namespace, (self._shape_epoch,), self._generation, build)  # type: ignore[no-any-return]

    def _inbound_listeners(self, proxy: Proxy) -> api.Layer:
        t = self._t
        epoch = t._ns_epoch.get(proxy.namespace, 0)

        def build() -> api.Layer:
            workload = t._index.workload_at(proxy.namespace, proxy.ip)
            selecting = t._registry.selecting(proxy.namespace, listeners.workload_labels(workload, proxy.labels))
            ports, _ = listeners.inbound_ports(selecting, workload)
            # A server asks for the address it binds: its own IP, or a wildcard.
            found = [inbound_listener(a, p.target) for p in ports for a in (proxy.ip, "0.0.0.0", "[::]")]
            return _layer(("grpc-inbound", proxy.key), ((lst.name, lst) for lst in found))

        return self._inbound.get(proxy.key, (epoch, self._shape_epoch), self._generation, build)  # type: ignore[no-any-return]

    # ------------------------------------------------------------ routes

    def _route_layer(self, proxy: Proxy) -> api.Layer:
        t = self._t
        namespace = proxy.namespace
        satisfied: frozenset = frozenset()
        if t._source_conditions:
            workload = t._index.workload_at(namespace, proxy.ip)
            labels = listeners.workload_labels(workload, proxy.labels)
            satisfied = frozenset(c for c in t._source_conditions if c.holds(labels, namespace))
        g = self._generation

        def build() -> api.Layer:
            configs: dict[str, Message] = {}
            overrides = t._overrides_by_ns.get(namespace)
            for number, row in t._route_table.items():
                for part in row:
                    if overrides:
                        part = overrides.get((part.shape.host, number), part)
                    vh = part.virtual_host(False, satisfied)  # domains are gRPC's own: no local variant
                    name = outbound_cluster(number, part.shape.host)
                    configs[name] = self._protos.get(
                        ("rds", name, id(vh)), (vh, part.shape), g,
                        partial(route_configuration, name, vh, part.shape, number))
            for shape in self._shapes:
                for port in shape.ports:
                    if carries_http(port.protocol):
                        continue
                    # gRPC speaks HTTP/2 whatever the port is named: a default route for the rest.
                    name = outbound_cluster(port.number, shape.host)
                    configs[name] = self._protos.get(
                        ("rds-default", name), (shape, port), g, partial(_default_configuration, name, shape, port))
            return _layer(("grpc-routes", namespace, satisfied), sorted(configs.items()))

        inputs = (t._routes_epoch, self._shape_epoch)
        return self._routes.get((namespace, satisfied), inputs, g, build)  # type: ignore[no-any-return]
