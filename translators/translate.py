"""The Translator: a World (and a Proxy) in, layers of Envoy resources out, incrementally.

Work is split by what it depends on, and each piece remembers its inputs (compared by
identity: models are frozen and a new World reuses unchanged objects):

* registry     - per Service/ServiceEntry (model/registry.py);
* rules        - DestinationRules as policies, merged per namespace and host, looked up
                 in istiod's order (policies.RuleIndex);
* clusters     - per service host: (shape, DNS endpoints, DestinationPolicy); hosts whose
                 rule depends on the client's namespace get per-namespace layers;
* endpoints    - per service host: (shape, endpoints, DestinationPolicy), likewise;
* routes       - per host and HTTP port: (shape, VirtualService + delegates, its
                 destinations), then per namespace (and per set of source conditions a
                 proxy meets) a RouteConfiguration from the virtual hosts; VirtualServices
                 with a restricted exportTo replace parts in the namespaces they reach;
* ports        - per port number: what its outbound listener does (protocols, the TCP
                 target, the tcp/tls routes of the VirtualServices); rows equal to the
                 previous ones are kept, so a VirtualService change reaches proxies only
                 when it changes a row;
* scopes       - per (Sidecar, namespace): the hosts it imports and its
                 outboundTrafficPolicy (scope.py); a proxy with a Sidecar gets the
                 shared cluster, endpoint and route layers cut down to its scope, and
                 its outbound ports from its scope's services;
* listeners    - per proxy: (outbound port table, workload, selecting services, the
                 AuthorizationPolicies and RequestAuthentications selecting the workload
                 (security.py), and the resolved ext_authz providers when they name one);
                 a policy change makes proxies look their policies up again, and only
                 those whose set of policy objects changed are rebuilt.

``update`` only reruns the stages the changed kinds can reach; a layer mapping (and each
proto in it) is replaced only when one of its parts is, so the cache can share bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from translators import api, capture, clusters, endpoints, listeners, peer_auth, routes, scope, security
from translators.errors import ConfigError
from translators.features import authz, delegate, locality, mtls, telemetry
from translators.gateway import GatewayGenerator
from translators.grpcgen import GrpcGenerator
from translators.model import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    Pod,
    RequestAuthentication,
    ResourceKey,
    Sidecar,
    TrafficPolicy,
    VirtualService,
    WorkloadEntry,
)
from translators.model.index import ResourceIndex
from translators.model.mesh import MeshConfig
from translators.model.names import (
    AUTO,
    BLACKHOLE,
    PASSTHROUGH,
    carries_http,
    host_matches,
    is_http,
    port_protocol,
    resolve_host,
)
from translators.model.registry import KINDS as REGISTRY_KINDS
from translators.model.registry import MeshService, Registry, ServiceShape, visible_to
from translators.model.sidecar import ingress_port
from translators.model.telemetry import Telemetry
from translators.model.world import Proxy, World
from translators.policies import (
    ROOT_NAMESPACE,
    DestinationPolicy,
    HostIndex,
    RuleIndex,
    Viewers,
    destination_policy,
    merge_policies,
)

#: Per-proxy results not asked for during this many updates are forgotten.
PROXY_MEMO_UPDATES = 8

def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _same_hosts(old: Sequence[routes.VirtualHostPart] | None, new: Sequence[routes.VirtualHostPart]) -> bool:
    """Whether two rows of a port have the same hosts in the same order, Kubernetes or not:
    all that ``routes.colliding_domains`` reads (a Kubernetes host spells its name and
    namespace), so one service's changed routes keep the row's collisions."""
    return old is not None and len(old) == len(new) and all(
        a.shape is b.shape or (a.shape.host == b.shape.host and a.shape.kubernetes == b.shape.kubernetes)
        for a, b in zip(old, new, strict=True))


def _layer(key: object, parts: Iterable[tuple[str, Message]]) -> api.Layer:
    return api.Layer(key, MappingProxyType(dict(parts)))


@dataclass(eq=False)
class _NamespaceRoutes:
    epoch: int  # Translator._routes_epoch it was built at
    scope: scope.Scope
    configs: dict[int, tuple[tuple[bytes, ...], tuple[bytes, ...]]]  # port -> (encoded virtual hosts, config's pieces)
    layer: api.Layer


@dataclass(eq=False)
class _ProxyState:
    epoch: int
    port_table: dict[int, listeners.OutboundPort]
    inputs: tuple
    #: by port number; with capture, by listener name (``0.0.0.0_<port>``, ``<address>_<port>``)
    outbound: dict[int | str, tuple[listeners.OutboundPort, listener_pb2.Listener]]
    inbound: dict[int, tuple[tuple, listener_pb2.Listener]]
    listeners: api.Layer
    inbound_clusters: api.Layer
    errors: tuple[ConfigError, ...]
    generation: int = field(default=0)
    security_epoch: int = field(default=0)
    conflicts: tuple[ConfigError, ...] = ()  # other Sidecars selecting the workload: ignored for it
    #: With capture: Translator._capture_epoch it was built at, and its virtualInbound with
    #: what it was built from (the port listeners, the passthrough's mTLS mode, the identity).
    capture_epoch: int = field(default=0)
    virtual_inbound: tuple[tuple, listener_pb2.Listener] | None = None
    #: listener name -> (the listener, the telemetry side, the listener with that telemetry)
    applied: dict[str, tuple[Message, object, Message]] = field(default_factory=dict)


class Translator:
    """Holds memo state across Worlds; one per process."""

    def __init__(self, root_namespace: str = ROOT_NAMESPACE) -> None:
        self._root_namespace = root_namespace
        self._world: World | None = None
        self._generation = 0
        self._index = ResourceIndex()
        self._registry = Registry()
        self._ns_epoch: dict[str, int] = {}  # bumped when a registry kind changes in a namespace
        self._policies: dict[ResourceKey, DestinationPolicy] = {}
        self._rules = RuleIndex((), root_namespace)
        self._split: dict[str, dict[Viewers, DestinationPolicy | None]] = {}  # host -> namespace (, selector) -> rule
        self._split_layers: dict[tuple, tuple[api.Layer, api.Layer]] = {}
        self._split_parts: dict[tuple[str, int], tuple[tuple, tuple]] = {}
        self._localized_layers: dict[tuple, tuple[api.Layer, api.Layer]] = {}
        self._localized_protos: dict[tuple, tuple[Message, Message]] = {}
        self._locality_memo: dict[str, tuple[DestinationPolicy, object]] = {}
        self._failover_priority: frozenset[str] = frozenset()  # label keys any failoverPriority names
        self._merge_memo: dict[tuple[int, ...], tuple[tuple[DestinationPolicy, ...], DestinationPolicy]] = {}
        self._merged_into: dict[ResourceKey, DestinationPolicy] = {}
        self._cluster_parts: dict[str, tuple[tuple, list[tuple[str, Message]]]] = {}
        self._endpoint_parts: dict[str, tuple[tuple, list[tuple[str, Message]]]] = {}
        self._clusters = _layer(("clusters", "outbound"), [(BLACKHOLE, clusters.blackhole()),
                                                           (PASSTHROUGH, clusters.passthrough())])
        self._endpoints = _layer(("endpoints", "outbound"), ())
        self._mesh_vs: dict[ResourceKey, tuple[VirtualService, tuple[str, ...]]] = {}
        self._vs_index: HostIndex[VirtualService] = HostIndex(())
        self._host_parts: dict[str, tuple[tuple, list[routes.VirtualHostPart], frozenset[str]]] = {}
        self._source_conditions: tuple[routes.SourceCondition, ...] = ()
        self._delegating: dict[ResourceKey, tuple[str, ...]] = {}  # roots with delegates -> their hosts
        self._route_table: dict[int, tuple[routes.VirtualHostPart, ...]] = {}
        self._row_positions: dict[int, dict[str, int]] = {}  # port -> host -> index in its row
        self._dependents: dict[str, set[str]] | None = None  # see _route_dependents (None: to be made)
        self._part_errors: list[ConfigError] = []
        self._route_collisions: dict[int, frozenset[str]] = {}
        self._routes_epoch = 0  # bumped when the route table or the exportTo overrides change
        self._vs_restricted: dict[str, list[tuple[VirtualService, tuple[str, ...]]]] = {}
        self._vs_overrides: dict[tuple[str, str], tuple[tuple, list[routes.VirtualHostPart], frozenset[str]]] = {}
        self._overrides_by_ns: dict[str, dict[tuple[str, int], routes.VirtualHostPart]] = {}
        self._ns_routes: dict[tuple, _NamespaceRoutes] = {}  # (namespace, satisfied source conditions, scope)
        # Sidecar scoping (scope.py): the Sidecars, the mesh's outboundTrafficPolicy, the
        # scopes by (Sidecar, namespace), their port tables, and the layer filter.
        self._sidecars = scope.SidecarIndex((), root_namespace)
        self._mesh_mode: scope.Mode = "ALLOW_ANY"
        self._scopes: dict[object, tuple[tuple, scope.Scope]] = {}
        self._shapes_epoch = 0  # bumped when service shapes change: endpoints alone never change a scope
        self._scoped_ports: dict[object, tuple[tuple, dict[int, listeners.OutboundPort]]] = {}
        self._filter = scope.LayerFilter()
        self._port_table: dict[int, listeners.OutboundPort] = {}
        # What it was made of, for a change to a few services: port -> host -> protocol (host
        # order), host -> its ports, port -> its problems.
        self._port_users: dict[int, dict[str, str]] = {}
        self._host_ports: dict[str, tuple[int, ...]] = {}
        self._port_errors: dict[int, list[ConfigError]] = {}
        self._proxies: dict[tuple, _ProxyState] = {}
        self._security_epoch = 0  # bumped when a security policy, the mesh config or the services change
        self._providers: dict[str, authz.Provider] = {}  # the mesh config's ext_authz providers, resolved
        self._policies_use_registry = False  # some policy names a service (CUSTOM provider, jwksUri)
        # ids of (policies..., providers) -> (them, their InboundPolicy): workloads alike share one
        self._inbound_policies: dict[tuple[int, ...], tuple[tuple, security.InboundPolicy]] = {}
        self._stage_errors: dict[str, list[ConfigError]] = {}
        self._errors: tuple[ConfigError, ...] | None = ()
        self._grpc = GrpcGenerator(self)  # proxyless gRPC clients: reads the stages above
        self._gateways = GatewayGenerator(self)  # gateway proxies' listeners and routes: likewise
        # PeerAuthentication (peer_auth.py), and the cluster layers of proxies without a mesh
        # identity (auto mTLS left out): source layer id -> (source layer, plaintext layer).
        self._peer_auth = peer_auth.PeerAuthIndex((), root_namespace)
        self._plaintext_layers: dict[int, tuple[api.Layer, api.Layer]] = {}
        self._plaintext_protos: dict[int, tuple[Message, Message]] = {}
        # Cluster layers as proxies with traffic capture see them (their PassthroughCluster
        # follows the connection's original destination): source layer id -> (source, result).
        self._captured_layers: dict[int, tuple[api.Layer, api.Layer]] = {}
        self._captured_passthrough = clusters.captured_passthrough()
        # Each addressed TCP service's own rows (ports: _host_ports), and the shapes they were made at.
        self._own_rows_epoch = -1
        self._own_rows: dict[str, tuple[MeshService, VirtualService | None, dict[int, listeners.OutboundPort]]] = {}
        # Bumped when what a captured proxy's <address>_<port> listeners read changes beyond its
        # port table: service addresses and shapes, the VirtualServices' tcp/tls routes.
        self._capture_epoch = 0
        # Telemetry (features/telemetry.py): answers per workload, compared by identity in proxy states.
        self._telemetry = telemetry.TelemetryIndex((), root_namespace, None, {})
        #: gateway listener layer key -> (its listeners, the telemetry side, both applied, last asked at)
        self._observed_gateways: dict[object, tuple[api.Layer, object, api.Layer, int]] = {}

    # ------------------------------------------------------------ the contract

    def update(self, world: World) -> None:
        """Make ``world`` current; rebuild only what ``world.changed`` can touch."""
        prev = self._world
        if world is prev:
            return
        if prev is not None and world.version == prev.version + 1:
            changed: Iterable[ResourceKey] = world.changed
        else:  # first world, or one we did not see the predecessor of: diff ourselves
            old = prev.resources if prev is not None else {}
            changed = {k for k, v in world.resources.items() if old.get(k) is not v}
            changed.update(k for k in old if k not in world.resources)
        self._world = world
        self._generation += 1
        self._index.apply(world.resources, changed)

        kinds = {k.kind for k in changed}
        registry_ns = sorted({k.namespace for k in changed if k.kind in REGISTRY_KINDS})
        for ns in registry_ns:
            self._ns_epoch[ns] = self._ns_epoch.get(ns, 0) + 1
        services = self._registry.rebuild(self._index, registry_ns, changed)
        shapes = services and self._registry.shapes_changed  # else only endpoints moved
        if shapes:
            self._shapes_epoch += 1
        rule_hosts: set[str] = set()
        if DestinationRule.KIND in kinds:
            rule_hosts = self._rebuild_policies({k for k in changed if k.kind == DestinationRule.KIND})
        mtls_hosts: set[str] = set()
        if not kinds.isdisjoint(peer_auth.KINDS):
            mtls_hosts = self._rebuild_peer_auth()
        if services or rule_hosts or mtls_hosts or DestinationRule.KIND in kinds:  # (also: unused-rule warnings)
            self._rebuild_clusters_and_endpoints(rule_hosts | mtls_hosts,
                                                 self._registry.changed_services if services else frozenset())
        touched: set[str] = set()
        if VirtualService.KIND in kinds:
            touched = self._rebuild_virtual_services({k for k in changed if k.kind == VirtualService.KIND})
        if shapes or rule_hosts or touched:
            self._rebuild_route_table(self._registry.changed_hosts if shapes else frozenset(), touched, rule_hosts)
        if self._l4_touched(touched):  # (tcp and tls routes of VirtualServices)
            self._rebuild_port_table()
        elif shapes:
            self._rebuild_port_table(self._registry.changed_hosts)
        if shapes or not kinds.isdisjoint(security.KINDS):
            self._rebuild_security(kinds, bool(shapes))
        if self._gateways.affected(changed, prev.resources if prev is not None else {}, world.resources, bool(shapes)):
            self._gateways.invalidate()
        if Sidecar.KIND in kinds or MeshConfig.KIND in kinds:
            self._rebuild_sidecars()
        if shapes or VirtualService.KIND in kinds:
            self._capture_epoch += 1
        if shapes or Telemetry.KIND in kinds or MeshConfig.KIND in kinds:
            self._rebuild_telemetry()
        self._errors = None
        self._proxies = {
            k: s for k, s in self._proxies.items() if s.generation > self._generation - PROXY_MEMO_UPDATES
        }
        self._observed_gateways = {k: v for k, v in self._observed_gateways.items()
                                   if v[3] > self._generation - PROXY_MEMO_UPDATES}
        if len(self._scopes) > 2 * len(self._proxies) + 8:  # scopes of Sidecars no proxy asks for any more
            self._scopes = {k: v for k, v in self._scopes.items() if v[0][2] > self._generation - PROXY_MEMO_UPDATES}
            self._filter.forget(set(self._scopes))
            self._scoped_ports = {k: v for k, v in self._scoped_ports.items() if k in self._scopes}
            live = set(self._scopes) | {s.key for s in scope.UNSCOPED.values()}
            self._ns_routes = {k: v for k, v in self._ns_routes.items() if k[2] in live}

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        """Translation problems for the current world, sorted; per-proxy ones (listener
        conflicts) once that proxy has been translated for this world."""
        if self._errors is None:
            found = [e for errs in self._stage_errors.values() for e in errs]
            found += self._registry.errors
            found += [e for s in self._proxies.values() if s.generation == self._generation
                      for e in (*s.errors, *s.conflicts)]
            found += self._grpc.errors()
            found += self._gateways.errors()
            self._errors = tuple(sorted(set(found), key=lambda e: (e.file, e.resource, e.field, e.message)))
        return self._errors

    def for_proxy(self, proxy: Proxy) -> dict[str, list[api.Layer]]:
        if proxy.generator == "grpc":
            return self._grpc.for_proxy(proxy)
        out: dict[str, list[api.Layer]] = {
            api.CLUSTER: [self._clusters],
            api.ENDPOINT: [self._endpoints],
        }
        workload = self._index.workload_at(proxy.namespace, proxy.ip)
        labels = listeners.workload_labels(workload, proxy.labels)
        split = self._split_for(proxy, labels)
        if split is not None:
            out[api.CLUSTER].append(split[0])
            out[api.ENDPOINT].append(split[1])
        if proxy.locality or self._failover_priority:  # locality load balancing, as seen from the proxy
            out[api.ENDPOINT] = [self._localized(layer, proxy) for layer in out[api.ENDPOINT]]
        if not proxy.identity:  # no certificate to do mTLS with: plaintext to every peer
            out[api.CLUSTER] = [self._plaintext(layer) for layer in out[api.CLUSTER]]
        if proxy.role == "gateway":  # listeners and routes from the Gateways that select it
            gateway_listeners, gateway_routes = self._gateways.for_proxy(proxy, labels)
            out[api.LISTENER] = [self._observed_gateway(gateway_listeners, proxy, labels)]
            out[api.ROUTE] = [gateway_routes]
            return out
        sidecar, conflicts = self._sidecars.select(proxy.namespace, labels)
        seen = self._scope_for(sidecar, proxy.namespace)
        if seen.hosts is not None:  # what its Sidecar imports, picked from the shared layers
            out[api.CLUSTER] = [self._filter(layer, seen) for layer in out[api.CLUSTER]]
            out[api.ENDPOINT] = [self._filter(layer, seen) for layer in out[api.ENDPOINT]]
        if proxy.capture:
            out[api.CLUSTER] = [self._captured(layer) for layer in out[api.CLUSTER]]
        state = self._proxy_state(proxy, self._ports_for(seen), seen.mode, sidecar, conflicts, workload, labels)
        if state.inbound_clusters.resources:
            # Left out when empty: proxies with no inbound services then have the same
            # cluster view, and a response to one is a response to all of them.
            out[api.CLUSTER].append(state.inbound_clusters)
        out[api.LISTENER] = [state.listeners]
        out[api.ROUTE] = [self._routes_for(proxy, seen, labels)]
        return out

    def _observed_gateway(self, layer: api.Layer, proxy: Proxy, labels: Mapping[str, str]) -> api.Layer:
        """A gateway's listeners with the access logs and tracing its Telemetry asks for: the
        client side's, as istiod classes gateway listeners. The same object while the
        listeners and the side are (applying copies and re-encodes every listener)."""
        side = self._telemetry.for_workload(proxy.namespace, labels).client
        if side.empty:
            return layer
        hit = self._observed_gateways.get(layer.key)
        if hit is not None and hit[0] is layer and hit[1] is side:
            self._observed_gateways[layer.key] = (*hit[:3], self._generation)
            return hit[2]
        service_name = f"{labels.get('app') or proxy.pod_name or proxy.ip}.{proxy.namespace}"
        observed = _layer(("observed", layer.key), ((name, telemetry.apply(lst, side, service_name))
                                                    for name, lst in layer.resources.items()))
        self._observed_gateways[layer.key] = (layer, side, observed, self._generation)
        return observed

    # ------------------------------------------------------------ clusters and endpoints

    def _rebuild_policies(self, changed: set[ResourceKey]) -> set[str]:
        """Re-read the DestinationRules; the service hosts whose rules may have changed
        (those the changed rules name, before or now), so only they are translated again."""
        patterns = {self._policies[k].host for k in changed if k in self._policies}
        policies = {}
        for dr in self._index.all(DestinationRule.KIND):
            assert isinstance(dr, DestinationRule)
            old = self._policies.get(dr.key)
            policies[dr.key] = old if old is not None and old.resource is dr else destination_policy(dr)
        patterns |= {policies[k].host for k in changed if k in policies}
        self._policies = policies
        self._rules = RuleIndex(self._merged(policies), self._root_namespace, self._rules.interned)
        self._failover_priority = frozenset(
            entry.partition("=")[0] for p in policies.values() for tp in _traffic_policies(p)
            for lb in (tp.loadBalancer, *(s.loadBalancer for s in tp.portLevelSettings))
            if lb is not None and lb.localityLbSetting is not None for entry in lb.localityLbSetting.failoverPriority)
        exact = {h for h in patterns if not h.startswith("*")}
        wild = [h for h in patterns if h.startswith("*")]
        services = self._registry.services
        hosts = {h for h in exact if h in services}
        if wild:
            hosts |= {h for h in services if any(host_matches(w, h) for w in wild)}
        return hosts

    def _merged(self, policies: dict[ResourceKey, DestinationPolicy]) -> list[DestinationPolicy]:
        """One policy per (namespace, host, exportTo, workloadSelector): rules sharing them are
        merged (memoized on the identity of the group, so an unrelated change keeps the merged
        object). A rule with a selector merges only with rules of the same selector, as istiod."""
        groups: dict[tuple, list[DestinationPolicy]] = {}
        for key, p in policies.items():
            export_to = tuple(sorted(p.resource.spec.exportTo)) if p.selector is None else (".",)
            groups.setdefault((key.namespace, p.host, export_to, p.selector), []).append(p)
        out, memo, into = [], {}, {}
        for group in groups.values():
            if len(group) == 1:
                out.append(group[0])
                continue
            ids = tuple(id(p) for p in group)
            merged = self._merge_memo.get(ids)
            if merged is None or any(a is not b for a, b in zip(merged[0], group, strict=True)):
                merged = (tuple(group), merge_policies(group))
            memo[ids] = merged
            out.append(merged[1])
            into.update({p.resource.key: merged[1] for p in group})
        self._merge_memo, self._merged_into = memo, into
        return out

    def _destination(self, host: str) -> tuple[ServiceShape | None, DestinationPolicy | None, frozenset[str]]:
        """What a route to ``host`` reads: its service, the rule most clients see (hash
        policy) and the subsets some client has a cluster for (else: a warning)."""
        d = self._registry.services.get(host)
        if d is None:
            return routes.NO_DESTINATION
        ns = d.shape.namespace
        return d.shape, self._policy(host, ns), self._rules.subsets_seen(host, ns)

    def _policy(self, host: str, namespace: str) -> DestinationPolicy | None:
        """The rule most proxies see for ``host`` (a service in ``namespace``)."""
        return self._rules.generic(host, namespace)

    def _rebuild_clusters_and_endpoints(self, rule_hosts: set[str], service_hosts: frozenset[str] | None = None) -> None:
        """Clusters and endpoints per host, again only for changed services and ``rule_hosts``.
        ``service_hosts``: the hosts whose service changed, when the registry knows them (then
        only those and ``rule_hosts`` are visited, not every host)."""
        services = self._registry.services
        cluster_parts: dict[str, tuple[tuple, list[tuple[str, Message]]]] = {}
        endpoint_parts: dict[str, tuple[tuple, list[tuple[str, Message]]]] = {}
        split: dict[str, dict[Viewers, DestinationPolicy | None]] = {}
        visit: Iterable[str] = services
        came_or_went = False  # on the targeted path: then the dicts are put back in the registry's order
        if service_hosts is not None and self._cluster_parts:
            visit = sorted(h for h in service_hosts | rule_hosts if h in services)
            cluster_parts, endpoint_parts, split = dict(self._cluster_parts), dict(self._endpoint_parts), dict(self._split)
            came_or_went = any(h not in cluster_parts for h in visit)
            for host in service_hosts - services.keys():  # removed
                came_or_went |= cluster_parts.pop(host, None) is not None
                endpoint_parts.pop(host, None)
                split.pop(host, None)
        split_dirty = False
        for host in visit:
            svc = services[host]
            old_c, old_e = self._cluster_parts.get(host), self._endpoint_parts.get(host)
            if host not in rule_hosts and old_c is not None and old_e is not None and old_c[0][0] is svc:
                cluster_parts[host], endpoint_parts[host] = old_c, old_e  # same service, same rules
                if host in self._split:
                    split[host] = self._split[host]
                continue
            policy = self._policy(host, svc.shape.namespace)
            exceptions = self._rules.exceptions(host, svc.shape.namespace)
            if exceptions or host in self._split:
                split_dirty = True  # its service or rules changed: the per-namespace layers must follow
            split.pop(host, None)
            if exceptions:
                split[host] = exceptions
            cluster_parts[host] = self._host_clusters(svc, policy, old_c)
            endpoint_parts[host] = self._host_endpoints(svc, policy, old_e)
        if came_or_went:  # (the layers list hosts in the registry's order)
            cluster_parts = {h: cluster_parts[h] for h in services}
            endpoint_parts = {h: endpoint_parts[h] for h in services}
        if visit is not services and (split_dirty or split.keys() != self._split.keys()):
            split = {h: split[h] for h in services if h in split}  # (likewise: re-added hosts went last)
        if _parts_changed(self._cluster_parts, cluster_parts) or split.keys() != self._split.keys():
            fixed = [(n, self._clusters.resources[n]) for n in (BLACKHOLE, PASSTHROUGH)]
            self._clusters = _layer(("clusters", "outbound"), [
                *fixed, *(c for h, (_, p) in cluster_parts.items() if h not in split for c in p)])
        if _parts_changed(self._endpoint_parts, endpoint_parts) or split.keys() != self._split.keys():
            self._endpoints = _layer(("endpoints", "outbound"),
                                     (e for h, (_, p) in endpoint_parts.items() if h not in split for e in p))
        self._cluster_parts, self._endpoint_parts = cluster_parts, endpoint_parts
        if split_dirty or split.keys() != self._split.keys():
            self._split = split
            self._split_layers = {}
            # (host, rule) -> parts: kept for the rules still in use, so a change rebuilds its host only
            live = {(h, id(p)) for h, ex in split.items() for p in ex.values()}
            live |= {(h, id(self._policy(h, self._registry.services[h].shape.namespace))) for h in split}
            self._split_parts = {k: v for k, v in self._split_parts.items() if k in live}

        used = {id(inputs[-1]) for inputs, _ in cluster_parts.values()}
        used |= {id(p) for seen in split.values() for p in seen.values()}
        errors = [e for p in self._policies.values() if p.resource.key not in self._merged_into for e in p.errors]
        errors += [e for p in {id(m): m for m in self._merged_into.values()}.values() for e in p.errors]
        for p in self._policies.values():
            if id(p) not in used and id(self._merged_into.get(p.resource.key)) not in used:
                dr = p.resource
                errors.append(ConfigError(dr.source, str(dr.key), "spec.host", f"no service uses this rule: host "
                                          f"{p.host} is not in the registry, another DestinationRule takes "
                                          "precedence, or its namespace is neither the client's, the service's "
                                          "nor the root namespace", "warning"))
        self._stage_errors["destination-rules"] = errors

    def _host_clusters(self, svc, policy, old):  # type: ignore[no-untyped-def]
        dns = svc.endpoints if svc.shape.discovery != "EDS" else None
        auto_mtls = clusters.in_mesh(svc) and self._peer_auth.service_mode(svc.shape.namespace) != "DISABLE"
        inputs = (svc, svc.shape, dns, auto_mtls, policy)  # the policy last: see "used" above
        if old is not None and _same(old[0][1:], inputs[1:]):
            return old
        return inputs, clusters.service_clusters(svc, policy, auto_mtls)

    def _host_endpoints(self, svc, policy, old):  # type: ignore[no-untyped-def]
        inputs = (svc, svc.shape, svc.endpoints, policy)
        if old is not None and _same(old[0][1:], inputs[1:]):
            return old
        return inputs, endpoints.service_assignments(svc, policy)

    def _split_for(self, proxy: Proxy, labels: Mapping[str, str] | None = None) -> tuple[api.Layer, api.Layer] | None:
        """Clusters and endpoints of the hosts whose DestinationRule depends on the client's
        namespace (a rule in it, or an exportTo naming it) or workload (a workloadSelector), as
        ``proxy`` (its workload ``labels``, looked up when needed and not given) sees them.
        Clients that see the same rules share the same layers."""
        if not self._split:
            return None
        services = self._registry.services
        namespace = proxy.namespace
        selectors: tuple = ()
        if self._rules.selects_in(namespace):
            if labels is None:
                labels = listeners.workload_labels(self._index.workload_at(namespace, proxy.ip), proxy.labels)
            selectors = self._rules.selectors_matching(namespace, labels)

        def rule(host: str, ex: dict[Viewers, DestinationPolicy | None]) -> DestinationPolicy | None:
            if selectors:
                selected = [p for sel in selectors if (p := ex.get((namespace, sel))) is not None]
                if selected:
                    return self._rules.first(selected)
            return ex[namespace] if namespace in ex else self._policy(host, services[host].shape.namespace)

        seen = tuple((h, rule(h, ex)) for h, ex in self._split.items())
        key = tuple((h, id(p)) for h, p in seen)
        layers = self._split_layers.get(key)
        if layers is None:
            cs, es = [], []
            for host, policy in seen:
                svc = services[host]
                old = self._split_parts.get((host, id(policy)))
                c = self._host_clusters(svc, policy, old[0] if old else None)
                e = self._host_endpoints(svc, policy, old[1] if old else None)
                self._split_parts[(host, id(policy))] = (c, e)
                cs += c[1]
                es += e[1]
            layers = (_layer(("clusters-by-namespace", key), cs), _layer(("endpoints-by-namespace", key), es))
            self._split_layers[key] = layers
        return layers

    # ------------------------------------------------------------ mutual TLS

    def _rebuild_peer_auth(self) -> set[str]:
        """Re-read the PeerAuthentications; the hosts whose auto mTLS (client side) may change.
        Proxies look their own (server side) policy up again."""
        old = self._peer_auth
        self._peer_auth = peer_auth.PeerAuthIndex(
            (pa for pa in self._index.all(PeerAuthentication.KIND) if isinstance(pa, PeerAuthentication)),
            self._root_namespace)
        self._stage_errors["peer-authentication"] = self._peer_auth.errors
        self._security_epoch += 1
        return {h for h, svc in self._registry.services.items()
                if old.service_mode(svc.shape.namespace) != self._peer_auth.service_mode(svc.shape.namespace)}

    def _localized(self, layer: api.Layer, proxy: Proxy) -> api.Layer:
        """``layer`` as ``proxy`` sees it: the assignments of clusters with locality load
        balancing (features.locality) localized, the rest as they are. The same object while
        ``layer`` is, so proxies of one locality (and, with failoverPriority, the same labels
        it names) share it."""
        where = proxy.locality
        labels = tuple(sorted((k, proxy.labels.get(k, "")) for k in self._failover_priority))
        key = (id(layer), where, labels)
        hit = self._localized_layers.get(key)
        if hit is not None and hit[0] is layer:
            return hit[1]
        proxy_loc = locality.parse(where)
        parts, changed = [], False
        for name, cla in layer.resources.items():
            lb = self._locality_setting(name)
            if lb is not False and (where or (lb is not None and lb.localityLbSetting.failoverPriority)):
                memo = self._localized_protos.get((id(cla), where, labels))
                if memo is None or memo[0] is not cla:
                    if lb is not None and lb.localityLbSetting is not None and lb.localityLbSetting.failoverPriority:
                        localized = self._by_label_priority(name, cla, lb.localityLbSetting.failoverPriority, proxy)
                    else:
                        localized = locality.localize(cla, proxy_loc, lb)  # type: ignore[arg-type]
                    memo = (cla, localized)
                    self._localized_protos[(id(cla), where, labels)] = memo
                cla, changed = memo[1], True
            parts.append((name, cla))
        result = _layer(("endpoints-locality", layer.key, where, labels), parts) if changed else layer
        if len(self._localized_layers) > 64:  # forget layers that are no longer current
            self._localized_layers, self._localized_protos = {}, {}
        self._localized_layers[key] = (layer, result)
        return result

    def _by_label_priority(self, name: str, cla: Message, order: list[str], proxy: Proxy) -> Message:
        """Istio's failoverPriority: endpoints by how many of ``order``'s labels they share
        with ``proxy``, from the registry (the assignment carries no labels)."""
        _, port, subset, host = name.split("|")
        svc = self._registry.services[host]
        index = next(i for i, p in enumerate(svc.shape.ports) if p.number == int(port))
        policy = self._policy(host, svc.shape.namespace)
        wanted = policy.subset(subset) if policy is not None and subset else None
        chosen = [e for e in svc.endpoints[index] if wanted is None or endpoints.in_subset(wanted.labels, e)]
        proxy_where = locality.parse(proxy.locality)
        ranks = {e: locality.label_priority(order, dict(proxy.labels), proxy_where, dict(e.labels),
                                            locality.parse(e.locality)) for e in chosen}
        dense = {r: i for i, r in enumerate(sorted(set(ranks.values())))}
        out = endpoint_pb2.ClusterLoadAssignment(cluster_name=cla.cluster_name)  # type: ignore[attr-defined]
        for rank in sorted(dense):
            part = endpoints.load_assignment(name, [e for e in chosen if ranks[e] == rank])
            for g in part.endpoints:
                g.priority = dense[rank]
                out.endpoints.append(g)
        return out

    def _locality_setting(self, cluster: str):  # type: ignore[no-untyped-def]
        """The load balancer settings of ``cluster`` if locality load balancing applies to it,
        else False (memoized on the rule's identity)."""
        parts = cluster.split("|")
        if len(parts) != 4 or parts[0] != "outbound":
            return False
        svc = self._registry.services.get(parts[3])
        policy = self._policy(parts[3], svc.shape.namespace) if svc is not None else None
        if policy is None:
            return False
        memo = self._locality_memo.get(cluster)
        if memo is not None and memo[0] is policy:
            return memo[1]
        cp = policy.cluster_policy(int(parts[1]), parts[2])
        found = cp.load_balancer if locality.applies(cp.load_balancer, cp.outlier_detection) else False
        self._locality_memo[cluster] = (policy, found)
        return found

    def _captured(self, layer: api.Layer) -> api.Layer:
        """``layer`` with the PassthroughCluster of captured traffic (the same object while
        ``layer`` is)."""
        if PASSTHROUGH not in layer.resources:
            return layer
        hit = self._captured_layers.get(id(layer))
        if hit is not None and hit[0] is layer:
            return hit[1]
        result = _layer(("clusters-captured", layer.key),
                        {**layer.resources, PASSTHROUGH: self._captured_passthrough}.items())
        if len(self._captured_layers) > 16:  # (only the current first layers are asked for)
            self._captured_layers = {}
        self._captured_layers[id(layer)] = (layer, result)
        return result

    def _plaintext(self, layer: api.Layer) -> api.Layer:
        """``layer`` without auto mTLS, for proxies that have no certificate: the same object
        while ``layer`` is, and each cluster's plaintext form the same while its source is."""
        hit = self._plaintext_layers.get(id(layer))
        if hit is not None and hit[0] is layer:
            return hit[1]
        parts = []
        changed = False
        for name, c in layer.resources.items():
            memo = self._plaintext_protos.get(id(c))
            if memo is None or memo[0] is not c:
                memo = self._plaintext_protos[id(c)] = (c, mtls.without_auto_mtls(c))  # type: ignore[arg-type]
            changed |= memo[1] is not c
            parts.append((name, memo[1]))
        result = _layer(("clusters-plaintext", layer.key), parts) if changed else layer
        self._plaintext_layers[id(layer)] = (layer, result)
        if len(self._plaintext_layers) > 4 + 2 * len(self._split_layers):  # forget what no proxy can ask for
            live = {id(self._clusters), *(id(s[0]) for s in self._split_layers.values())}
            self._plaintext_layers = {k: v for k, v in self._plaintext_layers.items() if k in live}
            protos = {id(c) for src, _ in self._plaintext_layers.values() for c in src.resources.values()}
            self._plaintext_protos = {k: v for k, v in self._plaintext_protos.items() if k in protos}
        return result

    # ------------------------------------------------------------ routes

    def _rebuild_virtual_services(self, changed: set[ResourceKey]) -> set[str]:
        """Patch the mesh VirtualServices; the hosts (patterns) the changed ones named before or now."""
        patched = self._patch_virtual_services(changed)
        if patched is not None:
            return patched
        touched: set[str] = set()
        for key in changed:
            old = self._mesh_vs.pop(key, None)
            if old is not None:
                touched.update(old[1])
            vs = self._world.resources.get(key) if self._world is not None else None
            if isinstance(vs, VirtualService) and (not vs.spec.gateways or "mesh" in vs.spec.gateways):
                # (a VirtualService for gateways only is left to the gateway translation)
                hosts = tuple(resolve_host(h, vs.metadata.namespace) for h in vs.spec.hosts)
                self._mesh_vs[key] = (vs, hosts)
                touched.update(hosts)
        self._mesh_vs = dict(sorted(self._mesh_vs.items()))
        # A delegate (no hosts) routes for the hosts of the roots that name it.
        self._delegating = {k: hosts for k, (vs, hosts) in self._mesh_vs.items()
                            if any(h.delegate is not None for h in vs.spec.http)}
        touched |= self._delegating_to(changed)
        # Visible everywhere: the generic choice. Restricted by exportTo: per client namespace,
        # ahead of the public ones, its own namespace's first (istiod's order).
        public = [(key, vs, hosts) for key, (vs, hosts) in self._mesh_vs.items() if _public(vs.spec.exportTo)]
        self._vs_index = HostIndex((h, key.namespace, vs) for key, vs, hosts in public for h in hosts)
        restricted: dict[str, list[tuple[VirtualService, tuple[str, ...]]]] = {}
        for key, (vs, hosts) in self._mesh_vs.items():
            if _public(vs.spec.exportTo):
                continue
            for ns in _export_namespaces(vs.spec.exportTo, key.namespace):
                restricted.setdefault(ns, []).append((vs, hosts))
        for ns, entries in restricted.items():
            entries.sort(key=lambda e: e[0].metadata.namespace != ns)  # stable: then namespace/name
        self._vs_restricted = restricted
        return touched

    def _patch_virtual_services(self, changed: set[ResourceKey]) -> set[str] | None:
        """The common edit (routes changed; hosts, exportTo and the mesh binding kept; no
        delegation either side) swaps the objects in place, instead of re-sorting and
        re-indexing every VirtualService (tens of ms at 5000). None: rebuild everything."""
        world = self._world
        swaps = []
        for key in changed:
            old = self._mesh_vs.get(key)
            vs = world.resources.get(key) if world is not None else None
            if (old is None or not isinstance(vs, VirtualService) or key in self._delegating
                    or (vs.spec.gateways and "mesh" not in vs.spec.gateways)
                    or vs.spec.hosts != old[0].spec.hosts or vs.spec.exportTo != old[0].spec.exportTo
                    or any(h.delegate is not None for h in vs.spec.http)):
                return None
            swaps.append((key, old, vs))
        touched: set[str] = set()
        for key, (was, hosts), vs in swaps:
            self._mesh_vs[key] = (vs, hosts)  # (an existing key: the sorted order holds)
            touched.update(hosts)
            if _public(vs.spec.exportTo):
                self._vs_index.replace(hosts, was, vs)
            else:
                for entries in self._vs_restricted.values():
                    entries[:] = [(vs, h) if v is was else (v, h) for v, h in entries]
        return touched | self._delegating_to(changed)

    def _delegating_to(self, changed: set[ResourceKey]) -> set[str]:
        """The hosts of the roots that delegate to one of ``changed``."""
        out: set[str] = set()
        for key, hosts in self._delegating.items():
            root = self._mesh_vs[key][0]
            names = {(h.delegate.namespace or key.namespace, h.delegate.name) for h in root.spec.http if h.delegate}
            if any((k.namespace, k.name) in names for k in changed):
                out.update(hosts)
        return out

    def _rebuild_route_table(self, shaped: frozenset[str], touched: set[str], rule_hosts: set[str]) -> None:
        """Virtual host parts per host and HTTP port. Only hosts a changed VirtualService
        names, hosts whose shape changed (in ``shaped``: changed, added or removed) or whose
        routes send to one, and hosts whose routes send to a host in ``rule_hosts`` (its
        DestinationRule changed), are looked at again: a part reads nothing else that a
        service or rule change can move (the others keep their memoized parts)."""
        services = self._registry.services
        exact = {h for h in touched if not h.startswith("*")}
        wild = [h for h in touched if h.startswith("*")]
        if not rule_hosts and not wild and self._patch_route_table(exact, shaped):
            return
        host_parts: dict[str, tuple[tuple, list[routes.VirtualHostPart], frozenset[str]]] = {}
        table: dict[int, list[routes.VirtualHostPart]] = {}
        positions: dict[int, dict[str, int]] = {}
        for host, svc in services.items():
            old = self._host_parts.get(host)
            if (old is None or host in exact or (shaped and not shaped.isdisjoint(old[2]))
                    or (rule_hosts and not rule_hosts.isdisjoint(old[2]))
                    or (wild and any(host_matches(w, host) for w in wild))):
                old = self._host_part(svc, old)
            host_parts[host] = old
            for part in old[1]:
                in_row = table.setdefault(part.port.number, [])
                positions.setdefault(part.port.number, {})[host] = len(in_row)
                in_row.append(part)
        self._host_parts = host_parts
        self._row_positions = positions
        self._dependents = None
        new_table = {}
        for number in sorted(table):
            old_row = self._route_table.get(number)
            row = tuple(table[number])
            new_table[number] = old_row if old_row is not None and _same(old_row, row) else row
        if new_table.keys() != self._route_table.keys() or any(
            new_table[n] is not self._route_table[n] for n in new_table
        ):
            self._route_collisions = {
                n: (self._route_collisions.get(n, frozenset())
                    if _same_hosts(self._route_table.get(n), row) else routes.colliding_domains(row))
                for n, row in new_table.items()
            }
            self._route_table = new_table
            self._routes_epoch += 1
        self._part_errors = [e for _, parts, _ in host_parts.values() for part in parts for e in part.errors]
        conditions = {c for _, parts, _ in host_parts.values() for part in parts if part.source_dependent
                      for c in part.distinct_conditions()}
        self._source_conditions = tuple(sorted(conditions, key=repr))
        self._route_stage_errors()

    def _route_stage_errors(self) -> None:
        errors = self._virtual_service_errors() + self._part_errors
        self._rebuild_route_overrides()
        errors += [e for _, parts, _ in self._vs_overrides.values() for part in parts for e in part.errors]
        self._stage_errors["virtual-services"] = errors

    def _patch_route_table(self, hosts: set[str], shaped: frozenset[str] = frozenset()) -> bool:
        """The common edits: a VirtualService edited in place (``hosts``: the hosts it names),
        and Services whose shape changed, came or went (``shaped``). Only those hosts, and the
        hosts whose routes send to a shaped one, are translated again; a part keeping its
        ports is swapped into its rows, and only the rows that gained or lost a host are
        assembled again, instead of visiting every host (tens of ms at 5000). Not for parts
        with source conditions or errors either side. False: nothing done, rebuild the table."""
        services = self._registry.services
        if not self._host_parts:
            return False
        todo = set(hosts) | shaped
        if shaped:
            dependents = self._route_dependents()
            for host in shaped:
                todo |= dependents.get(host, set())
        host_parts = dict(self._host_parts)  # a new object: Sidecar scopes are memoized on it
        swaps: list[tuple[str, tuple]] = []
        moved: set[int] = set()  # rows that gained or lost a host (or a shaped one's domains may differ)
        changed: list[tuple[str, tuple | None, tuple | None]] = []
        for host in todo:
            svc, old = services.get(host), self._host_parts.get(host)
            new = self._host_part(svc, old) if svc is not None else None
            if new is old:
                continue
            if any(p.errors or p.source_dependent for p in (*(old[1] if old else ()), *(new[1] if new else ()))):
                return False
            changed.append((host, old, new))
            if new is None:
                del host_parts[host]
            else:
                host_parts[host] = new
            ports_old = [p.port.number for p in old[1]] if old is not None else None
            ports_new = [p.port.number for p in new[1]] if new is not None else None
            if new is not None and ports_old == ports_new and host not in shaped:
                swaps.append((host, new))
            else:
                moved.update(ports_old or (), ports_new or ())
        table, positions = dict(self._route_table), dict(self._row_positions)
        for host, new in swaps:
            for part in new[1]:
                n = part.port.number
                if n not in moved:
                    swapped = list(table[n])
                    swapped[positions[n][host]] = part
                    table[n] = tuple(swapped)
        collisions = dict(self._route_collisions)
        for n in moved:  # in host order, as the full rebuild makes them
            row = tuple(part for h in services if (e := host_parts.get(h)) is not None
                        for part in e[1] if part.port.number == n)
            if not row:
                table.pop(n, None), positions.pop(n, None), collisions.pop(n, None)
                continue
            positions[n] = {part.shape.host: i for i, part in enumerate(row)}
            if not _same_hosts(self._route_table.get(n), row):
                collisions[n] = routes.colliding_domains(row)
            table[n] = row
        if moved:
            table = {n: table[n] for n in sorted(table)}
        if self._dependents is not None:
            for host, old, new in changed:
                for d in old[2] if old is not None else ():
                    self._dependents.get(d, set()).discard(host)
                for d in new[2] if new is not None else ():
                    self._dependents.setdefault(d, set()).add(host)
        self._host_parts, self._row_positions, self._route_collisions = host_parts, positions, collisions
        if changed:
            self._route_table = table
            self._routes_epoch += 1
        self._route_stage_errors()
        return True

    def _route_dependents(self) -> dict[str, set[str]]:
        """Host -> the hosts whose virtual host reads it (itself, and where their routes send)."""
        if self._dependents is None:
            self._dependents = {}
            for host, entry in self._host_parts.items():
                for d in entry[2]:
                    self._dependents.setdefault(d, set()).add(host)
        return self._dependents

    def _host_part(self, svc, old, chosen=None):  # type: ignore[no-untyped-def]
        """(inputs, parts, destination hosts) of one host: its VirtualService (the generic
        choice, or ``chosen``) with its delegates merged in, and the services and rules its
        destinations name."""
        vs = chosen if chosen is not None else self._vs_index.lookup(svc.host, svc.shape.namespace)
        entries: list[routes.OwnedRoute] | None = None
        delegates: tuple = ()
        problems: list[ConfigError] = []
        if vs is not None and any(h.delegate is not None for h in vs.spec.http):
            flat, found, used = delegate.flatten(vs, self._delegate)
            entries = [routes.OwnedRoute(v, f, h) for v, f, h in flat]
            delegates = tuple(used)
            problems = [ConfigError(vs.source, str(vs.key), f, m, "warning") for f, m in found]
        dests: routes.Destinations = {}
        if vs is not None:
            for h in routes.destination_hosts(vs, entries):
                dests[h] = self._destination(h)
        own = self._policy(svc.host, svc.shape.namespace) if vs is None else None  # its default route's hash key
        inputs = (svc.shape, vs, own, *delegates, *(x for dest in dests.values() for x in dest))
        if old is not None and _same(old[0], inputs):
            return old
        http_ports = [p for p in svc.shape.ports if carries_http(p.protocol)]
        parts = [routes.virtual_host_part(svc.shape, port, vs, dests, entries, problems, own) for port in http_ports]
        return inputs, parts, frozenset(dests) | {svc.host}  # its own rule: the default route's hash key

    def _rebuild_route_overrides(self) -> None:
        """Virtual host parts of the hosts a VirtualService with a restricted exportTo routes,
        as the namespaces it is exported to see them."""
        services = self._registry.services
        overrides: dict[tuple[str, str], tuple[tuple, list[routes.VirtualHostPart], frozenset[str]]] = {}
        for ns, entries in self._vs_restricted.items():
            for vs, patterns in entries:
                for pattern in patterns:
                    hosts = [pattern] if not pattern.startswith("*") else [h for h in services if host_matches(pattern, h)]
                    for host in hosts:
                        svc = services.get(host)
                        if svc is None or (ns, host) in overrides:
                            continue  # not a service, or an earlier VirtualService claimed it for ns
                        overrides[(ns, host)] = self._host_part(svc, self._vs_overrides.get((ns, host)), vs)
        if overrides.keys() != self._vs_overrides.keys() or any(
            overrides[k] is not self._vs_overrides[k] for k in overrides
        ):
            self._routes_epoch += 1
        self._vs_overrides = overrides
        by_ns: dict[str, dict[tuple[str, int], routes.VirtualHostPart]] = {}
        for (ns, host), (_, parts, _) in overrides.items():
            for part in parts:
                by_ns.setdefault(ns, {})[(host, part.port.number)] = part
        self._overrides_by_ns = by_ns

    def _delegate(self, namespace: str, name: str) -> VirtualService | None:
        return self._world.get(VirtualService, namespace, name) if self._world is not None else None

    def _virtual_service_errors(self) -> list[ConfigError]:
        services = self._registry.services
        errors = []
        for vs, hosts in self._mesh_vs.values():
            for i, host in enumerate(hosts):
                if host in services or (host.startswith("*") and any(host_matches(host, s) for s in services)):
                    continue
                errors.append(ConfigError(vs.source, str(vs.key), f"spec.hosts[{i}]",
                                          f"host {host} matches no service in the registry", "warning"))
        for host in self._vs_index.contested(services):
            chosen = self._vs_index.lookup(host, services[host].shape.namespace)
            for vs in self._vs_index.all_matching(host):
                if vs is not chosen:
                    errors.append(ConfigError(vs.source, str(vs.key), "spec.hosts", f"ignored for host {host}: "
                                              f"{chosen.key if chosen else '?'} routes it", "warning"))
        return errors

    def _routes_for(self, proxy: Proxy, seen: scope.Scope, labels: dict[str, str]) -> api.Layer:
        """The route configs of ``proxy``: per namespace, and per set of source conditions
        (sourceLabels/sourceNamespace of VirtualService matches) the proxy satisfies, when
        the mesh has any; per scope: the virtual hosts of the hosts it imports, and the
        catch-all of its outboundTrafficPolicy."""
        namespace = proxy.namespace
        satisfied: frozenset[routes.SourceCondition] = frozenset()
        if self._source_conditions:
            satisfied = frozenset(c for c in self._source_conditions if c.holds(labels, namespace))
        scoped = seen.hosts is not None
        view = (namespace, satisfied, seen.key)
        state = self._ns_routes.get(view)
        if state is not None and state.epoch == self._routes_epoch and state.scope is seen:
            return state.layer
        configs: dict[int, tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {}
        overrides = self._overrides_by_ns.get(namespace)
        table = self._scoped_rows(seen) if scoped else self._route_table
        for number, row in table.items():
            if overrides:
                row = tuple(overrides.get((part.shape.host, number), part) for part in row)
            encoded = tuple(part.encoded(part.shape.namespace == namespace, satisfied) for part in row)
            old = state.configs.get(number) if state is not None else None
            if old is not None and state is not None and state.scope.mode == seen.mode and _same(old[0], encoded):
                configs[number] = old
                continue
            colliding = self._route_collisions.get(number)
            if colliding and scoped:
                colliding = routes.colliding_domains(row)
            config: tuple[bytes, ...]
            if colliding:
                config = (routes.route_configuration_deduplicated(
                    number, row, namespace, colliding, satisfied, seen.mode).SerializeToString(deterministic=True),)
            else:
                config = routes.route_configuration(number, encoded, seen.mode)
            configs[number] = (encoded, config)
        if state is not None and configs.keys() == state.configs.keys() and all(
            configs[n] is state.configs[n] for n in configs
        ):
            layer = state.layer
        else:
            key: tuple = ("routes", namespace) if not satisfied else ("routes", namespace, satisfied)
            if seen is not scope.UNSCOPED["ALLOW_ANY"]:  # a Sidecar's scope, or another catch-all
                key = (*key, seen.key)
            layer = api.Layer(key, api.EncodedResources(
                {str(n): b"".join(pieces) for n, (_, pieces) in configs.items()}, route_pb2.RouteConfiguration,
                {str(n): pieces for n, (_, pieces) in configs.items() if len(pieces) > 1}))
        self._ns_routes[view] = _NamespaceRoutes(self._routes_epoch, seen, configs, layer)
        return layer

    def _scoped_rows(self, seen: scope.Scope) -> dict[int, tuple[routes.VirtualHostPart, ...]]:
        """The route table of the hosts ``seen`` imports (in host order, as the table is)."""
        table: dict[int, list[routes.VirtualHostPart]] = {}
        for host in sorted(seen.hosts or ()):
            entry = self._host_parts.get(host)
            for part in entry[1] if entry is not None else ():
                if seen.has(host, part.port.number):
                    table.setdefault(part.port.number, []).append(part)
        return {n: tuple(table[n]) for n in sorted(table)}

    # ------------------------------------------------------------ Sidecar scopes

    def _rebuild_sidecars(self) -> None:
        found = [sc for sc in self._index.all(Sidecar.KIND) if isinstance(sc, Sidecar)]
        self._sidecars = scope.SidecarIndex(found, self._root_namespace)
        errors = list(self._sidecars.errors)
        for sc in found:
            policy = sc.spec.outboundTrafficPolicy
            if policy is not None and policy.egressProxy is not None:
                errors.append(ConfigError(sc.source, str(sc.key), "spec.outboundTrafficPolicy.egressProxy",
                                          "not supported: ALLOW_ANY passes traffic to its destination", "warning"))
            for i, listener in enumerate(sc.spec.egress):
                if listener.bind or listener.captureMode == "IPTABLES":
                    errors.append(ConfigError(sc.source, str(sc.key), f"spec.egress[{i}]", "bind and captureMode are "
                                              "not supported: outbound listeners bind the proxy's IP", "warning"))
        self._stage_errors["sidecars"] = errors
        meshes = [m for m in self._index.all(MeshConfig.KIND)
                  if isinstance(m, MeshConfig) and m.metadata.namespace == self._root_namespace]
        self._mesh_mode = scope.effective_mode(meshes[0].spec.outboundTrafficPolicy.mode) if meshes else "ALLOW_ANY"

    def _rebuild_telemetry(self) -> None:
        """The Telemetries and the mesh config's providers (which name services): proxies look
        theirs up again, and are rebuilt where the answer is another one."""
        mesh = next((m for m in self._index.all(MeshConfig.KIND)
                     if isinstance(m, MeshConfig) and m.metadata.namespace == self._root_namespace), None)
        services = self._registry.services
        table, broken = telemetry.providers(mesh, lambda svc, port: security.provider_cluster(services, svc, port))
        found = [t for t in self._index.all(Telemetry.KIND) if isinstance(t, Telemetry)]
        old = self._telemetry
        if old.same_inputs(found, mesh, table, broken):  # a service change that moved no provider's cluster
            return
        self._telemetry = telemetry.TelemetryIndex(found, self._root_namespace, mesh, table, broken, old.interned)
        self._stage_errors["telemetry"] = list(self._telemetry.errors)
        self._security_epoch += 1

    def _scope_for(self, sidecar: Sidecar | None, namespace: str) -> scope.Scope:
        """The scope of proxies in ``namespace`` that ``sidecar`` applies to: recomputed when
        the Sidecar, the services or the routes change, and the same object while what it
        imports and its mode stay the same."""
        mode = scope.mode_of(sidecar, self._mesh_mode)
        if sidecar is None or not sidecar.spec.egress:  # no egress: istiod imports */*
            return scope.UNSCOPED[mode]
        key = scope.scope_key(sidecar.key, namespace)
        services = self._registry.services
        hit = self._scopes.get(key)
        inputs = (sidecar, self._shapes_epoch, self._generation, self._host_parts, mode)
        if hit is not None and hit[0][0] is sidecar and hit[0][1] == self._shapes_epoch \
                and hit[0][3] is self._host_parts and hit[0][4] == mode:
            if hit[0][2] != self._generation:
                self._scopes[key] = (inputs, hit[1])
            return hit[1]

        def destinations(host: str) -> frozenset[str]:
            entry = self._host_parts.get(host)
            return entry[2] if entry is not None else frozenset()

        hosts, ports = scope.imported_hosts(sidecar, namespace, services, self._registry.by_namespace, destinations,
                                            visible_to)
        old = hit[1] if hit is not None else None
        if old is not None and old.hosts == hosts and old.mode == mode and old.ports == ports:
            found = old
        else:
            found = scope.Scope(key, hosts, mode, ports)
        self._scopes[key] = (inputs, found)
        return found

    def _ports_for(self, seen: scope.Scope) -> dict[int, listeners.OutboundPort]:
        """The outbound port table of a scope: of the services it imports."""
        if seen.hosts is None:
            return self._port_table
        hit = self._scoped_ports.get(seen.key)
        if hit is not None and hit[0][0] is seen and hit[0][1] is self._port_table:
            return hit[1]
        services = self._registry.services
        table, _ = self._outbound_ports(_on_ports(services[h], seen) for h in sorted(seen.hosts) if h in services)
        old = hit[1] if hit is not None else {}
        table = {n: old[n] if n in old and old[n] == p else p for n, p in table.items()}
        if table.keys() == old.keys() and all(table[n] is old[n] for n in table):
            table = old
        self._scoped_ports[seen.key] = ((seen, self._port_table), table)
        return table

    # ------------------------------------------------------------ listeners

    def _outbound_ports(self, services: Iterable[MeshService]) -> tuple[dict[int, listeners.OutboundPort],
                                                                        list[ConfigError]]:
        """The outbound port table of ``services``: of the registry, or of a Sidecar scope."""
        return listeners.outbound_ports(services, self._vs_index.lookup)

    def _l4_touched(self, touched: set[str]) -> bool:
        """Whether a VirtualService change naming ``touched`` can change the port table: it
        reads VirtualServices only for the tcp/tls routes of services with a port that is
        not declared HTTP (TCP, TLS, or auto)."""
        services = self._registry.services
        for host in touched:
            if host.startswith("*"):
                return True
            svc = services.get(host)
            if svc is not None and any(p.protocol == AUTO or not carries_http(p.protocol) for p in svc.shape.ports):
                return True
        return False

    def _rebuild_port_table(self, shaped: frozenset[str] | None = None) -> None:
        """The registry's outbound port table. ``shaped``: the only hosts whose shape changed
        (None: anything may have): then only their ports, and the ports with tcp/tls routes
        (which read other services' ports), are worked out again."""
        services = self._registry.services
        old = self._port_table
        if shaped is None or not old:
            users: dict[int, dict[str, str]] = {}  # port -> host -> its protocol there, in host order
            for svc in services.values():
                for p in svc.shape.ports:
                    users.setdefault(p.number, {})[svc.host] = p.protocol
            self._host_ports = {h: tuple(p.number for p in s.shape.ports) for h, s in services.items()}
            redo, errors, table = set(users), {}, {}
        else:
            users, errors, table = dict(self._port_users), dict(self._port_errors), dict(old)
            redo = {n for n, p in old.items() if p.tcp_routes or p.tls_routes}
            for host in shaped:
                found = services.get(host)
                now = {p.number: p.protocol for p in found.shape.ports} if found is not None else {}
                for n in self._host_ports.pop(host, ()):
                    if n not in now:
                        users[n] = {h: proto for h, proto in users[n].items() if h != host}
                        redo.add(n)
                for n, proto in now.items():
                    mine = dict(users.get(n, {}))
                    added = host not in mine
                    mine[host] = proto
                    users[n] = dict(sorted(mine.items())) if added else mine  # (host order)
                    redo.add(n)
                if found is not None:
                    self._host_ports[host] = tuple(now)
        for n in redo:
            if not users.get(n):
                users.pop(n, None), errors.pop(n, None), table.pop(n, None)
                continue
            errors[n] = []
            port = listeners.outbound_port(n, [(services[h], proto) for h, proto in users[n].items()],
                                           self._vs_index.lookup, self._host_ports, errors[n])
            table[n] = old[n] if n in old and old[n] == port else port
        if list(table) != sorted(table):
            table = {n: table[n] for n in sorted(table)}
        if table.keys() != old.keys() or any(table[n] is not old[n] for n in table):
            self._port_table = table
        self._port_users, self._port_errors = users, errors
        self._stage_errors["ports"] = [e for n in sorted(errors) for e in errors[n]]

    def _proxy_state(self, proxy: Proxy, port_table: dict[int, listeners.OutboundPort], mode: scope.Mode,
                     sidecar: Sidecar | None, conflicts: tuple[ConfigError, ...], workload: Pod | WorkloadEntry | None,
                     labels: dict[str, str]) -> _ProxyState:
        """``workload`` and ``labels``: what for_proxy already looked up for the Sidecar selection;
        ``mode``: its outboundTrafficPolicy (the catch-all of a captured proxy's 15001)."""
        key = proxy.key
        state = self._proxies.get(key)
        epoch = self._ns_epoch.get(proxy.namespace, 0)
        if (state is not None and state.epoch == epoch and state.port_table is port_table
                and state.security_epoch == self._security_epoch and state.inputs[-1] is sidecar
                and state.inputs[1] == mode and (not proxy.capture or state.capture_epoch == self._capture_epoch)):
            if state.generation != self._generation:
                state.generation = self._generation
                self._errors = None if state.errors else self._errors
            return state

        ns = proxy.namespace
        selecting = self._registry.selecting(ns, labels)
        # The policies that select this workload, if it has an inbound side for them to act on
        # (services selecting it, or its Sidecar's ingress listeners).
        serves = bool(selecting) or (sidecar is not None and bool(sidecar.spec.ingress))
        policies = security.selected(self._index, self._root_namespace, ns, labels, selecting) if serves else ()
        context = (self._providers,) if security.needs_registry(policies) else ()
        peer = self._peer_auth.for_workload(ns, labels) if serves else None  # interned: compared by identity
        observed = self._telemetry.for_workload(ns, labels)  # interned: compared by identity
        inputs = (port_table, mode, workload, *(s.shape for s in selecting), *policies, *context, peer, observed,
                  sidecar)
        if state is not None and _same(state.inputs, inputs) and (
                not proxy.capture or state.capture_epoch == self._capture_epoch):
            state.epoch, state.port_table, state.inputs = epoch, port_table, inputs
        else:
            state = self._build_proxy_state(proxy, state, inputs, workload, labels, selecting, policies, peer)
            state.epoch = epoch
        if conflicts != state.conflicts:
            state.conflicts, self._errors = conflicts, None
        state.security_epoch = self._security_epoch
        state.capture_epoch = self._capture_epoch
        state.generation = self._generation
        self._proxies[key] = state
        if state.errors:
            self._errors = None
        return state

    def _rebuild_security(self, kinds: set[str], shapes: bool) -> None:
        """Proxies look their policies up again (each is rebuilt only if the policies that
        select it are other objects); the ext_authz providers follow the mesh config and
        the services they name. A change of services alone matters to the proxies whose
        policies look services up (CUSTOM, jwksUri)."""
        changed = not kinds.isdisjoint(security.KINDS)
        if changed:
            policies = self._index.all(AuthorizationPolicy.KIND) + self._index.all(RequestAuthentication.KIND)
            self._stage_errors["security-policies"] = security.policy_warnings(policies)
            self._policies_use_registry = security.needs_registry(
                p for p in policies if isinstance(p, AuthorizationPolicy | RequestAuthentication))
        if shapes or MeshConfig.KIND in kinds:
            found = [m for m in self._index.all(MeshConfig.KIND) if isinstance(m, MeshConfig)]
            mesh = next((m for m in found if m.metadata.namespace == self._root_namespace), None)
            chosen = str(mesh.key) if mesh else f"a MeshConfig in the root namespace {self._root_namespace}"
            errors = [ConfigError(m.source, str(m.key), "metadata", f"ignored: the mesh config is {chosen}", "warning")
                      for m in found if m is not mesh]
            self._providers, problems = security.providers(mesh, self._registry.services)
            self._stage_errors["mesh-config"] = errors + problems
            self._inbound_policies = {}
        if changed or self._policies_use_registry:
            self._security_epoch += 1
            self._inbound_policies = {}

    def _inbound_policy(self, policies: tuple) -> security.InboundPolicy:
        if not policies:
            return security.NO_POLICY
        inputs = (*policies, self._providers)  # the providers change with the services too
        key = tuple(id(x) for x in inputs)
        hit = self._inbound_policies.get(key)
        if hit is not None and _same(hit[0], inputs):
            return hit[1]
        policy = security.inbound_policy(policies, self._providers, self._registry.services)
        self._inbound_policies[key] = (inputs, policy)
        return policy

    def _build_proxy_state(self, proxy, old, inputs, workload, labels, selecting, policies=(), peer=None) -> _ProxyState:  # type: ignore[no-untyped-def]
        port_table, mode, observed, sidecar = inputs[0], inputs[1], inputs[-2], inputs[-1]
        app: dict[int, int] = {}  # inbound port -> the app's port, when another (Sidecar ingress defaultEndpoint)
        if sidecar is not None and sidecar.spec.ingress:  # its ingress listeners replace the services' ports
            inbound, app = _sidecar_ingress(sidecar), {
                i.port.number: ingress_port(i) for i in sidecar.spec.ingress if i.port is not None}
            errors: list[ConfigError] = []
        else:
            inbound, errors = listeners.inbound_ports(selecting, workload)
        policy = self._inbound_policy(policies) if inbound else security.NO_POLICY
        errors.extend(policy.errors)
        if proxy.capture:
            outbound = self._captured_outbound(proxy, old, port_table, labels)
        else:
            outbound = self._bound_outbound(proxy, old, port_table, labels, inbound, errors)
        # Telemetry (access logs, tracing) goes onto the finished listeners: the client side's
        # on outbound ones and 15001, the server side's on inbound ones and 15006. A listener
        # and side both unchanged keep the last result (apply copies and re-encodes).
        service_name = f"{labels.get('app') or proxy.pod_name or proxy.ip}.{proxy.namespace}"
        applied = old.applied if old is not None else {}
        kept: dict[str, tuple[Message, object, Message]] = {}

        def observe(name: str, lst: listener_pb2.Listener, side: telemetry.Side) -> tuple[str, Message]:
            hit = applied.get(name)
            if hit is None or hit[0] is not lst or hit[1] is not side:
                hit = (lst, side, telemetry.apply(lst, side, service_name))
            kept[name] = hit
            return name, hit[2]

        named = [observe(lst.name, lst, observed.client) for _, lst in outbound.values()]
        peer = peer or peer_auth.PERMISSIVE
        ip = capture.WILDCARD if proxy.capture else proxy.ip  # (captured: chains of 15006)
        inbound_built: dict[int, tuple[tuple, listener_pb2.Listener]] = {}
        for p in inbound:  # kept while their inputs are (a tcp route change rebuilds the state)
            key = ((p.service.shape, policy), (ip, p.http, p.protocol, peer.for_port(p.target), bool(proxy.identity)))
            hit = old.inbound.get(p.target) if old is not None else None
            if hit is None or not _same(hit[0][0], key[0]) or hit[0][1] != key[1]:
                hit = (key, listeners.inbound(ip, p, policy, peer.for_port(p.target), bool(proxy.identity)))
            inbound_built[p.target] = hit
        virtual_inbound = None
        if proxy.capture:
            ports = tuple((t, lst) for t, (_, lst) in inbound_built.items())
            vkey = (tuple(lst for _, lst in ports), (tuple(inbound_built), peer.mode, bool(proxy.identity)))
            virtual_inbound = old.virtual_inbound if old is not None else None
            if virtual_inbound is None or not _same(virtual_inbound[0][0], vkey[0]) or virtual_inbound[0][1] != vkey[1]:
                passthrough = capture.passthrough_inbound(peer.mode, bool(proxy.identity))
                virtual_inbound = (vkey, capture.virtual_inbound(ports, passthrough))
            named += [observe(capture.VIRTUAL_OUTBOUND, _VIRTUAL_OUTBOUND[mode], observed.client),
                      observe(capture.VIRTUAL_INBOUND, virtual_inbound[1], observed.server)]
        else:
            named += [observe(lst.name, lst, observed.server) for _, lst in inbound_built.values()]
        address = listeners.app_address(workload)
        inbound_clusters = []
        for p in inbound:
            c = clusters.inbound(p.target, address, p.protocol, app.get(p.target))
            inbound_clusters.append((c.name, c))
        inbound_clusters += [(c.name, c) for c in policy.clusters]
        if proxy.capture:
            inbound_clusters.append((capture.INBOUND_PASSTHROUGH, _INBOUND_PASSTHROUGH))
        return _ProxyState(
            epoch=0,
            port_table=port_table,
            inputs=inputs,
            outbound=outbound,
            inbound=inbound_built,
            listeners=_same_layer(old.listeners if old is not None else None, ("listeners", proxy.key), named),
            inbound_clusters=_layer(("clusters-inbound", proxy.key), inbound_clusters),
            errors=tuple(errors),
            virtual_inbound=virtual_inbound,
            applied=kept,
        )

    def _bound_outbound(self, proxy: Proxy, old: _ProxyState | None, port_table: dict[int, listeners.OutboundPort],
                        labels: dict[str, str], inbound: list[listeners.InboundPort], errors: list[ConfigError],
                        ) -> dict[int | str, tuple[listeners.OutboundPort, listener_pb2.Listener]]:
        """Without capture: one listener on the proxy's IP per port number (not where an
        inbound listener takes that ip:port)."""
        by_target = {p.target: p for p in inbound}
        outbound: dict[int | str, tuple[listeners.OutboundPort, listener_pb2.Listener]] = {}
        for number, port in port_table.items():
            if number in by_target:
                res = by_target[number].service.resource
                errors.append(ConfigError(res.source, str(res.key), "spec.ports", f"the inbound listener on "
                                          f"{proxy.ip}:{number} replaces the outbound one for {', '.join(port.hosts)}",
                                          "warning"))
                continue
            prev = old.outbound.get(number) if old is not None else None
            if prev is None or prev[0] is not port or port.source_dependent:
                prev = (port, listeners.outbound(proxy.ip, port, labels, proxy.namespace))
            outbound[number] = prev
        return outbound

    def _captured_outbound(self, proxy: Proxy, old: _ProxyState | None, port_table: dict[int, listeners.OutboundPort],
                           labels: dict[str, str]) -> dict[int | str, tuple[listeners.OutboundPort, listener_pb2.Listener]]:
        """With capture: the listeners 15001 hands connections to (capture.py), ``0.0.0.0_<port>``
        for HTTP and for TCP services without an address, ``<address>_<port>`` for the others."""
        services = self._registry.services
        wanted: dict[str, listeners.OutboundPort] = {}
        for number, port in port_table.items():
            users = [services[h] for h in port.hosts if h in services]
            addressed = [s for s in users if capture.by_address(s, number)]
            for svc in addressed:
                wanted[listeners.outbound_listener(capture.service_address(svc), number)] = self._own_row(svc, number)
            others = [s for s in users if s not in addressed and not any(
                p.number == number and carries_http(p.protocol) for p in s.shape.ports)]
            if port.http and not others and addressed:  # the TCP services have their own listeners
                port = replace(port, cluster="", tcp_routes=(), tls=(), tls_routes=())
            if port.http or others:
                wanted[listeners.outbound_listener(capture.WILDCARD, number)] = port
        outbound: dict[int | str, tuple[listeners.OutboundPort, listener_pb2.Listener]] = {}
        for name, port in wanted.items():
            prev = old.outbound.get(name) if old is not None else None
            if prev is None or prev[0] != port or port.source_dependent:
                prev = (port, capture.outbound(name.rpartition("_")[0], port, labels, proxy.namespace))
            outbound[name] = prev
        return outbound

    def _own_row(self, svc: MeshService, number: int) -> listeners.OutboundPort:
        """What the ``<address>_<port>`` listener of one TCP/TLS service does: its cluster and
        its VirtualService tcp/tls routes (kept while the service shapes and the VirtualService are)."""
        if self._own_rows_epoch != self._shapes_epoch:  # (endpoints alone change no row)
            self._own_rows_epoch = self._shapes_epoch
            self._own_rows = {}
        vs = self._vs_index.lookup(svc.host, svc.shape.namespace)
        hit = self._own_rows.get(svc.host)
        if hit is None or hit[1] is not vs:
            table, _ = listeners.outbound_ports([svc], self._vs_index.lookup, self._host_ports)  # (errors: the stage's)
            hit = self._own_rows[svc.host] = (svc, vs, table)
        return hit[2][number]


_INBOUND_PASSTHROUGH = clusters.inbound_passthrough(capture.INBOUND_PASSTHROUGH, capture.PASSTHROUGH_BIND)
_VIRTUAL_OUTBOUND = {mode: capture.virtual_outbound(mode) for mode in scope.UNSCOPED}


def _same_layer(old: api.Layer | None, key: object, named: list[tuple[str, Message]]) -> api.Layer:
    """A layer of ``named`` (sorted by name), or ``old`` when it holds the very same protos."""
    if old is not None and len(old.resources) == len(named) and all(
            old.resources.get(n) is m for n, m in named):
        return old
    return _layer(key, sorted(named, key=lambda n: n[0]))


def _on_ports(svc: MeshService, seen: scope.Scope) -> MeshService:
    """``svc`` with the ports ``seen`` imports it on."""
    if svc.host not in seen.ports:
        return svc
    kept = [i for i, p in enumerate(svc.shape.ports) if seen.has(svc.host, p.number)]
    shape = replace(svc.shape, ports=tuple(svc.shape.ports[i] for i in kept))
    return MeshService(shape, tuple(svc.endpoints[i] for i in kept), svc.resource)


def _sidecar_ingress(sidecar: Sidecar) -> list[listeners.InboundPort]:
    """The inbound ports a Sidecar's ``ingress`` listeners declare (a stand-in service names
    the Sidecar in messages)."""
    stand_in = MeshService(ServiceShape(f"Sidecar {sidecar.metadata.namespace}/{sidecar.metadata.name}",
                                        sidecar.metadata.namespace, sidecar.metadata.name, False, ()), (), sidecar)
    out = {}
    for i in sidecar.spec.ingress:
        if i.port is not None:
            protocol = port_protocol(i.port.name, None, i.port.protocol)
            out[i.port.number] = listeners.InboundPort(i.port.number, is_http(protocol), protocol, stand_in)
    return [out[n] for n in sorted(out)]


def _traffic_policies(p: DestinationPolicy) -> list[TrafficPolicy]:
    return [tp for tp in (p.traffic_policy, *(s.traffic_policy for s in p.subsets)) if tp is not None]


def _public(export_to: list[str]) -> bool:
    return not export_to or "*" in export_to


def _export_namespaces(export_to: list[str], own: str) -> list[str]:
    """The namespaces a restricted exportTo names ("." is the resource's own; "~" none)."""
    return sorted({own if e == "." else e for e in export_to if e != "~"})


def _parts_changed(old: dict, new: dict) -> bool:
    return old.keys() != new.keys() or any(old[k] is not v for k, v in new.items())
