"""A plugged-in intermediate in Istio's cacerts layout, built here with plain cryptography."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import VerificationError

from ca import CAError, CertificateAuthority, StateError
from ca.clock import utcnow

from .conftest import ALICE, certs, pem, verify_client

Key = ec.EllipticCurvePrivateKey


def _ca_cert(
    name: str, key: Key, issuer: x509.Certificate | None, issuer_key: Key, pathlen: int | None
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Corp"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    now = utcnow()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key((issuer_key).public_key()), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Pki:
    """An organisation's root and a chain of intermediates below it (the last one signs)."""

    def __init__(self, depth: int) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _ca_cert("Example Root", self.root_key, None, self.root_key, None)
        self.intermediates: list[x509.Certificate] = []
        parent, parent_key = self.root, self.root_key
        for i in range(depth):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _ca_cert(f"Example Intermediate {i}", key, parent, parent_key, depth - i - 1)
            self.intermediates.append(cert)
            parent, parent_key = cert, key
        self.signer, self.signer_key = parent, parent_key

    def write(self, d: Path, *, chain: bytes | None = None) -> Path:
        d.mkdir(parents=True, exist_ok=True)
        (d / "ca-cert.pem").write_bytes(pem(self.signer))
        (d / "ca-key.pem").write_bytes(key_pem(self.signer_key))
        # Istio's samples: cert-chain.pem = ca-cert + the intermediates above it + root.
        default = pem(*reversed(self.intermediates), self.root)
        (d / "cert-chain.pem").write_bytes(default if chain is None else chain)
        (d / "root-cert.pem").write_bytes(pem(self.root))
        return d


def test_issued_certs_chain_to_root_certpem(tmp_path: Path) -> None:
    pki = Pki(depth=1)
    ca = CertificateAuthority.from_cacerts(pki.write(tmp_path / "cacerts"))
    assert ca.mode == "cacerts"
    issued = ca.issue(ALICE)
    # The leaf travels with its intermediate; the root comes from root-cert.pem only.
    assert certs(issued.chain_pem) == [issued.certificate, pki.signer]
    assert ca.trust_bundle() == (tmp_path / "cacerts" / "root-cert.pem").read_bytes()
    chain = verify_client(issued, (tmp_path / "cacerts" / "root-cert.pem").read_bytes())
    assert chain == [issued.certificate, pki.signer, pki.root]
    issued.certificate.verify_directly_issued_by(pki.signer)


def test_two_level_chain_in_any_of_the_common_layouts(tmp_path: Path) -> None:
    pki = Pki(depth=2)
    layouts = {
        "istio": None,  # ca-cert, intermediate, root
        "no-root": pem(pki.intermediates[1], pki.intermediates[0]),
        "no-ca-cert": pem(pki.intermediates[0], pki.root),
    }
    for name, chain in layouts.items():
        ca = CertificateAuthority.from_cacerts(pki.write(tmp_path / name, chain=chain))
        issued = ca.issue(ALICE)
        assert certs(issued.chain_pem) == [issued.certificate, pki.intermediates[1], pki.intermediates[0]], (
            name
        )
        assert verify_client(issued, pem(pki.root))[-1] == pki.root


def test_root_as_ca_cert(tmp_path: Path) -> None:
    """ca-cert may be the root itself (cert-chain empty), as Istio allows."""
    pki = Pki(depth=0)
    ca = CertificateAuthority.from_cacerts(pki.write(tmp_path / "c", chain=b""))
    issued = ca.issue(ALICE)
    assert certs(issued.chain_pem) == [issued.certificate]
    verify_client(issued, ca.trust_bundle())


def test_an_unrelated_root_does_not_verify(tmp_path: Path) -> None:
    ca = CertificateAuthority.from_cacerts(Pki(depth=1).write(tmp_path / "a"))
    with pytest.raises(VerificationError):
        verify_client(ca.issue(ALICE), pem(Pki(depth=0).root))


def test_mismatched_files_are_refused_up_front(tmp_path: Path) -> None:
    pki, other = Pki(depth=1), Pki(depth=1)
    d = pki.write(tmp_path / "c")
    (d / "root-cert.pem").write_bytes(pem(other.root))
    with pytest.raises(StateError, match="not signed by any certificate in root-cert.pem"):
        CertificateAuthority.from_cacerts(d)

    d = pki.write(tmp_path / "k")
    (d / "ca-key.pem").write_bytes(key_pem(other.signer_key))
    with pytest.raises(StateError, match="is not the key of"):
        CertificateAuthority.from_cacerts(d)

    deep = Pki(depth=2)
    d = deep.write(tmp_path / "order", chain=pem(other.intermediates[0]))
    with pytest.raises(StateError, match="is not signed by"):
        CertificateAuthority.from_cacerts(d)

    d = pki.write(tmp_path / "missing")
    (d / "ca-cert.pem").unlink()
    with pytest.raises(StateError, match="ca-cert.pem"):
        CertificateAuthority.from_cacerts(d)

    d = pki.write(tmp_path / "garbage")
    (d / "ca-key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CAError, match="ca-key.pem is not an unencrypted PEM private key") as err:
        CertificateAuthority.from_cacerts(d)
    assert "bm90IGEga2V5" not in str(err.value)


def test_a_leaf_is_not_a_ca(tmp_path: Path) -> None:
    own = CertificateAuthority.load_or_create(tmp_path / "state")
    leaf = own.issue(ALICE)
    d = tmp_path / "leafca"
    d.mkdir()
    (d / "ca-cert.pem").write_bytes(leaf.cert_pem)
    (d / "ca-key.pem").write_bytes(leaf.private_key.reveal())
    (d / "cert-chain.pem").write_bytes(b"")
    (d / "root-cert.pem").write_bytes(own.trust_bundle())
    with pytest.raises(StateError, match="not a CA certificate"):
        CertificateAuthority.from_cacerts(d)


def test_plugged_in_ca_does_not_rotate(tmp_path: Path) -> None:
    ca = CertificateAuthority.from_cacerts(Pki(depth=1).write(tmp_path / "c"))
    with pytest.raises(CAError, match="replacing its files"):
        ca.rotate_root()
