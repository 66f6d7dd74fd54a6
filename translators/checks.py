"""Warnings for config that parses and translates but cannot work (istioctl analyze's kind):

* a DestinationRule subset that selects no endpoint of its service (a route to it answers 503);
* a VirtualService whose ``gateways`` name only Gateways that do not exist (it binds to nothing).

Run after translation, on the World and the translator's service registry; each rule's
result is memoized on the identity of what it reads, so a push costs what changed.
"""

from __future__ import annotations

from collections.abc import Mapping

from translators.errors import ConfigError
from translators.model import DestinationRule, Resource, ResourceKey, VirtualService
from translators.model.names import resolve_host
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


class Checks:
    """The warnings above for one World at a time, reusing per-resource results across Worlds."""

    def __init__(self) -> None:
        self._world: World | None = None
        self._found: tuple[ConfigError, ...] = ()
        self._subsets: dict[ResourceKey, tuple[DestinationRule, MeshService | None, list[ConfigError]]] = {}
        self._gateways: dict[ResourceKey, tuple[VirtualService, frozenset[ResourceKey], list[ConfigError]]] = {}

    def run(self, world: World, services: Mapping[str, MeshService]) -> tuple[ConfigError, ...]:
        if world is self._world:
            return self._found
        found: list[ConfigError] = []
        subsets: dict[ResourceKey, tuple[DestinationRule, MeshService | None, list[ConfigError]]] = {}
        for dr in world.of_kind(DestinationRule):
            svc = services.get(resolve_host(dr.spec.host, dr.metadata.namespace)) if dr.spec.subsets else None
            old = self._subsets.get(dr.key)
            entry = old if old is not None and old[0] is dr and old[1] is svc else (dr, svc, subset_problems(dr, svc))
            subsets[dr.key] = entry
            found += entry[2]
        gateways_now = frozenset(k for k in world.resources if k.kind == GATEWAY_KIND)
        bound: dict[ResourceKey, tuple[VirtualService, frozenset[ResourceKey], list[ConfigError]]] = {}
        for vs in world.of_kind(VirtualService):
            prev = self._gateways.get(vs.key)
            if prev is not None and prev[0] is vs and prev[1] == gateways_now:
                bound[vs.key] = prev
            else:
                bound[vs.key] = (vs, gateways_now, gateway_problems(vs, world.resources))
            found += bound[vs.key][2]
        self._world, self._subsets, self._gateways = world, subsets, bound
        self._found = tuple(found)
        return self._found
