"""An incrementally maintained index of a World: kind -> namespace -> name -> resource.

``World.of_kind`` scans every resource; translation asks "the Pods of namespace x" a lot,
so the Translator keeps this index and patches it with ``world.changed`` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from translators.model import EndpointSlice, Pod, Resource, ResourceKey, WorkloadEntry

_NONE: dict[str, Resource] = {}


def _ips(res: Resource | None) -> list[str]:
    if isinstance(res, Pod):
        return res.ips
    if isinstance(res, WorkloadEntry) and res.spec.address:
        return [res.spec.address]
    return []


def _move(table: dict[tuple[str, str, Any], dict[str, Resource]], key: ResourceKey, old: list[Any],
          new: list[Any], res: Resource | None) -> None:
    """Take ``key`` out of ``table``'s entries (kind, namespace, term) for its ``old`` terms and
    put ``res`` in for its ``new`` ones."""
    for term in old:
        names = table.get((key.kind, key.namespace, term))
        if names is not None:
            names.pop(key.name, None)
            if not names:
                del table[(key.kind, key.namespace, term)]
    for term in new:
        table.setdefault((key.kind, key.namespace, term), {})[key.name] = res  # type: ignore[assignment]


def _terms(res: Resource | None) -> list[object]:
    if isinstance(res, Pod):
        return list(res.metadata.labels.items())
    if isinstance(res, EndpointSlice) and res.service_name:
        return [res.service_name]
    return []


class ResourceIndex:
    def __init__(self) -> None:
        self._kinds: dict[str, dict[str, dict[str, Resource]]] = {}
        # (kind, namespace, ip) -> {name: workload}: which Pod or WorkloadEntry a proxy is,
        # asked once per connecting proxy, so it must not scan every Pod.
        self._by_ip: dict[tuple[str, str, str], dict[str, Resource]] = {}
        # (kind, namespace, term) -> {name: resource}: the Pods carrying a label (term: the
        # (key, value) pair) and the EndpointSlices of a Service (term: its name), so a change
        # to a few Services reads their Pods and slices without scanning the namespace's.
        self._by_term: dict[tuple[str, str, Any], dict[str, Resource]] = {}

    def apply(self, resources: Mapping[ResourceKey, Resource], keys: Iterable[ResourceKey]) -> None:
        """Bring the entries for ``keys`` in line with ``resources`` (added, replaced, removed)."""
        for key in keys:
            res = resources.get(key)
            by_ns = self._kinds.setdefault(key.kind, {})
            if key.kind in (Pod.KIND, WorkloadEntry.KIND):
                self._index_ips(key, by_ns.get(key.namespace, _NONE).get(key.name), res)
            if key.kind in (Pod.KIND, EndpointSlice.KIND):
                self._index_terms(key, by_ns.get(key.namespace, _NONE).get(key.name), res)
            if res is None:
                names = by_ns.get(key.namespace)
                if names is not None:
                    names.pop(key.name, None)
                    if not names:
                        del by_ns[key.namespace]
            else:
                by_ns.setdefault(key.namespace, {})[key.name] = res

    def _index_ips(self, key: ResourceKey, old: Resource | None, new: Resource | None) -> None:
        _move(self._by_ip, key, _ips(old), _ips(new), new)

    def _index_terms(self, key: ResourceKey, old: Resource | None, new: Resource | None) -> None:
        _move(self._by_term, key, _terms(old), _terms(new), new)

    def labelled(self, namespace: str, label: tuple[str, str]) -> dict[str, Resource]:
        """The Pods of ``namespace`` carrying ``label``, by name."""
        return self._by_term.get((Pod.KIND, namespace, label), _NONE)

    def slices_of(self, namespace: str, service: str) -> dict[str, Resource]:
        """The EndpointSlices of Service ``service``, by name."""
        return self._by_term.get((EndpointSlice.KIND, namespace, service), _NONE)

    def workload_at(self, namespace: str, ip: str) -> Pod | WorkloadEntry | None:
        """The Pod with this IP in ``namespace``, else the WorkloadEntry (the first by name if several)."""
        for kind in (Pod.KIND, WorkloadEntry.KIND):
            names = self._by_ip.get((kind, namespace, ip))
            if names:
                return names[min(names)]  # type: ignore[return-value]
        return None

    def in_namespace(self, kind: str, namespace: str) -> dict[str, Resource]:
        return self._kinds.get(kind, {}).get(namespace, _NONE)

    def namespaces(self, kind: str) -> list[str]:
        return sorted(self._kinds.get(kind, {}))

    def all(self, kind: str) -> list[Resource]:
        """Every resource of ``kind``, ordered by (namespace, name)."""
        by_ns = self._kinds.get(kind, {})
        return [by_ns[ns][n] for ns in sorted(by_ns) for n in sorted(by_ns[ns])]
