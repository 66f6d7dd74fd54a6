"""The CA root shared by every replica through one Secret (Kubernetes mode).

The Secret (default ``meshpilot-ca``, type ``meshpilot.io/ca-root``, so the config source
never reads it as a gateway credential) holds the CA state directory's files under their
own names: ``root-ca.pem`` (root certificate and key), ``retired-roots.json`` when a rotation
left one, and ``token.key`` (the mesh-token key, so a bootstrap's token works at every
replica). Each replica mirrors it into its own ``--ca-state`` directory, where
:class:`~xds_server.app.mesh_ca.MeshCA` reads it as always: the directory is a cache, the
Secret the truth.

* start-up (:meth:`CASecret.ensure`): the Secret exists -> its files are written locally
  (never a new root). It does not -> only the Lease's leader creates it, from its state
  directory (a root already there is kept: a single replica's root carries over; else a new
  one is made). Create is create-if-absent: a 409 means another replica won, and its
  Secret is read instead. Replicas that do not lead wait for it;
* afterwards (:meth:`CASecret.follow`): a watch on that one Secret. A changed root (an
  operator's rotation) is mirrored, and MeshCA's state poll takes it from there (new
  bundle to every proxy first, then certificates from the new root). A deleted Secret is
  written back by the leader from the root it signs with, never a new one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from ca import CertificateAuthority, TokenAuthority
from ca.rootstore import RETIRED_FILE, ROOT_FILE
from ca.state import ensure_private_dir, locked, read_private, write_private
from ca.tokens import KEY_FILE
from xds_server.app.leader import REQUEST_TIMEOUT, LeaseElector

log = structlog.get_logger("ca-secret")

DEFAULT_SECRET = "meshpilot-ca"
SECRET_TYPE = "meshpilot.io/ca-root"
#: Written in this order: the retired list before the root, as ``rotate_root`` does.
FILES = (KEY_FILE, RETIRED_FILE, ROOT_FILE)
WATCH_SECONDS = 300
BACKOFF_MAX = 10.0


class CASecret:
    def __init__(self, api_client: Any, namespace: str, name: str, state_dir: Path, elector: LeaseElector,
                 *, trust_domain: str) -> None:
        self._api = api_client
        self.namespace, self.name = namespace, name
        self.state_dir = state_dir
        self.elector = elector
        self.trust_domain = trust_domain
        #: Why the Secret cannot be followed right now (None: it can); for /healthz.
        self.problem: str | None = None
        self.created_by_me = False
        self.resource_version = ""
        self._missing = False
        self._stop = threading.Event()

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    # ------------------------------------------------------------ start-up (blocking)

    def ensure(self, *, timeout: float | None = None) -> None:
        """Block until the Secret's files are in the state directory (created first by the leader
        if need be). Called before the event loop runs: nothing can be served without a root."""
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = self.elector.retry_period
        while True:
            try:
                data = self._read()
                if data is None and self.elector.try_acquire_or_renew():
                    data = self._create_from_state()
                if data is not None:
                    self._mirror(data)
                    self.problem = None
                    return
                self.problem = f"waiting for the CA root Secret {self.where}, which the leader creates " \
                               f"(lease held by {self.elector.holder or 'nobody yet'})"
                backoff = self.elector.retry_period
            except Exception as e:  # unreachable, forbidden...: keep trying, say why
                self.problem = f"cannot read or create the CA root Secret {self.where}: {_describe(e)}"
                backoff = min(backoff * 2, BACKOFF_MAX)
            log.warning("no CA root yet", why=self.problem, retry_in_s=backoff)
            if deadline is not None and time.monotonic() + backoff > deadline:
                raise TimeoutError(self.problem)
            time.sleep(backoff)

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self._api)

    def _read(self) -> dict[str, bytes] | None:
        from kubernetes.client.rest import ApiException

        try:
            secret = self._core().read_namespaced_secret(self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        self.resource_version = secret.metadata.resource_version or ""
        return _decode(secret.data)

    def _create_from_state(self) -> dict[str, bytes]:
        """Create the Secret from this replica's state directory (its root, else a new one);
        if another replica's is there already (409), that one."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        # Made (or read) under the state directory's lock, like any local start.
        CertificateAuthority.load_or_create(self.state_dir, trust_domain=self.trust_domain)
        TokenAuthority.load_or_create(self.state_dir, trust_domain=self.trust_domain)
        data = self._local()
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace, labels={
                "app.kubernetes.io/managed-by": "meshpilot", "app.kubernetes.io/component": "ca"}),
            type=SECRET_TYPE, data={k: base64.b64encode(v).decode() for k, v in data.items()})
        try:
            made = self._core().create_namespaced_secret(self.namespace, body, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status != 409:
                raise
            log.info("another replica created the CA root Secret first; using it", secret=self.where)
            theirs = self._read()
            if theirs is None:  # deleted again in between: next round
                raise RuntimeError("the CA root Secret vanished right after a conflict") from None
            return theirs
        self.created_by_me = True
        self.resource_version = made.metadata.resource_version or ""
        log.info("created the CA root Secret", secret=self.where, identity=self.elector.identity)
        return data

    def _local(self) -> dict[str, bytes]:
        out = {}
        for name in FILES:
            with contextlib.suppress(FileNotFoundError):
                out[name] = read_private(self.state_dir / name)
        return out

    def _mirror(self, data: dict[str, bytes]) -> bool:
        """Write the Secret's files into the state directory; True if anything changed."""
        if ROOT_FILE not in data:
            raise ValueError(f"the Secret {self.where} has no {ROOT_FILE}")
        changed = False
        path = ensure_private_dir(self.state_dir)
        with locked(path):
            local = self._local()
            for name in FILES:
                if name in data and data[name] != local.get(name):
                    write_private(path / name, data[name])
                    changed = True
                elif name == RETIRED_FILE and name not in data and name in local:
                    (path / name).unlink()
                    changed = True
        return changed

    # ------------------------------------------------------------ afterwards (async)

    async def follow(self) -> None:
        """Mirror every change of the Secret; write it back (leader only) when deleted."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, dict[str, bytes]]] = asyncio.Queue()
        thread = threading.Thread(target=self._watch, args=(loop, events), name="ca-secret-watch", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    kind, data = await asyncio.wait_for(events.get(), timeout=self.elector.retry_period)
                except TimeoutError:
                    kind, data = "", {}
                if kind in ("ADDED", "MODIFIED"):
                    self._missing = False
                    try:
                        if await asyncio.to_thread(self._mirror, data):
                            log.info("the CA root Secret changed; mirrored into the state directory",
                                     secret=self.where)
                    except Exception as e:
                        log.error("cannot use the changed CA root Secret; keeping the current root",
                                  secret=self.where, error=_describe(e))
                elif kind == "DELETED":
                    log.warning("the CA root Secret was deleted; the leader writes it back", secret=self.where)
                    self._missing = True
                if self._missing and self.elector.is_leader:
                    try:
                        await asyncio.to_thread(self._create_from_state)
                        self._missing = False
                    except Exception as e:
                        log.warning("writing the CA root Secret back failed; retrying", error=_describe(e))
        finally:
            self._stop.set()

    def _watch(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[tuple[str, dict[str, bytes]]]) -> None:
        from kubernetes import watch

        backoff = 0.5
        while not self._stop.is_set():
            try:
                w = watch.Watch()
                # No resourceVersion: each (re)connection starts with the Secret as it is now.
                for event in w.stream(self._core().list_namespaced_secret, self.namespace,
                                      field_selector=f"metadata.name={self.name}", timeout_seconds=WATCH_SECONDS,
                                      _request_timeout=(REQUEST_TIMEOUT, WATCH_SECONDS + 30)):
                    if self._stop.is_set():
                        return
                    obj = event["object"]
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.resource_version = obj.metadata.resource_version or ""
                        loop.call_soon_threadsafe(events.put_nowait, (event["type"], _decode(obj.data)))
                    backoff = 0.5
                    self.problem = None
            except Exception as e:
                self.problem = f"watching the CA root Secret {self.where} failed: {_describe(e)}"
                log.warning("watching the CA root Secret failed; retrying", error=_describe(e), retry_in_s=backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def describe(self) -> dict[str, Any]:
        return {"secret": self.where, "resource_version": self.resource_version, "created_here": self.created_by_me,
                "missing": self._missing, "problem": self.problem}


def _decode(data: dict[str, str] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}


def _describe(e: BaseException) -> str:
    status = getattr(e, "status", None)
    if status:
        return f"HTTP {status} {getattr(e, 'reason', '')}".rstrip()
    return f"{type(e).__name__}: {str(e)[:200]}"
