"""Key pairs: ECDSA P-256 by default (fast, small, what Istio issues), RSA 2048 as an option.

Private keys leave this module only as PKCS#8 PEM wrapped in :class:`SecretBytes`, and load
errors never echo the input (it may be a key).
"""

from __future__ import annotations

from typing import Literal, cast, get_args

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ca.errors import UnusableKey
from ca.secret import SecretBytes

KeyType = Literal["ecdsa", "rsa"]
KEY_TYPES: tuple[KeyType, ...] = get_args(KeyType)
RSA_KEY_SIZE = 2048

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

#: Both key types sign with SHA-256, as Istio's CA does.
SIGNATURE_HASH = hashes.SHA256()


def check_key_type(key_type: str) -> KeyType:
    if key_type not in KEY_TYPES:
        raise UnusableKey(f"key type {key_type!r} is not one of {', '.join(KEY_TYPES)}")
    return cast(KeyType, key_type)


def generate_private_key(key_type: KeyType) -> PrivateKey:
    if check_key_type(key_type) == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
    return ec.generate_private_key(ec.SECP256R1())


def key_type_of(key: PrivateKey | PublicKey) -> KeyType:
    return "rsa" if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) else "ecdsa"


def private_key_pem(key: PrivateKey) -> SecretBytes:
    return SecretBytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def load_private_key(pem: SecretBytes, source: str) -> PrivateKey:
    """Parse a PEM private key; ``source`` names it in errors instead of its contents."""
    try:
        key = serialization.load_pem_private_key(pem.reveal(), password=None)
    except (ValueError, TypeError):
        # `from None`: the underlying error is about the bytes, which must not surface.
        raise UnusableKey(f"{source} is not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
        return key
    raise UnusableKey(f"{source} holds a {type(key).__name__}; only RSA and ECDSA P-256/P-384 keys can sign")


def public_key_bytes(key: PrivateKey | CertificatePublicKeyTypes) -> bytes:
    """DER SubjectPublicKeyInfo: compares a key with a certificate's public key."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
