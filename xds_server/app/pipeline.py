"""World -> translator -> cache: what every config source feeds, and what the benchmark drives."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from translators.checks import Checks
from translators.errors import ConfigError
from translators.model import Resource, ResourceKey
from translators.model.world import World
from translators.translate import Translator
from xds_server.heap import collector_paused, settle_heap
from xds_server.xds.cache import XdsCache
from xds_server.xds.convergence import ConvergenceTracker
from xds_server.xds.secrets import CredentialStore
from xds_server.xds.status import TRANSLATE_SECONDS


@dataclass(frozen=True)
class Applied:
    version: int
    resources: int
    changed: int
    streams_notified: int
    seconds: float


class Pipeline:
    def __init__(self) -> None:
        self.translator = Translator()
        self.cache = XdsCache(self.translator)
        self.world = World()
        self.convergence = ConvergenceTracker()
        self.credentials = CredentialStore()  # gateways' Secrets for SDS: kept out of translation
        self.source_errors: tuple[ConfigError, ...] = ()
        self.checks = Checks()
        self._applied_from: Mapping[ResourceKey, Resource] | None = None

    def apply(self, resources: Mapping[ResourceKey, Resource], source_errors: tuple[ConfigError, ...] = (),
              changed: tuple[Mapping[ResourceKey, Resource], Iterable[ResourceKey] | None] | None = None) -> Applied:
        """Make ``resources`` the mesh: translate what changed and tell the streams.
        ``changed``: (an earlier ``resources``, every key that may differ from it), when the
        source knows; used only if that mapping is the one applied last."""
        started = time.perf_counter()
        candidates = changed[1] if changed is not None and changed[0] is self._applied_from else None
        world = self.world.evolve(resources, candidates)
        with collector_paused():  # (what translation builds is kept: scanning it is wasted)
            notified = self.cache.update(world)
        self.credentials.update(world)
        # Before any stream runs: the notified streams answer this generation later.
        self.convergence.begin(world.version, notified, _changed_resources(world))
        self.world = world
        self._applied_from = resources
        self.source_errors = source_errors
        elapsed = time.perf_counter() - started
        TRANSLATE_SECONDS.observe(elapsed)
        settle_heap()
        return Applied(world.version, len(world.resources), len(world.changed), notified, elapsed)

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        # The registry the translator built for this world: the checks read the same services.
        services = self.translator._registry.services
        return self.source_errors + tuple(self.translator.errors) + self.checks.run(self.world, services)


#: How many of a change's resources a NACK names (a bulk load changes thousands).
NACK_BLAME_LIMIT = 10


def _changed_resources(world: World) -> list[tuple[str, str]]:
    """The resources ``world`` changed, with their files, for tying a NACK back to them."""
    out = []
    for key in sorted(world.changed, key=str)[:NACK_BLAME_LIMIT]:
        res = world.resources.get(key)
        out.append((str(key), res.source if res is not None else ""))
    return out
