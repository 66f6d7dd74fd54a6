"""Istio's plugged-in CA layout: an organisation's intermediate signs the mesh's certs.

The ``cacerts`` directory (in Kubernetes, a secret of that name) holds four files:
``ca-cert.pem`` and ``ca-key.pem`` sign; ``cert-chain.pem`` is the chain from ca-cert up
to the root (with or without ca-cert and the root themselves, as tools differ);
``root-cert.pem`` holds the root(s) workloads trust. The chain is verified signature by
signature on load, so a mismatched file fails at start rather than as an mTLS handshake
error on every proxy. The key file is read as is: its permissions are the mounting
system's business (Kubernetes mounts secrets 0644 by default).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ca.certs import Issuer
from ca.clock import Clock
from ca.errors import StateError
from ca.keys import load_private_key, public_key_bytes
from ca.secret import SecretBytes


def load_cacerts(d: Path, clock: Clock) -> tuple[Issuer, list[x509.Certificate]]:
    """The signer and the trusted roots from the cacerts directory ``d``, checked."""
    ca_cert = _only_cert(_read_certs(d / "ca-cert.pem"), d / "ca-cert.pem")
    roots = _read_certs(d / "root-cert.pem")
    chain_file = d / "cert-chain.pem"
    # Missing or empty is fine when ca-cert is itself a root (checked below).
    chain = _read_certs(chain_file, allow_empty=True) if chain_file.exists() else []
    try:
        key_pem = SecretBytes((d / "ca-key.pem").read_bytes())
    except OSError as e:
        raise StateError(f"cannot read {d / 'ca-key.pem'}: {e.strerror}") from None
    key = load_private_key(key_pem, str(d / "ca-key.pem"))
    if public_key_bytes(key) != public_key_bytes(ca_cert.public_key()):
        raise StateError(f"{d / 'ca-key.pem'} is not the key of {d / 'ca-cert.pem'}")
    if not _is_ca(ca_cert):
        raise StateError(f"{d / 'ca-cert.pem'} is not a CA certificate (basicConstraints CA:TRUE)")
    now = clock()
    if not now < ca_cert.not_valid_after_utc:
        raise StateError(f"{d / 'ca-cert.pem'} expired at {ca_cert.not_valid_after_utc.isoformat()}")
    intermediates = _chain_to_roots(ca_cert, chain, roots, d)
    issuer_chain = () if same(ca_cert, roots) else (ca_cert, *intermediates)
    return Issuer(ca_cert, key, issuer_chain), roots


def _read_certs(path: Path, *, allow_empty: bool = False) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StateError(f"cannot read {path}: {e.strerror}") from None
    if allow_empty and not data.strip():
        return []
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise StateError(f"{path} holds no readable PEM certificate") from None
    return certs


def _only_cert(certs: list[x509.Certificate], path: Path) -> x509.Certificate:
    if len(certs) != 1:
        raise StateError(f"{path} must hold exactly one certificate, not {len(certs)}")
    return certs[0]


def _chain_to_roots(
    ca_cert: x509.Certificate, chain: list[x509.Certificate], roots: list[x509.Certificate], where: Path
) -> list[x509.Certificate]:
    """The intermediates above ``ca_cert``, each checked to be signed by the next, up to a root."""
    if same(ca_cert, roots):
        return []
    intermediates = [
        c for c in chain if not same(c, [ca_cert]) and not same(c, roots) and not _self_signed(c)
    ]
    child = ca_cert
    for parent in intermediates:
        if not _issued_by(child, parent):
            raise StateError(
                f"{where / 'cert-chain.pem'}: {child.subject.rfc4514_string()} is not signed by "
                f"{parent.subject.rfc4514_string()} (the chain must run from ca-cert up to the root)"
            )
        child = parent
    if not any(_issued_by(child, root) for root in roots):
        raise StateError(
            f"{where}: {child.subject.rfc4514_string()} is not signed by any certificate in root-cert.pem"
        )
    return intermediates


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer and _issued_by(cert, cert)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def same(cert: x509.Certificate, certs: Iterable[x509.Certificate]) -> bool:
    return any(cert == c for c in certs)
