"""The certificate authority: one signer, the roots it is trusted through, and issuance.

Two ways to get one:

* :meth:`CertificateAuthority.load_or_create` keeps a self-signed root in a private state
  directory (made on first start, then reused by every process pointed at the directory;
  files in :mod:`ca.rootstore`, directory rules in :mod:`ca.state`);
* :meth:`CertificateAuthority.from_cacerts` plugs in an intermediate from files laid out
  like Istio's ``cacerts`` secret (:mod:`ca.cacerts`), so an organisation's own PKI signs.

Issuance makes the key pair here: Envoy has no agent to make a CSR, so the control plane
hands each proxy a key it generated in memory and never wrote down.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Literal

from cryptography import x509

from ca.cacerts import load_cacerts, same
from ca.certs import (
    IssuedCertificate,
    Issuer,
    build_leaf,
    build_root,
    fingerprint,
    to_pem,
)
from ca.clock import Clock, utcnow
from ca.errors import CAError, StateError
from ca.identity import (
    DEFAULT_TRUST_DOMAIN,
    InvalidIdentity,
    WorkloadIdentity,
    check_dns1123_subdomain,
    check_trust_domain,
)
from ca.keys import (
    KeyType,
    check_key_type,
    generate_private_key,
    key_type_of,
    private_key_pem,
)
from ca.rootstore import (
    RETIRED_FILE,
    ROOT_FILE,
    RetiredRoot,
    read_retired,
    read_root,
    root_trust_domain,
    write_retired,
    write_root,
)
from ca.state import ensure_private_dir, locked

DEFAULT_WORKLOAD_TTL = timedelta(hours=24)
DEFAULT_ROOT_TTL = timedelta(days=3650)
#: The control plane's own serving cert; it carries ``refresh_at`` like any other.
DEFAULT_SERVER_TTL = timedelta(days=30)

Mode = Literal["self-signed", "cacerts"]


class CertificateAuthority:
    def __init__(
        self,
        issuer: Issuer,
        roots: Sequence[x509.Certificate],
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        key_type: KeyType = "ecdsa",
        clock: Clock = utcnow,
        state_dir: Path | None = None,
        retired: Sequence[RetiredRoot] = (),
        root_ttl: timedelta = DEFAULT_ROOT_TTL,
    ) -> None:
        """Prefer :meth:`load_or_create` or :meth:`from_cacerts`; this takes checked parts."""
        if not roots:
            raise CAError("a certificate authority needs at least one root")
        self.trust_domain = check_trust_domain(trust_domain)
        self.key_type = check_key_type(key_type)
        self._clock = clock
        self._state_dir = state_dir
        self._root_ttl = root_ttl
        # Replaced whole (never mutated) so a signing thread reads one consistent snapshot.
        self._issuer = issuer
        self._roots = tuple(roots)
        self._retired = tuple(retired)
        self._pending_issuer: Issuer | None = None  # a new root read from the state, not signing yet
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ construction

    @classmethod
    def load_or_create(
        cls,
        state_dir: Path | str,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        key_type: KeyType = "ecdsa",
        root_ttl: timedelta = DEFAULT_ROOT_TTL,
        clock: Clock = utcnow,
    ) -> CertificateAuthority:
        """The self-signed CA kept in ``state_dir``: loaded if there, else created and saved.

        ``key_type`` is the default for workload keys and, when the root is created, the
        root's own key type; an existing root keeps whatever type it was made with.
        """
        check_trust_domain(trust_domain)
        key_type = check_key_type(key_type)
        path = ensure_private_dir(Path(state_dir))
        with locked(path):
            try:
                root, key = read_root(path / ROOT_FILE)
            except FileNotFoundError:
                key = generate_private_key(key_type)
                root = build_root(key, trust_domain, clock(), root_ttl)
                write_root(path / ROOT_FILE, root, key)
            retired = read_retired(path / RETIRED_FILE)
        made_for = root_trust_domain(root)
        if made_for != trust_domain:
            raise StateError(
                f"the root in {path} was made for trust domain {made_for!r}, not {trust_domain!r}; "
                "use another state directory for another trust domain"
            )
        return cls(
            Issuer(root, key, ()),
            [root],
            trust_domain=trust_domain,
            key_type=key_type,
            clock=clock,
            state_dir=path,
            retired=retired,
            root_ttl=root_ttl,
        )

    @classmethod
    def in_memory(
        cls,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        key_type: KeyType = "ecdsa",
        root_ttl: timedelta = DEFAULT_ROOT_TTL,
        clock: Clock = utcnow,
    ) -> CertificateAuthority:
        """A self-signed CA kept nowhere: what serving falls back to when the state directory
        cannot be written (its root is lost on restart)."""
        check_trust_domain(trust_domain)
        key_type = check_key_type(key_type)
        key = generate_private_key(key_type)
        root = build_root(key, trust_domain, clock(), root_ttl)
        return cls(Issuer(root, key, ()), [root], trust_domain=trust_domain, key_type=key_type, clock=clock,
                   root_ttl=root_ttl)

    @classmethod
    def from_cacerts(
        cls,
        cacerts_dir: Path | str,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        key_type: KeyType = "ecdsa",
        clock: Clock = utcnow,
    ) -> CertificateAuthority:
        """A plugged-in CA from Istio's cacerts layout. See :mod:`ca.cacerts`."""
        issuer, roots = load_cacerts(Path(cacerts_dir), clock)
        return cls(
            issuer,
            roots,
            trust_domain=trust_domain,
            key_type=key_type,
            clock=clock,
        )

    # ------------------------------------------------------------------ what it is

    @property
    def mode(self) -> Mode:
        return "cacerts" if self._state_dir is None else "self-signed"

    def now(self) -> datetime:
        """The CA's clock (injectable in tests); everything time-based in ``ca`` reads it."""
        return self._clock()

    @property
    def state_dir(self) -> Path | None:
        return self._state_dir

    @property
    def signer_id(self) -> str:
        """Fingerprint of the current signing cert; changes when the root rotates."""
        return self._issuer.id

    @property
    def signing_certificate(self) -> x509.Certificate:
        return self._issuer.cert

    def trusted_roots(self) -> list[x509.Certificate]:
        """Current roots first, then retired roots still inside their overlap."""
        now = self._clock()
        certs = list(self._roots)
        certs += [r.cert for r in self._retired if now < r.until and now < r.cert.not_valid_after_utc]
        return _dedupe(certs)

    def trust_bundle(self) -> bytes:
        """PEM of every root a peer's certificate may chain to: Envoy's ``trusted_ca``."""
        return to_pem(self.trusted_roots())

    def describe(self) -> dict[str, object]:
        """For ``/debug/*``: names, fingerprints and times only."""
        retired = {fingerprint(r.cert): r.until.isoformat() for r in self._retired}
        return {
            "mode": self.mode,
            "trust_domain": self.trust_domain,
            "signer": {"subject": self._issuer.cert.subject.rfc4514_string(), "id": self.signer_id[:16]},
            "roots": [
                {
                    "subject": c.subject.rfc4514_string(),
                    "fingerprint": fingerprint(c)[:16],
                    "not_after": c.not_valid_after_utc.isoformat(),
                    "retired_until": retired.get(fingerprint(c)),
                }
                for c in self.trusted_roots()
            ],
        }

    def __repr__(self) -> str:
        return f"CertificateAuthority({self.mode}, trust_domain={self.trust_domain!r}, signer={self.signer_id[:16]})"

    # ------------------------------------------------------------------ issuance

    def issue(
        self,
        identity: WorkloadIdentity,
        *,
        ttl: timedelta = DEFAULT_WORKLOAD_TTL,
        key_type: KeyType | None = None,
    ) -> IssuedCertificate:
        """A fresh key pair and a certificate whose only SAN is ``identity``'s SPIFFE ID."""
        if identity.trust_domain != self.trust_domain:
            raise CAError(f"{identity.spiffe_id} is outside this CA's trust domain {self.trust_domain!r}")
        return self._issue(ttl, key_type, identity=identity, uris=[identity.spiffe_id])

    def server_certificate(
        self,
        dns_names: Sequence[str],
        *,
        ip_addresses: Sequence[str] = (),
        ttl: timedelta = DEFAULT_SERVER_TTL,
        key_type: KeyType | None = None,
    ) -> IssuedCertificate:
        """The control plane's own serving cert (xDS and webhook ports), with DNS/IP SANs."""
        for name in dns_names:
            _check_dns_name(name)
        for addr in ip_addresses:
            try:
                ip_address(addr)
            except ValueError:
                raise CAError(f"{addr!r} is not an IP address") from None
        return self._issue(ttl, key_type, dns_names=list(dns_names), ip_addresses=list(ip_addresses))

    def _issue(
        self,
        ttl: timedelta,
        key_type: KeyType | None,
        *,
        identity: WorkloadIdentity | None = None,
        uris: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> IssuedCertificate:
        if ttl <= timedelta(0):
            raise CAError(f"certificate TTL must be positive, not {ttl}")
        key = generate_private_key(check_key_type(key_type or self.key_type))
        issuer = self._issuer
        now = self._clock()
        cert = build_leaf(
            issuer, key.public_key(), now, ttl, uris=uris, dns_names=dns_names, ip_addresses=ip_addresses
        )
        return IssuedCertificate(
            certificate=cert,
            chain_pem=to_pem([cert, *issuer.chain]),
            private_key=private_key_pem(key),
            issued_at=now,
            signer_id=issuer.id,
            identity=identity,
        )

    # ------------------------------------------------------------------ rotation

    def rotate_root(
        self, *, overlap: timedelta | None = None, key_type: KeyType | None = None
    ) -> x509.Certificate:
        """Make a new root, sign with it from now on, keep the old one trusted for a while.

        The old root stays in :meth:`trust_bundle` for ``overlap`` (default: until it
        expires), so certificates it signed keep verifying while proxies are re-issued; an
        overlap shorter than the workload TTL cuts those certificates off early.
        """
        if self._state_dir is None:
            raise CAError("a plugged-in (cacerts) CA rotates by replacing its files, not here")
        state_dir = self._state_dir
        with self._lock, locked(state_dir):
            now = self._clock()
            old = self._issuer.cert
            until = (
                old.not_valid_after_utc if overlap is None else min(now + overlap, old.not_valid_after_utc)
            )
            retired = [r for r in self._retired if now < r.until and not same(r.cert, [old])]
            retired.insert(0, RetiredRoot(old, until))
            key = generate_private_key(check_key_type(key_type or key_type_of(self._issuer.key)))
            root = build_root(key, self.trust_domain, now, self._root_ttl)
            # Retired list first: a crash in between leaves the old root both current and
            # retired (harmless), never the new root current with the old one forgotten.
            write_retired(state_dir / RETIRED_FILE, retired)
            write_root(state_dir / ROOT_FILE, root, key)
            self._retired = tuple(retired)
            self._roots = (root,)
            self._issuer = Issuer(root, key, ())
        return root

    def state_stamp(self) -> tuple[tuple[int, int, int], ...]:
        """What changes when another process rewrites the state files (``ca rotate-root``)."""
        if self._state_dir is None:
            return ()
        stamps = []
        for name in (ROOT_FILE, RETIRED_FILE):
            try:
                st = (self._state_dir / name).stat()
            except FileNotFoundError:
                stamps.append((0, 0, 0))
                continue
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def reload_state(self) -> bool:
        """Re-read the state files; True when they hold a new root.

        A new root is trusted at once (in :meth:`trust_bundle`, beside the retired one) but
        not yet signed with: :meth:`adopt_new_root` switches the signer, once every proxy
        holds the new bundle, so no peer ever sees a certificate it cannot verify yet.
        """
        if self._state_dir is None:
            return False
        with self._lock, locked(self._state_dir):
            root, key = read_root(self._state_dir / ROOT_FILE)
            retired = read_retired(self._state_dir / RETIRED_FILE)
        if root_trust_domain(root) != self.trust_domain:
            raise StateError(f"the new root in {self._state_dir} is for another trust domain")
        fresh = not same(root, [self._issuer.cert]) and not same(root, list(self._roots))
        # Until the switch, the current signer stays trusted even if the file retired it already.
        self._retired = tuple(retired)
        self._roots = (root,) if same(root, [self._issuer.cert]) else (root, self._issuer.cert)
        if fresh:
            self._pending_issuer = Issuer(root, key, ())
        return fresh

    def adopt_new_root(self) -> bool:
        """Sign with the root :meth:`reload_state` found; True if the signer changed."""
        pending, self._pending_issuer = self._pending_issuer, None
        if pending is None:
            return False
        self._issuer = pending
        self._roots = (pending.cert,)
        return True

    def drop_root(self, root_fingerprint: str) -> None:
        """Stop trusting a retired root now (e.g. once every proxy has a new certificate)."""
        if self._state_dir is None:
            raise CAError("a plugged-in (cacerts) CA has no retired roots")
        with self._lock, locked(self._state_dir):
            kept = [r for r in self._retired if fingerprint(r.cert) != root_fingerprint]
            if len(kept) == len(self._retired):
                raise CAError(f"no retired root has fingerprint {root_fingerprint}")
            write_retired(self._state_dir / RETIRED_FILE, kept)
            self._retired = tuple(kept)


# ---------------------------------------------------------------------- helpers


def _dedupe(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    seen: set[str] = set()
    out = []
    for c in certs:
        if (fp := fingerprint(c)) not in seen:
            seen.add(fp)
            out.append(c)
    return out


def _check_dns_name(name: str) -> None:
    try:
        check_dns1123_subdomain(name.removeprefix("*."), "DNS name")
    except InvalidIdentity as e:
        raise CAError(str(e)) from None
