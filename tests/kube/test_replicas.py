"""Two ``meshpilot serve`` replicas against one real API server.

Both start at the same moment (each on its own 127.0.x.y): the Lease elects one leader,
which creates the CA root Secret; the other waits for it and signs with the same root. Two
real Envoy sidecars, whose bootstraps list both replicas' TLS xDS addresses, carry mTLS
traffic (``client`` -> ``web``, PeerAuthentication STRICT) while the replica the client is
connected to is SIGKILLed: no request fails, every proxy resyncs with the survivor (SYNCED on
each type at its /debug/syncz) and every certificate Envoy holds chains to the one root.
Then the Lease: the leader is killed and the survivor takes it over, never before the
dead holder's lease has run out; and a deleted root Secret is written back by the new
leader with the same root. A root rotated in the Secret reaches both replicas; with the API
server down both keep their root and neither leads, and one leads again once it is back.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from harness import EnvoyProcess, LoopbackAllocator, MeshpilotServer, UpstreamServer, eventually, request
from harness.kube import KubeCluster, kube_meshpilot, pod_manifest, track

from ca.certs import fingerprint
from xds_server.app.ca_secret import SECRET_TYPE
from xds_server.app.verbs.proxy_status import type_status
from xds_server.local.bootstrap import XdsTls, build_bootstrap

PORT, TARGET = 9080, 8080
#: The name both replicas' TLS certificates carry: the bootstrap checks it whichever answers.
XDS_NAME = "meshpilot.test"
LEASE_SECONDS, RETRY_SECONDS = 4, 0.5
SECRET = "meshpilot-ca"
LEASE = "meshpilot-leader"


@dataclass
class Replicas:
    cluster: KubeCluster
    ns: str
    servers: list[MeshpilotServer]
    loopback: LoopbackAllocator
    tokens: list[str] = field(default_factory=list)

    def leader_view(self, server: MeshpilotServer) -> dict[str, Any]:
        status, body = server.get("/debug/leader")
        assert status == 200, body
        return dict(body)

    def lease(self) -> dict[str, Any]:
        return dict(self.cluster.get("lease", LEASE, "-n", self.ns)["spec"])

    def root_secrets(self) -> list[dict[str, Any]]:
        items = self.cluster.get("secrets", "-n", self.ns)["items"]
        return [s for s in items if s.get("type") == SECRET_TYPE]

    def root(self) -> x509.Certificate:
        (secret,) = self.root_secrets()
        return x509.load_pem_x509_certificate(_root_pem(base64.b64decode(secret["data"]["root-ca.pem"])))


def _root_pem(root_file: bytes) -> bytes:
    """The certificate of a ``root-ca.pem`` (which holds the root's key too)."""
    end = b"-----END CERTIFICATE-----"
    return root_file.split(end)[0] + end + b"\n"


@pytest.fixture
def replicas(request: pytest.FixtureRequest, kube_cluster: KubeCluster, istio_crds: None, kube_namespace: str,
             loopback: LoopbackAllocator, tmp_path: Path) -> Iterator[Replicas]:
    servers = []
    for name in ("replica-a", "replica-b"):
        server = kube_meshpilot(kube_cluster.kubeconfig, workdir=tmp_path / name, name=name, host=loopback.allocate(),
                                extra_args=(
            "--ca-secret-namespace", kube_namespace, "--xds-tls-san", XDS_NAME, "--debounce-quiet", "0.05",
            "--leader-elect-lease-duration", str(LEASE_SECONDS), "--leader-elect-retry-period", str(RETRY_SECONDS)))
        track(request, server)
        servers.append(server)
    # At the same moment: the race for the Lease and the Secret is part of what is tested.
    for server in servers:
        server.start(wait=False)
    try:
        for server in servers:
            server.wait_healthy(60)
        yield Replicas(kube_cluster, kube_namespace, servers, loopback)
    finally:
        for server in servers:
            server.stop()


def test_one_root_made_once_and_shared(replicas: Replicas) -> None:
    (secret,) = replicas.root_secrets()
    assert secret["metadata"]["name"] == SECRET
    root = replicas.root()
    views = [replicas.leader_view(s) for s in replicas.servers]
    # Exactly one replica created it; the other read it (both were started together).
    assert sorted(v["ca_secret"]["created_here"] for v in views) == [False, True], views
    leaders = [v for v in views if v["leader"]]
    assert len(leaders) == 1, views
    assert replicas.lease()["holderIdentity"] == leaders[0]["identity"]
    for server in replicas.servers:
        (described,) = server.get("/debug/ca")[1]["ca"]["roots"]
        assert described["fingerprint"] == fingerprint(root)[:16], server
        assert (server.ca_state / "root-ca.pem").read_bytes() == base64.b64decode(secret["data"]["root-ca.pem"])

    # Stopped gracefully, the leader gives the Lease up rather than let it run out.
    leader = replicas.servers[views.index(leaders[0])]
    leader.stop()
    assert '"event": "released the lease"' in leader.log_path.read_text()
    assert replicas.lease()["holderIdentity"] in ("", views[1 - views.index(leaders[0])]["identity"])


# ---------------------------------------------------------------- traffic through a SIGKILL


def _mesh_objects(ns: str, web_ip: str, app_ip: str) -> list[dict[str, Any]]:
    web = pod_manifest("web-1", ns, {"app": "web", "security.istio.io/tlsMode": "istio"}, ports=(TARGET,),
                       service_account="web")
    web["metadata"]["annotations"] = {"sidecar.meshpilot.io/app-address": app_ip}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": ns}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "client", "namespace": ns}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": PORT, "targetPort": TARGET}]}},
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "default", "namespace": ns}, "spec": {"mtls": {"mode": "STRICT"}}},
        web,
    ]


def _sidecar(r: Replicas, start_envoy: Callable[..., EnvoyProcess], name: str, sa: str, ip: str,
             labels: dict[str, str], *, delta: bool = False) -> EnvoyProcess:
    """A sidecar on the TLS port of both replicas, proving ``sa`` with a projected-style token;
    SotW ADS, or Delta (the injector's default) with ``delta``."""
    token = r.cluster.kubectl("create", "token", sa, "-n", r.ns, "--audience", "istio-ca",
                              "--duration", "1h").stdout.strip()
    r.tokens.append(token)
    bundle = _root_pem((r.servers[0].ca_state / "root-ca.pem").read_bytes())
    a, b = (s.xds_tls_address for s in r.servers)
    bootstrap = build_bootstrap(xds_address=a, xds_replicas=[b], proxy_ip=ip, namespace=r.ns, pod=name,
                                service_account=sa, labels=labels, xds_tls=XdsTls(bundle, token, XDS_NAME),
                                delta=delta)
    return start_envoy(bootstrap, wait="live", name=name)


def _connected_to(server: MeshpilotServer) -> set[str]:
    try:
        status, syncz = server.get("/debug/syncz")
    except OSError:
        return set()
    return {s["proxy"] for s in syncz} if status == 200 else set()


def _fully_synced(server: MeshpilotServer, proxies: set[str]) -> bool:
    """Each proxy has a stream here with every type it subscribed ACKed, its certificate included."""
    streams = {s["proxy"]: s for s in server.get("/debug/syncz")[1]}
    for proxy in proxies:
        stream = streams.get(proxy)
        if stream is None or not stream["types"] or not stream["security"].get("certificate"):
            return False
        if any(type_status(st) != "SYNCED" for st in stream["types"].values()):
            return False
    return True


def _held_certificates(envoy: EnvoyProcess) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """(workload chain, trusted roots) as Envoy holds them (config dump; keys are redacted by Envoy)."""
    chain: list[x509.Certificate] = []
    roots: list[x509.Certificate] = []
    for item in envoy.config_dump("dynamic_active_secrets").get("configs", []):
        secret = item["secret"]
        if "tls_certificate" in secret:
            chain += x509.load_pem_x509_certificates(
                base64.b64decode(secret["tls_certificate"]["certificate_chain"]["inline_bytes"]))
        if "validation_context" in secret:
            roots += x509.load_pem_x509_certificates(
                base64.b64decode(secret["validation_context"]["trusted_ca"]["inline_bytes"]))
    return chain, roots


def _assert_only_root(envoy: EnvoyProcess, root: x509.Certificate) -> str:
    """Every certificate Envoy holds and serves is of ``root``; the leaf's serial."""
    chain, roots = _held_certificates(envoy)
    assert chain and roots == [root], (envoy, [r.subject for r in roots])
    chain[0].verify_directly_issued_by(root)  # raises if another root signed it
    # What the admin says it uses: the same leaf and CA, nothing else.
    served = json.loads(envoy.admin_get("/certs"))["certificates"]
    ca_serials = {int(c["serial_number"], 16) for entry in served for c in entry.get("ca_cert", [])}
    leaf_serials = {int(c["serial_number"], 16) for entry in served for c in entry.get("cert_chain", [])}
    assert ca_serials == {root.serial_number}, served
    assert leaf_serials == {chain[0].serial_number}, served
    return format(chain[0].serial_number, "x")


class Traffic:
    """Requests through the client sidecar in a loop, on a new connection each (so each is a
    new mTLS handshake with the certificates of the moment), every failure counted."""

    def __init__(self, client_ip: str, host: str) -> None:
        self.client_ip, self.host = client_ip, host
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = request(self.client_ip, PORT, "/", self.host, timeout=5)
                if status == 200 and isinstance(body, dict):
                    self.ok += 1
                else:
                    self.failures.append(f"HTTP {status}: {str(body)[:120]}")
            except OSError as e:
                self.failures.append(f"{type(e).__name__}: {e}")
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_proxies_fail_over_to_the_other_replica_without_a_failed_request(
    replicas: Replicas, start_envoy: Callable[..., EnvoyProcess], start_upstream: Callable[..., UpstreamServer],
) -> None:
    r, cluster, ns = replicas, replicas.cluster, replicas.ns
    web_ip, app_ip = cluster.pod_ip(), cluster.pod_ip()
    start_upstream(app_ip, TARGET, service="web", version="v1", pod="web-1")
    cluster.apply(*_mesh_objects(ns, web_ip, app_ip))
    cluster.set_pod_ready(ns, "web-1", web_ip)
    root = r.root()

    web = _sidecar(r, start_envoy, "web-1", "web", web_ip, {"app": "web"})
    client_ip = r.loopback.allocate()
    # The client (the proxy that moves) on Delta xDS, as injected pods are; web on SotW.
    client = _sidecar(r, start_envoy, "client-1", "client", client_ip, {"app": "client"}, delta=True)
    host = f"web.{ns}.svc.cluster.local"

    def mtls_answer() -> dict[str, Any]:
        status, body = request(client_ip, PORT, "/", host, timeout=5)
        assert status == 200 and isinstance(body, dict), (status, body)
        return body

    body = eventually(mtls_answer, timeout=60, message="client -> web through both sidecars")
    xfcc = body["headers"].get("x-forwarded-client-cert", "")
    assert f"URI=spiffe://cluster.local/ns/{ns}/sa/client" in xfcc, xfcc  # mTLS, the client's own identity
    before = {e: _assert_only_root(e, root) for e in (web, client)}

    proxies = {f"sidecar~{web_ip}~web-1.{ns}~{ns}.svc.cluster.local",
               f"sidecar~{client_ip}~client-1.{ns}~{ns}.svc.cluster.local"}
    placed = eventually(lambda: (p := [_connected_to(s) for s in r.servers]) and p[0] | p[1] == proxies and p,
                        timeout=30, message="both proxies connected")
    # The replica the client is connected to dies; the web sidecar may be on either.
    victim_at = 0 if next(iter(proxies - {f"sidecar~{web_ip}~web-1.{ns}~{ns}.svc.cluster.local"})) in placed[0] \
        else 1
    victim, survivor = r.servers[victim_at], r.servers[1 - victim_at]
    moved = placed[victim_at]
    with Traffic(client_ip, host) as traffic:
        eventually(lambda: traffic.ok >= 20, timeout=30, message="traffic flows before the kill")
        victim.kill()
        eventually(lambda: _fully_synced(survivor, proxies), timeout=60, interval=0.2,
                   message="every proxy resynced with the survivor")
        protocols = {st["proxy"]: st["protocol"] for st in survivor.get("/debug/syncz")[1]}
        assert protocols[f"sidecar~{client_ip}~client-1.{ns}~{ns}.svc.cluster.local"] == "delta", protocols
        # Traffic after the resync too, on the survivor's certificates.
        settled = traffic.ok
        eventually(lambda: traffic.ok >= settled + 50, timeout=60, message="traffic after the resync")
    assert traffic.failures == [], f"{len(traffic.failures)} of {traffic.ok + len(traffic.failures)} failed: " \
        f"{traffic.failures[:5]}"
    assert traffic.ok >= 70
    # The survivor sent each moved proxy a new certificate, of the same root; nothing else is held.
    for envoy in (web, client):
        serial = eventually(lambda e=envoy: _assert_only_root(e, root), timeout=30)
        name = f"sidecar~{web_ip if envoy is web else client_ip}~{'web-1' if envoy is web else 'client-1'}"
        if any(p.startswith(name) for p in moved):
            assert serial != before[envoy], "a proxy that moved holds the survivor's certificate"
    assert r.root_secrets() and fingerprint(r.root()) == fingerprint(root)


def test_the_lease_passes_to_the_survivor_and_it_writes_a_deleted_secret_back(replicas: Replicas) -> None:
    r = replicas
    root = r.root()
    views = [r.leader_view(s) for s in r.servers]
    leader_at = next(i for i, v in enumerate(views) if v["leader"])
    leader, survivor = r.servers[leader_at], r.servers[1 - leader_at]
    dead_identity, heir = views[leader_at]["identity"], views[1 - leader_at]["identity"]
    before = r.lease()
    assert before["holderIdentity"] == dead_identity
    leader.kill()
    last_renewal = r.lease()["renewTime"]  # the dead leader's last word

    eventually(lambda: r.leader_view(survivor)["leader"], timeout=LEASE_SECONDS * 5, interval=0.2,
               message="the survivor leads")
    after = r.lease()
    assert after["holderIdentity"] == heir
    assert after["leaseTransitions"] == before.get("leaseTransitions", 0) + 1
    # Never taken while the dead holder's lease could still be running.
    assert _seconds_between(last_renewal, after["acquireTime"]) >= LEASE_SECONDS - RETRY_SECONDS, (last_renewal,
                                                                                                  after)

    # The Secret deleted: the new leader writes back the root it signs with, not a new one.
    r.cluster.kubectl("delete", "secret", SECRET, "-n", r.ns)
    eventually(lambda: len(r.root_secrets()) == 1, timeout=30, message="the Secret is back")
    assert fingerprint(r.root()) == fingerprint(root)
    assert r.leader_view(survivor)["ca_secret"]["missing"] is False
    (described,) = survivor.get("/debug/ca")[1]["ca"]["roots"]
    assert described["fingerprint"] == fingerprint(root)[:16]


def _seconds_between(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b.replace("Z", "+00:00")) - datetime.fromisoformat(a.replace("Z", "+00:00"))
            ).total_seconds()


def test_a_root_rotated_in_the_secret_reaches_every_replica(replicas: Replicas, tmp_path: Path) -> None:
    """An operator rotates the root in the Secret (here: `meshpilot ca rotate-root` on a copy of
    its files): each replica's watch mirrors it, and each signs with the new root while still
    trusting the old one."""
    import shutil

    from ca import CertificateAuthority
    from xds_server.app.ca_secret import FILES

    old = replicas.root()
    copy = tmp_path / "rotated"
    shutil.copytree(replicas.servers[0].ca_state, copy, ignore=shutil.ignore_patterns(".lock", ".*.tmp"))
    new = CertificateAuthority.load_or_create(copy).rotate_root()
    data = {name: base64.b64encode((copy / name).read_bytes()).decode() for name in FILES if (copy / name).exists()}
    replicas.cluster.apply({"apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
                            "metadata": {"name": SECRET, "namespace": replicas.ns}, "data": data})

    def rotated(server: MeshpilotServer) -> None:
        ca = server.get("/debug/ca")[1]["ca"]
        assert ca["signer"]["id"] == fingerprint(new)[:16], ca
        assert [r["fingerprint"] for r in ca["roots"]] == [fingerprint(new)[:16], fingerprint(old)[:16]], ca
        assert ca["roots"][1]["retired_until"], ca

    for server in replicas.servers:
        eventually(lambda s=server: rotated(s), timeout=30, message=f"{server.name} signs with the new root")
    assert len(replicas.root_secrets()) == 1 and fingerprint(replicas.root()) == fingerprint(new)


def test_while_the_api_server_is_down_replicas_keep_their_root_and_nobody_leads(replicas: Replicas) -> None:
    r = replicas
    root = fingerprint(r.root())[:16]
    assert r.cluster.apiserver is not None
    r.cluster.apiserver.stop(10)
    try:
        # Past the renew deadline the leader stops leading: nobody may write meanwhile.
        eventually(lambda: not any(r.leader_view(s)["leader"] for s in r.servers), timeout=LEASE_SECONDS * 5,
                   interval=0.2, message="no replica leads without the API server")
        for server in r.servers:
            assert server.alive, server.log_tail()
            (described,) = server.get("/debug/ca")[1]["ca"]["roots"]
            assert described["fingerprint"] == root
            assert r.leader_view(server)["last_error"], "the failed rounds are shown"
    finally:
        r.cluster.start_apiserver()
    eventually(lambda: sum(r.leader_view(s)["leader"] for s in r.servers) == 1, timeout=LEASE_SECONDS * 10,
               interval=0.2, message="one replica leads again")
    assert len(r.root_secrets()) == 1 and fingerprint(r.root())[:16] == root
