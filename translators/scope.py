"""Sidecar scoping: which Sidecar a proxy gets, what it imports, and its shared layers cut
down to that.

Selection is istiod's (pilot/pkg/model push_context.go getSidecarScope): in the proxy's
namespace the first Sidecar (by name) whose ``workloadSelector`` the workload satisfies,
else the namespace's Sidecar without a selector, else the root namespace's one without a
selector (its ``.`` then means the proxy's namespace), else none: everything is imported.

A ``Scope`` is what the selected Sidecar imports (sidecar.go convertIstioListenerToWrapper
and selectServices: ``ns/host``, ``*/host``, ``./*``, ``~ns/host`` exclusions, wildcard
hosts; plus the destinations of the VirtualServices of imported hosts, as
collectImportedServices adds them) and the outboundTrafficPolicy mode. Scopes are computed
once per (Sidecar, namespace) and kept as the *same object* while what they import does
not change; ``LayerFilter`` derives a proxy's layers from the shared ones by picking the
resources of imported hosts, memoized per (shared layer, scope) and reused when the pick
is the same protos, so a change outside a proxy's scope leaves its layers untouched and
the cache pushes it nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.message import Message

from translators import api
from translators.errors import ConfigError
from translators.model import ResourceKey
from translators.model.names import host_matches, selects
from translators.model.registry import MeshService, ServiceShape
from translators.model.sidecar import Sidecar, parse_egress_host

Mode = str  # "ALLOW_ANY" | "REGISTRY_ONLY"


Ports = Mapping[str, frozenset[int]]
_NO_PORTS: Ports = MappingProxyType({})


@dataclass(frozen=True, eq=False)
class Scope:
    """What a proxy sees: ``hosts`` None means every service (no Sidecar); ``ports`` the
    hosts imported on some ports only (by egress listeners with a ``port``)."""

    key: Hashable  # stable per (Sidecar, namespace): names the filtered layers
    hosts: frozenset[str] | None
    mode: Mode
    ports: Ports = field(default_factory=lambda: _NO_PORTS)

    def has(self, host: str, port: int) -> bool:
        """Whether ``host`` is imported on ``port`` (for a scope with hosts)."""
        limited = self.ports.get(host)
        return limited is None or port in limited


#: Proxies without a Sidecar, per mesh outboundTrafficPolicy mode.
UNSCOPED = {mode: Scope(("mesh", mode), None, mode) for mode in ("ALLOW_ANY", "REGISTRY_ONLY")}


def effective_mode(mode: str) -> Mode:
    # ALLOW_ANY_DYNAMIC_DNS needs DNS proxying; without it it is ALLOW_ANY.
    return "REGISTRY_ONLY" if mode == "REGISTRY_ONLY" else "ALLOW_ANY"


class SidecarIndex:
    """The Sidecars by namespace, in istiod's order of precedence."""

    def __init__(self, sidecars: Iterable[Sidecar], root_namespace: str) -> None:
        self.selecting: dict[str, list[Sidecar]] = {}
        self.default: dict[str, Sidecar] = {}
        self.errors: list[ConfigError] = []
        for sc in sorted(sidecars, key=lambda s: (s.metadata.namespace, s.metadata.name)):
            ns = sc.metadata.namespace
            self.errors += [ConfigError(sc.source, str(sc.key), f, m, "warning") for f, m in sc.warnings()]
            if sc.spec.workloadSelector is not None:
                self.selecting.setdefault(ns, []).append(sc)
            elif ns in self.default:
                self.errors.append(_ignored(sc, f"{self.default[ns].key} is the namespace's Sidecar without a "
                                            "workloadSelector (the first by name); only one applies"))
            else:
                self.default[ns] = sc
        self.root = self.default.get(root_namespace)

    def select(self, namespace: str, labels: Mapping[str, str]) -> tuple[Sidecar | None, tuple[ConfigError, ...]]:
        """The Sidecar of a workload with ``labels`` in ``namespace``, and warnings naming
        the other Sidecars that select it too (ignored for it)."""
        matching = [sc for sc in self.selecting.get(namespace, ())
                    if selects(sc.spec.workloadSelector.labels, labels)]  # type: ignore[union-attr]
        if matching:
            chosen = matching[0]
            return chosen, tuple(_ignored(sc, f"{chosen.key} also selects workload {dict(labels)} (the first by "
                                              "name applies)") for sc in matching[1:])
        return self.default.get(namespace) or self.root, ()


def _ignored(sc: Sidecar, why: str) -> ConfigError:
    return ConfigError(sc.source, str(sc.key), "spec.workloadSelector", f"ignored: {why}", "warning")


Visible = Callable[[ServiceShape, str], bool]


def imported_hosts(sidecar: Sidecar, namespace: str, services: Mapping[str, MeshService],
                   by_namespace: Mapping[str, list[MeshService]], destinations: Callable[[str], Iterable[str]],
                   visible: Visible | None = None) -> tuple[frozenset[str], Ports]:
    """The service hosts ``sidecar`` imports for a proxy in ``namespace``: those its egress
    hosts name (their namespace is the service's), visible to ``namespace``, and the hosts
    the VirtualServices of those route to (``destinations``); and the hosts imported only
    on the ports of egress listeners that have one (a service without that port is not
    imported by such a listener, as istiod's serviceMatchingListenerPort)."""
    found: set[str] = set()
    limited: dict[str, set[int]] = {}
    everywhere: set[str] = set()  # by a listener without port: on all ports
    for listener in sidecar.spec.egress:
        port = listener.port.number if listener.port is not None and listener.port.number else None
        wanted: dict[str, list[str]] = {}
        excluded: dict[str, list[str]] = {}
        for entry in listener.hosts:
            ns, name, out = parse_egress_host(entry, namespace)
            (excluded if out else wanted).setdefault(ns, []).append(name)
        candidates: Iterable[MeshService]
        if "*" in wanted:
            candidates = services.values()
        elif all(n != "*" and not n.startswith("*") for names in wanted.values() for n in names):
            candidates = [services[n] for names in wanted.values() for n in names if n in services]
        else:
            candidates = [s for ns in wanted for s in by_namespace.get(ns, ())]
        for svc in candidates:
            shape = svc.shape
            if any(host_matches(p, shape.host) for ns in (shape.namespace, "*") for p in excluded.get(ns, ())):
                continue
            if not any(host_matches(p, shape.host) for ns in (shape.namespace, "*") for p in wanted.get(ns, ())):
                continue
            if visible is not None and not visible(shape, namespace):
                continue
            if port is None:
                everywhere.add(shape.host)
            elif any(p.number == port for p in shape.ports):
                limited.setdefault(shape.host, set()).add(port)
            else:
                continue
            found.add(shape.host)
    for host in list(found):
        for h in destinations(host):
            if h in services and h not in found:
                found.add(h)
                everywhere.add(h)  # a route destination: on its ports
    ports = MappingProxyType({h: frozenset(p) for h, p in sorted(limited.items()) if h not in everywhere})
    return frozenset(found), ports


def mode_of(sidecar: Sidecar | None, mesh_mode: Mode) -> Mode:
    policy = sidecar.spec.outboundTrafficPolicy if sidecar is not None else None
    return effective_mode(policy.mode) if policy is not None else mesh_mode


def scope_key(sidecar: ResourceKey, namespace: str) -> Hashable:
    return ("sidecar", sidecar.namespace, sidecar.name, namespace)


def port_of(name: str) -> int:
    """The port of ``outbound|<port>|<subset>|<host>``."""
    return int(name.split("|", 2)[1])


def host_of(name: str) -> str | None:
    """The service host of ``outbound|<port>|<subset>|<host>``; None for other names."""
    if not name.startswith("outbound|"):
        return None
    return name.split("|", 3)[3]


@dataclass(eq=False)
class _Index:
    layer: api.Layer
    by_host: dict[str, list[tuple[str, Message]]]
    others: list[tuple[str, Message]]  # BlackHoleCluster, PassthroughCluster, inbound...: every scope keeps them


class LayerFilter:
    """Shared layers cut down to a scope: ``(source layer, scope) -> layer``, the same
    object while the source is, and while the pick is the same protos."""

    def __init__(self) -> None:
        self._indexes: dict[Hashable, _Index] = {}  # source layer key -> its index by host
        self._filtered: dict[tuple[Hashable, Hashable], tuple[api.Layer, Scope, api.Layer]] = {}

    def __call__(self, layer: api.Layer, scope: Scope) -> api.Layer:
        if scope.hosts is None:
            return layer
        memo_key = (layer.key, scope.key)
        hit = self._filtered.get(memo_key)
        if hit is not None and hit[0] is layer and hit[1] is scope:
            return hit[2]
        index = self._index(layer)
        parts = [part for host in sorted(scope.hosts) for part in index.by_host.get(host, ())
                 if host not in scope.ports or scope.has(host, port_of(part[0]))]
        parts += index.others
        previous = hit[2].resources if hit is not None else None
        if previous is not None and len(previous) == len(parts) and all(previous.get(n) is m for n, m in parts):
            result = hit[2]  # type: ignore[index]
        else:
            result = api.Layer(("scoped", layer.key, scope.key), MappingProxyType(dict(parts)))
        self._filtered[memo_key] = (layer, scope, result)
        return result

    def _index(self, layer: api.Layer) -> _Index:
        index = self._indexes.get(layer.key)
        if index is not None and index.layer is layer:
            return index
        by_host: dict[str, list[tuple[str, Message]]] = {}
        others = []
        for name, msg in layer.resources.items():
            host = host_of(name)
            if host is None:
                others.append((name, msg))
            else:
                by_host.setdefault(host, []).append((name, msg))
        index = self._indexes[layer.key] = _Index(layer, by_host, others)
        return index

    def forget(self, live_scopes: set[Hashable]) -> None:
        """Drop what only scopes no longer in use asked for."""
        self._filtered = {k: v for k, v in self._filtered.items() if k[1] in live_scopes}
