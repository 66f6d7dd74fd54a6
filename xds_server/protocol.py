"""The xDS protocol, state of the world and incremental (delta), as pure state machines.

A stream takes requests and new views of its proxy's config, and returns encoded
responses to write. No gRPC here, so every rule of Envoy's xDS protocol document is
testable exactly:

* version and nonce per type; ACK and NACK told apart by ``error_detail``. A NACK is
  recorded and nothing is re-sent: the proxy stays on its last accepted config until
  the config changes again.
* a request whose nonce is not the latest sent for its type is stale and ignored
  (SotW); in delta, stale requests still carry subscription changes, which are applied.
* LDS and CDS are wildcard; EDS and RDS are named, and a name subscribed before it
  exists is sent when it appears.
* make-before-break: clusters, endpoints, listeners, routes; removals afterwards.

What a client has is tracked as "the view last sent, restricted to what it asked for"
(``base``) rather than per-name maps, which keeps a thousand streams cheap.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import ControlPlane
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)

from translators.api import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET
from xds_server.cache import ProxyView, Resource, TypeView
from xds_server.status import StreamStatus

WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
KNOWN_TYPES = frozenset({CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET})
#: Removals go the other way round: drop what refers before what is referred to.
REMOVE_ORDER: tuple[str, ...] = (LISTENER, ROUTE, CLUSTER, ENDPOINT)
CONTROL_PLANE = ControlPlane(identifier="meshpilot")

_interned: dict[frozenset[str], frozenset[str]] = {}


def intern_names(names: Iterable[str]) -> frozenset[str]:
    """Proxies of one mesh ask for the same names; keep one copy of each name set."""
    fs = frozenset(names)
    if len(_interned) > 50_000:
        _interned.clear()
    return _interned.setdefault(fs, fs)


@dataclass
class Outgoing:
    """One encoded response, plus what the stream needs to log it."""

    type_url: str
    nonce: str
    payload: bytes
    count: int


@dataclass
class _TypeState:
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    #: the view whose (interesting part) the client was last brought to
    base: TypeView | None = None
    nonce: str = ""
    version: str = ""
    #: delta: nonce -> version label of responses not yet ACKed or NACKed
    pending: dict[str, str] = field(default_factory=dict)

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def interesting(self, view: TypeView) -> Iterator[str]:
        if self.wildcard:
            yield from view.names()
        else:
            yield from (n for n in self.names if view.get(n) is not None)


class _Stream:
    protocol = ""

    def __init__(self, status: StreamStatus):
        self.status = status
        self.types: dict[str, _TypeState] = {}
        self._nonces = itertools.count(1)

    def _nonce(self) -> str:
        return str(next(self._nonces))

    def _order(self, order: tuple[str, ...]) -> list[str]:
        rest = sorted(t for t in self.types if t not in order)
        return [t for t in order if t in self.types] + rest


class SotwStream(_Stream):
    """State of the world: every LDS/CDS response carries all resources; EDS/RDS carry the changed ones."""

    protocol = "sotw"

    def on_request(self, req: DiscoveryRequest, view: ProxyView) -> list[Outgoing]:
        type_url = req.type_url
        if type_url not in KNOWN_TYPES:
            return []
        st = self.types.get(type_url)
        names = [n for n in req.resource_names]
        if st is None:
            st = self.types[type_url] = _TypeState()
        elif req.response_nonce != st.nonce:
            return []  # stale: an answer to a response that has been superseded
        elif st.nonce:
            if req.HasField("error_detail"):
                self.status.nacked(type_url, req.version_info, req.response_nonce, req.error_detail.message)
            else:
                self.status.acked(type_url, req.version_info, req.response_nonce)
        first = not st.nonce
        wildcard = type_url in WILDCARD_TYPES and (not names or "*" in names)
        new_names = intern_names(n for n in names if n != "*")
        added = set() if first else new_names - st.names
        st.wildcard, st.names = wildcard, new_names
        tv = view.of(type_url)
        if first:
            return [self._respond(type_url, st, tv, list(st.interesting(tv)))]
        if added and not wildcard:
            # The response moves the client's base to ``tv``: it must carry whatever
            # changed since the old base too, not only the names just added.
            names_out = {n for n in added if tv.get(n) is not None} | set(_pending(st, tv))
            return [self._respond(type_url, st, tv, list(names_out))]
        return []

    def on_view(self, view: ProxyView) -> list[Outgoing]:
        out: list[Outgoing] = []
        cds_removed: list[Resource] = []
        for type_url in self._order(PUSH_ORDER):
            st = self.types[type_url]
            tv = view.of(type_url)
            if st.base is tv or not st.nonce:
                continue
            base = st.base
            changes = tv.changes_since(base) if base is not None else None
            if type_url in WILDCARD_TYPES:
                if changes is not None and not changes:
                    st.base = tv
                    continue
                if type_url == CLUSTER and base is not None:
                    # Keep clusters that are going away until listeners and routes have
                    # moved off them, then send the final list.
                    current = set(tv.names())
                    cds_removed = [r for r in base.resources() if r.name not in current]
                resources = list(tv.names())
            else:
                resources = _pending(st, tv)
                if not resources:
                    st.base = tv
                    continue
            out.append(self._respond(type_url, st, tv, resources, extra=cds_removed if type_url == CLUSTER else ()))
        if cds_removed and len(out) > 1:
            st = self.types[CLUSTER]
            assert st.base is not None
            out.append(self._respond(CLUSTER, st, st.base, list(st.base.names())))
        elif cds_removed:
            # Nothing else moved: the removal can go straight away.
            st = self.types[CLUSTER]
            assert st.base is not None
            out[0] = self._respond(CLUSTER, st, st.base, list(st.base.names()))
        return out

    def _respond(
        self, type_url: str, st: _TypeState, tv: TypeView, names: list[str], extra: Iterable[Resource] = ()
    ) -> Outgoing:
        entries = [r for r in (tv.get(n) for n in sorted(names)) if r is not None]
        extra = list(extra)
        version = tv.version + ("+draining" if extra else "")
        st.nonce, st.version, st.base = self._nonce(), version, tv
        head = DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=st.nonce, control_plane=CONTROL_PLANE
        ).SerializeToString()
        payload = head + b"".join(r.sotw_entry for r in itertools.chain(entries, extra))
        self.status.sent(type_url, version, st.nonce, len(entries) + len(extra), len(payload))
        return Outgoing(type_url, st.nonce, payload, len(entries) + len(extra))


class DeltaStream(_Stream):
    """Incremental xDS: only what changed, with explicit removals."""

    protocol = "delta"

    def __init__(self, status: StreamStatus, generation: int = 0):
        super().__init__(status)
        self.generation = generation

    def on_request(self, req: DeltaDiscoveryRequest, view: ProxyView) -> list[Outgoing]:
        type_url = req.type_url
        if type_url not in KNOWN_TYPES:
            return []
        self.generation = view.generation
        st = self.types.get(type_url)
        first = st is None
        if st is None:
            st = self.types[type_url] = _TypeState()
        if req.response_nonce:
            version = st.pending.pop(req.response_nonce, None)
            if version is not None:
                if req.HasField("error_detail"):
                    self.status.nacked(type_url, version, req.response_nonce, req.error_detail.message)
                else:
                    self.status.acked(type_url, version, req.response_nonce)
        subscribe = list(req.resource_names_subscribe)
        unsubscribe = list(req.resource_names_unsubscribe)
        if not subscribe and not unsubscribe and not first:
            return []  # a plain ACK or NACK
        newly: set[str] = set()
        if first and not subscribe:
            st.wildcard = True  # legacy wildcard: first request names nothing
        if "*" in subscribe:
            newly_wild = not st.wildcard
            st.wildcard = True
        else:
            newly_wild = False
        if "*" in unsubscribe:
            st.wildcard = False
        before = st.names
        names = set(before)
        for n in subscribe:
            if n != "*" and n not in names:
                names.add(n)
                newly.add(n)
        names.difference_update(n for n in unsubscribe if n != "*")
        st.names = intern_names(names)
        tv = view.of(type_url)
        base = st.base
        if first:
            known = dict(req.initial_resource_versions)
            candidates: set[str] = set(st.interesting(tv)) | known.keys()
            upserts, removed = self._diff(st, tv, candidates, known.get)
        else:
            # The client has ``base`` restricted to what it wanted before this request;
            # names it wants only now are unknown to it. Changes since ``base`` go too,
            # because the response moves the base to ``tv``.
            diff = tv.changes_since(base) if base is not None else None
            candidates = set(newly)
            candidates |= diff if diff is not None else set(tv.names()) | set(base.names() if base else ())
            if newly_wild:
                candidates |= set(tv.names())

            def had(n: str) -> str | None:
                if n in newly or (newly_wild and n not in before):
                    return None
                return _version(base, n)

            upserts, removed = self._diff(st, tv, candidates, had)
        st.base = tv
        if not upserts and not removed and not first:
            return []
        return [self._respond(type_url, st, upserts, removed)]

    def on_view(self, view: ProxyView) -> list[Outgoing]:
        self.generation = view.generation
        changes: dict[str, tuple[list[Resource], list[str]]] = {}
        for type_url, st in self.types.items():
            tv = view.of(type_url)
            base = st.base
            if base is tv:
                continue
            diff = tv.changes_since(base) if base is not None else None
            candidates = diff if diff is not None else set(tv.names()) | set(base.names() if base else ())
            upserts, removed = self._diff(st, tv, candidates, lambda n, b=base: _version(b, n))  # type: ignore[misc]
            st.base = tv
            if upserts or removed:
                changes[type_url] = (upserts, removed)
        out = [
            self._respond(t, self.types[t], changes[t][0], [])
            for t in self._order(PUSH_ORDER)
            if t in changes and changes[t][0]
        ]
        out += [
            self._respond(t, self.types[t], [], changes[t][1])
            for t in self._order(REMOVE_ORDER)
            if t in changes and changes[t][1]
        ]
        return out

    @staticmethod
    def _diff(st: _TypeState, tv: TypeView, candidates: Iterable[str], client_version) -> tuple[list[Resource], list[str]]:  # type: ignore[no-untyped-def]
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
            elif res.version != have:
                upserts.append(res)
        return upserts, removed

    def _respond(self, type_url: str, st: _TypeState, upserts: list[Resource], removed: list[str]) -> Outgoing:
        nonce = self._nonce()
        label = str(self.generation)
        st.nonce = nonce
        st.pending[nonce] = label
        head = DeltaDiscoveryResponse(
            system_version_info=label,
            type_url=type_url,
            nonce=nonce,
            removed_resources=removed,
            control_plane=CONTROL_PLANE,
        ).SerializeToString()
        payload = head + b"".join(r.delta_entry for r in upserts)
        self.status.sent(type_url, label, nonce, len(upserts) + len(removed), len(payload))
        return Outgoing(type_url, nonce, payload, len(upserts) + len(removed))


def _version(view: TypeView | None, name: str) -> str | None:
    if view is None:
        return None
    res = view.get(name)
    return res.version if res is not None else None


def _pending(st: _TypeState, tv: TypeView) -> list[str]:
    """Wanted names whose resource in ``tv`` differs from the client's ``base``."""
    base = st.base
    diff = tv.changes_since(base) if base is not None else None
    candidates = diff if diff is not None else tv.names()
    out = []
    for name in candidates:
        res = tv.get(name)
        if res is not None and st.wants(name) and res.version != _version(base, name):
            out.append(name)
    return out
