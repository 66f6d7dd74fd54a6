"""The versioned xDS cache: each resource is serialized once and shared by every proxy.

Translation hands back layers (see ``translators.api``). Here each layer becomes a
``ResourceSet``: its resources serialized with deterministic bytes, versioned by a hash
of those bytes. Content-addressed versions mean a restarted control plane gives the
same version to the same config, so a reconnecting delta client's
``initial_resource_versions`` still match and nothing is resent.

A ``ResourceSet`` remembers the set it replaced and which names changed, so a stream
finds what to send in the size of the change, not the size of the mesh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Protocol

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from google.protobuf.message import Message

from translators.api import EncodedResources, Layer, ProxyResources
from translators.model.world import Proxy, World


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field: responses are assembled from these, unparsed."""
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


class Resource:
    """One Envoy resource: its bytes, version, and the wire pieces responses are made of."""

    __slots__ = ("name", "type_url", "version", "data", "message", "__dict__")

    def __init__(self, name: str, type_url: str, data: bytes, message: Message):
        self.name = name
        self.type_url = type_url
        self.data = data
        self.message = message
        self.version = hashlib.blake2b(data, digest_size=8).hexdigest()

    @cached_property
    def eds_name(self) -> str | None:
        """For an EDS cluster, the ClusterLoadAssignment it asks for; None for anything else."""
        msg = self.message
        if not isinstance(msg, Cluster) or msg.WhichOneof("cluster_discovery_type") != "type" or msg.type != Cluster.EDS:
            return None
        return msg.eds_cluster_config.service_name or msg.name

    @property  # not kept: the entries below hold it, and a copy per resource is MBs at scale
    def any_bytes(self) -> bytes:
        """google.protobuf.Any{type_url, value}."""
        return length_delimited(1, self.type_url.encode()) + length_delimited(2, self.data)

    @cached_property
    def sotw_entry(self) -> bytes:
        """DiscoveryResponse.resources (field 2) entry."""
        return length_delimited(2, self.any_bytes)

    @cached_property
    def delta_entry(self) -> bytes:
        """DeltaDiscoveryResponse.resources (field 2) entry: Resource{version=1, resource=2, name=3}."""
        body = length_delimited(1, self.version.encode()) + length_delimited(2, self.any_bytes)
        body += length_delimited(3, self.name.encode())
        return length_delimited(2, body)


class WireResource(Resource):
    """A resource made from bytes: its message is parsed only when asked for (debug pages)."""

    __slots__ = ("_message_type", "pieces")

    def __init__(self, name: str, type_url: str, data: bytes, message_type: type[Message],
                 pieces: tuple[bytes, ...] = ()):
        self.name, self.type_url, self.data = name, type_url, data
        self._message_type = message_type
        self.pieces = pieces  # see EncodedResources.pieces
        self.version = hashlib.blake2b(data, digest_size=8).hexdigest()

    @property  # type: ignore[override]
    def message(self) -> Message:
        return self._message_type.FromString(self.data)


_HISTORY = 8
_NO_SOURCE: Mapping[str, Message] = MappingProxyType({})


def _differs(a: Resource | None, b: Resource | None) -> bool:
    if a is None or b is None:
        return a is not b
    return a is not b and a.version != b.version


@dataclass(eq=False)
class ResourceSet:
    """The resources of one layer, at one moment. Immutable once built."""

    key: object
    type_url: str
    # Not in repr: large, and for secrets they hold keys.
    source: Mapping[str, Message] = field(repr=False)
    resources: dict[str, Resource] = field(repr=False)
    previous: ResourceSet | None = field(default=None, repr=False)
    #: names added, changed or removed relative to ``previous``
    changed: frozenset[str] = frozenset()

    @cached_property
    def digest(self) -> str:
        h = hashlib.blake2b(digest_size=8)
        for name in sorted(self.resources):
            h.update(name.encode())
            h.update(self.resources[name].version.encode())
        return h.hexdigest()

    @classmethod
    def build(cls, layer: Layer, type_url: str, previous: ResourceSet | None) -> ResourceSet:
        old = previous.resources if previous is not None else {}
        resources: dict[str, Resource] = {}
        changed: set[str] = set()
        # Messages are serialized here; a layer translation already encoded is taken as bytes.
        encoded = layer.resources if isinstance(layer.resources, EncodedResources) else None
        items: Iterable[tuple[str, Any]] = encoded.data.items() if encoded is not None else layer.resources.items()
        for name, src in items:
            prior = old.get(name)
            if prior is not None and (prior.data if encoded is not None else prior.message) is src:
                resources[name] = prior
                continue
            if encoded is not None:
                res: Resource = WireResource(name, type_url, src, encoded.message_type, encoded.pieces.get(name, ()))
            else:
                res = Resource(name, type_url, src.SerializeToString(deterministic=True), src)
            if prior is not None and prior.version == res.version:
                res = prior
            else:
                changed.add(name)
            resources[name] = res
        changed.update(n for n in old if n not in resources)
        return cls(layer.key, type_url, layer.resources, resources, previous, frozenset(changed))._cut_history()

    @classmethod
    def of(cls, key: object, type_url: str, resources: dict[str, Resource], previous: ResourceSet | None,
           candidates: set[str] | None = None) -> ResourceSet:
        """A set of resources made elsewhere (not translated: VHDS splits route configurations).
        ``candidates``: the only names that may differ from ``previous`` (None: any)."""
        old = previous.resources if previous is not None else {}
        names = candidates if candidates is not None and previous is not None else resources.keys() | old.keys()
        changed = frozenset(n for n in names if _differs(old.get(n), resources.get(n)))
        # No source layer: nothing compares one against a translation's mapping.
        return cls(key, type_url, _NO_SOURCE, resources, previous, changed)._cut_history()

    def _cut_history(self) -> ResourceSet:
        # A short history lets a stream that fell a few pushes behind still diff cheaply;
        # cutting it lets old sets be freed.
        older = self
        for _ in range(_HISTORY):
            if older.previous is None:
                break
            older = older.previous
        older.previous = None
        return self

    def changes_since(self, older: ResourceSet) -> frozenset[str] | None:
        """Names that differ from ``older``; None when the history does not reach it."""
        out: set[str] = set()
        current: ResourceSet | None = self
        while current is not None:
            if current is older:
                return frozenset(out)
            out |= current.changed
            current = current.previous
        return None


@dataclass(frozen=True, eq=False)
class TypeView:
    """What one proxy should have of one type: a few shared or own ResourceSets."""

    type_url: str
    layers: tuple[ResourceSet, ...]

    def get(self, name: str) -> Resource | None:
        for layer in self.layers:
            res = layer.resources.get(name)
            if res is not None:
                return res
        return None

    def names(self) -> Iterator[str]:
        for layer in self.layers:
            yield from layer.resources

    def resources(self) -> Iterator[Resource]:
        for layer in self.layers:
            yield from layer.resources.values()

    def __len__(self) -> int:
        return sum(len(layer.resources) for layer in self.layers)

    @cached_property
    def version(self) -> str:
        if len(self.layers) == 1:
            return self.layers[0].digest
        return hashlib.blake2b("".join(s.digest for s in self.layers).encode(), digest_size=8).hexdigest()

    def changes_since(self, older: TypeView) -> set[str] | None:
        """Names that may differ from ``older``; None means "compare everything"."""
        if older is self:
            return set()
        old_by_key = {s.key: s for s in older.layers}
        if len(old_by_key) != len(older.layers) or {s.key for s in self.layers} != old_by_key.keys():
            return None
        out: set[str] = set()
        for layer in self.layers:
            diff = layer.changes_since(old_by_key[layer.key])
            if diff is None:
                return None
            out |= diff
        return out


EMPTY_VIEW_LAYERS: tuple[ResourceSet, ...] = ()


@dataclass(frozen=True, eq=False)
class ProxyView:
    generation: int
    types: dict[str, TypeView]

    def of(self, type_url: str) -> TypeView:
        view = self.types.get(type_url)
        return view if view is not None else TypeView(type_url, EMPTY_VIEW_LAYERS)


ViewListener = Callable[[ProxyView], None]


class Translation(Protocol):
    """What the cache needs from translation (``translators.Translator`` satisfies it)."""

    def update(self, world: World) -> None: ...

    def for_proxy(self, proxy: Proxy) -> ProxyResources: ...


@dataclass
class _Watch:
    proxy: Proxy
    listener: ViewListener


@dataclass
class XdsCache:
    """Keeps the current ProxyView of every connected proxy and tells streams when it changes."""

    translator: Translation
    generation: int = 0
    _sets: dict[object, ResourceSet] = field(default_factory=dict)
    _views: dict[object, ProxyView] = field(default_factory=dict)
    _watches: dict[int, _Watch] = field(default_factory=dict)
    _next_watch: int = 0

    def update(self, world: World) -> int:
        """Make ``world`` current and notify every stream whose view changed. Returns how many."""
        self.translator.update(world)
        self.generation = world.version
        old_views, self._views = self._views, {}
        used: set[object] = set()
        notified = 0
        for watch in list(self._watches.values()):
            old = old_views.get(watch.proxy.key)
            view = self.view(watch.proxy, used, old)
            if old is None or view is not old:
                watch.listener(view)
                notified += 1
        # Per-proxy layers of proxies that went away are dropped here.
        self._sets = {k: v for k, v in self._sets.items() if k in used}
        return notified

    def view(self, proxy: Proxy, used: set[object] | None = None, previous: ProxyView | None = None) -> ProxyView:
        """The config ``proxy`` should have now. Unchanged parts of ``previous`` are reused as
        they are, so a stream can tell "nothing changed" by identity alone."""
        cached = self._views.get(proxy.key)
        if cached is not None:
            return cached
        # (Runs for every watched proxy on every update: written for speed, a dict lookup per layer.)
        before_types = previous.types if previous is not None else {}
        known = self._sets
        types: dict[str, TypeView] = {}
        changed = previous is None
        for type_url, layers in self.translator.for_proxy(proxy).items():
            sets = []
            for layer in layers:
                key = (type_url, layer.key)
                current = known.get(key)
                if current is None or current.source is not layer.resources:
                    current = known[key] = ResourceSet.build(layer, type_url, current)
                sets.append(current)
                if used is not None:
                    used.add(key)
            as_tuple = tuple(sets)
            before = before_types.get(type_url)
            if before is not None and before.layers == as_tuple:  # (ResourceSets compare by identity)
                types[type_url] = before
            else:
                types[type_url] = TypeView(type_url, as_tuple)
                changed = True
        if previous is not None and not changed and types.keys() == previous.types.keys():
            view = previous
        else:
            view = ProxyView(self.generation, types)
        self._views[proxy.key] = view
        return view

    def watch(self, proxy: Proxy, listener: ViewListener) -> Callable[[], None]:
        """Call ``listener`` with each new view of ``proxy``; returns the function that stops it."""
        self._next_watch += 1
        wid = self._next_watch
        self._watches[wid] = _Watch(proxy, listener)

        def unwatch() -> None:
            self._watches.pop(wid, None)

        return unwatch

    def proxies(self) -> list[Proxy]:
        """The proxies with an open stream."""
        return [w.proxy for w in self._watches.values()]

