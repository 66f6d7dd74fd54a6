"""meshpilot's certificate authority: SPIFFE workload certificates, roots, workload tokens.

A package of its own that imports nothing else of meshpilot, so the server, the bootstrap
command and tests can all use it without the translator or the xDS machinery.

* :mod:`ca.identity` - ``WorkloadIdentity`` and its ``spiffe://`` ID;
* :mod:`ca.authority` - ``CertificateAuthority``: self-signed root in a state directory, or
  a plugged-in intermediate (Istio's cacerts layout); issuance, trust bundle, rotation;
* :mod:`ca.signer` - ``Signer``: issuance off the event loop, per-identity cache, refresh
  at half life;
* :mod:`ca.tokens` - ``TokenAuthority``: HMAC tokens proving an identity in file mode;
* :mod:`ca.secret` - ``SecretBytes``, which every private key is held in.
"""

from ca.authority import (
    DEFAULT_ROOT_TTL,
    DEFAULT_SERVER_TTL,
    DEFAULT_WORKLOAD_TTL,
    CertificateAuthority,
)
from ca.certs import IssuedCertificate
from ca.errors import CAError, StateError, UnusableKey
from ca.identity import DEFAULT_TRUST_DOMAIN, InvalidIdentity, WorkloadIdentity
from ca.keys import KeyType
from ca.secret import SecretBytes
from ca.signer import Signer
from ca.state import default_state_dir
from ca.tokens import TokenAuthority, TokenError

__all__ = [
    "DEFAULT_ROOT_TTL",
    "DEFAULT_SERVER_TTL",
    "DEFAULT_TRUST_DOMAIN",
    "DEFAULT_WORKLOAD_TTL",
    "CAError",
    "CertificateAuthority",
    "InvalidIdentity",
    "IssuedCertificate",
    "KeyType",
    "SecretBytes",
    "Signer",
    "StateError",
    "TokenAuthority",
    "TokenError",
    "UnusableKey",
    "WorkloadIdentity",
    "default_state_dir",
]
