"""Warnings for config that parses and translates but cannot work (istioctl analyze's kind):

* a DestinationRule subset that selects no endpoint of its service (a route to it answers 503);
* a VirtualService route to a service that has no endpoints at all (every request to it
  answers 503; an unknown host is the translator's error, not this warning);
* a Gateway server whose ``credentialName`` names a Secret that exists in no namespace (its
  TLS listener has no certificate: every handshake fails);
* (describe only) a VirtualService whose ``gateways`` name only Gateways that do not exist;
  the translator's gateway stage already warns about each missing Gateway at its field.

Run after translation, on the World and the translator's service registry; each rule's
result is memoized on the identity of what it reads, so a push costs what changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from translators.errors import ConfigError
from translators.model import DestinationRule, Resource, ResourceKey, VirtualService
from translators.model.gateway import Gateway
from translators.model.kube import Secret
from translators.model.names import resolve_host
from translators.model.networking import HTTPRouteDestination, RouteDestination
from translators.model.registry import MeshService
from translators.model.world import World

#: The kind a VirtualService's ``gateways`` names (keyed by name: it may be absent from the model).
GATEWAY_KIND = "Gateway"
MESH_GATEWAY = "mesh"


def _warning(res: Resource, field: str, message: str) -> ConfigError:
    return ConfigError(res.source, str(res.key), field, message, "warning")


def subset_problems(dr: DestinationRule, svc: MeshService | None) -> list[ConfigError]:
    """Subsets of ``dr`` whose labels no endpoint of ``svc`` carries (none when the host is unknown:
    the translator already says no service uses the rule)."""
    if svc is None:
        return []
    labels = {e.labels for port in svc.endpoints for e in port}
    out = []
    for i, subset in enumerate(dr.spec.subsets):
        wanted = subset.labels.items()
        if any(wanted <= dict(have).items() for have in labels):
            continue
        selector = ",".join(f"{k}={v}" for k, v in sorted(subset.labels.items())) or "(no labels)"
        out.append(_warning(dr, f"spec.subsets[{i}].labels",
                            f"subset {subset.name} selects no endpoint of {svc.host} ({selector}): "
                            "requests routed to it fail with 503 (no healthy upstream)"))
    return out


def route_destinations(vs: VirtualService) -> list[tuple[str, str]]:
    """(field path, resolved host) of every route destination of ``vs`` (http, tls, tcp)."""
    ns = vs.metadata.namespace
    out = []
    found: list[tuple[str, int, Sequence[HTTPRouteDestination | RouteDestination]]] = [
        *(("http", i, r.route) for i, r in enumerate(vs.spec.http)),
        *(("tls", i, r.route) for i, r in enumerate(vs.spec.tls)),
        *(("tcp", i, r.route) for i, r in enumerate(vs.spec.tcp)),
    ]
    for kind, i, route in found:
        for j, dest in enumerate(route):
            out.append((f"spec.{kind}[{i}].route[{j}].destination.host", resolve_host(dest.destination.host, ns)))
    return out


def route_problems(vs: VirtualService, destinations: list[tuple[str, str]],
                   services: tuple[MeshService | None, ...]) -> list[ConfigError]:
    """Destinations (aligned with ``services``) whose service is known, found through EDS, and
    has no endpoint on any port. DNS services resolve their host; ORIGINAL_DST needs none."""
    out = []
    for (field, host), svc in zip(destinations, services, strict=True):
        if svc is None or svc.shape.discovery != "EDS" or any(svc.endpoints):
            continue
        out.append(_warning(vs, field, f"{host} has no endpoints: requests routed to it fail with 503 "
                                       "(no healthy upstream) until a workload backs it"))
    return out


def gateway_key(ref: str, namespace: str) -> ResourceKey:
    """Istio's forms: ``ns/name``, ``name`` (the VirtualService's namespace), ``name.ns.svc.<domain>``."""
    if "/" in ref:
        ns, name = ref.split("/", 1)
        return ResourceKey(GATEWAY_KIND, ns, name)
    parts = ref.split(".")
    if len(parts) > 1:
        return ResourceKey(GATEWAY_KIND, parts[1], parts[0])
    return ResourceKey(GATEWAY_KIND, namespace, ref)


def gateway_problems(vs: VirtualService, resources: Mapping[ResourceKey, Resource]) -> list[ConfigError]:
    refs = vs.spec.gateways
    if not refs or MESH_GATEWAY in refs:
        return []
    if any(gateway_key(g, vs.metadata.namespace) in resources for g in refs):
        return []
    return [_warning(vs, "spec.gateways",
                     f"no Gateway {', '.join(refs)} exists: this VirtualService is bound to nothing "
                     "(add the Gateway, or \"mesh\" for sidecars)")]


def credential_problems(gw: Gateway, secret_names: frozenset[str]) -> list[ConfigError]:
    """Servers of ``gw`` naming a credential no Secret carries. Where the gateway runs is not
    known here, so a Secret of that name in any namespace silences the warning."""
    out = []
    for i, server in enumerate(gw.spec.servers):
        tls = server.tls
        if tls is None:
            continue
        named = [("credentialName", tls.credentialName)] if tls.credentialName else [
            (f"credentialNames[{j}]", n) for j, n in enumerate(tls.credentialNames)]
        for field, name in named:
            secret = name.removeprefix("kubernetes://")
            port = f"port {server.port.number}" if server.port is not None else "server"
            if secret not in secret_names:
                out.append(_warning(gw, f"spec.servers[{i}].tls.{field}",
                                    f"no Secret {secret} exists: the TLS server on {port} has no "
                                    "certificate and every handshake fails until the Secret is created"))
    return out


class Checks:
    """The subset and route warnings for one World at a time. A World that follows the last one
    rechecks only what its changes reach: the changed rules and VirtualServices, and those whose
    services changed (compared by identity)."""

    def __init__(self) -> None:
        self._world: World | None = None
        self._found: tuple[ConfigError, ...] = ()
        self._rules: dict[ResourceKey, tuple[DestinationRule, MeshService | None, list[ConfigError]]] = {}
        #: VirtualService -> (its destinations, the services they resolved to, the warnings)
        self._routes: dict[ResourceKey, tuple[VirtualService, list[tuple[str, str]],
                                              tuple[MeshService | None, ...], list[ConfigError]]] = {}
        self._credentials: list[ConfigError] = []

    def run(self, world: World, services: Mapping[str, MeshService]) -> tuple[ConfigError, ...]:
        if world is self._world:
            return self._found
        prev = self._world
        incremental = prev is not None and world.version == prev.version + 1
        changed = world.changed if incremental else frozenset(world.resources) | frozenset(
            prev.resources if prev is not None else ())
        for key in changed:
            if key.kind == DestinationRule.KIND:
                self._rules.pop(key, None)
                dr = world.resources.get(key)
                if isinstance(dr, DestinationRule) and dr.spec.subsets:
                    self._rules[key] = (dr, None, [])  # checked below against its service
            elif key.kind == VirtualService.KIND:
                self._routes.pop(key, None)
                vs = world.resources.get(key)
                if isinstance(vs, VirtualService):
                    self._routes[key] = (vs, route_destinations(vs), (), [])  # checked below
        for key, (dr, svc, _) in list(self._rules.items()):
            now = services.get(resolve_host(dr.spec.host, dr.metadata.namespace))
            if now is not svc or key in changed:
                self._rules[key] = (dr, now, subset_problems(dr, now))
        for key, (vs, dests, svcs, _) in list(self._routes.items()):
            now_svcs = tuple(services.get(host) for _, host in dests)
            if key in changed or len(now_svcs) != len(svcs) or any(a is not b for a, b in zip(now_svcs, svcs, strict=True)):
                self._routes[key] = (vs, dests, now_svcs, route_problems(vs, dests, now_svcs))
        if any(k.kind in (Gateway.KIND, Secret.KIND) for k in changed):  # both are few: recheck all
            secrets = frozenset(k.name for k in world.resources if k.kind == Secret.KIND)
            self._credentials = [e for gw in world.of_kind(Gateway) if isinstance(gw, Gateway)
                                 for e in credential_problems(gw, secrets)]
        self._world = world
        found = [e for _, _, errs in self._rules.values() for e in errs] + self._credentials
        found += [e for _, _, _, errs in self._routes.values() for e in errs]
        self._found = tuple(sorted(found, key=lambda e: (e.file, e.resource, e.field)))
        return self._found
