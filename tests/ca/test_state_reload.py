"""A root rotated by another process (``meshpilot ca rotate-root``), as a running CA follows it:
trusted first, signed with only when told, and the refresher re-issuing on the real clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from ca import CertificateAuthority, IssuedCertificate, Signer
from ca.certs import fingerprint
from xds_server.app.cli import main as cli

from .conftest import ALICE, certs


def test_reload_trusts_the_new_root_before_signing_with_it(tmp_path: Path) -> None:
    running = CertificateAuthority.load_or_create(tmp_path)
    (old_root,) = certs(running.trust_bundle())
    stamp = running.state_stamp()
    assert running.reload_state() is False  # nothing changed

    assert cli(["ca", "rotate-root", "--ca-state", str(tmp_path), "--overlap", "3600"]) == 0
    assert running.state_stamp() != stamp
    assert running.reload_state() is True
    new_root = certs(running.trust_bundle())[0]
    assert certs(running.trust_bundle()) == [new_root, old_root] and new_root != old_root
    # Still signing with the old root: peers may not have the new bundle yet.
    running.issue(ALICE).certificate.verify_directly_issued_by(old_root)
    assert running.reload_state() is False  # the same files again: nothing new

    assert running.adopt_new_root() is True
    assert running.adopt_new_root() is False
    running.issue(ALICE).certificate.verify_directly_issued_by(new_root)
    assert running.signer_id == fingerprint(new_root)
    assert certs(running.trust_bundle()) == [new_root, old_root]  # the overlap
    roots = running.describe()["roots"]
    assert isinstance(roots, list) and roots[1]["retired_until"] is not None


def test_rotate_root_refuses_a_missing_state(tmp_path: Path) -> None:
    assert cli(["ca", "rotate-root", "--ca-state", str(tmp_path / "none")]) == 1
    assert not (tmp_path / "none").exists()


def test_the_refresher_reissues_promptly_after_the_signer_changes(tmp_path: Path) -> None:
    """On the real clock: "due now" must not turn into endless microsecond sleeps."""

    async def scenario() -> list[IssuedCertificate]:
        ca = CertificateAuthority.load_or_create(tmp_path)
        signer = Signer(ca, ttl=timedelta(hours=24))
        renewed: list[IssuedCertificate] = []
        task = asyncio.create_task(signer.run_refresher(renewed.extend))
        try:
            await signer.get(ALICE)
            CertificateAuthority.load_or_create(tmp_path).rotate_root(overlap=timedelta(hours=1))
            assert ca.reload_state() and ca.adopt_new_root()
            signer.wake()
            for _ in range(100):
                if renewed:
                    break
                await asyncio.sleep(0.05)
            return renewed
        finally:
            task.cancel()
            signer.close()

    renewed = asyncio.run(scenario())
    assert len(renewed) == 1 and renewed[0].identity == ALICE
    assert renewed[0].signer_id == fingerprint(CertificateAuthority.load_or_create(tmp_path).signing_certificate)
