"""Private keys never reach text: reprs, logs, debug descriptions or error messages."""

from __future__ import annotations

import base64
import json
import logging
import re
import traceback
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca import CAError, CertificateAuthority, KeyType, Signer, TokenAuthority
from ca.rootstore import ROOT_FILE

from .conftest import ALICE


def _key_body(pem: bytes) -> str:
    """The base64 body of the PEM private key in ``pem``."""
    match = re.search(rb"-----BEGIN PRIVATE KEY-----\n(.*?)-----END PRIVATE KEY-----", pem, re.DOTALL)
    assert match, "no private key in the input"
    return match.group(1).decode().replace("\n", "")


def secrets_of(pem: bytes) -> list[str]:
    """Text forms of the key's secret part (the EC scalar; RSA's d, p, q) to search for.

    Not the PEM body as a whole: its algorithm identifier and embedded public key also
    appear, legitimately, in the certificate.
    """
    key = serialization.load_pem_private_key(pem, None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        values = [key.private_numbers().private_value]
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        n = key.private_numbers()
        values = [n.d, n.p, n.q]
    out = []
    for value in values:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        out.append(raw.hex())
        # base64 of the secret at each of the three alignments it can have inside a PEM.
        out += [base64.b64encode(raw[shift:]).decode()[4:-4] for shift in range(3)]
    return out


def assert_no_key(text: str, pem: bytes) -> None:
    assert "PRIVATE KEY" not in text
    assert _key_body(pem)[40:80] not in text
    for secret in secrets_of(pem):
        # Any 16-character run of the secret would be a partial leak.
        for i in range(0, len(secret) - 16, 4):
            assert secret[i : i + 16] not in text, "key material in rendered text"


def test_the_leak_check_can_fail(authority: CertificateAuthority) -> None:
    key = authority.issue(ALICE).private_key.reveal()
    body_only = (
        key.decode().replace("-----BEGIN PRIVATE KEY-----", "").replace("-----END PRIVATE KEY-----", "")
    )
    scalar = secrets_of(key)[0]
    for leaked in (key.decode(), body_only, f"error: bad key {body_only[30:90]!r}", scalar, repr(key)):
        with pytest.raises(AssertionError):
            assert_no_key(leaked, key)


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_issued_certificate_renders_without_key(
    authority: CertificateAuthority, caplog: pytest.LogCaptureFixture, key_type: KeyType
) -> None:
    issued = authority.issue(ALICE, key_type=key_type)
    key = issued.private_key.reveal()
    log = logging.getLogger("meshpilot.test")
    with caplog.at_level(logging.DEBUG):
        log.info("issued %s", issued)
        log.info("issued %r", issued)
        log.info("batch %s", [issued, issued])
        log.info("by identity %s", {ALICE: issued})
        log.info("key %s / %r", issued.private_key, issued.private_key)
    texts = [
        caplog.text,
        repr(issued),
        str(issued),
        f"{issued}",
        json.dumps(issued.describe()),
        repr(issued.__dict__),
    ]
    for text in texts:
        assert_no_key(text, key)
    assert "spiffe://cluster.local/ns/default/sa/alice" in repr(issued)
    assert "redacted" in repr(issued)


def test_ca_and_signer_render_without_the_root_key(authority: CertificateAuthority, state_dir: Path) -> None:
    root_key = (state_dir / ROOT_FILE).read_bytes()
    signer = Signer(authority)
    tokens = TokenAuthority.load_or_create(state_dir)
    try:
        texts = [
            repr(authority),
            json.dumps(authority.describe()),
            repr(signer),
            repr(tokens),
            repr(vars(authority)),
        ]
    finally:
        signer.close()
    for text in texts:
        assert_no_key(text, root_key)
    token_key = (state_dir / "token.key").read_bytes()
    assert token_key.hex() not in repr(tokens) and "redacted" in repr(tokens)


def test_unreadable_key_errors_do_not_carry_the_key(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    CertificateAuthority.load_or_create(state_dir)
    path = state_dir / ROOT_FILE
    data = path.read_bytes()
    # Corrupt one line of the key's body: still PEM-shaped, no longer this key.
    lines = data.split(b"\n")
    line = lines.index(b"-----BEGIN PRIVATE KEY-----") + 2
    lines[line] = b"A" * len(lines[line])
    mangled = b"\n".join(lines)
    assert mangled != data
    path.write_bytes(mangled)
    with pytest.raises(CAError) as err:
        CertificateAuthority.load_or_create(state_dir)
    assert str(path) in str(err.value)
    # Neither the message, nor the traceback as printed, nor a logged exception shows it.
    printed = "".join(traceback.format_exception(err.value))
    with caplog.at_level(logging.ERROR):
        logging.getLogger("meshpilot.test").error("load failed", exc_info=err.value)
    for text in (str(err.value), repr(err.value), printed, caplog.text):
        assert_no_key(text, data)
