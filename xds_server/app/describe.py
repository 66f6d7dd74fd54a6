"""``/debug/describe``: a pod or a service as the mesh sees it, for ``meshpilot describe``.

Read from the running server's World and the translator's registry (the services and
endpoints translation used), so the answer is what the proxies were given, not a re-reading
of the files. Pure reads: no translation happens here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from translators.checks import gateway_problems, subset_problems
from translators.model import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    Pod,
    TrafficPolicy,
    VirtualService,
)
from translators.model.names import host_matches, kube_host, resolve_host, selects
from translators.model.registry import MeshService
from translators.model.world import Proxy
from translators.peer_auth import PeerAuthIndex
from translators.policies import ROOT_NAMESPACE
from translators.security import selects as policy_selects
from xds_server.app.pipeline import Pipeline


class DescribeError(LookupError):
    """Nothing by that name; the message says what exists."""


def describe(pipeline: Pipeline, kind: str, name: str, namespace: str, syncz: Sequence[Mapping[str, Any]],
             proxies: Sequence[Proxy]) -> dict[str, Any]:
    services: Mapping[str, MeshService] = pipeline.translator._registry.services
    if kind == "pod":
        return _pod(pipeline, services, name, namespace, syncz, proxies)
    if kind == "service":
        return _service(pipeline, services, name, namespace)
    raise DescribeError(f"kind must be pod or service, not {kind!r}")


def _pod(pipeline: Pipeline, services: Mapping[str, MeshService], name: str, namespace: str,
         syncz: Sequence[Mapping[str, Any]], proxies: Sequence[Proxy]) -> dict[str, Any]:
    world = pipeline.world
    pod = world.get(Pod, namespace, name)
    proxy = next((p for p in proxies if p.pod_name == name and p.namespace == namespace), None)
    if pod is None and proxy is None:
        raise DescribeError(f"no pod {namespace}/{name}: neither a Pod resource nor a connected proxy of that name")
    labels: Mapping[str, str] = pod.metadata.labels if pod is not None else (proxy.labels if proxy else {})
    selecting = [s for s in services.values()
                 if s.shape.namespace == namespace and s.shape.selector and selects(dict(s.shape.selector), labels)]
    streams = [dict(s) for s in syncz if proxy is not None and s.get("proxy") == proxy.id]
    peer_index = PeerAuthIndex(world.of_kind(PeerAuthentication), ROOT_NAMESPACE)
    peer = peer_index.for_workload(namespace, labels)
    peer_policies = [str(pa.key) for pa in world.of_kind(PeerAuthentication)
                     if pa.metadata.namespace in (namespace, ROOT_NAMESPACE)
                     and (pa.spec.selector is None or selects(pa.spec.selector.matchLabels, labels))]
    authz = [{"name": f"{p.metadata.namespace}/{p.metadata.name}", "action": p.spec.action,
              "rules": len(p.spec.rules), "dry_run": p.dry_run}
             for p in world.of_kind(AuthorizationPolicy)
             if p.metadata.namespace in (namespace, ROOT_NAMESPACE) and policy_selects(p, labels, selecting)]
    return {
        "kind": "pod",
        "name": name,
        "namespace": namespace,
        "labels": dict(labels),
        "ip": (pod.ips[0] if pod is not None and pod.ips else (proxy.ip if proxy else "")),
        "proxy": {"id": proxy.id, "identity": proxy.identity, "streams": streams} if proxy else None,
        "services": [_service_view(pipeline, s, namespace) for s in selecting],
        "peer_authentication": {"mode": peer.mode, "ports": dict(peer.ports), "policies": peer_policies},
        "authorization_policies": authz,
    }


def _service(pipeline: Pipeline, services: Mapping[str, MeshService], name: str, namespace: str) -> dict[str, Any]:
    svc = services.get(name) or services.get(kube_host(name, namespace)) or next(
        (s for s in services.values() if s.shape.name == name and s.shape.namespace == namespace), None)
    if svc is None:
        known = sorted(h for h, s in services.items() if s.shape.namespace == namespace)
        raise DescribeError(f"no service {namespace}/{name} in the registry; in {namespace}: {', '.join(known) or 'none'}")
    return {"kind": "service", **_service_view(pipeline, svc, namespace)}


def _service_view(pipeline: Pipeline, svc: MeshService, client_namespace: str) -> dict[str, Any]:
    world = pipeline.world
    host = svc.host
    problems: list[dict[str, str]] = []
    vss = []
    for vs in world.of_kind(VirtualService):
        if not any(host_matches(resolve_host(h, vs.metadata.namespace), host) for h in vs.spec.hosts):
            continue
        problems += [e.as_dict() for e in gateway_problems(vs, world.resources)]
        vss.append({"name": f"{vs.metadata.namespace}/{vs.metadata.name}", "gateways": vs.spec.gateways or ["mesh"],
                    "http": [_http_rule(i, r, vs.metadata.namespace) for i, r in enumerate(vs.spec.http)]})
    drs = []
    for dr in world.of_kind(DestinationRule):
        if not host_matches(resolve_host(dr.spec.host, dr.metadata.namespace), host):
            continue
        problems += [e.as_dict() for e in subset_problems(dr, svc)]
        drs.append({
            "name": f"{dr.metadata.namespace}/{dr.metadata.name}",
            "host": dr.spec.host,
            # Only the client workloads of its namespace with these labels see it (None: every client).
            "workload_selector": dr.spec.workloadSelector.matchLabels if dr.spec.workloadSelector else None,
            "traffic_policy": policy_summary(dr.spec.trafficPolicy),
            "subsets": [{"name": s.name, "labels": s.labels, "endpoints": _count(svc, s.labels),
                         "traffic_policy": policy_summary(s.trafficPolicy)} for s in dr.spec.subsets],
        })
    ports = [{"port": p.number, "name": p.name, "protocol": p.protocol.upper(),
              "target_port": p.target, "ready_endpoints": len(eps)}
             for p, eps in zip(svc.shape.ports, svc.endpoints, strict=False)]
    if not any(p["ready_endpoints"] for p in ports):
        problems.append({"severity": "warning", "resource": str(svc.resource.key), "field": "",
                         "file": svc.resource.source, "message": f"{host} has no ready endpoint: requests to it fail"})
    return {
        "host": host,
        "name": svc.shape.name,
        "namespace": svc.shape.namespace,
        "resource": str(svc.resource.key),
        "discovery": svc.shape.discovery,
        "ports": ports,
        "endpoints": sorted({f"{e.address}:{e.port}" for port in svc.endpoints for e in port}),
        "virtual_services": vss,
        "destination_rules": drs,
        "problems": problems,
    }


def _count(svc: MeshService, labels: Mapping[str, str]) -> int:
    return len({e.address for port in svc.endpoints for e in port if labels.items() <= dict(e.labels).items()})


def _http_rule(i: int, rule: Any, namespace: str) -> dict[str, Any]:
    if rule.delegate is not None:
        to = [f"delegate {rule.delegate.namespace or namespace}/{rule.delegate.name}"]
    elif rule.redirect is not None:
        to = ["redirect"]
    elif rule.directResponse is not None:
        to = [f"direct response {rule.directResponse.status}"]
    else:
        to = [resolve_host(d.destination.host, namespace) + (f" subset {d.destination.subset}" if d.destination.subset
                                                              else "")
              + (f" weight {d.weight}" if d.weight is not None else "") for d in rule.route]
    return {"index": i, "name": rule.name, "matches": len(rule.match), "to": to}


def policy_summary(tp: TrafficPolicy | None) -> str:
    """One line: each set top-level field and, compactly, its value."""
    if tp is None:
        return ""
    dumped = tp.model_dump(exclude_none=True, exclude_defaults=True, by_alias=True)
    parts = []
    for key, value in dumped.items():
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
        parts.append(f"{key}={text if len(text) <= 60 else text[:57] + '...'}")
    return " ".join(parts)
