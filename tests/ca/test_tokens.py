"""File-mode tokens: they prove exactly one identity, until they expire, under one key."""

from __future__ import annotations

import base64
import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from ca import CAError, SecretBytes, TokenAuthority, WorkloadIdentity
from ca.tokens import KEY_FILE, BadTokenSignature, ExpiredToken, MalformedToken, TokenError

from .conftest import ALICE, BOB, FakeClock


@pytest.fixture
def tokens(state_dir: Path, clock: FakeClock) -> TokenAuthority:
    return TokenAuthority.load_or_create(state_dir, clock=clock)


def _payload(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_round_trip_names_exactly_the_identity(tokens: TokenAuthority, clock: FakeClock) -> None:
    token = tokens.issue_token(ALICE, timedelta(hours=1))
    assert tokens.verify_token(token) == ALICE
    assert tokens.verify_token(token) != BOB
    claims = tokens.claims(token)
    assert claims.expires_at - claims.issued_at == timedelta(hours=1)
    assert len(claims.token_id) == 16
    assert _payload(token)["ns"] == "default" and _payload(token)["sa"] == "alice"
    assert tokens.claims(tokens.issue_token(ALICE)).token_id != claims.token_id
    assert len(token) < 300  # fits a gRPC metadata value comfortably


def test_expired(tokens: TokenAuthority, clock: FakeClock) -> None:
    token = tokens.issue_token(ALICE, timedelta(minutes=10))
    clock.advance(timedelta(minutes=9, seconds=59))
    assert tokens.verify_token(token) == ALICE
    clock.advance(timedelta(seconds=1))
    with pytest.raises(ExpiredToken, match="expired at"):
        tokens.verify_token(token)


def test_tampered_payload_or_mac(tokens: TokenAuthority) -> None:
    token = tokens.issue_token(ALICE)
    prefix, payload, mac = token.split(".")
    # Rewrite the claims to name another identity, keep the MAC: refused.
    claims = _payload(token) | {"ns": "shop", "sa": "bob"}
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(BadTokenSignature):
        tokens.verify_token(f"{prefix}.{forged}.{mac}")
    # Splice Bob's payload onto Alice's MAC: refused.
    bob_payload = tokens.issue_token(BOB).split(".")[1]
    with pytest.raises(BadTokenSignature):
        tokens.verify_token(f"{prefix}.{bob_payload}.{mac}")
    # One flipped character in the MAC: refused.
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    with pytest.raises(BadTokenSignature):
        tokens.verify_token(f"{prefix}.{payload}.{flipped}")


def test_another_key_is_another_authority(tokens: TokenAuthority, tmp_path: Path) -> None:
    other = TokenAuthority.load_or_create(tmp_path / "other")
    with pytest.raises(BadTokenSignature):
        other.verify_token(tokens.issue_token(ALICE))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "mpt1.abc",
        "mpt2.abc.def",
        "mpt1.abc.def.ghi",
        "mpt1.a b.cd",
        "mpt1.abc.d+f",
        "mpt1..abc",
        "x" * 5000,
    ],
)
def test_malformed(tokens: TokenAuthority, token: str) -> None:
    with pytest.raises(TokenError) as err:
        tokens.verify_token(token)
    assert isinstance(err.value, MalformedToken | BadTokenSignature)


def test_signed_garbage_is_malformed_not_a_crash() -> None:
    """Even a correctly MACed payload must be a full, valid claim set."""
    key = SecretBytes(b"k" * 32)
    ta = TokenAuthority(key)
    for claims in (
        {"td": "cluster.local", "ns": "Bad_NS", "sa": "x", "iat": 0, "exp": 2**40, "jti": "1"},
        {"ns": "a"},
        [1, 2],
    ):
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        mac = ta._mac(f"mpt1.{payload}")
        token = f"mpt1.{payload}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
        with pytest.raises(MalformedToken):
            ta.verify_token(token)


def test_errors_never_echo_the_token(tokens: TokenAuthority, clock: FakeClock) -> None:
    token = tokens.issue_token(ALICE, timedelta(seconds=1))
    prefix, payload, mac = token.split(".")
    clock.advance(timedelta(seconds=5))
    attempts = [token, f"{prefix}.{payload}.{mac[::-1]}", f"{prefix}.{payload}", token + "!"]
    for attempt in attempts:
        with pytest.raises(TokenError) as err:
            tokens.verify_token(attempt)
        assert payload not in str(err.value) and mac not in str(err.value)


def test_trust_domain_is_part_of_the_claim(state_dir: Path) -> None:
    local = TokenAuthority.load_or_create(state_dir)
    other_td = TokenAuthority.load_or_create(state_dir, trust_domain="example.org")  # same key
    token = other_td.issue_token(WorkloadIdentity("example.org", "default", "alice"))
    with pytest.raises(TokenError, match="trust domain"):
        local.verify_token(token)
    with pytest.raises(CAError, match="trust domain"):
        local.issue_token(WorkloadIdentity("example.org", "default", "alice"))
    with pytest.raises(CAError, match="positive"):
        local.issue_token(ALICE, timedelta(0))


def test_key_file_is_private_and_shared(state_dir: Path) -> None:
    serve = TokenAuthority.load_or_create(state_dir)
    bootstrap = TokenAuthority.load_or_create(state_dir)
    assert serve.verify_token(bootstrap.issue_token(BOB)) == BOB
    key_file = state_dir / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert len(key_file.read_bytes()) == 32
    assert "redacted" in repr(serve) and key_file.read_bytes().hex() not in repr(serve)
    key_file.chmod(0o644)
    with pytest.raises(CAError, match="chmod 600"):
        TokenAuthority.load_or_create(state_dir)
