"""The self-signed CA: certificate profile, real chain verification, state directory."""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ca import CAError, CertificateAuthority, StateError, WorkloadIdentity
from ca.certs import CLOCK_SKEW
from ca.rootstore import ROOT_FILE

from .conftest import ALICE, BOB, FakeClock, certs, verify_client

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- certificate profile


def test_workload_cert_verifies_and_names_exactly_the_spiffe_id(authority: CertificateAuthority) -> None:
    issued = authority.issue(ALICE)
    chain = verify_client(issued, authority.trust_bundle(), at=authority.now())
    leaf = chain[0]
    assert chain[-1] == certs(authority.trust_bundle())[0]  # ends at the root
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # the subject is empty, so RFC 5280 requires it
    assert list(san.value) == [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/alice")]
    assert len(leaf.subject) == 0
    assert issued.identity == ALICE


def test_workload_cert_profile(authority: CertificateAuthority, clock: FakeClock) -> None:
    issued = authority.issue(ALICE)
    leaf = issued.certificate
    assert leaf.version == x509.Version.v3
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.content_commitment)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert 0 < leaf.serial_number < 2**128
    # Backdated for clock skew; 24 h by default; refresh at half life. X.509 keeps whole seconds.
    assert abs(leaf.not_valid_before_utc - (clock.now - CLOCK_SKEW)) < timedelta(seconds=1)
    assert abs(leaf.not_valid_after_utc - (clock.now + timedelta(hours=24))) < timedelta(seconds=1)
    assert abs(issued.refresh_at - (clock.now + timedelta(hours=12))) < timedelta(seconds=1)
    # The key handed out is the leaf's key, and the chain holds only the leaf for a root signer.
    key = serialization.load_pem_private_key(issued.private_key.reveal(), None)
    assert key.public_key() == leaf.public_key()
    assert certs(issued.chain_pem) == [leaf]


def test_serials_and_keys_are_fresh_each_time(authority: CertificateAuthority) -> None:
    issued = [authority.issue(ALICE) for _ in range(20)]
    assert len({i.certificate.serial_number for i in issued}) == 20
    assert len({i.private_key for i in issued}) == 20


def test_root_profile(authority: CertificateAuthority, clock: FakeClock) -> None:
    (root,) = certs(authority.trust_bundle())
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    root.verify_directly_issued_by(root)
    assert abs(root.not_valid_after_utc - (clock.now + timedelta(days=3650))) < timedelta(seconds=1)
    assert root.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value == "cluster.local"


def test_ttl_never_outlives_the_root(state_dir: Path, clock: FakeClock) -> None:
    ca = CertificateAuthority.load_or_create(state_dir, clock=clock, root_ttl=timedelta(hours=6))
    issued = ca.issue(ALICE)
    assert issued.not_after == ca.signing_certificate.not_valid_after_utc
    assert issued.refresh_at < issued.not_after
    verify_client(issued, ca.trust_bundle(), at=clock.now)
    clock.advance(timedelta(hours=7))
    with pytest.raises(CAError, match="expired"):
        ca.issue(ALICE)


def test_refuses_other_trust_domains_and_bad_ttl(authority: CertificateAuthority) -> None:
    with pytest.raises(CAError, match="trust domain"):
        authority.issue(WorkloadIdentity("example.org", "default", "alice"))
    with pytest.raises(CAError, match="positive"):
        authority.issue(ALICE, ttl=timedelta(0))


def test_custom_trust_domain(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "td", trust_domain="example.org")
    ident = WorkloadIdentity("example.org", "ns", "sa")
    chain = verify_client(ca.issue(ident), ca.trust_bundle())
    assert chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    ) == ["spiffe://example.org/ns/ns/sa/sa"]
    with pytest.raises(StateError, match="trust domain"):
        CertificateAuthority.load_or_create(tmp_path / "td")  # made for example.org


def test_rsa_option(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "rsa", key_type="rsa")
    (root,) = certs(ca.trust_bundle())
    assert isinstance(root.public_key(), rsa.RSAPublicKey)
    issued = ca.issue(ALICE)
    key = issued.certificate.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    assert issued.certificate.signature_hash_algorithm is not None
    assert issued.certificate.signature_hash_algorithm.name == "sha256"
    verify_client(issued, ca.trust_bundle())
    # Per-issue override on an ECDSA CA, and the other way round.
    ec_ca = CertificateAuthority.load_or_create(tmp_path / "ec")
    assert isinstance(ec_ca.issue(BOB, key_type="rsa").certificate.public_key(), rsa.RSAPublicKey)
    assert isinstance(ca.issue(BOB, key_type="ecdsa").certificate.public_key(), ec.EllipticCurvePublicKey)
    verify_client(ec_ca.issue(BOB, key_type="rsa"), ec_ca.trust_bundle())
    with pytest.raises(CAError, match="key type"):
        ca.issue(BOB, key_type="dsa")  # type: ignore[arg-type]


def test_server_certificate(authority: CertificateAuthority) -> None:
    issued = authority.server_certificate(
        ["meshpilot.meshpilot-system.svc", "localhost"], ip_addresses=["127.0.0.1"]
    )
    leaf = issued.certificate
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["meshpilot.meshpilot-system.svc", "localhost"]
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == []
    assert not san.critical  # the subject carries a CN
    chain = certs(issued.chain_pem)
    store = Store(certs(authority.trust_bundle()))
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        PolicyBuilder().store(store).build_server_verifier(name).verify(chain[0], chain[1:])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("evil.example")).verify(chain[0], [])
    with pytest.raises(CAError):
        authority.server_certificate(["Not A Name"])
    with pytest.raises(CAError):
        authority.server_certificate(["ok"], ip_addresses=["300.1.1.1"])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
def test_openssl_verify_agrees(authority: CertificateAuthority, tmp_path: Path) -> None:
    """An independent implementation, in its strict mode, for both TLS roles."""
    (tmp_path / "bundle.pem").write_bytes(authority.trust_bundle())
    (tmp_path / "leaf.pem").write_bytes(authority.issue(ALICE).chain_pem)
    for purpose in ("sslclient", "sslserver"):
        cmd = ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", "bundle.pem", "leaf.pem"]
        result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert result.returncode == 0 and result.stdout.strip() == "leaf.pem: OK", result
    # And it fails against a root that did not sign it.
    (tmp_path / "other.pem").write_bytes(
        CertificateAuthority.load_or_create(tmp_path / "other").trust_bundle()
    )
    cmd = ["openssl", "verify", "-CAfile", "other.pem", "leaf.pem"]
    assert subprocess.run(cmd, cwd=tmp_path, capture_output=True, check=False).returncode != 0


def test_wrong_root_does_not_verify(authority: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    with pytest.raises(VerificationError):
        verify_client(authority.issue(ALICE), other.trust_bundle())


# ---------------------------------------------------------------------- state directory


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_permissions_regardless_of_umask(state_dir: Path) -> None:
    old = os.umask(0)
    try:
        CertificateAuthority.load_or_create(state_dir)
    finally:
        os.umask(old)
    assert _mode(state_dir) == 0o700
    files = sorted(state_dir.iterdir())
    assert [f.name for f in files] == [".lock", ROOT_FILE]  # no temp file left behind
    assert all(_mode(f) == 0o600 for f in files)


def test_existing_open_directory_is_tightened(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o755)
    os.chmod(state_dir, 0o755)
    CertificateAuthority.load_or_create(state_dir)
    assert _mode(state_dir) == 0o700


def test_readable_root_file_is_refused(state_dir: Path) -> None:
    CertificateAuthority.load_or_create(state_dir)
    os.chmod(state_dir / ROOT_FILE, 0o644)
    with pytest.raises(StateError, match="chmod 600"):
        CertificateAuthority.load_or_create(state_dir)


def test_corrupt_root_file_is_a_clear_error(state_dir: Path) -> None:
    CertificateAuthority.load_or_create(state_dir)
    path = state_dir / ROOT_FILE
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"-----BEGIN PRIVATE KEY")])
    with pytest.raises(StateError, match="one certificate and one private key"):
        CertificateAuthority.load_or_create(state_dir)


def test_second_load_gets_the_same_root(state_dir: Path) -> None:
    first = CertificateAuthority.load_or_create(state_dir)
    second = CertificateAuthority.load_or_create(state_dir, key_type="rsa")  # existing root wins
    assert first.trust_bundle() == second.trust_bundle()
    assert first.signer_id == second.signer_id
    verify_client(second.issue(ALICE), first.trust_bundle())
    assert second.key_type == "rsa"  # ... but new workload keys follow the caller


_LOAD = """
import sys
from ca import CertificateAuthority
print("ready", flush=True)
sys.stdin.readline()  # start together
print(CertificateAuthority.load_or_create(sys.argv[1]).signer_id)
"""


def test_processes_starting_together_agree_on_one_root(state_dir: Path) -> None:
    """serve and bootstrap racing on a fresh directory: the flock makes one root, not two."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _LOAD, str(state_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:  # every process has imported everything; then release them at once
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1 and len(outs[0]) == 64
    assert CertificateAuthority.load_or_create(state_dir).signer_id == outs[0]
