"""Locality load balancing (DestinationRule loadBalancer.localityLbSetting), as istiod
applies it to the endpoints each proxy gets.

Localities are ``region/zone/subzone``. Seen from a proxy in locality P:

* failover (the default whenever the cluster has outlier detection and locality load
  balancing is not disabled): endpoints in P's subzone come first (priority 0), then P's
  zone, then P's region, then a region ``failover`` names for P's region, then the rest.
  Envoy moves traffic to the next priority as the hosts of one are ejected.
* distribute: for the first entry whose ``from`` matches P, each endpoint locality gets
  the weight of the first ``to`` pattern it matches, shared by the localities matching
  that pattern; localities no pattern matches get no traffic.

A proxy with no locality, or a cluster with neither setting, keeps the plain assignment.
"""

from __future__ import annotations

import fnmatch

from envoy.config.endpoint.v3 import endpoint_pb2

from translators.model import LoadBalancerSettings, OutlierDetection
from translators.model.names import parse_locality

Locality = tuple[str, str, str]
parse = parse_locality


def applies(lb: LoadBalancerSettings | None, outlier: OutlierDetection | None) -> bool:
    setting = lb.localityLbSetting if lb is not None else None
    if setting is not None and setting.enabled is False:
        return False
    if setting is not None and (setting.distribute or setting.failover or setting.failoverPriority):
        return True
    return outlier is not None


def _matches(pattern: str, loc: Locality) -> bool:
    """``region/zone/subzone`` with ``*`` wildcards; a shorter pattern matches all below it."""
    return all(fnmatch.fnmatchcase(have, want) for have, want in zip(loc, pattern.split("/"), strict=False))


def localize(cla: endpoint_pb2.ClusterLoadAssignment, proxy: Locality,
             lb: LoadBalancerSettings | None) -> endpoint_pb2.ClusterLoadAssignment:
    """``cla`` as a proxy in ``proxy`` sees it (priorities, or weights with distribute)."""
    out = endpoint_pb2.ClusterLoadAssignment()
    out.CopyFrom(cla)
    setting = lb.localityLbSetting if lb is not None else None
    groups = list(out.endpoints)
    locs = [(g.locality.region, g.locality.zone, g.locality.sub_zone) for g in groups]
    if setting is not None and setting.distribute:
        rule = next((d for d in setting.distribute if _matches(d.from_, proxy)), None)
        if rule is not None:
            del out.endpoints[:]
            remaining = list(range(len(groups)))
            for pattern, weight in rule.to.items():
                chosen = [i for i in remaining if _matches(pattern, locs[i])]
                remaining = [i for i in remaining if i not in chosen]
                for i in chosen if weight > 0 else ():
                    g = out.endpoints.add()
                    g.CopyFrom(groups[i])
                    g.load_balancing_weight.value = max(1, weight // len(chosen))
            return out
    failover_to = {f.to for f in (setting.failover if setting is not None else []) if f.from_ == proxy[0]}

    def rank(loc: Locality) -> int:
        if loc == proxy:
            return 0
        if loc[:2] == proxy[:2]:
            return 1
        if loc[0] == proxy[0]:
            return 2
        return 3 if loc[0] in failover_to else 4

    ranks = [rank(loc) for loc in locs]
    dense = {r: i for i, r in enumerate(sorted(set(ranks)))}  # Envoy wants priorities without gaps
    for g, r in zip(out.endpoints, ranks, strict=True):
        g.priority = dense[r]
    return out


TOPOLOGY = {"topology.kubernetes.io/region": 0, "topology.kubernetes.io/zone": 1, "topology.istio.io/subzone": 2}


def _value(key: str, labels: dict[str, str], where: Locality) -> str | None:
    if key in TOPOLOGY:
        return where[TOPOLOGY[key]] or None
    return labels.get(key)


def label_priority(order: list[str], proxy_labels: dict[str, str], proxy_where: Locality,
                   labels: dict[str, str], where: Locality) -> int:
    """Istio's failoverPriority: an endpoint that matches the proxy on the first N labels of
    ``order`` (``key`` compares with the proxy's value, ``key=value`` with that value) gets
    priority len(order) - N. Topology labels read the localities."""
    matched = 0
    for entry in order:
        key, _, fixed = entry.partition("=")
        want = fixed if fixed else _value(key, proxy_labels, proxy_where)
        if want is None or _value(key, labels, where) != want:
            break
        matched += 1
    return len(order) - matched
