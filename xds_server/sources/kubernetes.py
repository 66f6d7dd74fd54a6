"""The Kubernetes config source: the mesh's resources listed and watched from an API server.

One informer per kind (Namespaces, and each kind with a model in ``translators.model.KINDS``:
Services, Pods, EndpointSlices, Secrets of types ``kubernetes.io/tls`` and ``Opaque``, and
Istio's kinds, such as VirtualService, DestinationRule, Gateway, ServiceEntry, WorkloadEntry,
Sidecar, PeerAuthentication, AuthorizationPolicy and RequestAuthentication), each a thread that
lists, then watches from the list's resourceVersion with bookmarks; it lists again when
the server answers 410 Gone, and reconnects with backoff (resuming from the last
resourceVersion it saw) when the connection fails. Objects are parsed in those threads
(``parse_object``, source ``"kubernetes"``) and handed to the asyncio loop, which owns
the caches and publishes complete states (``LoadResult``), as the directory source does.

Serving rule ("last good config"), as for files: an object that fails validation keeps
serving its last valid version (with the error reported); a deleted object goes. While the
API server cannot be reached the last state keeps serving; nothing is published until
every kind has been listed once.

An Istio kind whose CRD is not installed is skipped with a warning (in the result's
errors) and looked for again every ``CRD_RECHECK`` seconds. Namespaces are cached
(``namespaces()``) but not part of the mesh model yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from translators.errors import ConfigError
from translators.model import KINDS, Resource, ResourceKey
from xds_server.sources.crds import group_of, istio_kinds, plural
from xds_server.sources.files import ChangeLog, LoadResult
from xds_server.sources.parse import parse_object

SOURCE = "kubernetes"
#: A failed list or watch is tried again after this long, doubling up to ``BACKOFF_MAX``.
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
#: Seconds between looks for a CRD that is not installed.
CRD_RECHECK = 30.0
#: The server ends each watch after about this long (spread so watches do not restart together).
WATCH_SECONDS = 300
LIST_PAGE = 500
CONNECT_TIMEOUT = 5.0
LIST_TIMEOUT = 60.0


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    group: str = ""  # the core group
    versions: tuple[str, ...] = ("v1",)  # tried in order (a CRD may serve only some)
    crd: bool = False
    modelled: bool = True  # fed to the mesh model
    #: Only objects whose ``type`` is one of these (Secrets); empty: all.
    types: tuple[str, ...] = ()
    #: Objects the server need not send at all (a field selector).
    field_selector: str = ""

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version


#: Secrets meshpilot reads (gateway credentials); the others (service account tokens, Helm's
#: releases, registry credentials...) are not even sent, or dropped before they are parsed.
SECRET_TYPES = ("kubernetes.io/tls", "Opaque")
_SECRETS_NOT_READ = ",".join(f"type!={t}" for t in (
    "kubernetes.io/service-account-token", "helm.sh/release.v1", "kubernetes.io/dockerconfigjson",
    "kubernetes.io/dockercfg", "bootstrap.kubernetes.io/token"))

#: The core kinds meshpilot reads, each watched once its model exists in ``KINDS``.
_CORE = (
    Kind("Service", "services"),
    Kind("Pod", "pods"),
    Kind("EndpointSlice", "endpointslices", "discovery.k8s.io"),
    Kind("Secret", "secrets", types=SECRET_TYPES, field_selector=_SECRETS_NOT_READ),
)


def _istio(cls: type[Resource]) -> Kind:
    return Kind(cls.KIND, plural(cls.KIND), group_of(cls), tuple(v.split("/")[1] for v in cls.API_VERSIONS),
                crd=True)


def watched_kinds() -> tuple[Kind, ...]:
    """Namespaces, then every kind that has a model: a kind given a model is watched (and its CRD
    generated, and the chart's RBAC test asks for it) with no change here."""
    return (
        Kind("Namespace", "namespaces", modelled=False),
        *(k for k in _CORE if k.kind in KINDS),
        *(_istio(cls) for cls in istio_kinds()),
    )


WATCHED: tuple[Kind, ...] = watched_kinds()


@dataclass(frozen=True)
class _Entry:
    """One object as last seen: ``resource`` is the version to serve (None: never valid)."""

    uid: str
    resource_version: str
    order: tuple[str, str, str]  # creation time, namespace, name: Istio's precedence among equals
    resource: Resource | None
    errors: tuple[ConfigError, ...]
    labels: Mapping[str, str]


class _Gone(Exception):
    """410: the resourceVersion is too old to watch from; list again."""


class _NotInstalled(Exception):
    """No served version of a CRD kind."""


class _Stopped(Exception):
    pass


class KubernetesSource:
    """The mesh's resources in the cluster ``kubeconfig`` (its current context, or ``context``);
    with ``kubeconfig`` None, the cluster of the pod this runs in (its ServiceAccount's token)."""

    def __init__(
        self,
        kubeconfig: Path | str | None,
        *,
        context: str | None = None,
        kinds: tuple[Kind, ...] = WATCHED,
        watch_seconds: int = WATCH_SECONDS,
        crd_recheck: float = CRD_RECHECK,
    ) -> None:
        self.kubeconfig = Path(kubeconfig) if kubeconfig is not None else None
        self.context = context
        self.kinds = kinds
        self.watch_seconds = watch_seconds
        self.crd_recheck = crd_recheck
        # Owned by the loop: kind -> "ns/name" -> entry.
        self._store: dict[str, dict[str, _Entry]] = {k.kind: {} for k in kinds}
        self._synced: set[str] = set()
        self._missing: dict[str, str] = {}  # CRD kinds not installed: kind -> warning
        self._failing: dict[str, str] = {}  # kind -> why its list/watch fails
        self._dirty: asyncio.Event | None = None
        self._stop = threading.Event()  # a new one per run of changes(): old threads never revive
        self._informers: list[_Informer] = []
        self._on_failure: Callable[[str, float], None] | None = None
        self._on_recovery: Callable[[], None] | None = None
        self._last = LoadResult(MappingProxyType({}))
        # The last merge of the stores, and what changed in them since: (kind, "ns/name") of
        # upserts and deletes; None after a relist (anything may have).
        self._log = ChangeLog()
        self._pending: set[tuple[str, str]] | None = None
        self._merged: dict[ResourceKey, Resource] = {}
        self._key_of: dict[tuple[str, str], ResourceKey] = {}
        self._noisy: set[tuple[str, str]] = set()  # entries that reported problems
        self._errors: tuple[ConfigError, ...] = ()
        self._modelled = {k.kind for k in kinds if k.modelled}

    @property
    def current(self) -> LoadResult:
        """The last result yielded."""
        return self._last

    def stats(self) -> dict[str, dict[str, int]]:
        """Per kind: how many lists, watches, 410 Gone answers and failures so far."""
        return {inf.kind.kind: dict(inf.stats) for inf in self._informers}

    def namespaces(self) -> dict[str, Mapping[str, str]]:
        """Namespace name -> its labels, as last seen (call from the loop)."""
        return {name: e.labels for name, e in self._store.get("Namespace", {}).items()}

    async def changes(
        self,
        *,
        on_failure: Callable[[str, float], None] | None = None,
        on_recovery: Callable[[], None] | None = None,
        **_directory_options: Any,
    ) -> AsyncIterator[LoadResult]:
        """The current state once every kind has been listed, then a new state after each
        batch of changes that changed something. Never ends by itself.

        ``on_failure(why, retry_in)`` is called when a list or watch fails (the last state
        keeps serving), ``on_recovery()`` once every kind is listed or watched again. The
        directory source's options (polling, rescans) mean nothing here and are ignored.
        """
        loop = asyncio.get_running_loop()
        self.stop()
        self._dirty = asyncio.Event()
        self._stop = threading.Event()
        self._on_failure, self._on_recovery = on_failure, on_recovery
        api = _api_client(self.kubeconfig, self.context)
        self._informers = [_Informer(self, kind, api, loop, self._stop) for kind in self.kinds]
        for inf in self._informers:
            # Daemons: a thread blocked in a read must not hold the process at exit.
            threading.Thread(target=inf.run, name=f"kube-{inf.kind.kind}", daemon=True).start()
        last: LoadResult | None = None
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                if len(self._synced) < len(self.kinds):
                    continue  # publish nothing partial: a missing kind would look deleted
                result, changed = self._result()
                if last is None or (changed if changed is not None else _differs(result, last)):
                    last = self._last = result
                    yield result
        finally:
            self.stop()

    def stop(self) -> None:
        """End the informers' threads (their open watches are closed)."""
        self._stop.set()
        for inf in self._informers:
            inf.interrupt()

    # ------------------------------------------------------------ on the loop

    def _deliver(self, kind: str, update: tuple[Any, ...]) -> None:
        store = self._store[kind]
        if update[0] in ("upsert", "delete"):
            if self._pending is not None:
                self._pending.add((kind, update[1]))
        else:
            self._pending = None
        if update[0] == "replace":
            self._store[kind] = update[1]
            self._synced.add(kind)
            self._missing.pop(kind, None)
        elif update[0] == "upsert":
            store[update[1]] = update[2]
        elif update[0] == "delete":
            store.pop(update[1], None)
        elif update[0] == "missing":
            self._store[kind] = {}
            self._synced.add(kind)
            self._missing[kind] = update[1]
        assert self._dirty is not None
        self._dirty.set()

    def _failed(self, kind: str, why: str, retry_in: float) -> None:
        self._failing[kind] = why
        if self._on_failure:
            self._on_failure(f"{kind}: {why}", retry_in)

    def _recovered(self, kind: str) -> None:
        if self._failing.pop(kind, None) is not None and not self._failing and self._on_recovery:
            self._on_recovery()

    def _result(self) -> tuple[LoadResult, bool | None]:
        """The merged stores, and whether they changed since the last result (None: compare)."""
        pending, self._pending = self._pending, set()
        keys = self._patch(pending) if pending is not None and self._key_of else None
        changed: bool | None = bool(keys)
        if keys is None:
            changed = None
            self._merge()
        result = LoadResult(MappingProxyType(dict(self._merged)), self._errors, serial=self._log.add(keys),
                            log=self._log)
        return result, changed

    def _patch(self, pending: set[tuple[str, str]]) -> frozenset[ResourceKey] | None:
        """The common event (objects updated in place, valid before and after, nothing to
        report): their new versions swapped into the last merge instead of merging and
        sorting every object again. None: merge afresh."""
        updates = []
        for kind, name in pending:
            if kind not in self._modelled:
                continue
            entry = self._store[kind].get(name)
            key = self._key_of.get((kind, name))
            if (entry is None or entry.resource is None or key is None or entry.resource.key != key
                    or entry.errors or (kind, name) in self._noisy):
                return None
            updates.append((key, entry.resource))
        keys = set()
        for key, resource in updates:
            if self._merged[key] is not resource:
                self._merged[key] = resource
                keys.add(key)
        return frozenset(keys)

    def _merge(self) -> None:
        resources: dict[ResourceKey, Resource] = {}
        errors: list[ConfigError] = [
            ConfigError(SOURCE, "", "", why, "warning") for _, why in sorted(self._missing.items())
        ]
        self._key_of, self._noisy = {}, set()
        for kind in self.kinds:
            if not kind.modelled:
                continue
            for name, entry in sorted(self._store[kind.kind].items(), key=lambda e: e[1].order):
                if entry.resource is not None:
                    resources[entry.resource.key] = entry.resource
                    self._key_of[(kind.kind, name)] = entry.resource.key
                if entry.errors:
                    self._noisy.add((kind.kind, name))
                errors.extend(entry.errors)
        self._merged, self._errors = resources, tuple(errors)


class _Informer:
    """List and watch one kind, in its own thread."""

    def __init__(
        self, source: KubernetesSource, kind: Kind, api: Any, loop: asyncio.AbstractEventLoop, stop: threading.Event
    ) -> None:
        self.source = source
        self.kind = kind
        self.api = api
        self.loop = loop
        self.stop = stop
        self.version = kind.versions[0]
        self.known: dict[str, _Entry] = {}  # this thread's copy, for "last good" and identity
        self.stats = {"lists": 0, "watches": 0, "gone": 0, "failures": 0}
        self._response: Any = None

    # -- the thread

    def run(self) -> None:
        with contextlib.suppress(_Stopped):
            self._run()

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        rv: str | None = None
        while not self.stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                    self._post(self.source._recovered, self.kind.kind)
                rv = self._watch(rv)
                backoff = BACKOFF_FIRST  # a watch that ran to its end: the connection is fine
            except _Stopped:
                raise
            except _Gone:
                self.stats["gone"] += 1
                rv = None
            except _NotInstalled:
                rv = None
                why = (f"{self.kind.kind}: no CRD {self.kind.plural}.{self.kind.group} serves "
                       f"{' or '.join(self.kind.versions)}; not watched (looked for again every "
                       f"{self.source.crd_recheck:g} s)")
                self.known = {}
                self._post(self.source._deliver, self.kind.kind, ("missing", why))
                self._post(self.source._recovered, self.kind.kind)
                self.stop.wait(self.source.crd_recheck)
            except Exception as e:  # connection refused, timeouts, 5xx, 403: report and retry
                if self.stop.is_set():
                    return  # our own interrupt
                self.stats["failures"] += 1
                wait = backoff * random.uniform(0.8, 1.2)
                self._post(self.source._failed, self.kind.kind, _describe(e), round(wait, 1))
                self.stop.wait(wait)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def interrupt(self) -> None:
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # unblocks the thread's read
                (response.shutdown if hasattr(response, "shutdown") else response.close)()

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        if self.stop.is_set():
            raise _Stopped
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed
            raise _Stopped from None

    # -- list and watch

    def _call(self, version: str, **kw: Any) -> Any:
        from kubernetes import client

        kw["_preload_content"] = False
        k = self.kind
        if k.crd:
            return client.CustomObjectsApi(self.api).list_cluster_custom_object(k.group, version, k.plural, **kw)
        if k.kind == "EndpointSlice":
            return client.DiscoveryV1Api(self.api).list_endpoint_slice_for_all_namespaces(**kw)
        if k.field_selector:
            kw["field_selector"] = k.field_selector
        core = client.CoreV1Api(self.api)
        if k.kind == "Namespace":
            return core.list_namespace(**kw)
        return getattr(core, f"list_{k.kind.lower()}_for_all_namespaces")(**kw)

    def _list(self) -> str:
        """List everything (in pages); hand it over; return the list's resourceVersion."""
        from kubernetes.client.rest import ApiException

        versions = self.kind.versions if self.kind.crd else (self.version,)
        for version in versions:
            items: list[dict[str, Any]] = []
            token: str | None = None
            try:
                while True:
                    kw: dict[str, Any] = {"limit": LIST_PAGE, "_request_timeout": (CONNECT_TIMEOUT, LIST_TIMEOUT)}
                    if token:
                        kw["_continue"] = token
                    response = self._call(version, **kw)
                    try:
                        body = json.loads(response.data)
                    finally:
                        response.release_conn()
                    items.extend(body.get("items") or [])
                    token = (body.get("metadata") or {}).get("continue")
                    if not token:
                        break
            except ApiException as e:
                if e.status == 404 and self.kind.crd:
                    continue  # this version is not served: try the next
                if e.status == 410:
                    raise _Gone from None  # the continue token expired: start over
                raise
            self.version = version
            self.stats["lists"] += 1
            fresh = {}
            for obj in items:
                entry = self._entry(obj)
                if entry is not None:
                    fresh[_name(obj)] = entry
            self.known = fresh
            self._post(self.source._deliver, self.kind.kind, ("replace", dict(fresh)))
            return str((body.get("metadata") or {}).get("resourceVersion") or "")
        raise _NotInstalled

    def _watch(self, rv: str) -> str:
        """Watch from ``rv`` until the server ends the watch; return the last resourceVersion."""
        from kubernetes.client.rest import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        seconds = int(self.source.watch_seconds * random.uniform(0.9, 1.1)) or 1
        try:
            response = self._call(
                self.version,
                watch=True,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=seconds,
                _request_timeout=(CONNECT_TIMEOUT, seconds + 30),
            )
        except ApiException as e:
            if e.status == 410:
                raise _Gone from None
            if e.status == 404 and self.kind.crd:
                raise _NotInstalled from None  # the CRD went away
            raise
        self._response = response
        self.stats["watches"] += 1
        self._post(self.source._recovered, self.kind.kind)
        try:
            if self.stop.is_set():
                raise _Stopped
            for line in iter_resp_lines(response):
                if not line:
                    continue
                event = json.loads(line)
                rv = self._event(event, rv)
        finally:
            self._response = None
            response.release_conn()
        if self.stop.is_set():
            raise _Stopped
        return rv

    def _event(self, event: dict[str, Any], rv: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Gone
            raise RuntimeError(f"watch error {code}: {obj.get('reason')}: {obj.get('message')}")
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
        if kind == "BOOKMARK":
            return new_rv
        name = _name(obj)
        if kind == "DELETED":
            if self.known.pop(name, None) is not None:
                self._post(self.source._deliver, self.kind.kind, ("delete", name))
        elif kind in ("ADDED", "MODIFIED"):
            entry = self._entry(obj)
            if entry is not None and entry is not self.known.get(name):
                self.known[name] = entry
                self._post(self.source._deliver, self.kind.kind, ("upsert", name, entry))
        return new_rv

    # -- parsing

    def _entry(self, obj: dict[str, Any]) -> _Entry | None:
        meta = obj.get("metadata") or {}
        name = _name(obj)
        if not meta.get("name") or self.kind.types and obj.get("type", "Opaque") not in self.kind.types:
            return None  # never parsed, never kept (a Secret of a type meshpilot does not read)
        uid, rv = str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))
        previous = self.known.get(name)
        if previous is not None and previous.uid == uid and previous.resource_version == rv:
            return previous  # unchanged (a relist): the same objects, so nothing is re-translated
        order = (str(meta.get("creationTimestamp", "")), str(meta.get("namespace", "")), str(meta["name"]))
        labels = MappingProxyType(dict(meta.get("labels") or {}))
        if not self.kind.modelled:
            return _Entry(uid, rv, order, None, (), labels)
        # List items carry no kind/apiVersion; managedFields are bulky and unused.
        doc = {**obj, "kind": self.kind.kind, "apiVersion": self.kind.api_version(self.version)}
        doc["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
        parsed = parse_object(doc, SOURCE, name, str(meta.get("namespace") or "default"))
        resource = parsed.resource
        if resource is None and previous is not None and previous.uid == uid:
            resource = previous.resource  # invalid now: keep serving the last valid version
        return _Entry(uid, rv, order, resource, parsed.errors, labels)


def _api_client(kubeconfig: Path | None, context: str | None) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig is None:
        # In a pod: KUBERNETES_SERVICE_HOST/PORT and the mounted ServiceAccount token (re-read as it rotates).
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(
            config_file=str(kubeconfig), context=context, client_configuration=cfg, persist_config=False
        )
    # A watch per kind holds a connection; lists need more besides.
    cfg.connection_pool_maxsize = 4 * len(WATCHED)
    return client.ApiClient(cfg)


def _name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name', '')}" if ns else str(meta.get("name", ""))


def _describe(e: BaseException) -> str:
    status = getattr(e, "status", None)
    if status:
        return f"HTTP {status} {getattr(e, 'reason', '')}".rstrip()
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _differs(a: LoadResult, b: LoadResult) -> bool:
    if a.errors != b.errors or a.resources.keys() != b.resources.keys():
        return True
    return any(b.resources[k] is not v for k, v in a.resources.items())
