"""X.509 templates: the self-signed root, workload leaves, the control plane's serving cert.

The shapes follow Istio's CA (security/pkg/pki/util/generate_cert.go) so that Envoy and
Istio tooling read them the same way:

* leaves are v3, empty subject, SAN marked critical because the subject is empty (RFC 5280
  4.2.1.6; SPIFFE X.509-SVID), keyUsage digitalSignature+keyEncipherment, extKeyUsage
  serverAuth+clientAuth (one cert both accepts and makes mTLS connections), CA:FALSE;
* notBefore is backdated by :data:`CLOCK_SKEW` (Istio's ClockSkewGracePeriod) so a peer whose
  clock runs a little behind does not reject a cert issued "in its future";
* notAfter never outlives the signer (Istio clamps the same way);
* serial numbers are random 128-bit, like Istio's ``rand.Int(rand.Reader, 2^128)``;
* subject/authority key identifiers are set so chain building never relies on names alone.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import ip_address
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.errors import CAError
from ca.identity import WorkloadIdentity
from ca.keys import SIGNATURE_HASH, PrivateKey
from ca.secret import SecretBytes

CLOCK_SKEW = timedelta(minutes=2)
ROOT_ORGANIZATION_UNIT = "meshpilot"


def random_serial() -> int:
    while True:
        serial = secrets.randbits(128)
        if serial:  # X.509 serials are positive
            return serial


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, hex: how roots and signers are told apart."""
    return cert.fingerprint(SIGNATURE_HASH).hex()


def to_pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def build_root(key: PrivateKey, trust_domain: str, now: datetime, ttl: timedelta) -> x509.Certificate:
    """A self-signed root that signs leaves directly, hence pathlen 0.

    The common name carries a random suffix so that an old and a new root in one trust
    bundle never share a subject: name-based chain building cannot confuse them.
    """
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROOT_ORGANIZATION_UNIT),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshpilot root CA {secrets.token_hex(4)}"),
        ]
    )
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(key, SIGNATURE_HASH)


@dataclass(frozen=True)
class Issuer:
    """What signs leaves: a CA cert, its key, and the chain from it up to (excluding) the root."""

    cert: x509.Certificate
    key: PrivateKey
    #: The signer followed by any intermediates above it; empty when the signer is a root.
    chain: tuple[x509.Certificate, ...]

    @property
    def id(self) -> str:
        return fingerprint(self.cert)

    def __repr__(self) -> str:
        return f"Issuer({self.cert.subject.rfc4514_string()}, id={self.id[:16]})"


def build_leaf(
    issuer: Issuer,
    public_key: Any,
    now: datetime,
    ttl: timedelta,
    *,
    uris: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> x509.Certificate:
    if not now < issuer.cert.not_valid_after_utc:
        raise CAError(f"the signing certificate expired at {issuer.cert.not_valid_after_utc.isoformat()}")
    if not (uris or dns_names or ip_addresses):
        raise CAError("a certificate needs at least one subject alternative name")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ip_address(a)) for a in ip_addresses]
    # A DNS cert gets its first name as CN, as Istio's dual-use certs do; tools still show CN.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])] if dns_names else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + ttl, issuer.cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=len(subject) == 0)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(issuer.cert), critical=False)
    )
    return builder.sign(issuer.key, SIGNATURE_HASH)


@dataclass(frozen=True, repr=False)
class IssuedCertificate:
    """A leaf with its chain and key, as a proxy's SDS secret needs them.

    ``repr`` is a one-line summary with no PEM at all, and ``private_key`` is a
    :class:`SecretBytes`, so logging one of these (or a list of them) is safe.
    """

    certificate: x509.Certificate
    #: Leaf then intermediates (never the root): Envoy's ``certificate_chain``.
    chain_pem: bytes
    private_key: SecretBytes
    #: When it was signed; ``not_before`` is earlier by :data:`CLOCK_SKEW`.
    issued_at: datetime
    #: Fingerprint of the signing certificate, to tell certs from before a root rotation.
    signer_id: str
    identity: WorkloadIdentity | None = None

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def refresh_at(self) -> datetime:
        """Half life, counted from issuance: when the holder should get a new one."""
        return self.issued_at + (self.not_after - self.issued_at) / 2

    @property
    def serial_hex(self) -> str:
        return f"{self.certificate.serial_number:032x}"

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def name(self) -> str:
        if self.identity is not None:
            return self.identity.spiffe_id
        san = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return ",".join(str(v) for v in san.get_values_for_type(x509.DNSName)) or "?"

    def describe(self) -> dict[str, str]:
        """What ``/debug/*`` may show: names, serial and times, never key material."""
        return {
            "name": self.name,
            "serial": self.serial_hex,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "refresh_at": self.refresh_at.isoformat(),
            "signer": self.signer_id[:16],
        }

    def __repr__(self) -> str:
        return (
            f"IssuedCertificate({self.name}, serial={self.serial_hex}, "
            f"not_after={self.not_after.isoformat()}, key={self.private_key!r})"
        )

    __str__ = __repr__


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
