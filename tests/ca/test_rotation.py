"""Root rotation: a bundle with both roots while both are trusted, new certs from the new root."""

from __future__ import annotations

import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.verification import VerificationError

from ca import CAError, CertificateAuthority
from ca.certs import fingerprint
from ca.rootstore import RETIRED_FILE

from .conftest import ALICE, BOB, FakeClock, certs, pem, verify_client


def test_rotation_keeps_old_certs_valid_and_signs_with_the_new_root(
    authority: CertificateAuthority, clock: FakeClock
) -> None:
    (old_root,) = certs(authority.trust_bundle())
    before = authority.issue(ALICE)

    new_root = authority.rotate_root(overlap=timedelta(hours=48))
    assert new_root != old_root and new_root.subject != old_root.subject
    assert certs(authority.trust_bundle()) == [new_root, old_root]

    after = authority.issue(BOB)
    after.certificate.verify_directly_issued_by(new_root)
    assert after.signer_id == fingerprint(new_root) != before.signer_id
    # Both verify against the bundle; each only against its own root.
    bundle = authority.trust_bundle()
    assert verify_client(before, bundle, at=clock.now)[-1] == old_root
    assert verify_client(after, bundle, at=clock.now)[-1] == new_root
    with pytest.raises(VerificationError):
        verify_client(after, pem(old_root), at=clock.now)

    # After the overlap the old root leaves the bundle, and its certs stop verifying.
    clock.advance(timedelta(hours=49))
    assert certs(authority.trust_bundle()) == [new_root]
    with pytest.raises(VerificationError):
        verify_client(before, authority.trust_bundle(), at=clock.now - timedelta(hours=48))


def test_default_overlap_is_until_the_old_root_expires(state_dir: Path, clock: FakeClock) -> None:
    ca = CertificateAuthority.load_or_create(state_dir, clock=clock, root_ttl=timedelta(days=30))
    (old_root,) = certs(ca.trust_bundle())
    ca.rotate_root()
    clock.advance(timedelta(days=29))
    assert old_root in certs(ca.trust_bundle())
    clock.advance(timedelta(days=2))
    assert old_root not in certs(ca.trust_bundle())


def test_rotation_is_persisted_for_the_next_process(state_dir: Path, clock: FakeClock) -> None:
    first = CertificateAuthority.load_or_create(state_dir, clock=clock)
    (old_root,) = certs(first.trust_bundle())
    new_root = first.rotate_root(overlap=timedelta(days=1))
    second = CertificateAuthority.load_or_create(state_dir, clock=clock)
    assert second.signer_id == fingerprint(new_root)
    assert certs(second.trust_bundle()) == [new_root, old_root]
    second.issue(ALICE).certificate.verify_directly_issued_by(new_root)
    assert stat.S_IMODE((state_dir / RETIRED_FILE).stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in (state_dir / RETIRED_FILE).read_text()  # old root keys are gone
    assert len(json.loads((state_dir / RETIRED_FILE).read_text())["roots"]) == 1


def test_repeated_rotation_and_drop(authority: CertificateAuthority, clock: FakeClock) -> None:
    (r1,) = certs(authority.trust_bundle())
    r2 = authority.rotate_root(overlap=timedelta(days=2))
    clock.advance(timedelta(days=1))
    r3 = authority.rotate_root(overlap=timedelta(days=2))
    assert certs(authority.trust_bundle()) == [r3, r2, r1]
    clock.advance(timedelta(days=1, hours=1))  # r1's overlap is over
    assert certs(authority.trust_bundle()) == [r3, r2]
    authority.drop_root(fingerprint(r2))
    assert certs(authority.trust_bundle()) == [r3]
    assert certs(
        CertificateAuthority.load_or_create(authority.state_dir or Path(), clock=clock).trust_bundle()
    ) == [r3]
    with pytest.raises(CAError, match="no retired root"):
        authority.drop_root(fingerprint(r3))


def test_rotation_keeps_the_root_key_type(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "rsa", key_type="rsa")
    assert isinstance(ca.rotate_root().public_key(), rsa.RSAPublicKey)
    assert not isinstance(ca.rotate_root(key_type="ecdsa").public_key(), rsa.RSAPublicKey)
