"""PeerAuthentication: how each workload port accepts connections, in istiod's precedence.

* mesh: a policy without selector in the root namespace; namespace: one without selector
  elsewhere; workload: one with ``selector.matchLabels`` (ignored in the root namespace,
  as istiod does). One of each applies: the oldest; without creation times (files),
  the first by name, which is istiod's tie-break.
* workload beats namespace beats mesh; ``UNSET`` inherits from the level above; nothing
  at all means PERMISSIVE. ``portLevelMtls`` (workload level only) overrides the mode of
  one workload port, ``UNSET`` there meaning the workload's mode.

Clients also read these policies: auto mTLS sends mTLS to a service unless the mesh or
the service's namespace policy says DISABLE (istiod's BestEffortInferServiceMTLSMode,
which looks no further: a workload-level DISABLE is not seen by clients).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from translators.errors import ConfigError
from translators.model.security import MTLSMode, PeerAuthentication

Mode = Literal["DISABLE", "PERMISSIVE", "STRICT"]

KINDS = frozenset({PeerAuthentication.KIND})


@dataclass(frozen=True)
class PeerPolicy:
    """The effective mTLS mode of one workload: a default and per-port overrides."""

    mode: Mode = "PERMISSIVE"
    ports: tuple[tuple[int, Mode], ...] = ()

    def for_port(self, port: int) -> Mode:
        for number, mode in self.ports:
            if number == port:
                return mode
        return self.mode


PERMISSIVE = PeerPolicy()


def _set(mode: MTLSMode | None) -> Mode | None:
    return None if mode in (None, "UNSET") else mode  # type: ignore[return-value]


def _mode_of(pa: PeerAuthentication | None) -> Mode | None:
    if pa is None or pa.spec.mtls is None:
        return None
    return _set(pa.spec.mtls.mode)


def _order(pa: PeerAuthentication) -> tuple[str, str]:
    return (pa.metadata.name, pa.metadata.namespace)


class PeerAuthIndex:
    """All PeerAuthentications of a World, read for lookups by namespace and workload labels."""

    def __init__(self, policies: Iterable[PeerAuthentication], root_namespace: str) -> None:
        self.root_namespace = root_namespace
        self.errors: list[ConfigError] = []
        level: dict[str, PeerAuthentication] = {}  # namespace -> its namespace (or mesh) policy
        self._workload: dict[str, list[PeerAuthentication]] = {}
        for pa in sorted(policies, key=_order):
            ns = pa.metadata.namespace
            if not pa.workload_level:
                first = level.get(ns)
                if first is None:
                    level[ns] = pa
                else:
                    scope = "the mesh" if ns == root_namespace else f"namespace {ns}"
                    self._warn(pa, "spec", f"ignored: {scope} already has a PeerAuthentication without selector, "
                               f"{first.metadata.name} (one applies: the oldest, or the first by name)")
            elif ns == root_namespace:
                self._warn(pa, "spec.selector", "ignored: a PeerAuthentication with a selector in the root "
                           "namespace applies to no workload (istiod ignores it too)")
            else:
                self._workload.setdefault(ns, []).append(pa)
        mesh = level.pop(root_namespace, None)
        # UNSET at mesh level is PERMISSIVE; absent, the namespace default is "unknown".
        self.mesh_mode: Mode | None = (_mode_of(mesh) or "PERMISSIVE") if mesh is not None else None
        inherited: Mode = self.mesh_mode or "PERMISSIVE"
        self._namespace: dict[str, Mode] = {ns: _mode_of(pa) or inherited for ns, pa in level.items()}
        self._interned: dict[PeerPolicy, PeerPolicy] = {PERMISSIVE: PERMISSIVE}

    def _warn(self, pa: PeerAuthentication, field: str, message: str) -> None:
        self.errors.append(ConfigError(pa.source, str(pa.key), field, message, "warning"))

    def namespace_mode(self, namespace: str) -> Mode | None:
        """The mode of the namespace (or mesh) policy; None when there is neither."""
        return self._namespace.get(namespace, self.mesh_mode)

    def service_mode(self, namespace: str) -> Mode:
        """What a client assumes of a service in ``namespace`` for auto mTLS."""
        return self.namespace_mode(namespace) or "PERMISSIVE"

    def for_workload(self, namespace: str, labels: Mapping[str, str]) -> PeerPolicy:
        """The effective policy of the workload with ``labels`` in ``namespace``. Equal results
        are the same object, so translation can compare them by identity."""
        mode: Mode = self.namespace_mode(namespace) or "PERMISSIVE"
        workload = next((pa for pa in self._workload.get(namespace, ())
                         if all(labels.get(k) == v for k, v in pa.spec.selector.matchLabels.items())),  # type: ignore[union-attr]
                        None)
        ports: tuple[tuple[int, Mode], ...] = ()
        if workload is not None:
            mode = _mode_of(workload) or mode
            ports = tuple(sorted((port, _set(m.mode) or mode) for port, m in (workload.spec.portLevelMtls or {}).items()))
        policy = PeerPolicy(mode, ports)
        return self._interned.setdefault(policy, policy)
