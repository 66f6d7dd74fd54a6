"""DestinationRules and VirtualServices as looked up by host.

``HostIndex`` answers "which rule applies to this host" with Istio's precedence;
``DestinationPolicy`` is a DestinationRule as the builders read it: its traffic policy,
subsets, and warnings for the fields not (fully) applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from translators.errors import ConfigError
from translators.features.traffic_policy import NO_POLICY, ClusterPolicy, cluster_policy
from translators.model import DestinationRule, TrafficPolicy
from translators.model.names import host_matches, resolve_host

T = TypeVar("T")
#: A DestinationRule's workloadSelector: its matchLabels as sorted pairs.
Selector = tuple[tuple[str, str], ...]



class HostIndex(Generic[T]):
    """Rules by the host they name: exact hosts and ``*.suffix`` wildcards.

    Precedence for a service host: a rule in the service's own namespace first, then an
    exact host over a wildcard, then the most specific wildcard, then namespace/name order.
    """

    def __init__(self, entries: Iterable[tuple[str, str, T]]) -> None:
        self._exact: dict[str, list[tuple[str, T]]] = {}
        self._wild: list[tuple[str, str, T]] = []
        for host, ns, item in entries:  # entries come in namespace/name order
            if host.startswith("*"):
                self._wild.append((host, ns, item))
            else:
                self._exact.setdefault(host, []).append((ns, item))
        self._wild.sort(key=lambda w: -len(w[0]))  # stable: keeps namespace/name order within a length

    def replace(self, hosts: Iterable[str], old: T, new: T) -> None:
        """Put ``new`` where ``old`` is, under ``hosts`` (both name them), keeping the order."""
        for host in hosts:
            if host.startswith("*"):
                self._wild = [(h, ns, new if item is old else item) for h, ns, item in self._wild]
                continue
            rules = self._exact.get(host, [])
            for i, (ns, item) in enumerate(rules):
                if item is old:
                    rules[i] = (ns, new)

    def lookup(self, host: str, namespace: str) -> T | None:
        exact = self._exact.get(host, ())
        for ns, item in exact:
            if ns == namespace:
                return item
        wild = [(ns, item) for pattern, ns, item in self._wild if host_matches(pattern, host)]
        for ns, item in wild:
            if ns == namespace:
                return item
        if exact:
            return exact[0][1]
        return wild[0][1] if wild else None

    def contested(self, hosts: Iterable[str]) -> list[str]:
        """The hosts more than one rule names."""
        if self._wild:
            return [h for h in hosts if len(self.all_matching(h)) > 1]
        known = set(hosts)
        return [h for h, rules in self._exact.items() if len(rules) > 1 and h in known]

    def all_matching(self, host: str) -> list[T]:
        return [i for _, i in self._exact.get(host, ())] + [i for p, _, i in self._wild if host_matches(p, host)]

    def most_specific(self, host: str) -> list[T]:
        """The rules of the most specific pattern that matches ``host`` (the host itself, else
        the longest wildcard), in order; [] when none does."""
        exact = self._exact.get(host)
        if exact:
            return [i for _, i in exact]
        level: list[T] = []
        first: str | None = None
        for pattern, _, item in self._wild:  # longest first
            if first is not None and len(pattern) < len(first):
                break
            if (first is None and host_matches(pattern, host)) or pattern == first:
                first = pattern
                level.append(item)
        return level


@dataclass(frozen=True, slots=True)
class SubsetPolicy:
    name: str
    labels: tuple[tuple[str, str], ...]
    traffic_policy: TrafficPolicy | None


@dataclass(frozen=True, eq=False, slots=True)
class DestinationPolicy:
    """A DestinationRule as the cluster and route builders read it."""

    resource: DestinationRule
    host: str  # resolved against the rule's namespace
    traffic_policy: TrafficPolicy | None
    subsets: tuple[SubsetPolicy, ...]
    errors: tuple[ConfigError, ...]

    def subset(self, name: str) -> SubsetPolicy | None:
        return next((s for s in self.subsets if s.name == name), None)

    @property
    def selector(self) -> Selector | None:
        """The client workloads it is narrowed to (``workloadSelector.matchLabels``), sorted;
        None: every client that sees it. (Rules merge only with rules of the same selector.)"""
        ws = self.resource.spec.workloadSelector
        return tuple(sorted(ws.matchLabels.items())) if ws is not None else None

    def cluster_policy(self, port: int, subset: str = "") -> ClusterPolicy:
        """The effective policy of ``outbound|port|subset|host`` (see features.traffic_policy)."""
        s = self.subset(subset) if subset else None
        return cluster_policy(self.traffic_policy, s.traffic_policy if s is not None else None, port)


def cluster_policy_of(policy: DestinationPolicy | None, port: int, subset: str = "") -> ClusterPolicy:
    return policy.cluster_policy(port, subset) if policy is not None else NO_POLICY


def destination_policy(dr: DestinationRule) -> DestinationPolicy:
    errors: list[ConfigError] = []

    def warn(field: str, message: str) -> None:
        errors.append(ConfigError(dr.source, str(dr.key), field, message, "warning"))

    _check(dr.spec.trafficPolicy, "spec.trafficPolicy", warn)
    for i, s in enumerate(dr.spec.subsets):
        _check(s.trafficPolicy, f"spec.subsets[{i}].trafficPolicy", warn)
    subsets = tuple(SubsetPolicy(s.name, tuple(sorted(s.labels.items())), s.trafficPolicy) for s in dr.spec.subsets)
    host = resolve_host(dr.spec.host, dr.metadata.namespace)
    return DestinationPolicy(dr, host, dr.spec.trafficPolicy, subsets, tuple(errors))


def _check(policy: TrafficPolicy | None, field: str, warn) -> None:  # type: ignore[no-untyped-def]
    """Warnings for the parts of a TrafficPolicy that are accepted but not (fully) applied."""
    if policy is None:
        return
    parts = [(field, policy.loadBalancer, policy.tls, policy.outlierDetection)]
    parts += [(f"{field}.portLevelSettings[{i}]", p.loadBalancer, p.tls, p.outlierDetection)
              for i, p in enumerate(policy.portLevelSettings)]
    for where, lb, tls, od in parts:
        if od is not None and od.consecutiveErrors is not None:
            warn(f"{where}.outlierDetection.consecutiveErrors", "deprecated and ignored (as by istiod); "
                 "use consecutive5xxErrors or consecutiveGatewayErrors")
        if lb is not None and lb.simple == "PASSTHROUGH":
            warn(f"{where}.loadBalancer.simple", "PASSTHROUGH needs traffic capture (original destination); "
                 "the default LEAST_REQUEST is used")
        if tls is not None and tls.mode != "ISTIO_MUTUAL" and tls.credentialName:
            warn(f"{where}.tls.credentialName", "credentialName needs SDS (not supported yet): no TLS is "
                 "originated, as istiod does for sidecars; use clientCertificate, privateKey and "
                 "caCertificates files")


# ---------------------------------------------------------------- which rule a proxy sees

ROOT_NAMESPACE = "istio-system"


def exported_to(export_to: Iterable[str], own: str, client: str) -> bool:
    """Istio's exportTo: empty or ``*`` is every namespace, ``.`` the resource's own, ``~`` none."""
    names = list(export_to)
    if not names or "*" in names:
        return True
    return (client == own and "." in names) or client in names


#: A key of :meth:`RuleIndex.exceptions`: a namespace's proxies, or those of its workloads a
#: selector group of its rules selects.
Viewers = str | tuple[str, Selector]


class RuleIndex:
    """DestinationRules by namespace and host, looked up the way istiod does for a proxy in
    namespace C and a service in namespace S: the most specific rule in C, else in S if
    exported to C, else in the root namespace if exported to C. Rules elsewhere do not apply.

    A rule with a ``workloadSelector`` stays in its namespace and narrows itself to the
    workloads it selects (istiod's SidecarScope.DestinationRule): among C's rules of the
    most specific host, a selected proxy gets the first whose selector it satisfies, every
    other proxy the one without a selector, or none (not the rule of S or the root).

    Most proxies see the *generic* choice (their namespace has no rule for the host and no
    exportTo names it); ``exceptions`` lists the namespaces, and the selected workloads,
    that see another one.
    """

    def __init__(self, policies: Iterable[DestinationPolicy], root: str = ROOT_NAMESPACE,
                 interned: dict[frozenset[str], frozenset[str]] | None = None) -> None:
        self.root = root
        #: equal subset sets as one object, across indexes (route memos compare them by identity)
        self.interned = interned if interned is not None else {}
        policies = list(policies)
        by_ns: dict[str, list[tuple[str, str, DestinationPolicy]]] = {}
        #: namespace -> the selectors of its rules, in the rules' order (the order they win in)
        self._selectors: dict[str, list[Selector]] = {}
        for p in policies:  # in namespace/name order
            ns = p.resource.metadata.namespace
            by_ns.setdefault(ns, []).append((p.host, p.resource.metadata.name, p))
            sel = p.selector
            if sel is not None:
                sels = self._selectors.setdefault(ns, [])
                if sel not in sels:
                    sels.append(sel)
        self._by_ns = {ns: HostIndex((h, ns, p) for h, _, p in rules) for ns, rules in by_ns.items()}
        self._all = HostIndex((p.host, p.resource.metadata.namespace, p) for p in policies)
        self._rank = {id(p): i for i, p in enumerate(policies)}
        self._subsets: dict[tuple[str, str], frozenset[str]] = {}

    def _local(self, host: str, client: str, selected: Selector | None) -> tuple[bool, DestinationPolicy | None]:
        """(whether the client's namespace has a rule for ``host``, the one its proxy gets)."""
        index = self._by_ns.get(client)
        level = index.most_specific(host) if index is not None else []
        if not level:
            return False, None
        catch_all = None
        for p in level:
            sel = p.selector
            if sel is None:
                if catch_all is None:
                    catch_all = p
            elif sel == selected:
                return True, p
        return True, catch_all

    def _exported(self, ns: str, host: str, client: str) -> DestinationPolicy | None:
        index = self._by_ns.get(ns)
        if index is None:
            return None
        for p in index.all_matching(host):  # exact first, then the most specific wildcard
            if p.selector is None and exported_to(p.resource.spec.exportTo, ns, client):
                return p
        return None

    def lookup(self, host: str, service_ns: str, client: str,
               selected: Selector | None = None) -> DestinationPolicy | None:
        """The rule of ``host`` for a proxy in ``client`` (that one of its selectors selects)."""
        found_local, found = self._local(host, client, selected)  # for the root namespace, its own rules first too
        if found_local:
            return found
        found = self._exported(service_ns, host, client)
        if found is None:
            found = self._exported(self.root, host, client)
        return found

    def generic(self, host: str, service_ns: str) -> DestinationPolicy | None:
        """What a proxy in a namespace with no rules of its own, named by no exportTo, sees."""
        return self.lookup(host, service_ns, "\0")

    def exceptions(self, host: str, service_ns: str) -> dict[Viewers, DestinationPolicy | None]:
        """Namespaces whose proxies see another rule than the generic one, and (ns, selector)
        for the selected proxies that see another rule than their namespace: with that rule."""
        rules = self._all.all_matching(host)
        if not rules:
            return {}
        candidates = {p.resource.metadata.namespace for p in rules}
        candidates |= {ns for p in rules for ns in p.resource.spec.exportTo if ns not in (".", "*", "~")}
        candidates |= {service_ns, self.root}
        generic = self.generic(host, service_ns)
        out: dict[Viewers, DestinationPolicy | None] = {}
        for ns in sorted(candidates):
            seen = self.lookup(host, service_ns, ns)
            if seen is not generic:
                out[ns] = seen
            for sel in self._selectors.get(ns, ()):
                selected = self.lookup(host, service_ns, ns, sel)
                if selected is not seen:
                    out[(ns, sel)] = selected
        return out

    def selects_in(self, namespace: str) -> bool:
        """Whether some rule of ``namespace`` has a workloadSelector (else labels do not matter)."""
        return namespace in self._selectors

    def selectors_matching(self, namespace: str, labels: Mapping[str, str]) -> tuple[Selector, ...]:
        """The selectors of ``namespace``'s rules that ``labels`` satisfy, the winning first."""
        return tuple(sel for sel in self._selectors.get(namespace, ()) if all(labels.get(k) == v for k, v in sel))

    def subsets_seen(self, host: str, service_ns: str) -> frozenset[str]:
        """The subset names of ``host`` that some client has a cluster for: those of the rules
        some namespace or selected workload sees. Equal sets are one object."""
        key = (host, service_ns)
        hit = self._subsets.get(key)
        if hit is None:
            seen = [self.generic(host, service_ns), *self.exceptions(host, service_ns).values()]
            names = frozenset(s.name for p in seen if p is not None for s in p.subsets)
            hit = self._subsets[key] = self.interned.setdefault(names, names)
        return hit

    def first(self, selected: Iterable[DestinationPolicy]) -> DestinationPolicy:
        """Of the rules several selectors of a proxy give it for one host, the one istiod
        picks: the first in order (the rules of one host are kept in this order)."""
        return min(selected, key=lambda p: self._rank[id(p)])

    def all_matching(self, host: str) -> list[DestinationPolicy]:
        return self._all.all_matching(host)


def merge_policies(group: list[DestinationPolicy]) -> DestinationPolicy:
    """Several DestinationRules for one host in one namespace, merged as istiod merges them:
    the first traffic policy set wins, subsets are added up (a repeated name keeps the
    first), and each later rule is told what of it was used."""
    first = group[0]
    traffic_policy = first.traffic_policy
    subsets = list(first.subsets)
    errors = list(first.errors)
    for p in group[1:]:
        dr = p.resource
        errors += p.errors
        if p.traffic_policy is not None:
            if traffic_policy is None:
                traffic_policy = p.traffic_policy
            else:
                errors.append(ConfigError(dr.source, str(dr.key), "spec.trafficPolicy", f"ignored: merged with "
                                          f"{first.resource.key}, whose trafficPolicy comes first", "warning"))
        names = {s.name for s in subsets}
        for i, s in enumerate(p.subsets):
            if s.name in names:
                errors.append(ConfigError(dr.source, str(dr.key), f"spec.subsets[{i}]", f"ignored: subset "
                                          f"{s.name!r} is already defined for host {p.host}", "warning"))
            else:
                subsets.append(s)
    return DestinationPolicy(first.resource, first.host, traffic_policy, tuple(subsets), tuple(errors))
