"""The xDS protocol, state of the world and incremental (delta), as pure state machines.

A stream takes requests and new views of its proxy's config, and returns encoded
responses to write. No gRPC here, so every rule of Envoy's xDS protocol document is
testable exactly:

* version and nonce per type; ACK and NACK told apart by ``error_detail``. A NACK is
  recorded and nothing is re-sent: the proxy stays on its last accepted config until
  the config changes again.
* a request whose nonce is not the latest sent for its type is stale and ignored
  (SotW); in delta, stale requests still carry subscription changes, which are applied.
* LDS and CDS are wildcard, unless the client names what it wants (gRPC does): a
  response then carries every named resource that exists, changed or not, since for
  these types a resource left out is a resource deleted. EDS and RDS are named, and a
  name subscribed before it exists is sent when it appears.
* make-before-break: clusters, endpoints, listeners, routes (then virtual hosts: VHDS, see
  ``vhds``); removals afterwards.
* cluster warming: Envoy keeps an EDS cluster it adds *or updates* warming until that
  cluster's ClusterLoadAssignment arrives, even one it already has (else it waits out
  initial_fetch_timeout, 15 s). So a response that adds or changes EDS clusters is
  followed by their assignments, changed or not.

What a client has is tracked as "the view last sent, restricted to what it asked for"
(``base``) rather than per-name maps, which keeps a thousand streams cheap. Streams in
the same state (same shared layers before and after, same subscription) get the very
same encoded response from ``SharedResponses``: a change is diffed and encoded once,
not once per proxy. Nonces come from one counter, so a shared response's nonce is
still unique within every stream that sends it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import ControlPlane
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)

from translators.api import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET, VIRTUAL_HOST
from xds_server.xds.cache import ProxyView, Resource, TypeView
from xds_server.xds.status import StreamStatus
from xds_server.xds.vhds import alias_entry, resolve

WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
KNOWN_TYPES = frozenset({CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, VIRTUAL_HOST})
#: Names of these types are namespaces too: a subscription to "80" asks for every "80/..." (VHDS).
NAMESPACED_TYPES = frozenset({VIRTUAL_HOST})
#: Secrets first: a certificate is never newer in the config that uses it than in the proxy.
SEND_ORDER: tuple[str, ...] = (SECRET, *PUSH_ORDER, VIRTUAL_HOST)
#: Removals go the other way round: drop what refers before what is referred to.
REMOVE_ORDER: tuple[str, ...] = (LISTENER, ROUTE, VIRTUAL_HOST, CLUSTER, ENDPOINT)
CONTROL_PLANE = ControlPlane(identifier="meshpilot")

_nonces = itertools.count(1)
_interned: dict[frozenset[str], frozenset[str]] = {}


_issued = 0  # the latest nonce handed out


def next_nonce() -> str:
    global _issued
    _issued = next(_nonces)
    return str(_issued)


def intern_names(names: Iterable[str]) -> frozenset[str]:
    """Proxies of one mesh ask for the same names; keep one copy of each name set."""
    fs = frozenset(names)
    if len(_interned) > 50_000:
        _interned.clear()
    return _interned.setdefault(fs, fs)


@dataclass(frozen=True)
class Outgoing:
    """One encoded response."""

    type_url: str
    nonce: str
    version: str
    payload: bytes
    count: int
    removal: bool = False  # delta: the half of a change that only removes


class SharedResponses:
    """Responses computed for one stream, reused by every stream in the same state.

    Keys hold ``id()`` of the objects a response depends on; the entry keeps those
    objects alive so an id cannot be reused while the entry exists. Entries are right
    for any generation; they are dropped when a newer one arrives, and the oldest go
    first when they hold more than ``budget`` bytes (a response only one proxy can use,
    such as its own listeners, would otherwise be kept for nothing).
    """

    def __init__(self, budget: int = 64 * 1024 * 1024) -> None:
        self.budget = budget
        self._generation = -1
        self._bytes = 0
        self._entries: dict[Hashable, tuple[object, object, int]] = {}

    def get(self, generation: int, key: Hashable, build: Callable[[], object], refs: object) -> object:
        if generation > self._generation:
            self._generation, self._entries, self._bytes = generation, {}, 0
        hit = self._entries.get(key)
        if hit is not None:
            return hit[1]
        value = build()
        size = _size(value)
        self._entries[key] = (refs, value, size)
        self._bytes += size
        while self._bytes > self.budget and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            self._bytes -= self._entries.pop(oldest)[2]
        return value


def _size(value: object) -> int:
    if isinstance(value, Outgoing):
        return len(value.payload)
    if isinstance(value, list):
        return sum(_size(v) for v in value)
    return 0


def _layers_key(view: TypeView | None) -> tuple[int, ...]:
    return () if view is None else tuple(id(s) for s in view.layers)


@dataclass
class _TypeState:
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    #: names are namespaces too (NAMESPACED_TYPES)
    namespaced: bool = False
    #: VHDS as Envoy asks for it: names never sent, they follow RDS's (see DeltaStream)
    follows_routes: bool = False
    #: the view whose (interesting part) the client was last brought to
    base: TypeView | None = None
    nonce: str = ""
    #: delta: nonce -> version label of responses not yet ACKed or NACKed
    pending: dict[str, str] = field(default_factory=dict)

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names or (self.namespaced and name.rpartition("/")[0] in self.names)

    def interesting(self, view: TypeView) -> Iterator[str]:
        if self.wildcard:
            yield from view.names()
        elif self.namespaced:
            yield from filter(self.wants, view.names())
        else:
            yield from (n for n in self.names if view.get(n) is not None)

    def key(self, kind: str, type_url: str, tv: TypeView) -> tuple[Hashable, ...]:
        return (kind, type_url, _layers_key(self.base), _layers_key(tv), id(self.names), self.wildcard)


class _Stream:
    protocol = ""

    def __init__(self, status: StreamStatus, shared: SharedResponses | None = None):
        self.status = status
        self.shared = shared or SharedResponses()
        self.types: dict[str, _TypeState] = {}

    def _warm(self, view: ProxyView, st: _TypeState) -> frozenset[str]:
        """The assignments Envoy will wait for once it has the clusters of ``view``: those of the
        EDS clusters that differ from what the client had (``st.base``; None: it had nothing)."""
        tv = view.of(CLUSTER)
        base = st.base
        if base is tv or (base is not None and _same_layers(base, tv)):
            return frozenset()

        def build() -> frozenset[str]:
            changes = tv.changes_since(base) if base is not None else None
            resources = (tv.get(n) for n in (changes if changes is not None else tv.names()))
            return _warming(r for r in resources if r is not None and st.wants(r.name)
                            and r.version != _version(base, r.name))

        warm = self.shared.get(view.generation, st.key("warm", CLUSTER, tv), build, refs=(base, tv, st.names))
        assert isinstance(warm, frozenset)
        return warm

    def _wanted(self, generation: int, st: _TypeState, names: frozenset[str]) -> frozenset[str]:
        """``names`` that ``st`` asks for; computed once for all streams asking for the same."""
        if not names:
            return names
        wanted = self.shared.get(generation, ("wanted", id(names), id(st.names), st.wildcard),
                                 lambda: frozenset(filter(st.wants, names)), refs=(names, st.names))
        assert isinstance(wanted, frozenset)
        return wanted

    def _order(self, order: tuple[str, ...]) -> list[str]:
        rest = sorted(t for t in self.types if t not in order)
        return [t for t in order if t in self.types] + rest

    def _sent(self, out: Outgoing) -> Outgoing:
        self.status.sent(out.type_url, out.version, out.nonce, out.count, len(out.payload))
        return out


class SotwStream(_Stream):
    """State of the world: every LDS/CDS response carries all resources; EDS/RDS carry the changed ones."""

    protocol = "sotw"

    def on_request(self, req: DiscoveryRequest, view: ProxyView) -> list[Outgoing]:
        type_url = req.type_url
        if type_url not in KNOWN_TYPES:
            self.status.protocol_error("unknown type", type_url)
            return []
        st = self.types.get(type_url)
        names = list(req.resource_names)
        if st is None:
            st = self.types[type_url] = _TypeState()
        elif req.response_nonce != st.nonce:
            if not _could_be_stale(req.response_nonce):
                self.status.protocol_error("unknown nonce", type_url, nonce=req.response_nonce[:64])
            return []  # stale: an answer to a response that has been superseded
        elif st.nonce:
            if req.HasField("error_detail"):
                self.status.nacked(type_url, req.version_info, req.response_nonce, req.error_detail.message)
            else:
                # The nonce says which response is ACKed; a version that is not that response's
                # is the client's mistake, and /debug/syncz shows what the proxy really has.
                sent_version = self.status.of(type_url).sent_version
                if req.version_info != sent_version:
                    self.status.protocol_error("ack of a version never sent", type_url,
                                               version=req.version_info[:64], sent=sent_version)
                self.status.acked(type_url, sent_version, req.response_nonce)
        first = not st.nonce
        wildcard = type_url in WILDCARD_TYPES and (not names or "*" in names)
        new_names = intern_names(n for n in names if n != "*")
        added = set() if first else new_names - st.names
        st.wildcard, st.names = wildcard, new_names
        tv = view.of(type_url)
        if first:
            st.base = None
            warm = self._warm(view, st) if type_url == CLUSTER and self._answered(ENDPOINT) else frozenset()
            out = self._shared(view.generation, st.key("sotw-first", type_url, tv), type_url, st, tv,
                               lambda: list(st.interesting(tv)), push=False)
            assert out is not None
            sent = [self._sent(out)]
            if warm:
                # EDS was answered first on this new stream, and which clusters Envoy held is
                # unknown: every EDS cluster in this answer may be warming.
                eds = self._push_named(view, ENDPOINT, warm)
                sent += [self._sent(eds)] if eds is not None else []
            return sent
        if added and not wildcard:
            # The response moves the client's base to ``tv``: it must carry whatever
            # changed since the old base too, not only the names just added.
            if type_url in WILDCARD_TYPES:
                names_out = set(st.interesting(tv))  # LDS/CDS by name: the full state of what is named
            else:
                names_out = {n for n in added if tv.get(n) is not None} | set(_pending(st, tv))
            return [self._sent(self._encode(type_url, st, tv, list(names_out)))]
        return []

    def on_view(self, view: ProxyView) -> list[Outgoing]:
        out: list[Outgoing | None] = []  # None: the CDS response, encoded once we know what else moves
        cds_removed: list[Resource] = []
        warm: frozenset[str] = frozenset()  # assignments the clusters in this push make Envoy wait for
        for type_url in self._order(SEND_ORDER):
            st = self.types[type_url]
            if not st.nonce:
                continue
            if type_url not in WILDCARD_TYPES:
                response = self._push_named(view, type_url, warm if type_url == ENDPOINT else frozenset())
                if response is not None:
                    out.append(response)
                continue
            tv = view.of(type_url)
            base = st.base
            if base is tv:
                continue
            if base is not None and _same_layers(base, tv):
                st.base = tv
                continue
            changes = tv.changes_since(base) if base is not None else None
            if changes is not None and (not changes or not (st.wildcard or any(map(st.wants, changes)))):
                st.base = tv  # nothing changed, or nothing the client named
                continue
            if type_url == CLUSTER:
                if base is not None:
                    cds_removed = [r for r in base.resources() if tv.get(r.name) is None and st.wants(r.name)]
                warm = self._warm(view, st)
                out.append(None)
                continue
            out.append(self._encode(type_url, st, tv, list(st.interesting(tv))))
        if None in out:
            at = out.index(None)
            st, tv = self.types[CLUSTER], view.of(CLUSTER)
            names = list(st.interesting(tv))
            if cds_removed and len(out) > 1:
                # Keep clusters that are going away until listeners and routes have moved
                # off them, then send the final list.
                out[at] = self._encode(CLUSTER, st, tv, names, draining=cds_removed)
                out.append(self._encode(CLUSTER, st, tv, names))
            else:
                out[at] = self._encode(CLUSTER, st, tv, names)
        return [self._sent(o) for o in out if o is not None]

    def _answered(self, type_url: str) -> bool:
        st = self.types.get(type_url)
        return st is not None and bool(st.nonce)

    def _push_named(self, view: ProxyView, type_url: str, warm: frozenset[str]) -> Outgoing | None:
        """The update of a named type (EDS, RDS): what changed since the client's base, plus the
        wanted names of ``warm`` (changed or not); None when there is nothing to send."""
        st = self.types[type_url]
        tv = view.of(type_url)
        force = self._wanted(view.generation, st, warm)
        if not force:
            if st.base is tv:
                return None
            if st.base is not None and _same_layers(st.base, tv):
                st.base = tv
                return None
        response = self._shared(view.generation, (*st.key("sotw-push", type_url, tv), force), type_url, st, tv,
                                lambda: _pending(st, tv, force), push=True)
        if response is None:
            st.base = tv
        return response

    def _shared(
        self,
        generation: int,
        key: Hashable,
        type_url: str,
        st: _TypeState,
        tv: TypeView,
        names: Callable[[], list[str]],
        push: bool,
    ) -> Outgoing | None:
        """A first answer, or (``push``) an update that is None when nothing changed."""

        def build() -> Outgoing | None:
            chosen = names()
            if not chosen and push:
                return None
            return self._encode(type_url, st, tv, chosen, record=False)

        response = self.shared.get(generation, key, build, refs=(st.base, tv, st.names))
        if response is not None:
            assert isinstance(response, Outgoing)
            st.nonce, st.base = response.nonce, tv
        return response

    def _encode(
        self,
        type_url: str,
        st: _TypeState,
        tv: TypeView,
        names: list[str],
        draining: list[Resource] | None = None,
        record: bool = True,
    ) -> Outgoing:
        """``draining``: resources already gone from ``tv`` that this response still carries."""
        entries = [r for r in (tv.get(n) for n in sorted(names)) if r is not None]
        version = tv.version
        if draining:
            entries += draining
            version += "+draining"
        nonce = next_nonce()
        if record:
            st.nonce, st.base = nonce, tv
        head = DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=nonce, control_plane=CONTROL_PLANE
        ).SerializeToString()
        payload = b"".join([head, *(r.sotw_entry for r in entries)])
        return Outgoing(type_url, nonce, version, payload, len(entries))


class DeltaStream(_Stream):
    """Incremental xDS: only what changed, with explicit removals."""

    protocol = "delta"

    def __init__(self, status: StreamStatus, shared: SharedResponses | None = None):
        super().__init__(status, shared)
        #: assignments owed to clusters sent before EDS was first asked for on this stream
        self._warm_later: frozenset[str] = frozenset()

    def on_request(self, req: DeltaDiscoveryRequest, view: ProxyView) -> list[Outgoing]:
        type_url = req.type_url
        if type_url not in KNOWN_TYPES:
            self.status.protocol_error("unknown type", type_url)
            return []
        st = self.types.get(type_url)
        first = st is None
        if st is None:
            st = self.types[type_url] = _TypeState(namespaced=type_url in NAMESPACED_TYPES)
        if req.response_nonce:
            version = st.pending.pop(req.response_nonce, None)
            if version is None and not first:
                self.status.protocol_error("unknown nonce", type_url, nonce=req.response_nonce[:64])
            if version is not None:
                if req.HasField("error_detail"):
                    self.status.nacked(type_url, version, req.response_nonce, req.error_detail.message)
                else:
                    self.status.acked(type_url, version, req.response_nonce)
        subscribe = list(req.resource_names_subscribe)
        unsubscribe = list(req.resource_names_unsubscribe)
        if not subscribe and not unsubscribe and not first:
            return []  # a plain ACK or NACK
        if first and not subscribe and st.namespaced and ROUTE in self.types:
            # Envoy's VHDS subscription names nothing (its route configurations' names are
            # namespaces it matches itself): it wants the virtual hosts of the route
            # configurations it has, so its names follow RDS's from now on.
            st.follows_routes = True
            subscribe = list(self.types[ROUTE].names)
        elif first and not subscribe:
            st.wildcard = True  # legacy wildcard: the first request names nothing
        newly_wild = "*" in subscribe and not st.wildcard
        if "*" in subscribe:
            st.wildcard = True
        if "*" in unsubscribe:
            st.wildcard = False
        before = st.names
        names = set(before)
        newly = {n for n in subscribe if n != "*" and n not in names}
        names |= newly
        names.difference_update(n for n in unsubscribe if n != "*")
        st.names = intern_names(names)
        tv = view.of(type_url)
        label = str(view.generation)
        force: frozenset[str] = frozenset()
        if first and type_url == ENDPOINT:
            force, self._warm_later = self._warm_later, frozenset()
        # VHDS on demand: "<route config>/<Host>" names no resource; it is answered with an alias.
        aliases = sorted(n for n in newly if st.namespaced and "/" in n and tv.get(n) is None)
        if first:
            known = dict(req.initial_resource_versions)
            if not known:
                # The common case, a fresh proxy: every proxy like it gets the same answer.
                warm = self._warm(view, st) if type_url == CLUSTER else frozenset()
                parts = self._shared_diff(view.generation, st.key("delta-first", type_url, tv), type_url, st, tv,
                                          lambda: set(st.interesting(tv)), lambda n: None, label)
                st.base = tv
                if not parts and not aliases:  # nothing to send yet, but Envoy waits for an answer to finish warming
                    parts = [self._encode(type_url, [], [], label)]
                    st.pending[parts[0].nonce] = label
                parts += self._aliases(type_url, st, tv, aliases, label)
                return [self._sent(p) for p in parts] + self._after_cds(view, warm)
            # A reconnect: Envoy says what it has. For EDS, ``force`` holds the assignments of
            # clusters this stream updated before EDS was asked for: those clusters are warming
            # and wait for their assignments even where Envoy's versions match.
            candidates: set[str] = set(st.interesting(tv)) | known.keys() | force
            upserts, removed = _diff(st, tv, candidates, known.get, force)
        else:
            # The client has ``base`` restricted to what it wanted before this request;
            # names it wants only now are unknown to it. Changes since ``base`` go too,
            # because the response moves the base to ``tv``.
            base = st.base
            diff = tv.changes_since(base) if base is not None else None
            candidates = set(newly)
            candidates |= diff if diff is not None else set(tv.names()) | set(base.names() if base else ())
            if newly_wild:
                candidates |= set(tv.names())
            # A namespace just subscribed to: what is in it is new to the client.
            fresh = {n for n in tv.names() if n.rpartition("/")[0] in newly and n not in before} \
                if st.namespaced and newly else set()
            candidates |= fresh

            def had(n: str) -> str | None:
                if n in newly or n in fresh or (newly_wild and n not in before):
                    return None
                return _version(base, n)

            upserts, removed = _diff(st, tv, candidates, had)
        st.base = tv
        extra = self._aliases(type_url, st, tv, aliases, label)
        if type_url == ROUTE:
            extra += self._after_rds(view, [r.name for r in upserts])
        # A new VHDS namespace with nothing in it still gets an answer: Envoy's route
        # configuration waits for one before it is ready.
        if not upserts and not removed and not first and (extra or not (st.namespaced and newly)):
            return [self._sent(p) for p in extra]
        out = self._encode(type_url, upserts, removed, label)
        st.pending[out.nonce] = label
        warm = _warming(upserts) if type_url == CLUSTER else frozenset()
        return [self._sent(out)] + [self._sent(p) for p in extra] + self._after_cds(view, warm)

    def _after_rds(self, view: ProxyView, stubs: list[str]) -> list[Outgoing]:
        """VHDS after route configurations were (re)sent: Envoy drops virtual hosts that arrive
        before their route configuration's stub (no subscription wants them yet), and a stub
        that newly carries ``vhds`` starts a subscription that waits for them: so they go
        (again) right after the stub."""
        vst = self.types.get(VIRTUAL_HOST)
        if vst is None or not vst.follows_routes:
            return []
        vst.names = self.types[ROUTE].names
        if not stubs:
            return []
        parts = self._push(view, VIRTUAL_HOST, vst, self._hosts_of(view, frozenset(stubs)))
        return [self._sent(p) for p in sorted(parts, key=lambda p: p.removal)]

    def _hosts_of(self, view: ProxyView, routes: frozenset[str]) -> frozenset[str]:
        """The names of the virtual hosts of these route configurations (VHDS)."""
        if not routes:
            return frozenset()
        tv = view.of(VIRTUAL_HOST)
        hosts = self.shared.get(view.generation, ("vhds-of", _layers_key(tv), routes),
                                lambda: frozenset(n for n in tv.names() if n.rpartition("/")[0] in routes),
                                refs=(tv, routes))
        assert isinstance(hosts, frozenset)
        return hosts

    def on_view(self, view: ProxyView) -> list[Outgoing]:
        cds = self.types.get(CLUSTER)
        warm = self._warm(view, cds) if cds is not None else frozenset()
        if ENDPOINT not in self.types:
            self._owe(warm)
        vst, rst = self.types.get(VIRTUAL_HOST), self.types.get(ROUTE)
        # Virtual hosts go again after a changed stub (see _after_rds).
        hosts_warm = self._hosts_of(view, self._changed_routes(view, rst)) \
            if vst is not None and vst.follows_routes and rst is not None else frozenset()
        upserts: dict[str, Outgoing] = {}
        removals: dict[str, Outgoing] = {}
        for type_url, st in self.types.items():
            forced = warm if type_url == ENDPOINT else hosts_warm if type_url == VIRTUAL_HOST else frozenset()
            for part in self._push(view, type_url, st, forced):
                (removals if part.removal else upserts)[type_url] = part
        out = [upserts[t] for t in self._order(SEND_ORDER) if t in upserts]
        out += [removals[t] for t in self._order(REMOVE_ORDER) if t in removals]
        return [self._sent(o) for o in out]

    def _push(self, view: ProxyView, type_url: str, st: _TypeState, warm: frozenset[str]) -> list[Outgoing]:
        """What changed since the client's base, plus the wanted names of ``warm`` (changed or not)."""
        tv = view.of(type_url)
        base = st.base
        force = self._wanted(view.generation, st, warm)
        if not force:
            if base is tv:
                return []
            if base is not None and _same_layers(base, tv):
                st.base = tv
                return []

        def candidates() -> set[str]:
            diff = tv.changes_since(base) if base is not None else None
            found = set(diff) if diff is not None else set(tv.names()) | set(base.names() if base else ())
            return found | force

        parts = self._shared_diff(view.generation, (*st.key("delta-push", type_url, tv), force), type_url, st, tv,
                                  candidates, lambda n: _version(base, n), str(view.generation), force)
        st.base = tv
        return parts

    def _changed_routes(self, view: ProxyView, st: _TypeState) -> frozenset[str]:
        """Route configurations (``st``: RDS's state) that differ from the client's base."""
        tv = view.of(ROUTE)
        if st.base is tv or (st.base is not None and _same_layers(st.base, tv)):
            return frozenset()
        return frozenset(_pending(st, tv))

    def _after_cds(self, view: ProxyView, warm: frozenset[str]) -> list[Outgoing]:
        """The assignments a CDS response just sent makes Envoy wait for: now if EDS is
        subscribed on this stream, else with EDS's first answer."""
        est = self.types.get(ENDPOINT)
        if est is None:
            self._owe(warm)
            return []
        if not warm:
            return []
        parts = sorted(self._push(view, ENDPOINT, est, warm), key=lambda p: p.removal)
        return [self._sent(p) for p in parts]

    def _owe(self, warm: frozenset[str]) -> None:
        if warm:
            self._warm_later = warm if not self._warm_later else self._warm_later | warm

    def _shared_diff(
        self,
        generation: int,
        key: Hashable,
        type_url: str,
        st: _TypeState,
        tv: TypeView,
        candidates: Callable[[], set[str]],
        client_version: Callable[[str], str | None],
        label: str,
        force: frozenset[str] = frozenset(),
    ) -> list[Outgoing]:
        """The upsert and removal responses for a diff, computed once for all streams in this state
        (``key`` must tell apart everything the diff depends on, ``force`` included)."""

        def build() -> list[Outgoing]:
            upserts, removed = _diff(st, tv, candidates(), client_version, force)
            parts = []
            if upserts:
                parts.append(self._encode(type_url, upserts, [], label))
            if removed:
                parts.append(self._encode(type_url, [], removed, label))
            return parts

        parts: list[Outgoing] = self.shared.get(generation, key, build, refs=(st.base, tv, st.names))  # type: ignore[assignment]
        for part in parts:
            st.nonce = part.nonce
            st.pending[part.nonce] = label
        return parts

    def _aliases(self, type_url: str, st: _TypeState, tv: TypeView, aliases: list[str], label: str) -> list[Outgoing]:
        """The answer to on-demand VHDS names: each with the virtual host it stands for, if any."""
        if not aliases:
            return []
        out = self._encode(type_url, [], [], label, [alias_entry(a, resolve(tv, a)) for a in aliases])
        st.pending[out.nonce] = label
        return [out]

    @staticmethod
    def _encode(type_url: str, upserts: list[Resource], removed: list[str], label: str,
                entries: list[bytes] | None = None) -> Outgoing:
        """``entries``: resources entries encoded elsewhere (VHDS aliases), after ``upserts``."""
        nonce = next_nonce()
        head = DeltaDiscoveryResponse(
            system_version_info=label,
            type_url=type_url,
            nonce=nonce,
            removed_resources=removed,
            control_plane=CONTROL_PLANE,
        ).SerializeToString()
        payload = b"".join([head, *(r.delta_entry for r in upserts), *(entries or ())])
        count = len(upserts) + len(removed) + len(entries or ())
        return Outgoing(type_url, nonce, label, payload, count, removal=not upserts and bool(removed) and not entries)


def _diff(
    st: _TypeState,
    tv: TypeView,
    candidates: Iterable[str],
    client_version: Callable[[str], str | None],
    force: frozenset[str] = frozenset(),
) -> tuple[list[Resource], list[str]]:
    """Upserts and removals bringing the client to ``tv``; names in ``force`` are upserted
    even when the client's version matches."""
    upserts: list[Resource] = []
    removed: list[str] = []
    for name in sorted(candidates):
        if not st.wants(name):
            continue
        have = client_version(name)
        res = tv.get(name)
        if res is None:
            if have is not None:
                removed.append(name)
        elif res.version != have or name in force:
            upserts.append(res)
    return upserts, removed


def _could_be_stale(nonce: str) -> bool:
    """Whether ``nonce`` may be one this server sent (Envoy answers a superseded response now and
    then: that is normal); nonces come from one counter, so others are made up."""
    return len(nonce) <= 20 and nonce.isascii() and nonce.isdigit() and int(nonce) <= _issued


def _same_layers(a: TypeView, b: TypeView) -> bool:
    return len(a.layers) == len(b.layers) and all(x is y for x, y in zip(a.layers, b.layers, strict=True))


def _version(view: TypeView | None, name: str) -> str | None:
    if view is None:
        return None
    res = view.get(name)
    return res.version if res is not None else None


def _pending(st: _TypeState, tv: TypeView, force: frozenset[str] = frozenset()) -> list[str]:
    """Wanted names whose resource in ``tv`` differs from the client's ``base``, and those of ``force``."""
    base = st.base
    diff = tv.changes_since(base) if base is not None else None
    candidates: Iterable[str] = diff if diff is not None else tv.names()
    if force:
        candidates = set(candidates) | force
    out = []
    for name in candidates:
        res = tv.get(name)
        if res is not None and st.wants(name) and (name in force or res.version != _version(base, name)):
            out.append(name)
    return out


def _warming(clusters: Iterable[Resource]) -> frozenset[str]:
    """The assignments Envoy waits for before it uses these clusters, added or updated."""
    return frozenset(n for n in (c.eds_name for c in clusters) if n is not None)
