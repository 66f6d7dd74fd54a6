"""The self-signed root's files in the state directory.

``root-ca.pem`` holds the current root's certificate and key together, so replacing the
root is one atomic rename; ``retired-roots.json`` lists roots replaced by a rotation with
the time until which they stay trusted (certificates only: a retired root signs nothing).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from ca.certs import to_pem
from ca.errors import StateError
from ca.keys import PrivateKey, load_private_key, private_key_pem, public_key_bytes
from ca.secret import SecretBytes
from ca.state import read_private, write_private

ROOT_FILE = "root-ca.pem"
RETIRED_FILE = "retired-roots.json"

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


@dataclass(frozen=True)
class RetiredRoot:
    """A root replaced by a rotation, still trusted (in the bundle) until ``until``."""

    cert: x509.Certificate
    until: datetime


def read_root(path: Path) -> tuple[x509.Certificate, PrivateKey]:
    data = read_private(path)
    certs = [b for label, b in _pem_blocks(data) if label == b"CERTIFICATE"]
    keys = [b for label, b in _pem_blocks(data) if label.endswith(b"PRIVATE KEY")]
    if len(certs) != 1 or len(keys) != 1:
        raise StateError(f"{path} must hold one certificate and one private key")
    try:
        cert = x509.load_pem_x509_certificate(certs[0])
    except ValueError:
        raise StateError(f"{path} holds an unreadable certificate") from None
    key = load_private_key(SecretBytes(keys[0]), str(path))
    if public_key_bytes(key) != public_key_bytes(cert.public_key()):
        raise StateError(f"the key in {path} does not match its certificate")
    return cert, key


def write_root(path: Path, cert: x509.Certificate, key: PrivateKey) -> None:
    write_private(path, to_pem([cert]) + private_key_pem(key).reveal())


def read_retired(path: Path) -> list[RetiredRoot]:
    try:
        doc = json.loads(read_private(path))
        return [
            RetiredRoot(
                x509.load_pem_x509_certificate(r["cert"].encode()), datetime.fromisoformat(r["until"])
            )
            for r in doc["roots"]
        ]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, AttributeError):
        raise StateError(f"{path} is corrupt") from None


def write_retired(path: Path, retired: Iterable[RetiredRoot]) -> None:
    doc = {"roots": [{"until": r.until.isoformat(), "cert": to_pem([r.cert]).decode()} for r in retired]}
    write_private(path, json.dumps(doc, indent=1).encode())


def root_trust_domain(root: x509.Certificate) -> str:
    orgs = root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(orgs[0].value) if orgs else ""


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
