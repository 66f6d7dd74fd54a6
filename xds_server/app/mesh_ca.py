"""The control plane's side of the CA: workload secrets for SDS and its own TLS serving cert.

``meshpilot serve`` and ``meshpilot bootstrap`` find the same CA (root and token key) in
one state directory (``--ca-state``, default :func:`ca.default_state_dir`), so a bootstrap
made on this machine carries a token the server accepts and the root the server's
certificate chains to.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import structlog

from ca import (
    DEFAULT_SERVER_TTL,
    CertificateAuthority,
    IssuedCertificate,
    Signer,
    TokenAuthority,
)
from ca.errors import StateError
from xds_server.xds.secrets import SecretStore

log = structlog.get_logger("ca")

#: How often ``serve`` looks for a root rotated by ``meshpilot ca rotate-root`` (seconds).
STATE_POLL = 1.0
#: How long a rotation waits for every proxy to acknowledge the new trust bundle (seconds).
BUNDLE_ACK_TIMEOUT = 30.0

#: Names every serving cert carries, whatever address it listens on.
DEFAULT_SERVER_NAMES = ("localhost",)


def server_names(host: str, extra: list[str] | tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) for the serving cert of an xDS port bound to ``host``."""
    dns: list[str] = list(DEFAULT_SERVER_NAMES)
    ips: list[str] = []
    for name in (host, *extra):
        try:
            addr = ipaddress.ip_address(name)
        except ValueError:
            if name and name not in dns:
                dns.append(name)
            continue
        if addr.is_unspecified:  # bound to every address: loopback at least
            for loop in ("127.0.0.1", "::1"):
                if loop not in ips:
                    ips.append(loop)
        elif str(addr) not in ips:
            ips.append(str(addr))
    return dns, ips


class MeshCA:
    def __init__(
        self,
        state_dir: Path,
        *,
        workload_ttl: timedelta,
        cacerts: Path | None = None,
    ) -> None:
        #: Why the state directory cannot be used (None: it is fine); serving goes on meanwhile.
        self.state_problem: str | None = None
        if cacerts is not None:
            self.ca = CertificateAuthority.from_cacerts(cacerts)
        else:
            try:
                self.ca = CertificateAuthority.load_or_create(state_dir)
            except StateError as e:
                self._state_unusable(state_dir, e)
                self.ca = CertificateAuthority.in_memory()
        # The token key lives in the state directory even with a plugged-in CA (it is ours).
        try:
            self.tokens = TokenAuthority.load_or_create(state_dir, trust_domain=self.ca.trust_domain)
        except StateError as e:
            self._state_unusable(state_dir, e)
            self.tokens = TokenAuthority.in_memory(trust_domain=self.ca.trust_domain)
        self.signer = Signer(self.ca, ttl=workload_ttl)
        self.secrets = SecretStore(self.signer, self.tokens)
        self.server_cert: IssuedCertificate | None = None
        self._names: tuple[list[str], list[str]] = ([], [])
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._lock = threading.Lock()

    def _state_unusable(self, state_dir: Path, error: StateError) -> None:
        """A full disk or a read-only directory with nothing in it yet: not a reason to stop
        serving config. Said at /healthz, /debug/errors (so in ``meshpilot_config_errors``) and
        in the log."""
        if self.state_problem is None:
            self.state_problem = (
                f"the CA state directory {state_dir} cannot be used ({error}); serving with an in-memory CA "
                "and token key instead: workload certificates and tokens it issues are not trusted after "
                "a restart, and bootstraps made from that directory are not accepted"
            )
        log.error("ca state directory unusable; serving with an in-memory CA", state_dir=str(state_dir),
                  error=str(error))

    # ------------------------------------------------------------ the xDS TLS port

    def server_credentials(self, host: str, extra_names: list[str] | tuple[str, ...] = ()) -> grpc.ServerCredentials:
        """TLS credentials for the xDS port; the certificate renews itself (see :meth:`run`)."""
        self._names = server_names(host, extra_names)
        self.server_cert = self.ca.server_certificate(self._names[0], ip_addresses=self._names[1])
        log.info("xds serving certificate issued", **self.server_cert.describe())
        return grpc.dynamic_ssl_server_credentials(
            self._config(self.server_cert), self._fetch, require_client_authentication=False
        )

    @staticmethod
    def _config(cert: IssuedCertificate) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(cert.private_key.reveal(), cert.chain_pem)])

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # gRPC calls this on every new connection, from its own threads: hand over a renewed
        # certificate once, else say "no change".
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    async def _renew_server_cert(self) -> None:
        while True:
            cert = self.server_cert
            if cert is None:
                return
            now = self.ca.now()
            # Renewed at half life only, not when the root rotates: bootstraps made before the
            # rotation trust the old root alone, and this certificate keeps them connected.
            if now < cert.refresh_at:
                await asyncio.sleep(min((cert.refresh_at - now).total_seconds(), 60.0))
                continue
            try:
                fresh = await self.signer.server_certificate(
                    self._names[0], ip_addresses=self._names[1], ttl=DEFAULT_SERVER_TTL
                )
            except Exception:
                log.exception("renewing the xds serving certificate failed; retrying")
                await asyncio.sleep(5.0)
                continue
            with self._lock:
                self._pending = self._config(fresh)
            self.server_cert = fresh
            log.info("xds serving certificate renewed", **fresh.describe())

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        """Renew workload certificates (pushing them over SDS) and the serving certificate,
        and follow root rotations made in the state directory."""
        helpers = [asyncio.create_task(self._renew_server_cert(), name="server-cert"),
                   asyncio.create_task(self._watch_state(), name="ca-state")]
        try:
            await self.secrets.run()
        finally:
            for task in helpers:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _watch_state(self, every: float = STATE_POLL) -> None:
        """Poll the state files: another process (``meshpilot ca rotate-root``) may rewrite them."""
        stamp = self.ca.state_stamp()
        if not stamp:
            return  # a plugged-in CA: nothing here to follow
        while True:
            await asyncio.sleep(every)
            now = self.ca.state_stamp()
            if now == stamp:
                continue
            stamp = now
            try:
                await self.follow_state()
            except Exception:
                log.exception("re-reading the CA state failed; keeping the current root")

    async def follow_state(self) -> None:
        """Apply the state files: the new trust bundle to every proxy first, then (once each has
        acknowledged it) certificates signed by the new root. Peers never meet a certificate
        they cannot verify, so traffic keeps flowing through the rotation."""
        fresh = self.ca.reload_state()
        log.info("ca state changed", new_root=fresh, **{"roots": len(self.ca.trusted_roots())})
        acked = await self.secrets.push_bundle(BUNDLE_ACK_TIMEOUT)
        if fresh and self.ca.adopt_new_root():
            log.info("signing with the new root; re-issuing workload certificates", signer=self.ca.signer_id[:16],
                     bundle_acked=acked)
            self.signer.wake()

    def close(self) -> None:
        self.signer.close()

    def describe(self) -> dict[str, Any]:
        """``/debug/ca``: the CA, the serving cert and every identity's certificate; no key material."""
        return {
            "ca": self.ca.describe(),
            "xds_serving_certificate": self.server_cert.describe() if self.server_cert else None,
            "workload_ttl_seconds": self.signer.ttl.total_seconds(),
            "identities": self.secrets.describe(),
        }
