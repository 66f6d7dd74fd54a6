"""File-mode workload credentials: a signed token that proves one (namespace, service account).

Without Kubernetes there is no service-account JWT for a proxy to present, so the control
plane issues its own: ``meshpilot bootstrap`` embeds a token in the proxy's bootstrap, the
proxy sends it as gRPC metadata on its xDS stream, and the server gives that stream
certificates for exactly the identity the token names, whatever the node metadata claims.

Format: ``mpt1.<payload>.<mac>``, both parts base64url without padding. The payload is
compact JSON ``{"td", "ns", "sa", "iat", "exp", "jti"}`` (trust domain, namespace, service
account, issued-at and expiry in Unix seconds, a random id for audit logs); the MAC is
HMAC-SHA256 over ``mpt1.<payload>`` with a 256-bit key. The MAC is checked (in constant
time) before the payload is even parsed, so nothing unauthenticated is interpreted.

Threat model, stated plainly:

* The key lives in the CA state directory (``token.key``, 0600, next to the root key).
  Whoever can read that directory can mint a token for any identity, and equally could
  read the root key and sign any certificate: one trust boundary, not two.
* A token is a bearer credential. Whoever copies a bootstrap file can act as that
  identity until the token expires; protect bootstrap files like keys (mode 0600) and keep
  the TTL as short as the deployment allows. There is no per-token revocation: deleting
  ``token.key`` (a new one is made on next start) revokes every token at once.
* Tokens never appear in error messages; ``jti`` is what to log.
* The key is separate from the root key on purpose: rotating the root must not
  invalidate every proxy's bootstrap, and a plugged-in (cacerts) CA has no key of ours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ca.clock import Clock, utcnow
from ca.errors import CAError, StateError
from ca.identity import DEFAULT_TRUST_DOMAIN, InvalidIdentity, WorkloadIdentity, check_trust_domain
from ca.secret import SecretBytes
from ca.state import ensure_private_dir, locked, read_private, write_private

PREFIX = "mpt1"
KEY_FILE = "token.key"
KEY_BYTES = 32
#: A bootstrap outlives many certificates; the token is what lets the proxy get them.
DEFAULT_TOKEN_TTL = timedelta(days=30)
#: Longer input is refused before any work (tokens are ~250 bytes).
MAX_TOKEN_LENGTH = 2048

_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class TokenError(CAError):
    """A token that does not prove an identity. The message never contains the token."""


class MalformedToken(TokenError):
    pass


class BadTokenSignature(TokenError):
    pass


class ExpiredToken(TokenError):
    pass


@dataclass(frozen=True)
class TokenClaims:
    identity: WorkloadIdentity
    issued_at: datetime
    expires_at: datetime
    #: Random, not secret: what to log about a token.
    token_id: str


class TokenAuthority:
    """Issues and verifies tokens with one HMAC key for one trust domain."""

    def __init__(self, key: SecretBytes, *, trust_domain: str = DEFAULT_TRUST_DOMAIN, clock: Clock = utcnow):
        if len(key) < KEY_BYTES:
            raise CAError(f"a token key needs at least {KEY_BYTES} bytes, this one has {len(key)}")
        self._key = key
        self.trust_domain = check_trust_domain(trust_domain)
        self._clock = clock

    @classmethod
    def load_or_create(
        cls, state_dir: Path | str, *, trust_domain: str = DEFAULT_TRUST_DOMAIN, clock: Clock = utcnow
    ) -> TokenAuthority:
        """The key in ``<state_dir>/token.key``, made (random, 0600) on first use."""
        path = ensure_private_dir(Path(state_dir))
        with locked(path):
            try:
                key = SecretBytes(read_private(path / KEY_FILE))
            except FileNotFoundError:
                key = SecretBytes(secrets.token_bytes(KEY_BYTES))
                write_private(path / KEY_FILE, key.reveal())
        if len(key) != KEY_BYTES:
            raise StateError(f"{path / KEY_FILE} is corrupt (expected {KEY_BYTES} bytes)")
        return cls(key, trust_domain=trust_domain, clock=clock)

    @classmethod
    def in_memory(cls, *, trust_domain: str = DEFAULT_TRUST_DOMAIN, clock: Clock = utcnow) -> TokenAuthority:
        """A random key kept nowhere (tokens it signs stop verifying after a restart)."""
        return cls(SecretBytes(secrets.token_bytes(KEY_BYTES)), trust_domain=trust_domain, clock=clock)

    def issue_token(self, identity: WorkloadIdentity, ttl: timedelta = DEFAULT_TOKEN_TTL) -> str:
        if identity.trust_domain != self.trust_domain:
            raise CAError(f"{identity.spiffe_id} is outside trust domain {self.trust_domain!r}")
        if ttl <= timedelta(0):
            raise CAError(f"token TTL must be positive, not {ttl}")
        now = self._clock()
        claims = {
            "td": identity.trust_domain,
            "ns": identity.namespace,
            "sa": identity.service_account,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
            "jti": secrets.token_hex(8),
        }
        payload = _b64encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        signed = f"{PREFIX}.{payload}"
        return f"{signed}.{_b64encode(self._mac(signed))}"

    def verify_token(self, token: str) -> WorkloadIdentity:
        """The identity ``token`` proves, or :class:`TokenError` saying why it proves none."""
        return self.claims(token).identity

    def claims(self, token: str) -> TokenClaims:
        """The verified claims, with what audit logs want (``token_id``, times)."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise MalformedToken("token is not a string of reasonable length")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != PREFIX or not all(_B64URL.fullmatch(p) for p in parts[1:]):
            raise MalformedToken(f"token is not {PREFIX}.<payload>.<mac> in base64url")
        signed = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(self._mac(signed), _b64decode(parts[2])):
            raise BadTokenSignature("token signature does not match (tampered, or made with another key)")
        try:
            claims = json.loads(_b64decode(parts[1]))
            td, ns, sa, iat, exp, jti = (claims[k] for k in ("td", "ns", "sa", "iat", "exp", "jti"))
            if not all(isinstance(v, str) for v in (td, ns, sa, jti)) or not all(
                isinstance(v, int) for v in (iat, exp)
            ):
                raise TypeError
            identity = WorkloadIdentity(td, ns, sa)
        except (ValueError, KeyError, TypeError, InvalidIdentity):
            raise MalformedToken("token payload is not a valid claim set") from None
        if td != self.trust_domain:
            raise TokenError(f"token is for trust domain {td!r}, not {self.trust_domain!r}")
        now = self._clock()
        if now.timestamp() >= exp:
            raise ExpiredToken(f"token {jti} for {ns}/{sa} expired at {_utc(exp).isoformat()}")
        return TokenClaims(identity, _utc(iat), _utc(exp), jti)

    def _mac(self, signed: str) -> bytes:
        return hmac.new(self._key.reveal(), signed.encode(), hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"TokenAuthority(trust_domain={self.trust_domain!r}, key={self._key!r})"


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise MalformedToken("token is not valid base64url") from None
