"""World -> translator -> cache: what every config source feeds, and what the benchmark drives."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from translators.checks import Checks
from translators.errors import ConfigError
from translators.model import Resource, ResourceKey
from translators.model.world import World
from translators.translate import Translator
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


def settle_heap() -> None:
    """Move what exists now (the config just built: large, long-lived, acyclic) out of the
    cyclic garbage collector's reach. Without this, full collections that rescan it all
    stall pushes by hundreds of milliseconds on a large mesh. Refcounting still frees it."""
    gc.freeze()


#: Allocations (net) between young collections; Python's default is 700. A push to 2000
#: streams allocates some 28,000 short-lived objects (views, responses, futures) beside the
#: streams' own long-lived state, and at 700 that meant ~40 young collections per push, 65-145 ms
#: of pauses that each rescanned that state (measured with ./dev bench --clients 2000). Nearly
#: all of it is freed by reference counting; only cycles wait for the collector.
YOUNG_COLLECTION_THRESHOLD = 20_000


def tune_collector() -> None:
    """For a long-running control plane (``serve``, the benchmark): collect less often."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


def full_collection() -> None:
    """For quiet moments: collect what the frozen generation may hold, then freeze again."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


#: How many of a change's resources a NACK names (a bulk load changes thousands).
NACK_BLAME_LIMIT = 10


def _changed_resources(world: World) -> list[tuple[str, str]]:
    """The resources ``world`` changed, with their files, for tying a NACK back to them."""
    out = []
    for key in sorted(world.changed, key=str)[:NACK_BLAME_LIMIT]:
        res = world.resources.get(key)
        out.append((str(key), res.source if res is not None else ""))
    return out
