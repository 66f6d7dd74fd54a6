"""Root rotation with overlap, as an operator does it, under continuous mTLS traffic.

``meshpilot ca rotate-root`` (a separate process) rewrites the CA state; the running
``meshpilot serve`` notices, pushes the trust bundle (old and new roots) to every proxy,
waits for their acknowledgements, and only then re-issues workload certificates signed by
the new root. Two real sidecars keep calling each other over mTLS the whole time, one new
handshake per request, and not one request may fail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from harness import EnvoyProcess, eventually

from ca.certs import fingerprint
from ca.rootstore import ROOT_FILE, read_root
from tests.e2e.test_mtls import (  # noqa: F401, F811  (make_mesh is a fixture)
    CLIENT_ID,
    HOST,
    PORT,
    Mesh,
    make_mesh,
    mtls_load,
    secrets_of,
    xfcc,
)

REPO = Path(__file__).resolve().parents[2]


def inline_pem(secret_field: dict[str, object]) -> list[x509.Certificate]:
    """Certificates of a DataSource in Envoy's config dump (inline_bytes are base64)."""
    data = base64.b64decode(str(secret_field["inline_bytes"]))
    return x509.load_pem_x509_certificates(data)


def leaf_and_bundle(envoy: EnvoyProcess) -> tuple[x509.Certificate, list[x509.Certificate]]:
    held = secrets_of(envoy)
    leaf = inline_pem(held["default"]["tls_certificate"]["certificate_chain"])[0]
    bundle = inline_pem(held["ROOTCA"]["validation_context"]["trusted_ca"])
    return leaf, bundle


def signed_by(leaf: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(root)
    except (ValueError, TypeError, Exception):
        return False
    return True


def test_root_rotation_with_overlap_keeps_traffic_flowing(make_mesh: Callable[..., Mesh]) -> None:  # noqa: F811
    mesh = make_mesh()
    # One request per upstream connection: every request is a new mTLS handshake, so each
    # one is verified against whatever certificates and bundle the sidecars hold right then.
    mesh.config.write("web-dr.yaml", [
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
         "metadata": {"name": "web", "namespace": "default"},
         "spec": {"host": "web", "trafficPolicy": {"connectionPool": {"http": {"maxRequestsPerConnection": 1}}}}}])
    client, client_ip = mesh.sidecar("client")
    eventually(lambda: mesh.call(client_ip)[0] == 200 and "max_requests_per_connection" in json.dumps(
        client.clusters()[f"outbound|{PORT}||{HOST}"]), timeout=20)
    old_root, _ = read_root(mesh.server.ca_state / ROOT_FILE)
    for envoy in (client, mesh.web):
        leaf, bundle = leaf_and_bundle(envoy)
        assert signed_by(leaf, old_root) and [fingerprint(c) for c in bundle] == [fingerprint(old_root)]

    with mtls_load(mesh, client_ip) as (results, hashes):
        time.sleep(1)  # traffic flows before the rotation starts
        out = subprocess.run(
            [sys.executable, "-m", "xds_server.app.cli", "ca", "rotate-root", "--ca-state",
             str(mesh.server.ca_state), "--overlap", "600"],
            cwd=REPO, check=True, capture_output=True, text=True, timeout=60)
        rotated = json.loads(out.stdout)
        new_root, _ = read_root(mesh.server.ca_state / ROOT_FILE)
        assert rotated["new_root"] == fingerprint(new_root) != fingerprint(old_root)

        def rolled_over() -> bool:
            return all(signed_by(leaf_and_bundle(e)[0], new_root) for e in (client, mesh.web))

        eventually(rolled_over, timeout=40, interval=0.5, message="workload certificates not re-issued")
        time.sleep(2)  # keep the load on so new handshakes use the new certificates

    assert set(results) == {"200"}, results  # not one failed request
    assert results["200"] > 50, results
    # Both sidecars trust old and new roots (the overlap), the new one first.
    for envoy in (client, mesh.web):
        _, bundle = leaf_and_bundle(envoy)
        assert [fingerprint(c) for c in bundle] == [fingerprint(new_root), fingerprint(old_root)], envoy.name
    # The server side saw the client's certificate signed by the new root (XFCC Hash is the
    # SHA-256 of the client's leaf, DER).
    client_leaf, _ = leaf_and_bundle(client)
    new_hash = hashlib.sha256(client_leaf.public_bytes(Encoding.DER)).hexdigest()
    assert new_hash in hashes and hashes[0] != new_hash
    assert json.loads(client.admin_get("/certs"))["certificates"]
    # /debug/ca: signing with the new root, both roots trusted, the old one until the overlap ends.
    _, ca = mesh.server.get("/debug/ca")
    roots = ca["ca"]["roots"]
    assert [r["fingerprint"] for r in roots] == [fingerprint(new_root)[:16], fingerprint(old_root)[:16]]
    assert roots[0]["retired_until"] is None and roots[1]["retired_until"] is not None
    # Bundle first, certificates after: the order that keeps every handshake verifiable.
    log = mesh.server.log_path.read_text()
    pushed, signing = log.find("sds: trust bundle pushed"), log.find("signing with the new root")
    assert 0 <= pushed < signing, "bundle was not pushed before re-issuing"
    assert '"bundle_acked": true' in log
