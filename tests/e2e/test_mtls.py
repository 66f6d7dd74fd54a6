"""Mutual TLS between real Envoy sidecars, with certificates meshpilot issues over SDS.

The layout, all on loopback: a ``web`` pod whose sidecar (``server``) terminates inbound
traffic on the pod IP and forwards it to the app (an echo server) at its app address; a
client sidecar that calls ``web`` through its outbound listener. Sidecars reach meshpilot
on its TLS xDS port with a bootstrap made like ``meshpilot bootstrap --xds-tls-address``
(the mesh root to verify the server, a token for their namespace and service account), or
on the plaintext port (no identity, no certificate).

Every test ends by reading every log and debug page of the run for private keys and tokens.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import (
    ConfigDir,
    EnvoyProcess,
    LoopbackAllocator,
    MeshpilotServer,
    UpstreamServer,
    eventually,
    request,
)

from xds_server.local.bootstrap import build_bootstrap, xds_tls_for

PORT = 9080  # the service port clients call
TARGET = 8080  # where the pod answers (its sidecar's inbound listener)
HOST = "web.default.svc.cluster.local"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
WEB_ID = "spiffe://cluster.local/ns/default/sa/web"


def web_service(pod_ip: str, app_ip: str, *, sidecar: bool = True) -> list[dict[str, Any]]:
    labels = {"app": "web"}
    if sidecar:
        labels["security.istio.io/tlsMode"] = "istio"  # what sidecar injection adds
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": PORT, "targetPort": TARGET}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "web-1", "namespace": "default", "labels": labels,
                      "annotations": {"sidecar.meshpilot.io/app-address": app_ip}},
         "spec": {"serviceAccountName": "web"},
         "status": {"phase": "Running", "podIP": pod_ip}},
    ]


def peer_authentication(mode: str, name: str = "default", namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"mtls": {"mode": mode}}}


@dataclass
class Mesh:
    config: ConfigDir
    server: MeshpilotServer
    app: UpstreamServer
    web_ip: str
    web: EnvoyProcess
    start_envoy: Callable[..., EnvoyProcess]
    loopback: LoopbackAllocator
    tokens: list[str] = field(default_factory=list)

    def sidecar(self, name: str, *, sa: str = "client", namespace: str = "default", tls: bool = True,
                claim: tuple[str, str] | None = None, wait: str = "live", delta: bool = False,
                ) -> tuple[EnvoyProcess, str]:
        """A client sidecar on a new IP: on the TLS port with a token for ``namespace``/``sa``
        (its node metadata claiming the (namespace, sa) ``claim`` instead, to impersonate),
        or on the plaintext port."""
        ip = self.loopback.allocate()
        xds_tls = xds_tls_for(self.server.ca_state, namespace, sa) if tls else None
        if xds_tls is not None and xds_tls.token:
            self.tokens.append(xds_tls.token)
        bootstrap = build_bootstrap(
            xds_address=self.server.xds_tls_address if tls else self.server.xds_address, proxy_ip=ip,
            namespace=namespace, pod=name, service_account=sa, labels={"app": name}, xds_tls=xds_tls, delta=delta)
        if claim is not None:
            bootstrap["node"]["metadata"].update({"NAMESPACE": claim[0], "SERVICE_ACCOUNT": claim[1]})
        return self.start_envoy(bootstrap, wait=wait, name=name), ip

    def call(self, via: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return request(via, PORT, "/", HOST, headers=headers, timeout=5)

    def answered(self, via: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """The first 200 through ``via`` (waiting for the config to arrive)."""

        def ok() -> tuple[int, Any] | bool:
            r = self.call(via, headers)
            return r if r[0] == 200 else False

        return eventually(ok, timeout=20)  # type: ignore[return-value]

    def metric(self, name: str, **labels: str) -> float:
        _, text = self.server.get("/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in str(text).splitlines():
            if line.startswith(f"{name}{{{want}}}") or (not labels and line.startswith(f"{name} ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def secrets_of(envoy: EnvoyProcess) -> dict[str, dict[str, Any]]:
    """The secrets Envoy holds, from its config dump (Envoy itself redacts the private key)."""
    out = {}
    for item in envoy.config_dump("dynamic_active_secrets").get("configs", []):
        out[item["name"]] = item["secret"]
    return out


def leaf_serial(envoy: EnvoyProcess) -> str:
    """The serial of the workload certificate Envoy uses (admin /certs)."""
    certs = json.loads(envoy.admin_get("/certs"))["certificates"]
    serials = {c["serial_number"] for entry in certs for c in entry.get("cert_chain", [])}
    assert serials, certs
    return min(serials)


def xfcc(body: Any) -> str:
    return str(body.get("headers", {}).get("x-forwarded-client-cert", "")) if isinstance(body, dict) else ""


@pytest.fixture
def make_mesh(
    config_dir: ConfigDir,
    start_meshpilot: Callable[..., MeshpilotServer],
    start_envoy: Callable[..., EnvoyProcess],
    start_upstream: Callable[..., UpstreamServer],
    loopback: LoopbackAllocator,
    tmp_path: Path,
) -> Iterator[Callable[..., Mesh]]:
    """``make_mesh(*serve_args)``: meshpilot, the web app and its sidecar (on the TLS port)."""
    made: list[Mesh] = []

    def make(*serve_args: str) -> Mesh:
        web_ip = loopback.allocate()
        app = start_upstream(loopback.allocate(), TARGET, service="web", version="v1", pod="web-1")
        config_dir.write("web.yaml", web_service(web_ip, app.ip))
        server = start_meshpilot(config_dir, extra_args=("--debounce-quiet", "0.05", *serve_args))
        xds_tls = xds_tls_for(server.ca_state, "default", "web")
        web = start_envoy(build_bootstrap(xds_address=server.xds_tls_address, proxy_ip=web_ip, namespace="default",
                                          pod="web-1", service_account="web", labels={"app": "web"},
                                          xds_tls=xds_tls), wait="live", name="web")
        made.append(Mesh(config_dir, server, app, web_ip, web, start_envoy, loopback, [str(xds_tls.token)]))
        return made[-1]

    yield make
    for m in made:
        assert_nothing_leaked(m, tmp_path)


@pytest.fixture
def mesh(make_mesh: Callable[..., Mesh]) -> Mesh:
    return make_mesh()


def assert_nothing_leaked(m: Mesh, tmp_path: Path) -> None:
    """No private key and no token in any log or debug page of this test's processes."""
    paths = ["/debug/syncz", "/debug/ca", "/debug/errors", "/metrics"]
    paths += [f"/debug/config?proxy={s.get('proxy')}" for s in m.server.get("/debug/syncz")[1]]
    texts = {f"meshpilot {p}": m.server.get(p)[1] for p in paths}
    texts.update({str(p.relative_to(tmp_path)): p.read_text(errors="replace") for p in tmp_path.rglob("*.log")})
    texts["web sidecar /config_dump (secrets)"] = m.web.config_dump("dynamic_active_secrets")
    texts = {k: v if isinstance(v, str) else json.dumps(v) for k, v in texts.items()}
    # Names only: a failing assert must not print what it found.
    key_found = [k for k, t in texts.items() if "PRIVATE KEY" in t]
    token_found = [k for k, t in texts.items() for tok in m.tokens if tok in t]
    assert not key_found, f"a private key in {key_found}"
    assert not token_found, f"a token in {token_found}"


# ------------------------------------------------------------------ mTLS and the caller's identity


def test_sidecars_talk_mtls_and_the_app_sees_the_callers_spiffe_id(mesh: Mesh) -> None:
    client, client_ip = mesh.sidecar("client")
    status, body = mesh.answered(client_ip)
    header = xfcc(body)
    assert f"URI={CLIENT_ID}" in header and f"By={WEB_ID}" in header, header
    # The certificates came over SDS, one per identity, and Envoy holds them.
    held = secrets_of(client)
    assert set(held) == {"default", "ROOTCA"}
    redacted = held["default"]["tls_certificate"]["private_key"]["inline_bytes"] == "W3JlZGFjdGVkXQ=="  # "[redacted]"
    assert redacted  # by Envoy in its config dump (a boolean: a failure must not print a key)
    # The connection really was mutual TLS: handshakes on the client's cluster, and a
    # verified client certificate on the server's listener.
    assert client.stat(f"cluster.outbound|{PORT}||{HOST}.ssl.handshake") >= 1
    assert mesh.web.stat(f"listener.{mesh.web_ip}_{TARGET}.ssl.handshake") >= 1
    syncz = {s["proxy"]: s for s in mesh.server.get("/debug/syncz")[1]}
    assert syncz[client.node_id]["security"]["identity"] == CLIENT_ID
    assert syncz[client.node_id]["security"]["certificate"]["name"] == CLIENT_ID


def test_permissive_accepts_plaintext_and_drops_a_forged_identity(mesh: Mesh) -> None:
    mesh.sidecar("client")  # a mesh client too: the same port serves both
    _, plain_ip = mesh.sidecar("legacy", tls=False)  # plaintext xDS: no identity, plaintext calls
    forged = {"x-forwarded-client-cert": f"URI={CLIENT_ID}"}
    status, body = mesh.answered(plain_ip, forged)
    assert xfcc(body) == ""  # sanitized: a plaintext caller proves nothing
    # No sidecar at all: straight to the pod's port, in plaintext.
    status, body = request(mesh.web_ip, TARGET, "/", HOST, headers=forged)
    assert status == 200 and xfcc(body) == ""
    assert mesh.web.stat(f"listener.{mesh.web_ip}_{TARGET}.ssl.handshake") == 0


def test_strict_refuses_plaintext_and_serves_mtls(mesh: Mesh) -> None:
    _, client_ip = mesh.sidecar("client")
    _, plain_ip = mesh.sidecar("legacy", tls=False)
    eventually(lambda: mesh.call(client_ip)[0] == 200 and mesh.call(plain_ip)[0] == 200, timeout=20)
    mesh.config.write("peer-authentication.yaml", [peer_authentication("STRICT")])

    def refused_directly() -> bool:
        try:
            request(mesh.web_ip, TARGET, "/", HOST, timeout=2)
        except (ConnectionError, OSError):
            return True
        return False

    eventually(refused_directly, timeout=20, message="STRICT still answers a plaintext client")
    # A sidecar without identity gets no certificate and cannot do mTLS: refused too
    # (the app is never reached); the mesh client still gets through.
    # (Its pooled plaintext connection from before drains first: wait for a new one.)
    eventually(lambda: mesh.call(plain_ip)[0] == 503, timeout=20)
    served_before = mesh.app.requests
    assert mesh.call(plain_ip)[0] == 503
    assert mesh.app.requests == served_before
    status, body = mesh.call(client_ip)
    assert status == 200 and f"URI={CLIENT_ID}" in xfcc(body)
    # Back to PERMISSIVE by a workload-level policy: the narrowest scope wins.
    mesh.config.write("peer-authentication-web.yaml", [
        {**peer_authentication("PERMISSIVE", name="web"),
         "spec": {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "PERMISSIVE"}}}])
    eventually(lambda: mesh.call(plain_ip)[0] == 200, timeout=20)
    assert f"URI={CLIENT_ID}" in xfcc(mesh.call(client_ip)[1])  # the mesh client still uses mTLS
    # A namespace policy DISABLE: clients infer it and turn auto mTLS off for web's namespace.
    mesh.config.write("peer-authentication.yaml", [peer_authentication("DISABLE")])

    def plaintext_from_the_mesh_client() -> bool:
        status, body = mesh.call(client_ip)
        return status == 200 and xfcc(body) == ""

    eventually(plaintext_from_the_mesh_client, timeout=20)


def test_meshpilot_bootstrap_finds_the_ca_state_serve_uses(
    mesh: Mesh, tmp_path: Path, start_envoy: Callable[..., EnvoyProcess], loopback: LoopbackAllocator
) -> None:
    """The CLI as a user runs it (no --ca-state: the default state, here pointed at serve's),
    with Delta xDS: the sidecar verifies meshpilot, proves default/client and gets its certificate."""
    ip = loopback.allocate()
    out = tmp_path / "client.json"
    env = {**os.environ, "MESHPILOT_STATE_DIR": str(mesh.server.ca_state)}
    subprocess.run([sys.executable, "-m", "xds_server.app.cli", "bootstrap", "--xds-tls-address",
                    mesh.server.xds_tls_address, "--proxy-ip", ip, "--namespace", "default",
                    "--service-account", "client", "--label", "app=client", "--delta", "-o", str(out)],
                   env=env, check=True, cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds a credential
    bootstrap = json.loads(out.read_text())
    (service,) = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"]
    mesh.tokens.append(service["initial_metadata"][0]["value"].removeprefix("Bearer "))
    client = start_envoy(bootstrap, wait="live", name="cli-client")
    status, body = mesh.answered(ip)
    assert f"URI={CLIENT_ID}" in xfcc(body)
    assert set(secrets_of(client)) == {"default", "ROOTCA"}


# ------------------------------------------------------------------ who gets a certificate


def test_impersonation_and_the_plaintext_port_get_no_certificate(mesh: Mesh) -> None:
    before = {r: mesh.metric("meshpilot_sds_identity_rejected_total", reason=r)
              for r in ("identity_mismatch", "plaintext")}
    # A token for default/client, with node metadata claiming default/web.
    thief, thief_ip = mesh.sidecar("thief", sa="client", claim=("default", "web"))
    # It is still served config: it calls web in plaintext, as any proxy without identity.
    status, body = mesh.answered(thief_ip)
    assert xfcc(body) == ""
    # A token for another namespace's "web", with node metadata claiming default/web.
    other, _ = mesh.sidecar("other", namespace="shop", sa="web", claim=("default", "web"))
    other.stop()
    # Explicit ISTIO_MUTUAL to web makes even a proxy without identity ask for secrets.
    mesh.config.write("web-dr.yaml", [
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
         "metadata": {"name": "web", "namespace": "default"},
         "spec": {"host": "web", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}}])
    plain, _ = mesh.sidecar("legacy", tls=False, wait="admin")
    eventually(lambda: mesh.metric("meshpilot_sds_identity_rejected_total", reason="identity_mismatch")
               >= before["identity_mismatch"] + 2, timeout=20)
    eventually(lambda: mesh.metric("meshpilot_sds_identity_rejected_total", reason="plaintext")
               >= before["plaintext"] + 1, timeout=30)
    for envoy in (thief, plain):
        assert secrets_of(envoy) == {}, envoy.name
        assert not any(c.get("cert_chain") for c in json.loads(envoy.admin_get("/certs"))["certificates"])
    log = mesh.server.log_path.read_text()
    assert re.search(r"identity_mismatch.*node metadata claims spiffe://cluster.local/ns/default/sa/web but the "
                     r"token is for spiffe://cluster.local/ns/default/sa/client", log), "no clear log line"
    assert "spiffe://cluster.local/ns/shop/sa/web" in log


# ------------------------------------------------------------------ rotation under load


@contextlib.contextmanager
def mtls_load(mesh: Mesh, client_ip: str, threads: int = 2) -> Iterator[tuple[collections.Counter[str], list[str]]]:
    """Continuous requests from the client sidecar to web while the body runs: the results
    by status (or error), and the XFCC hash of the client certificate each 200 carried."""
    results: collections.Counter[str] = collections.Counter()
    hashes: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                status, body = mesh.call(client_ip)
            except OSError as e:
                results[f"error {type(e).__name__}"] += 1
                continue
            results[str(status)] += 1
            m = re.search(r"Hash=([0-9a-f]+)", xfcc(body))
            if status == 200 and m and f"URI={CLIENT_ID}" in xfcc(body):
                hashes.append(m.group(1))
            else:
                results["no identity"] += 1

    workers = [threading.Thread(target=load, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        yield results, hashes
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=10)


def test_certificate_rotation_under_continuous_load(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh("--workload-cert-ttl", "20")
    # One request per upstream connection: every request is a new mTLS handshake, so the
    # rotated certificates are the ones in use.
    mesh.config.write("web-dr.yaml", [
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
         "metadata": {"name": "web", "namespace": "default"},
         "spec": {"host": "web", "trafficPolicy": {"connectionPool": {"http": {"maxRequestsPerConnection": 1}}}}}])
    client, client_ip = mesh.sidecar("client")
    eventually(lambda: mesh.call(client_ip)[0] == 200 and "max_requests_per_connection" in json.dumps(
        client.clusters()[f"outbound|{PORT}||{HOST}"]), timeout=20)
    web_serial, client_serial = leaf_serial(mesh.web), leaf_serial(client)
    with mtls_load(mesh, client_ip) as (results, hashes):
        # Renewal at half life (10 s): wait for both sides to hold a new certificate, and
        # keep the load on a little longer so new handshakes use it.
        eventually(lambda: leaf_serial(mesh.web) != web_serial and leaf_serial(client) != client_serial,
                   timeout=40, interval=0.5, message="certificates were not renewed")
        time.sleep(2)
    assert set(results) == {"200"}, results  # not one failed request
    assert results["200"] > 50
    assert len(set(hashes)) >= 2, hashes  # the server saw the client's old and new certificates
    renewed = [line for line in mesh.server.log_path.read_text().splitlines() if "certificate renewed" in line]
    assert any(CLIENT_ID in line for line in renewed) and any(WEB_ID in line for line in renewed)
