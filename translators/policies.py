"""DestinationRules and VirtualServices as looked up by host.

``HostIndex`` answers "which rule applies to this host" with Istio's precedence;
``DestinationPolicy`` is a DestinationRule reduced to what the cluster builder uses
(subsets and load-balancing policy), with warnings for the fields we ignore.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from envoy.config.cluster.v3 import cluster_pb2

from translators.errors import ConfigError
from translators.model import DestinationRule
from translators.names import host_matches, resolve_host

T = TypeVar("T")

LbPolicy = int  # cluster_pb2.Cluster.LbPolicy value
_LB: dict[str, LbPolicy | None] = {
    "ROUND_ROBIN": cluster_pb2.Cluster.ROUND_ROBIN,
    "LEAST_REQUEST": cluster_pb2.Cluster.LEAST_REQUEST,
    "LEAST_CONN": cluster_pb2.Cluster.LEAST_REQUEST,  # Istio's deprecated alias
    "RANDOM": cluster_pb2.Cluster.RANDOM,
    "UNSPECIFIED": None,
}
#: Istio's default since 1.14.
DEFAULT_LB: LbPolicy = cluster_pb2.Cluster.LEAST_REQUEST


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
    lb: LbPolicy


@dataclass(frozen=True, eq=False, slots=True)
class DestinationPolicy:
    resource: DestinationRule
    host: str  # resolved against the rule's namespace
    lb: LbPolicy
    subsets: tuple[SubsetPolicy, ...]
    errors: tuple[ConfigError, ...]

    def subset(self, name: str) -> SubsetPolicy | None:
        return next((s for s in self.subsets if s.name == name), None)


def destination_policy(dr: DestinationRule) -> DestinationPolicy:
    errors: list[ConfigError] = []

    def warn(field: str, message: str) -> None:
        errors.append(ConfigError(dr.source, str(dr.key), field, message, "warning"))

    lb = _traffic_policy(dr.spec.trafficPolicy, "spec.trafficPolicy", DEFAULT_LB, warn)
    subsets = tuple(
        SubsetPolicy(s.name, tuple(sorted(s.labels.items())), _traffic_policy(s.trafficPolicy, f"spec.subsets[{i}].trafficPolicy", lb, warn))
        for i, s in enumerate(dr.spec.subsets)
    )
    host = resolve_host(dr.spec.host, dr.metadata.namespace)
    return DestinationPolicy(dr, host, lb, subsets, tuple(errors))


def _traffic_policy(policy: dict[str, Any] | None, field: str, default: LbPolicy, warn) -> LbPolicy:  # type: ignore[no-untyped-def]
    """The load-balancing policy out of an Istio TrafficPolicy; everything else is warned about."""
    if not policy:
        return default
    lb = default
    for key, value in sorted(policy.items()):
        if key != "loadBalancer" or not isinstance(value, dict):
            warn(f"{field}.{key}", "not supported yet; ignored")
            continue
        for lb_key, lb_value in sorted(value.items()):
            if lb_key != "simple":
                warn(f"{field}.loadBalancer.{lb_key}", "not supported yet; ignored")
            elif lb_value == "PASSTHROUGH":
                warn(f"{field}.loadBalancer.simple", "PASSTHROUGH needs traffic capture; ignored")
            elif lb_value not in _LB:
                warn(f"{field}.loadBalancer.simple", f"unknown load balancer {lb_value!r}; ignored")
            else:
                chosen = _LB[lb_value]
                lb = default if chosen is None else chosen
    return lb
