"""Shared helpers for the CA tests: a movable clock and real chain verification."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store

from ca import CertificateAuthority, IssuedCertificate, WorkloadIdentity
from ca.clock import utcnow


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def authority(state_dir: Path, clock: FakeClock) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(state_dir, clock=clock)


ALICE = WorkloadIdentity.of("default", "alice")
BOB = WorkloadIdentity.of("shop", "bob")


def certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def pem(*cs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cs)


def verify_client(
    issued: IssuedCertificate, bundle_pem: bytes, at: datetime | None = None
) -> list[x509.Certificate]:
    """Full RFC 5280 path validation by cryptography's verifier, as an mTLS peer would do it.

    Returns the validated chain (leaf ... root); raises VerificationError if there is none.
    """
    chain = certs(issued.chain_pem)
    builder = PolicyBuilder().store(Store(certs(bundle_pem)))
    if at is not None:
        builder = builder.time(at)
    verified = builder.build_client_verifier().verify(chain[0], chain[1:])
    return list(verified.chain)
