"""DestinationRules and VirtualServices as looked up by host.

``HostIndex`` answers "which rule applies to this host" with Istio's precedence;
``DestinationPolicy`` is a DestinationRule as the builders read it: its traffic policy,
subsets, and warnings for the fields not (fully) applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from translators.errors import ConfigError
from translators.features.traffic_policy import NO_POLICY, ClusterPolicy, cluster_policy
from translators.model import DestinationRule, TrafficPolicy
from translators.model.names import host_matches, resolve_host

T = TypeVar("T")



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
    if dr.spec.workloadSelector is not None:
        warn("spec.workloadSelector", "not supported yet (it applies to inbound traffic of the selected workloads); ignored")
    subsets = tuple(SubsetPolicy(s.name, tuple(sorted(s.labels.items())), s.trafficPolicy) for s in dr.spec.subsets)
    host = resolve_host(dr.spec.host, dr.metadata.namespace)
    return DestinationPolicy(dr, host, dr.spec.trafficPolicy, subsets, tuple(errors))


def _check(policy: TrafficPolicy | None, field: str, warn) -> None:  # type: ignore[no-untyped-def]
    """Warnings for the parts of a TrafficPolicy that are accepted but not (fully) applied."""
    if policy is None:
        return
    parts = [(field, policy.loadBalancer, policy.tls)]
    parts += [(f"{field}.portLevelSettings[{i}]", p.loadBalancer, p.tls) for i, p in enumerate(policy.portLevelSettings)]
    for where, lb, tls in parts:
        if lb is not None:
            if lb.simple == "PASSTHROUGH":
                warn(f"{where}.loadBalancer.simple", "PASSTHROUGH needs traffic capture (original destination); "
                     "the default LEAST_REQUEST is used")
            if lb.localityLbSetting is not None and lb.localityLbSetting.enabled is not False:
                warn(f"{where}.loadBalancer.localityLbSetting", "not supported yet: proxies carry no locality; "
                     "endpoints are balanced without locality preference")
        if tls is not None:
            if tls.mode == "ISTIO_MUTUAL":
                warn(f"{where}.tls.mode", "ISTIO_MUTUAL needs the mesh CA (not built yet); plaintext is used")
            elif tls.credentialName:
                warn(f"{where}.tls.credentialName", "credentialName is for gateways (SDS); sidecars read "
                     "clientCertificate, privateKey and caCertificates from files")
