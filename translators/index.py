"""An incrementally maintained index of a World: kind -> namespace -> name -> resource.

``World.of_kind`` scans every resource; translation asks "the Pods of namespace x" a lot,
so the Translator keeps this index and patches it with ``world.changed`` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from translators.model import Resource, ResourceKey

_NONE: dict[str, Resource] = {}


class ResourceIndex:
    def __init__(self) -> None:
        self._kinds: dict[str, dict[str, dict[str, Resource]]] = {}

    def apply(self, resources: Mapping[ResourceKey, Resource], keys: Iterable[ResourceKey]) -> None:
        """Bring the entries for ``keys`` in line with ``resources`` (added, replaced, removed)."""
        for key in keys:
            res = resources.get(key)
            by_ns = self._kinds.setdefault(key.kind, {})
            if res is None:
                names = by_ns.get(key.namespace)
                if names is not None:
                    names.pop(key.name, None)
                    if not names:
                        del by_ns[key.namespace]
            else:
                by_ns.setdefault(key.namespace, {})[key.name] = res

    def in_namespace(self, kind: str, namespace: str) -> dict[str, Resource]:
        return self._kinds.get(kind, {}).get(namespace, _NONE)

    def namespaces(self, kind: str) -> list[str]:
        return sorted(self._kinds.get(kind, {}))

    def all(self, kind: str) -> list[Resource]:
        """Every resource of ``kind``, ordered by (namespace, name)."""
        by_ns = self._kinds.get(kind, {})
        return [by_ns[ns][n] for ns in sorted(by_ns) for n in sorted(by_ns[ns])]
