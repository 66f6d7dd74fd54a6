"""The service registry: Kubernetes Services (+ EndpointSlices, Pods) and ServiceEntries
(+ WorkloadEntries) folded into one ``MeshService`` per host.

A MeshService splits into a ``shape`` (host, ports, how it is discovered) and its
``endpoints``. Routes and listeners only read the shape, so a Pod coming and going must
not look like a change to them: both parts are kept as the *same objects* while their
values do not change, and everything downstream memoizes on identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from translators.errors import ConfigError
from translators.model import (
    EndpointSlice,
    Pod,
    Resource,
    ResourceKey,
    Service,
    ServiceEntry,
    WorkloadEntry,
    WorkloadEntrySpec,
)
from translators.model.index import ResourceIndex
from translators.model.names import is_ip, kube_host, locality_of_labels, port_protocol, selects

#: Kinds whose change can change the registry.
KINDS = frozenset({Service.KIND, EndpointSlice.KIND, Pod.KIND, ServiceEntry.KIND, WorkloadEntry.KIND})
#: A change touching at most this many services re-reads just them, not their namespace.
TARGETED_MAX = 64

Labels = tuple[tuple[str, str], ...]
#: How a cluster finds its endpoints: EDS (Kubernetes, STATIC), DNS (the two DNS
#: resolutions) or ORIGINAL_DST (resolution NONE: wherever the client was going).
Discovery = Literal["EDS", "STRICT_DNS", "LOGICAL_DNS", "ORIGINAL_DST"]
#: Istio's annotation that gives a Kubernetes Service its exportTo.
EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    labels: Labels = ()
    locality: str = ""  # region/zone/subzone
    weight: int = 0  # ServiceEntry endpoint / WorkloadEntry weight; 0: unset (Envoy's 1)


@dataclass(frozen=True, slots=True)
class MeshPort:
    number: int
    name: str
    protocol: str
    target: int | str | None = None  # Service targetPort (number or container port name) / SE targetPort


@dataclass(frozen=True, slots=True)
class ServiceShape:
    host: str
    namespace: str
    name: str
    kubernetes: bool  # Kubernetes hosts also answer to short names
    ports: tuple[MeshPort, ...]
    discovery: Discovery = "EDS"
    selector: Labels | None = None  # Service selector / ServiceEntry workloadSelector, for inbound
    #: The service accounts of its pods / WorkloadEntries (in ``namespace``), sorted: the
    #: identities mTLS clients expect (Istio's push.ServiceAccounts); with
    #: ``subject_alt_names`` empty too, any mesh identity is accepted.
    service_accounts: tuple[str, ...] = ()
    #: Where it is visible: namespace names; None everywhere (``*``, the default), empty
    #: nowhere (``~``). ``.`` is resolved to ``namespace``. See ``visible_to``.
    export_to: frozenset[str] | None = None
    #: A ServiceEntry's ``location: MESH_EXTERNAL``: never auto mTLS.
    mesh_external: bool = False
    #: A ServiceEntry's ``subjectAltNames``: SANs a client accepts besides the accounts'.
    subject_alt_names: tuple[str, ...] = ()
    #: A ServiceEntry's ``addresses`` (IPs or CIDRs), as written; a Service's ClusterIP.
    addresses: tuple[str, ...] = ()


Endpoints = tuple[tuple[Endpoint, ...], ...]  # aligned with shape.ports


@dataclass(frozen=True, eq=False, slots=True)
class MeshService:
    shape: ServiceShape
    endpoints: Endpoints
    resource: Resource

    @property
    def host(self) -> str:
        return self.shape.host


def visible_to(shape: ServiceShape, namespace: str) -> bool:
    """Whether proxies in ``namespace`` may see the service (Istio's exportTo)."""
    return shape.export_to is None or namespace in shape.export_to


def export_scope(entries: Iterable[str], namespace: str) -> frozenset[str] | None:
    """exportTo entries as a ``ServiceShape.export_to``: ``*`` (or nothing) is everywhere,
    ``~`` nobody, ``.`` the own ``namespace``."""
    names = {e.strip() for e in entries} - {""}
    if not names or "*" in names:
        return None
    if "~" in names:
        return frozenset()
    return frozenset(namespace if e == "." else e for e in names)


def _labels(d: dict[str, str]) -> Labels:
    return tuple(sorted(d.items()))


def _error(res: Resource, field: str, message: str, severity: str = "error") -> ConfigError:
    return ConfigError(res.source, str(res.key), field, message, severity)  # type: ignore[arg-type]


# ---------------------------------------------------------------- Kubernetes Services


def _kube_inputs(
    svc: Service, slices: Sequence[EndpointSlice], pods: dict[str, Resource], by_label: dict[tuple[str, str], list[Resource]]
) -> tuple:
    """Everything a Service's MeshService is built from, for the identity check."""
    if slices:
        refs = tuple(
            pods.get(e.targetRef.name) if e.targetRef and e.targetRef.kind == "Pod" else None
            for s in slices
            for e in s.endpoints
        )
        return (svc, tuple(slices), refs)
    if svc.spec.selector:
        # What the endpoints controller would do: no slice exists (yet), use the Pods.
        sel = svc.spec.selector
        # Start from the Pods carrying the rarest selector label, not from every Pod.
        candidates = min((by_label.get(kv, []) for kv in sel.items()), key=len)
        return (svc, (), tuple(p for p in candidates if selects(sel, p.metadata.labels)))
    return (svc, (), ())


def _service_inputs(index: ResourceIndex, ns: str, services: Sequence[Service] | None,
                    ) -> tuple[dict[str, list[EndpointSlice]], dict[tuple[str, str], list[Resource]]]:
    """What _kube_inputs reads of ``ns`` besides its Pods: each Service's slices (by name) and the
    Pods carrying each label; ``services``: only what those read, from the index (None: all,
    in one pass over the namespace's slices and Pods)."""
    slices: dict[str, list[EndpointSlice]] = {}
    by_label: dict[tuple[str, str], list[Resource]] = {}
    if services is not None:  # a few: from the index's terms, in namespace order as below
        for svc in services:
            found = [s for s in index.slices_of(ns, svc.metadata.name).values() if isinstance(s, EndpointSlice)]
            if found:
                slices[svc.metadata.name] = sorted(found, key=lambda s: s.metadata.name)
            for kv in (svc.spec.selector or {}).items():
                if kv not in by_label:
                    by_label[kv] = list(index.labelled(ns, kv).values())
        return slices, by_label
    for s in index.in_namespace(EndpointSlice.KIND, ns).values():
        assert isinstance(s, EndpointSlice)
        if s.service_name:
            slices.setdefault(s.service_name, []).append(s)
    for group in slices.values():
        group.sort(key=lambda s: s.metadata.name)
    for pod in index.in_namespace(Pod.KIND, ns).values():
        for kv in pod.metadata.labels.items():
            by_label.setdefault(kv, []).append(pod)
    return slices, by_label


def _pod_ready(pod: Pod) -> bool:
    return bool(pod.ips) and pod.status.phase not in ("Succeeded", "Failed")


def _target_port(target: int | str | None, port: int, pod: Pod) -> int | None:
    if target is None or target == "":
        return port
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    for c in pod.spec.containers:
        for cp in c.ports:
            if cp.name == target:
                return cp.containerPort
    return None  # the endpoints controller skips a pod without the named port


def _kube_service(inputs: tuple) -> MeshService:
    svc, slices, pods = inputs
    ports = tuple(
        MeshPort(p.port, p.name, port_protocol(p.name, p.appProtocol), p.targetPort)
        for p in svc.spec.ports
        if p.protocol == "TCP"  # Istio ignores UDP/SCTP ports
    )
    name, ns = svc.metadata.name, svc.metadata.namespace
    eps: list[tuple[Endpoint, ...]] = []
    for mp in ports:
        found: set[Endpoint] = set()
        if slices:
            refs = iter(pods)
            for s in slices:
                slice_port = next((sp.port for sp in s.ports if sp.name == mp.name), None)
                for e in s.endpoints:
                    pod = next(refs)
                    if slice_port is None or e.conditions.ready is False:
                        continue
                    labels = _labels(pod.metadata.labels) if pod is not None else ()
                    where = locality_of_labels(pod.metadata.labels) if pod is not None else ""
                    where = where or (e.zone and f"/{e.zone}") or ""
                    found.update(Endpoint(a, slice_port, labels, where) for a in e.addresses)
        else:
            for pod in pods:
                tp = _target_port(mp.target, mp.number, pod)
                if tp is not None and _pod_ready(pod):
                    found.add(Endpoint(pod.ips[0], tp, _labels(pod.metadata.labels), locality_of_labels(pod.metadata.labels)))
        eps.append(tuple(sorted(found, key=lambda e: (e.address, e.port))))
    selector = _labels(svc.spec.selector) if svc.spec.selector else None
    accounts = tuple(sorted({p.spec.serviceAccountName for p in pods if isinstance(p, Pod)}))
    export_to = export_scope(svc.metadata.annotations.get(EXPORT_TO_ANNOTATION, "").split(","), ns)
    # The ClusterIP (not "None": headless): captured TCP to it is told apart by address.
    vip = svc.spec.clusterIP if svc.spec.clusterIP and svc.spec.clusterIP != "None" else ""
    shape = ServiceShape(kube_host(name, ns), ns, name, True, ports, "EDS", selector, accounts, export_to,
                         addresses=(vip,) if vip else ())
    return MeshService(shape, tuple(eps), svc)


# ---------------------------------------------------------------- ServiceEntries

_DISCOVERY: dict[str, Discovery] = {
    "NONE": "ORIGINAL_DST",
    "STATIC": "EDS",
    "DNS": "STRICT_DNS",
    "DNS_ROUND_ROBIN": "LOGICAL_DNS",
}
#: The label that says an endpoint has a sidecar (features.mtls reads it for auto mTLS).
_TLS_MODE = "security.istio.io/tlsMode"


def _se_inputs(se: ServiceEntry, wles: dict[str, Resource], pods: dict[str, Resource]) -> tuple:
    ws = se.spec.workloadSelector
    if ws is None:
        return (se, ())
    # Like Istio, a workloadSelector selects WorkloadEntries and Pods of the namespace.
    sel = ws.labels
    selected = [w for w in wles.values() if selects(sel, _we_labels(w))]  # type: ignore[arg-type]
    selected += [p for p in pods.values() if selects(sel, p.metadata.labels) and _pod_ready(p)]  # type: ignore[arg-type]
    return (se, tuple(selected))


def _we_labels(w: WorkloadEntry) -> dict[str, str]:
    """Istio merges a WorkloadEntry's metadata.labels over its spec.labels."""
    return {**w.spec.labels, **w.metadata.labels} if w.metadata.labels else w.spec.labels


def _workloads(selected: Iterable[Resource]) -> tuple[list[WorkloadEntrySpec], set[str]]:
    """The selected workloads as WorkloadEntry specs, and their service accounts."""
    out, accounts = [], set()
    for w in selected:
        if isinstance(w, WorkloadEntry):
            out.append(w.spec.model_copy(update={"labels": _we_labels(w)}) if w.metadata.labels else w.spec)
        elif isinstance(w, Pod):
            # A pod's sidecar shows in its labels (tlsMode), not in its service account.
            out.append(WorkloadEntrySpec(address=w.ips[0], labels=w.metadata.labels,
                                         locality=locality_of_labels(w.metadata.labels)))
            accounts.add(w.spec.serviceAccountName)
    return out, accounts


def _endpoint(w: WorkloadEntrySpec, mp: MeshPort) -> Endpoint:
    labels = w.labels
    if w.serviceAccount and _TLS_MODE not in labels:
        labels = {**labels, _TLS_MODE: "istio"}  # Istio: a workload with an identity has a sidecar
    # Istio's order: the workload's port for the port name, the targetPort, the port number.
    port = w.ports.get(mp.name) or mp.target or mp.number
    return Endpoint(w.address, int(port), _labels(labels), w.locality or locality_of_labels(w.labels), w.weight or 0)


def _service_entry(inputs: tuple) -> tuple[list[MeshService], list[ConfigError]]:
    se, selected = inputs
    spec = se.spec
    ns = se.metadata.namespace
    discovery = _DISCOVERY[spec.resolution]
    ports = tuple(MeshPort(p.number, p.name, port_protocol(p.name, None, p.protocol), p.targetPort) for p in spec.ports)
    errors: list[ConfigError] = []
    if spec.workloadSelector:
        workloads, accounts = _workloads(selected)
        where = "spec.workloadSelector"
    else:
        workloads, accounts = list(spec.endpoints), set()
        where = "spec.endpoints"
    accounts |= {w.serviceAccount for w in workloads if w.serviceAccount}
    if discovery == "ORIGINAL_DST" and spec.workloadSelector:
        errors.append(_error(se, where, "workloadSelector should not be set when resolution mode is NONE: "
                             "the destination is the one the client asks for", "warning"))
    if discovery == "EDS":
        # Istio selects workloads with a host name as address only into DNS services.
        workloads = [w for w in workloads if is_ip(w.address)]
        if not spec.workloadSelector and not workloads:
            errors.append(_error(se, "spec.endpoints", "resolution STATIC without endpoints or workloadSelector: "
                                 "the service has no endpoints", "warning"))
    eps = tuple(
        tuple(sorted({_endpoint(w, mp) for w in workloads if w.address}, key=lambda e: (e.address, e.port)))
        for mp in ports
    )
    if discovery == "LOGICAL_DNS" and any(len(e) > 1 for e in eps):
        errors.append(_error(se, where, "DNS_ROUND_ROBIN uses only the first endpoint", "warning"))
        eps = tuple(e[:1] for e in eps)
    common = {
        "selector": _labels(spec.workloadSelector.labels) if spec.workloadSelector else None,
        "service_accounts": tuple(sorted(accounts)),
        "export_to": export_scope(spec.exportTo, ns),
        "mesh_external": spec.location == "MESH_EXTERNAL",
        "subject_alt_names": tuple(spec.subjectAltNames),
        "addresses": tuple(spec.addresses),
    }
    out = []
    for host in spec.hosts:
        host_eps = eps
        if discovery in ("STRICT_DNS", "LOGICAL_DNS") and not spec.endpoints and not spec.workloadSelector:
            host_eps = tuple((Endpoint(host, int(mp.target or mp.number)),) for mp in ports)  # DNS resolves the host
        shape = ServiceShape(host, ns, se.metadata.name, False, ports, discovery, **common)  # type: ignore[arg-type]
        out.append(MeshService(shape, host_eps, se))
    return out, errors


# ---------------------------------------------------------------- the registry


class Registry:
    """host -> MeshService, rebuilt per namespace and memoized per source resource."""

    def __init__(self) -> None:
        # source resource key -> (inputs, services, errors)
        self._memo: dict[ResourceKey, tuple[tuple, list[MeshService], list[ConfigError]]] = {}
        self.services: dict[str, MeshService] = {}  # sorted by host
        self.by_namespace: dict[str, list[MeshService]] = {}
        self._by_selector: dict[str, dict[tuple[str, str], list[tuple[int, MeshService]]]] = {}
        self._order: dict[ResourceKey, None] = {}  # memo keys in precedence order
        self._hosts_of: dict[ResourceKey, tuple[str, ...]] = {}  # memo key -> its hosts, as assembled
        # Memo keys the assembled errors name or depend on (their own problems, or a host
        # defined twice, either side): editing one of them means assembling afresh.
        self._error_keys: set[ResourceKey] = set()
        self._ns_position: dict[str, int] = {}  # host -> its index in by_namespace[its namespace]
        self._updated: list[ResourceKey] = []  # memo keys the running rebuild updated or forgot
        self.shapes_changed = False  # by the last rebuild: routes and listeners only read shapes
        self.changed_hosts: frozenset[str] = frozenset()  # whose shape the last rebuild changed, added or removed
        self.changed_services: frozenset[str] = frozenset()  # whose MeshService it changed (shape or endpoints)
        self.errors: list[ConfigError] = []
        # Pod and EndpointSlice key -> the Services whose memoized inputs hold it, so a
        # changed Pod or slice re-reads those Services only.
        self._users: dict[ResourceKey, set[ResourceKey]] = {}
        self._uses: dict[ResourceKey, tuple[ResourceKey, ...]] = {}

    def rebuild(self, index: ResourceIndex, namespaces: Iterable[str],
                changed: Iterable[ResourceKey] | None = None) -> bool:
        """Re-read the given namespaces; True when any service shape or endpoints changed.

        With ``changed`` (the keys that changed), only the Services and ServiceEntries those
        keys can touch are re-read, when that is few of them; else the whole namespace."""
        by_ns: dict[str, list[ResourceKey]] = {}
        for key in changed if changed is not None else ():
            by_ns.setdefault(key.namespace, []).append(key)
        touched = False
        self._updated = []
        for ns in namespaces:
            targets = self._affected(index, ns, by_ns.get(ns, [])) if changed is not None else None
            if targets is not None and len(targets) <= TARGETED_MAX:
                touched |= self._rebuild_some(index, ns, targets)
            else:
                touched |= self._rebuild_namespace(index, ns)
        if touched and not self._patch(self._updated):
            self._assemble()
        return touched

    def _affected(self, index: ResourceIndex, ns: str, keys: list[ResourceKey]) -> set[ResourceKey] | None:
        """The Services and ServiceEntries of ``ns`` whose inputs ``keys`` may change; None
        when that takes reading the namespace (a Pod that an EndpointSlice may name)."""
        out: set[ResourceKey] = set()
        entries = index.in_namespace(ServiceEntry.KIND, ns)
        for key in keys:
            if key.kind in (Service.KIND, ServiceEntry.KIND):
                out.add(key)
            elif key.kind == Pod.KIND:
                if index.in_namespace(EndpointSlice.KIND, ns):
                    return None  # slices name Pods by targetRef: not indexed here
                out.update(self._users.get(key, ()))
                pod = index.in_namespace(Pod.KIND, ns).get(key.name)
                if pod is not None:  # the Services that select it now
                    out.update(s.resource.key for s in self.selecting(ns, pod.metadata.labels)
                               if s.resource.kind == Service.KIND)
                out.update(ResourceKey(ServiceEntry.KIND, ns, n) for n, se in entries.items()
                           if se.spec.workloadSelector is not None)  # type: ignore[attr-defined]
            elif key.kind == EndpointSlice.KIND:
                out.update(self._users.get(key, ()))
                new = index.in_namespace(EndpointSlice.KIND, ns).get(key.name)
                if isinstance(new, EndpointSlice) and new.service_name:
                    out.add(ResourceKey(Service.KIND, ns, new.service_name))
            elif key.kind == WorkloadEntry.KIND:
                out.update(ResourceKey(ServiceEntry.KIND, ns, n) for n in entries)
            else:
                return None
        return out

    def _rebuild_some(self, index: ResourceIndex, ns: str, targets: set[ResourceKey]) -> bool:
        """``_rebuild_namespace`` for ``targets`` only: the same inputs, gathered for them alone."""
        pods = index.in_namespace(Pod.KIND, ns)
        services = index.in_namespace(Service.KIND, ns)
        slices, by_label = _service_inputs(index, ns, [s for k in targets if k.kind == Service.KIND
                                                       and isinstance(s := services.get(k.name), Service)])
        touched = False
        for key in sorted(targets, key=lambda k: (k.kind, k.name)):
            if key.kind == Service.KIND:
                svc = services.get(key.name)
                if isinstance(svc, Service):
                    inputs = _kube_inputs(svc, slices.get(key.name, []), pods, by_label)
                    touched |= self._update(key, inputs, lambda i: ([_kube_service(i)], []))
                    continue
            else:
                se = index.in_namespace(ServiceEntry.KIND, ns).get(key.name)
                if isinstance(se, ServiceEntry):
                    inputs = _se_inputs(se, index.in_namespace(WorkloadEntry.KIND, ns), pods)
                    touched |= self._update(key, inputs, _service_entry)
                    continue
            if key in self._memo:  # deleted
                self._forget(key)
                touched = True
        return touched

    def _rebuild_namespace(self, index: ResourceIndex, ns: str) -> bool:
        pods = index.in_namespace(Pod.KIND, ns)
        slices, by_label = _service_inputs(index, ns, None)
        wles = index.in_namespace(WorkloadEntry.KIND, ns)

        touched = False
        seen: set[ResourceKey] = set()
        for svc in index.in_namespace(Service.KIND, ns).values():
            assert isinstance(svc, Service)
            seen.add(svc.key)
            inputs = _kube_inputs(svc, slices.get(svc.metadata.name, []), pods, by_label)
            touched |= self._update(svc.key, inputs, lambda i: ([_kube_service(i)], []))
        for se in index.in_namespace(ServiceEntry.KIND, ns).values():
            assert isinstance(se, ServiceEntry)
            seen.add(se.key)
            touched |= self._update(se.key, _se_inputs(se, wles, pods), _service_entry)
        for key in [k for k in self._memo if k.namespace == ns and k not in seen]:
            self._forget(key)
            touched = True
        return touched

    def _forget(self, key: ResourceKey) -> None:
        self._updated.append(key)
        del self._memo[key]
        self._index_uses(key, ())

    def _update(self, key: ResourceKey, inputs: tuple, build) -> bool:  # type: ignore[no-untyped-def]
        old = self._memo.get(key)
        if old is not None and _same(old[0], inputs):
            return False
        services, errors = build(inputs)
        if old is not None:
            services = [_keep_unchanged(s, old[1]) for s in services]
        self._memo[key] = (inputs, services, errors)
        self._updated.append(key)
        if key.kind == Service.KIND:  # (svc, slices, pods)
            self._index_uses(key, (*(s.key for s in inputs[1]), *(p.key for p in inputs[2] if p is not None)))
        return True

    def _index_uses(self, key: ResourceKey, uses: tuple[ResourceKey, ...]) -> None:
        for used in self._uses.pop(key, ()):
            users = self._users.get(used)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._users[used]
        if uses:
            self._uses[key] = uses
            for used in uses:
                self._users.setdefault(used, set()).add(key)

    def _assemble(self) -> None:
        # A host defined twice: the Kubernetes Service wins, then the first by namespace/name.
        if self._order.keys() != self._memo.keys():
            order = sorted(self._memo, key=lambda k: (k.kind != Service.KIND, k.namespace, k.name))
            self._order = dict.fromkeys(order)
        services: dict[str, MeshService] = {}
        errors: list[ConfigError] = []
        error_keys: set[ResourceKey] = set()
        self._hosts_of = {}
        first_key: dict[str, ResourceKey] = {}
        for key in self._order:
            _inputs, svcs, errs = self._memo[key]
            if errs:
                errors.extend(errs)
                error_keys.add(key)
            self._hosts_of[key] = tuple(s.host for s in svcs)
            for s in svcs:
                first = services.get(s.host)
                if first is None:
                    services[s.host] = s
                    first_key[s.host] = key
                else:
                    errors.append(
                        _error(s.resource, "spec.hosts", f"host {s.host} is already defined by {first.resource.key}; ignored", "warning")
                    )
                    error_keys.update((key, first_key[s.host]))
        old = self.services
        changed = {h for h, s in services.items() if h not in old or old[h].shape is not s.shape}
        if old.keys() != services.keys():
            services = dict(sorted(services.items()))
            changed.update(h for h in old if h not in services)
        else:
            services = {h: services[h] for h in old}  # same hosts: keep the sorted order
        self.changed_hosts = frozenset(changed)
        self.shapes_changed = bool(changed)
        self.changed_services = frozenset(h for h in services.keys() | old.keys() if old.get(h) is not services.get(h))
        self.services = services
        self.by_namespace = {}
        self._ns_position = {}
        for s in self.services.values():
            in_ns = self.by_namespace.setdefault(s.shape.namespace, [])
            self._ns_position[s.host] = len(in_ns)
            in_ns.append(s)
        # Services by the first pair of their selector, so finding the services that select
        # a workload looks at a few candidates instead of every service in the namespace.
        self._by_selector = {}
        for ns, in_ns in self.by_namespace.items():
            buckets = self._by_selector.setdefault(ns, {})
            for pos, s in enumerate(in_ns):
                if s.shape.selector:
                    buckets.setdefault(s.shape.selector[0], []).append((pos, s))
        self.errors = errors
        self._error_keys = error_keys

    def _patch(self, updated: list[ResourceKey]) -> bool:
        """The common change (Services edited in place: same hosts, nothing reported of them
        before or now): their services are swapped into the assembled tables instead of
        assembling every host again (tens of ms at 5000). Problems reported of other
        Services stay as they were: the same hosts mean no host newly defined twice.
        False: assemble afresh."""
        if not self.services or self._order.keys() != self._memo.keys():
            return False
        swaps: list[MeshService] = []
        for key in updated:
            _inputs, svcs, errs = self._memo[key]
            if errs or key in self._error_keys or tuple(s.host for s in svcs) != self._hosts_of.get(key):
                return False
            for new in svcs:
                old = self.services[new.host]
                if old is new:
                    continue
                if old.shape.namespace != new.shape.namespace or old.shape.selector != new.shape.selector:
                    return False  # (the selector index would move: rare enough to assemble)
                swaps.append(new)
        self.changed_hosts = frozenset(s.host for s in swaps if self.services[s.host].shape is not s.shape)
        self.shapes_changed = bool(self.changed_hosts)
        self.changed_services = frozenset(s.host for s in swaps)
        services = dict(self.services)
        by_namespace = dict(self.by_namespace)
        for ns in {s.shape.namespace for s in swaps}:
            by_namespace[ns] = list(by_namespace[ns])
        for new in swaps:
            ns, pos = new.shape.namespace, self._ns_position[new.host]
            services[new.host] = by_namespace[ns][pos] = new
            if new.shape.selector:
                buckets = self._by_selector[ns]
                first = new.shape.selector[0]
                buckets[first] = [(p, new) if p == pos else (p, s) for p, s in buckets[first]]
        self.services, self.by_namespace = services, by_namespace
        return True

    def selecting(self, namespace: str, labels: Mapping[str, str]) -> list[MeshService]:
        """The services of ``namespace`` whose selector ``labels`` satisfy, in host order."""
        buckets = self._by_selector.get(namespace)
        if not buckets:
            return []
        found = [c for item in labels.items() for c in buckets.get(item, ())]
        found.sort(key=lambda c: c[0])
        return [s for _, s in found if all(labels.get(k) == v for k, v in s.shape.selector or ())]


def _same(a: tuple, b: tuple) -> bool:
    """Element-wise identity of two (nested) input tuples."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is y:
            continue
        if isinstance(x, tuple) and isinstance(y, tuple):
            if not _same(x, y):
                return False
        elif x is not y:
            return False
    return True


def _keep_unchanged(new: MeshService, olds: list[MeshService]) -> MeshService:
    """Reuse the old shape/endpoints objects when their values did not change."""
    old = next((o for o in olds if o.host == new.host), None)
    if old is None:
        return new
    shape = old.shape if old.shape == new.shape else new.shape
    endpoints = old.endpoints if old.endpoints == new.endpoints else new.endpoints
    if shape is new.shape and endpoints is new.endpoints:
        return new
    return MeshService(shape, endpoints, new.resource)
