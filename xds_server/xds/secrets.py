"""SDS: each proxy's ``default`` (its chain and key) and ``ROOTCA`` (the trust bundle), and
a gateway's ``kubernetes://<credentialName>`` secrets (:class:`CredentialStore`).

Envoy here runs without an agent beside it, so the control plane itself hands every proxy
its key. Two rules follow, and this module is where they hold:

* a stream gets secrets only for the identity it *proved*: a token from the mesh
  (``ca.tokens``) sent as gRPC metadata on a TLS connection, naming the same namespace and
  service account as the node metadata. Anything else (no token, a bad or expired one, a
  token for another identity, the plaintext port) gets config but no secret, one log line
  and a count in ``meshpilot_sds_identity_rejected_total{reason}``;
* a key never leaves except inside an SDS response to that identity: not in logs, not in
  ``/debug/*`` (:meth:`SecretStore.describe` shows name, version, SPIFFE ID and dates),
  not in versions (a secret's version is its certificate's serial, not a hash of the key).

Secrets are per identity, not per proxy: proxies of one namespace and service account
share one certificate and the same encoded response, as they share one SPIFFE ID. Issuance
runs on the signer's threads (``ca.Signer``), so a burst of new proxies does not stall
pushes to the others; the signer re-issues at half life and :meth:`SecretStore.run` pushes
the new certificates to every stream of that identity.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import structlog
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from prometheus_client import Counter, Gauge

from ca import IssuedCertificate, Signer, TokenAuthority, TokenError, WorkloadIdentity
from ca.tokens import ExpiredToken
from translators.api import SECRET
from translators.model.base import ResourceKey
from translators.model.kube import Secret as KubeSecret
from translators.model.world import World
from xds_server.xds.cache import Resource, ResourceSet, TypeView

log = structlog.get_logger("sds")

#: Istio's names: the workload's own certificate and the roots to verify peers with.
DEFAULT_SECRET = "default"
ROOT_SECRET = "ROOTCA"
SECRET_NAMES = (DEFAULT_SECRET, ROOT_SECRET)

#: gRPC metadata keys a proxy may carry its token in (``authorization: Bearer <token>`` first).
AUTHORIZATION = "authorization"
TOKEN_HEADER = "x-meshpilot-token"

REJECTED = Counter(
    "meshpilot_sds_identity_rejected_total",
    "xDS streams refused secrets: reason is plaintext, missing_token, invalid_token, expired_token or "
    "identity_mismatch",
    ["reason"],
)
ISSUED = Counter("meshpilot_sds_certificates_issued_total", "Workload certificates issued for SDS", ["why"])
IDENTITIES = Gauge("meshpilot_sds_identities", "Identities with at least one stream holding their secrets")


@dataclass(frozen=True)
class Grant:
    """What a stream proved: the identity it may have secrets for (None: no secrets) and why."""

    identity: WorkloadIdentity | None
    reason: str  # "ok" or the rejection reason
    detail: str = ""  # for the log line: never a token or key
    token_id: str = ""

    @property
    def ok(self) -> bool:
        return self.identity is not None


class SyncProbe(Protocol):
    """What the xDS server tells about its streams' secrets: what was sent, what was acknowledged."""

    def secret_nonces(self) -> dict[int, str]: ...

    def secrets_acked_since(self, before: dict[int, str]) -> bool: ...


@dataclass(eq=False)
class _Entry:
    cert: IssuedCertificate
    bundle: bytes
    view: TypeView


class SecretStore:
    """Issues, caches and refreshes the SDS secrets of every identity with a live stream."""

    def __init__(self, signer: Signer, tokens: TokenAuthority) -> None:
        self.signer = signer
        self.tokens = tokens
        self._entries: dict[WorkloadIdentity, _Entry] = {}
        self._watchers: dict[WorkloadIdentity, dict[int, Callable[[], None]]] = {}
        self._next = 0
        self.probe: SyncProbe | None = None  # set by the xDS server that serves these secrets

    # ------------------------------------------------------------ identity proof

    def authenticate(self, metadata: Iterable[tuple[str, Any]], namespace: str, service_account: str) -> Grant:
        """The identity a stream's gRPC ``metadata`` proves, checked against what its node claims."""
        token = bearer_token(metadata)
        if token is None:
            return Grant(None, "missing_token", "no token in the stream's metadata")
        try:
            claims = self.tokens.claims(token)
        except ExpiredToken as e:
            return Grant(None, "expired_token", str(e))
        except TokenError as e:
            return Grant(None, "invalid_token", str(e))
        ident = claims.identity
        if (ident.namespace, ident.service_account) != (namespace, service_account):
            claimed = f"spiffe://{ident.trust_domain}/ns/{namespace}/sa/{service_account}"
            return Grant(None, "identity_mismatch",
                         f"node metadata claims {claimed} but the token is for {ident.spiffe_id}", claims.token_id)
        return Grant(ident, "ok", token_id=claims.token_id)

    @staticmethod
    def reject(grant: Grant, proxy_id: str, **context: Any) -> None:
        """Log and count a stream refused secrets (``grant.detail`` never holds a token)."""
        REJECTED.labels(grant.reason).inc()
        log.warning("sds: no secrets for this stream", proxy=proxy_id, reason=grant.reason, detail=grant.detail,
                    token_id=grant.token_id or None, **context)

    # ------------------------------------------------------------ secrets

    async def view(self, identity: WorkloadIdentity) -> TypeView:
        """The secrets of ``identity`` as a TypeView, issuing its certificate if none is fresh."""
        cert = await self.signer.get(identity)
        entry = self._entries.get(identity)
        if entry is None or entry.cert is not cert:
            ISSUED.labels("new" if entry is None else "renewed").inc()
            entry = self._build(identity, cert, entry)
            log.info("sds: certificate ready", identity=identity.spiffe_id, serial=cert.serial_hex,
                     not_after=cert.not_after.isoformat())
        return entry.view

    def current(self, identity: WorkloadIdentity) -> TypeView | None:
        entry = self._entries.get(identity)
        return entry.view if entry is not None else None

    def watch(self, identity: WorkloadIdentity, on_change: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_change`` when the secrets of ``identity`` change; returns the function that stops it.
        When the last watcher of an identity goes, its key is dropped from memory."""
        self._next += 1
        wid = self._next
        self._watchers.setdefault(identity, {})[wid] = on_change
        IDENTITIES.set(len(self._watchers))

        def unwatch() -> None:
            watchers = self._watchers.get(identity)
            if watchers is None:
                return
            watchers.pop(wid, None)
            if not watchers:
                del self._watchers[identity]
                self._entries.pop(identity, None)
                self.signer.forget(identity)
                IDENTITIES.set(len(self._watchers))

        return unwatch

    async def run(self) -> None:
        """Forever: re-issue certificates at half life (or after a root rotation) and push them."""
        await self.signer.run_refresher(self._refreshed)

    def _refreshed(self, certs: list[IssuedCertificate]) -> None:
        for cert in certs:
            ident = cert.identity
            if ident is None or ident not in self._watchers:
                continue
            entry = self._entries.get(ident)
            if entry is not None and entry.cert is cert:
                continue
            ISSUED.labels("renewed").inc()
            self._build(ident, cert, entry)
            log.info("sds: certificate renewed", identity=ident.spiffe_id, serial=cert.serial_hex,
                     not_after=cert.not_after.isoformat(), streams=len(self._watchers[ident]))
            for notify in list(self._watchers[ident].values()):
                notify()

    async def push_bundle(self, timeout: float = 30.0) -> bool:
        """Push the CA's current trust bundle (certificates unchanged) to every stream and wait
        until each has acknowledged it, at most ``timeout`` seconds; False if some did not."""
        probe = self.probe
        before = probe.secret_nonces() if probe is not None else {}
        bundle = self.signer.ca.trust_bundle()
        pushed = 0
        for ident, entry in list(self._entries.items()):
            if entry.bundle == bundle or ident not in self._watchers:
                continue
            self._build(ident, entry.cert, entry)
            for notify in list(self._watchers[ident].values()):
                notify()
                pushed += 1
        log.info("sds: trust bundle pushed", streams=pushed, roots=bundle.count(b"BEGIN CERTIFICATE"))
        if probe is None or not pushed:
            return True
        deadline = time.monotonic() + timeout
        while not probe.secrets_acked_since(before):
            if time.monotonic() > deadline:
                log.warning("sds: not every stream acknowledged the trust bundle; going on", timeout_s=timeout)
                return False
            await asyncio.sleep(0.1)
        return True

    def _build(self, identity: WorkloadIdentity, cert: IssuedCertificate, old: _Entry | None) -> _Entry:
        bundle = self.signer.ca.trust_bundle()
        resources = {
            DEFAULT_SECRET: _resource(DEFAULT_SECRET, tls_certificate_secret(cert), cert.serial_hex),
            ROOT_SECRET: _resource(ROOT_SECRET, root_secret(bundle), _digest(bundle)),
        }
        previous = old.view.layers[0] if old is not None else None
        changed = frozenset(n for n, r in resources.items()
                            if previous is None or previous.resources[n].version != r.version)
        if previous is not None:  # keep unchanged resources as the same objects
            resources = {n: (r if n in changed else previous.resources[n]) for n, r in resources.items()}
        rs = ResourceSet(("secrets", identity), SECRET, MappingProxyType({n: r.message for n, r in resources.items()}),
                         resources, previous, changed)
        if previous is not None:
            previous.previous = None  # history of one: enough for "what changed", and frees old keys
        entry = _Entry(cert, bundle, TypeView(SECRET, (rs,)))
        self._entries[identity] = entry
        return entry

    # ------------------------------------------------------------ debug

    def describe(self, identity: WorkloadIdentity | None = None) -> dict[str, Any] | list[dict[str, Any]]:
        """What ``/debug/*`` may show: names, versions, SPIFFE IDs, dates. Never key material."""
        if identity is not None:
            entry = self._entries.get(identity)
            return self._describe(identity, entry) if entry is not None else {"identity": identity.spiffe_id}
        return [self._describe(i, e) for i, e in sorted(self._entries.items())]

    def describe_spiffe(self, spiffe_id: str) -> dict[str, Any] | None:
        for identity, entry in self._entries.items():
            if identity.spiffe_id == spiffe_id:
                return entry.cert.describe()
        return None

    def _describe(self, identity: WorkloadIdentity, entry: _Entry) -> dict[str, Any]:
        layer = entry.view.layers[0]
        return {
            "identity": identity.spiffe_id,
            "streams": len(self._watchers.get(identity, {})),
            "secrets": {name: layer.resources[name].version for name in SECRET_NAMES},
            "certificate": entry.cert.describe(),
        }


def bearer_token(metadata: Iterable[tuple[str, Any]]) -> str | None:
    """The token in ``authorization: Bearer <token>`` or ``x-meshpilot-token``, else None."""
    found: dict[str, str] = {}
    for key, value in metadata:
        if isinstance(value, bytes):
            continue  # binary (-bin) metadata never carries a token
        found.setdefault(key.lower(), value)
    auth = found.get(AUTHORIZATION, "")
    scheme, _, credential = auth.strip().partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    token = found.get(TOKEN_HEADER, "").strip()
    return token or None


def tls_certificate_secret(cert: IssuedCertificate) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=DEFAULT_SECRET,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=cert.chain_pem),
            private_key=base_pb2.DataSource(inline_bytes=cert.private_key.reveal()),
        ),
    )


def root_secret(bundle: bytes) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=ROOT_SECRET,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=bundle)
        ),
    )


class _SecretResource(Resource):
    """A Resource whose version is given (a serial), not a hash of its bytes (which hold a key)."""

    __slots__ = ()

    def __init__(self, name: str, message: secret_pb2.Secret, version: str) -> None:
        self.name = name
        self.type_url = SECRET
        self.data = message.SerializeToString(deterministic=True)
        self.message = message
        self.version = version

    def __repr__(self) -> str:
        return f"<secret {self.name} version={self.version}>"


def _resource(name: str, message: secret_pb2.Secret, version: str) -> Resource:
    return _SecretResource(name, message, version)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


# ---------------------------------------------------------------- gateway credentials


#: The SDS names of a Gateway's ``credentialName`` (istiod's): the certificate and key, and
#: the CA that MUTUAL servers verify clients against.
CREDENTIAL_PREFIX = "kubernetes://"
CA_SUFFIX = "-cacert"
#: Keys of a Secret, in the order they are looked for: kubernetes.io/tls, then generic.
_CERT_KEYS, _KEY_KEYS, _CA_KEYS = ("tls.crt", "cert"), ("tls.key", "key"), ("ca.crt", "cacert")
#: A version must change when the key does, without being a hash of the key anyone could
#: test guesses against: a keyed hash with a key that lives only in this process.
_VERSION_KEY = secrets.token_bytes(32)


def _first(values: dict[str, bytes], keys: tuple[str, ...]) -> bytes | None:
    return next((values[k] for k in keys if values.get(k)), None)


def credential_resources(secret: KubeSecret) -> dict[str, Resource]:
    """The SDS secrets one Kubernetes Secret gives: ``kubernetes://<name>`` when it holds a
    certificate and a key, ``kubernetes://<name>-cacert`` when it holds a CA (a Secret
    ``<name>-cacert`` holding only a CA gives that name too, as in istiod)."""
    values = secret.values()
    cert, key, ca = _first(values, _CERT_KEYS), _first(values, _KEY_KEYS), _first(values, _CA_KEYS)
    out: dict[str, Resource] = {}
    base = CREDENTIAL_PREFIX + secret.metadata.name
    if cert and key:
        msg = secret_pb2.Secret(name=base, tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=cert), private_key=base_pb2.DataSource(inline_bytes=key)))
        out[base] = _resource(base, msg, _keyed_digest(cert, key))
    if ca:
        name = base if base.endswith(CA_SUFFIX) and not (cert and key) else base + CA_SUFFIX
        msg = secret_pb2.Secret(name=name, validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=ca)))
        out[name] = _resource(name, msg, _digest(ca))
    return out


def _keyed_digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=8, key=_VERSION_KEY)
    for p in parts:
        h.update(hashlib.blake2b(p, digest_size=32).digest())
    return h.hexdigest()


class CredentialStore:
    """Gateway credentials (``credentialName``): the Secrets of the current World as SDS
    secrets, one layer per namespace. A gateway proxy is served its own namespace's (as
    istiod serves a gateway the Secrets of the namespace it runs in); sidecars get none.

    A namespace's layer is rebuilt only when one of its Secrets changed, keeping unchanged
    resources as the same objects, and only streams of that namespace are told."""

    def __init__(self) -> None:
        self._world: World | None = None
        self._by_namespace: dict[str, set[str]] = {}  # the Secrets' names, per namespace
        self._layers: dict[str, ResourceSet] = {}
        self._watchers: dict[str, dict[int, Callable[[], None]]] = {}
        self._next = 0

    def update(self, world: World) -> None:
        prev, self._world = self._world, world
        if prev is not None and world.version == prev.version + 1:
            keys = {k for k in world.changed if k.kind == KubeSecret.KIND}
        else:
            old = prev.resources if prev is not None else {}
            keys = {k for k, v in world.resources.items() if k.kind == KubeSecret.KIND and old.get(k) is not v}
            keys |= {k for k in old if k.kind == KubeSecret.KIND and k not in world.resources}
        for key in keys:
            names = self._by_namespace.setdefault(key.namespace, set())
            if key in world.resources:
                names.add(key.name)
            else:
                names.discard(key.name)
        for ns in {k.namespace for k in keys}:
            if ns in self._layers:
                before = self._layers[ns]
                after = self._build(ns, before)
                if after.changed:
                    log.info("sds: credentials changed", namespace=ns, secrets=sorted(after.changed),
                             streams=len(self._watchers.get(ns, {})))
                    for notify in list(self._watchers.get(ns, {}).values()):
                        notify()

    def layer(self, namespace: str) -> ResourceSet:
        found = self._layers.get(namespace)
        return found if found is not None else self._build(namespace, None)

    def _build(self, namespace: str, previous: ResourceSet | None) -> ResourceSet:
        world = self._world
        resources: dict[str, Resource] = {}
        if world is not None:
            for secret_name in sorted(self._by_namespace.get(namespace, ())):
                found = world.resources.get(ResourceKey(KubeSecret.KIND, namespace, secret_name))
                if isinstance(found, KubeSecret):
                    for name, res in credential_resources(found).items():
                        resources.setdefault(name, res)  # a Secret's own CA before a <name>-cacert Secret's
        old = previous.resources if previous is not None else {}
        resources = {n: old[n] if n in old and old[n].version == r.version else r for n, r in resources.items()}
        changed = frozenset(n for n in resources.keys() | old.keys() if old.get(n) is not resources.get(n))
        rs = ResourceSet(("credentials", namespace), SECRET,
                         MappingProxyType({n: r.message for n, r in resources.items()}), resources, previous, changed)
        if previous is not None:
            previous.previous = None
        self._layers[namespace] = rs
        return rs

    def watch(self, namespace: str, on_change: Callable[[], None]) -> Callable[[], None]:
        self._next += 1
        wid = self._next
        self._watchers.setdefault(namespace, {})[wid] = on_change

        def unwatch() -> None:
            watchers = self._watchers.get(namespace)
            if watchers is not None:
                watchers.pop(wid, None)
                if not watchers:  # no gateway of that namespace left: drop its keys from memory
                    del self._watchers[namespace]
                    self._layers.pop(namespace, None)

        return unwatch

    def describe(self, namespace: str) -> dict[str, str]:
        """Name -> version of the credentials served in ``namespace``: never key material."""
        layer = self._layers.get(namespace)
        return {n: r.version for n, r in sorted(layer.resources.items())} if layer is not None else {}
