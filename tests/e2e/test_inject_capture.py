"""The injected pod, run as it runs in a cluster, captures its traffic through Envoy.

Two network namespaces made by the test, on a veth pair: the pod (10.99.7.2) and a peer
(10.99.7.3, which also hosts meshpilot and the reviews pods 10.99.7.4/.5). The iptables
script of the injector's ``istio-init`` container runs in the pod's namespace with ``sh -c``.

* ``test_the_injected_script_...``: by plain sockets standing in for Envoy on 15001/15006,
  the app's outbound TCP lands on 15001 with its original destination intact; the proxy's
  own (uid 1337) and the excluded port's reach the peer directly; inbound TCP lands on
  15006, except the excluded inbound port.
* ``test_envoy_from_the_injected_bootstrap_...``: a real Envoy (uid 1337) from the bootstrap
  the injected init container writes, configured by a real ``meshpilot serve`` (file
  mode) over TLS xDS with virtualOutbound 15001 and virtualInbound 15006: the app's plain
  ``curl http://reviews:9080/`` is routed by the VirtualService, the pod's inbound requests
  pass the sidecar, and the excluded ports bypass it; Envoy's stats count what went through.
* ``test_two_captured_sidecars_...``: both namespaces are injected pods; a call between them
  is mutual TLS from one's 15001 to the other's 15006 (STRICT), and plaintext is refused.
  The client speaks Delta xDS (the injector's default) and the server SotW (its
  ``proxy.istio.io/config`` says ``ISTIO_DELTA_XDS: "false"``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ConfigDir, EnvoyProcess, MeshpilotServer, UpstreamServer, eventually
from harness.kube import NetNamespace, run, track
from harness.pods import container_args

from xds_server.admission import inject
from xds_server.app.cli import main
from xds_server.local.bootstrap import xds_tls_for

POD, PEER = "10.99.7.2", "10.99.7.3"
SO_ORIGINAL_DST = 80

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("iptables", "setpriv", "curl")),
    reason="needs root, iptables, setpriv and curl (network namespaces)")


@pytest.fixture
def namespaces() -> Iterator[tuple[NetNamespace, NetNamespace]]:
    pod, peer = NetNamespace(f"mp-cap-pod-{os.getpid()}"), NetNamespace(f"mp-cap-peer-{os.getpid()}")
    try:
        pod.create()
        peer.create()
        veth = f"mpc{os.getpid() % 100000}"
        run(["ip", "link", "add", veth, "netns", pod.name, "type", "veth", "peer", "name", "eth0", "netns", peer.name])
        run(["ip", "-n", pod.name, "link", "set", veth, "name", "eth0"])
        for ns, ip in ((pod, POD), (peer, PEER)):
            run(["ip", "-n", ns.name, "addr", "add", f"{ip}/24", "dev", "eth0"])
            run(["ip", "-n", ns.name, "link", "set", "eth0", "up"])
        yield pod, peer
    finally:
        pod.delete()
        peer.delete()


class Listener:
    """Accepts in a namespace; answers each connection with its name and the original destination."""

    def __init__(self, ns: NetNamespace, ip: str, port: int, name: str) -> None:
        with ns.entered():  # the socket belongs to the namespace it was made in
            self.sock = socket.create_server((ip, port))
        self.name = name
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                try:
                    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
                    port, addr = struct.unpack("!2xH4s8x", raw)
                    dst = f"{socket.inet_ntoa(addr)}:{port}"
                except OSError:
                    dst = "-"
                conn.sendall(f"{self.name} {dst}".encode())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def connect(ns: NetNamespace, ip: str, port: int, uid: int | None = None) -> str:
    """What the listener reached by connecting from ``ns`` (as ``uid``) answers."""
    code = (f"import socket; s = socket.create_connection(({ip!r}, {port}), 3); "
            "print(s.recv(200).decode())")
    argv = [*ns.exec_prefix()]
    if uid is not None:
        argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    out = subprocess.run([*argv, sys.executable, "-c", code], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def reached(ns: NetNamespace, ip: str, port: int, uid: int | None = None) -> str:
    """Only the name of the listener reached."""
    return connect(ns, ip, port, uid).split()[0]


def test_the_injected_script_captures_inbound_and_outbound_and_skips_what_it_should(
    namespaces: tuple[NetNamespace, NetNamespace],
) -> None:
    pod_ns, peer_ns = namespaces
    injected = inject.inject_pod({"metadata": {"annotations": {
        inject.EXCLUDE_OUTBOUND: "5432", inject.EXCLUDE_INBOUND: "9090"}},
        "spec": {"containers": [{"name": "app"}]}}, inject.InjectConfig("x:1", b""))
    (init,) = [c for c in injected["spec"]["initContainers"] if c["name"] == inject.IPTABLES_CONTAINER]
    done = subprocess.run([*pod_ns.exec_prefix(), *init["command"]], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr

    listeners = [
        Listener(pod_ns, "0.0.0.0", inject.OUTBOUND_CAPTURE_PORT, "outbound"),
        Listener(pod_ns, "0.0.0.0", inject.INBOUND_CAPTURE_PORT, "inbound"),
        Listener(pod_ns, "0.0.0.0", 9080, "app"),
        Listener(pod_ns, "0.0.0.0", 9090, "app-excluded"),
        Listener(peer_ns, PEER, 9080, "peer"),
        Listener(peer_ns, PEER, 5432, "peer-db"),
    ]
    try:
        # Outbound from the app: to the proxy, which can still tell where it was going.
        assert connect(pod_ns, PEER, 9080) == f"outbound {PEER}:9080"
        # The proxy's own connections are never captured (or it would loop into itself).
        assert reached(pod_ns, PEER, 9080, uid=inject.PROXY_UID) == "peer"
        # An excluded outbound port goes straight out.
        assert reached(pod_ns, PEER, 5432) == "peer-db"
        # The app talking to itself over loopback stays local.
        assert reached(pod_ns, "127.0.0.1", 9080) == "app"
        # Inbound: the pod's port goes through the proxy, the excluded one does not.
        assert connect(peer_ns, POD, 9080) == f"inbound {POD}:9080"
        assert reached(peer_ns, POD, 9090) == "app-excluded"
    finally:
        for listener in listeners:
            listener.close()


# ---------------------------------------------------------------- with a real Envoy and meshpilot

REVIEWS_VIP, REVIEWS_V1, REVIEWS_V2 = "10.96.0.20", "10.99.7.4", "10.99.7.5"
APP_PORT, UNDECLARED_PORT, EXCLUDED_IN, EXCLUDED_OUT, ELSEWHERE = 8080, 7777, 9090, 5432, 7000


def mesh(pod_ip: str) -> list[dict[str, Any]]:
    """The pod (productpage, serving 8080) and reviews v1/v2 in the peer, routed by a VirtualService."""

    def pod(name: str, app: str, version: str, ip: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "labels": {"app": app, "version": version}},
                "spec": {"serviceAccountName": app, "containers": [{"name": app}]},
                "status": {"phase": "Running", "podIP": ip}}

    def service(name: str, ip: str, port: int) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "selector": {"app": name}, "ports": [{"name": "http", "port": port}]}}

    return [
        service("productpage", "10.96.0.30", APP_PORT),
        pod("productpage-1", "productpage", "v1", pod_ip),
        service("reviews", REVIEWS_VIP, 9080),
        pod("reviews-v1", "reviews", "v1", REVIEWS_V1),
        pod("reviews-v2", "reviews", "v2", REVIEWS_V2),
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
         "metadata": {"name": "reviews", "namespace": "default"},
         "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                 {"name": "v2", "labels": {"version": "v2"}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
         "metadata": {"name": "reviews", "namespace": "default"},
         "spec": {"hosts": ["reviews"], "http": [
             {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
              "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
             {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]}},
    ]


@pytest.fixture
def hosts_file(namespaces: tuple[NetNamespace, NetNamespace]) -> Iterator[None]:
    """``reviews`` resolves in the pod (``ip netns exec`` mounts /etc/netns/<name>/hosts on /etc/hosts)."""
    directory = Path("/etc/netns") / namespaces[0].name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts").write_text(f"127.0.0.1 localhost\n{REVIEWS_VIP} reviews reviews.default.svc.cluster.local\n")
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def curl(ns: NetNamespace, url: str, *headers: str) -> dict[str, Any]:
    """A plain ``curl`` in ``ns`` as the app (root, not the proxy's uid): the echo app's JSON."""
    argv = [*ns.exec_prefix(), "curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\\n%{http_code}", url]
    for h in headers:
        argv += ["-H", h]
    out = run(argv, timeout=15)
    body, _, code = out.stdout.rpartition("\n")
    assert code == "200", f"{url}: HTTP {code}: {body}"
    return json.loads(body)  # type: ignore[no-any-return]


def uid_1337_envoy(envoy_binary: str, directory: Path, ns: NetNamespace) -> str:
    """An executable that runs a copy of Envoy in ``ns`` as uid/gid 1337, as the injected
    istio-proxy container (whose own connections the iptables rules leave alone). The copy
    lives in ``directory``, readable by that uid (the cached one is under root's home)."""
    copy = directory / "envoy"
    if not copy.exists():
        shutil.copy(envoy_binary, copy)
    wrapper = directory / f"envoy-in-{ns.name}"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.join(ns.exec_prefix())} setpriv --reuid={inject.PROXY_UID} "
                       f"--regid={inject.PROXY_UID} --clear-groups {copy} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture
def shared_dir(request: pytest.FixtureRequest) -> Path:
    """A directory uid 1337 can read (pytest's tmp_path is not): Envoy's binary and config."""
    shared = Path(tempfile.mkdtemp(prefix="mp-capture-"))
    shared.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    return shared


def start_meshpilot(request: pytest.FixtureRequest, ns: NetNamespace, host: str, docs: list[dict[str, Any]],
                    workdir: Path) -> MeshpilotServer:
    """``meshpilot serve`` (file mode) inside ``ns``, on ``host``."""
    config = ConfigDir(workdir / "mesh")
    config.write("mesh.yaml", docs)
    with ns.entered():  # its sockets, and the child it forks, belong to the namespace
        server = MeshpilotServer(config.path, workdir=workdir, host=host)
        track(request, server)
        server.start(wait=False)
        request.addfinalizer(server.stop)
        server.wait_healthy()
    return server


def serve(request: pytest.FixtureRequest, ns: NetNamespace, *apps: tuple[str, int, str, str]) -> None:
    """Echo apps ``(ip, port, service, version)`` listening in ``ns``."""
    with ns.entered():
        for ip, port, service, version in apps:
            request.addfinalizer(UpstreamServer(ip, port, service=service, version=version).start().stop)


def captured_sidecar(request: pytest.FixtureRequest, ns: NetNamespace, server: MeshpilotServer, *, pod_ip: str,
                     app: str, annotations: dict[str, str], envoy_binary: str, shared: Path, workdir: Path,
                     monkeypatch: pytest.MonkeyPatch) -> EnvoyProcess:
    """The pod ``<app>-1`` as the injector makes it, its init containers run as they would in
    the pod (the iptables script in ``ns``; the bootstrap with the pod's downward API), then
    its Envoy as uid 1337, once it has its capture listeners."""
    injected = inject.inject_pod(
        {"metadata": {"name": f"{app}-1", "namespace": "default", "labels": {"app": app},
                      "annotations": annotations},
         "spec": {"serviceAccountName": app, "containers": [{"name": app}]}},
        inject.InjectConfig(server.xds_tls_address, b""))
    init = {c["name"]: c for c in injected["spec"]["initContainers"]}
    run([*ns.exec_prefix(), *init[inject.IPTABLES_CONTAINER]["command"]], timeout=30)
    # Kubernetes would mount the projected token (checked by a TokenReview); file mode
    # checks meshpilot's own token for the pod's namespace and service account instead.
    tls = xds_tls_for(server.ca_state, "default", app)
    assert tls.token is not None
    files = {inject.TOKEN_FILE: workdir / f"{app}-token", f"{inject.PODINFO_DIR}/labels": workdir / f"{app}-labels",
             inject.BOOTSTRAP_FILE: workdir / f"{app}-envoy.json"}
    files[inject.TOKEN_FILE].write_text(tls.token)
    files[f"{inject.PODINFO_DIR}/labels"].write_text(f'app="{app}"\n')
    monkeypatch.setenv(inject.ROOT_ENV, tls.root_pem.decode())
    env = {"POD_IP": pod_ip, "POD_NAME": f"{app}-1", "POD_NAMESPACE": "default", "SERVICE_ACCOUNT": app}
    assert main(container_args(init[inject.BOOTSTRAP_CONTAINER]["args"], env, files)) == 0

    envoy = EnvoyProcess(json.loads(files[inject.BOOTSTRAP_FILE].read_text()), name=app, workdir=shared,
                         binary=uid_1337_envoy(envoy_binary, shared, ns))
    track(request, envoy)
    request.addfinalizer(envoy.stop)
    envoy.start(wait="none")
    with ns.entered():  # its admin is the pod's 127.0.0.1:15000
        envoy.wait_live()
        eventually(lambda: {"virtualOutbound", "virtualInbound"} <= set(envoy.listeners()),
                   timeout=20, message="the capture listeners over xDS")
    return envoy


def stats(ns: NetNamespace, envoy: EnvoyProcess, *names: str) -> dict[str, int]:
    with ns.entered():
        return {n: envoy.stat(n) for n in names}


def test_envoy_from_the_injected_bootstrap_routes_the_apps_captured_traffic(
    request: pytest.FixtureRequest, namespaces: tuple[NetNamespace, NetNamespace], hosts_file: None,
    envoy_binary: str, shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    pod_ns, peer_ns = namespaces
    run(["ip", "-n", pod_ns.name, "route", "add", "default", "dev", "eth0"])  # ClusterIPs leave by eth0
    for ip in (REVIEWS_V1, REVIEWS_V2):
        run(["ip", "-n", peer_ns.name, "addr", "add", f"{ip}/32", "dev", "eth0"])
    server = start_meshpilot(request, peer_ns, PEER, mesh(POD), tmp_path)  # in the peer, with the reviews pods
    serve(request, peer_ns, (REVIEWS_V1, 9080, "reviews", "v1"), (REVIEWS_V2, 9080, "reviews", "v2"),
          (PEER, EXCLUDED_OUT, "db", ""), (PEER, ELSEWHERE, "elsewhere", ""),
          (PEER, 9080, "outsider", ""))  # on reviews' port, but not reviews
    # The app, on every address of the pod.
    serve(request, pod_ns, *(("0.0.0.0", port, name, "") for port, name in (
        (APP_PORT, "productpage"), (UNDECLARED_PORT, "undeclared"), (EXCLUDED_IN, "excluded"))))
    envoy = captured_sidecar(request, pod_ns, server, pod_ip=POD, app="productpage", annotations={
        inject.EXCLUDE_OUTBOUND: str(EXCLUDED_OUT), inject.EXCLUDE_INBOUND: str(EXCLUDED_IN)},
        envoy_binary=envoy_binary, shared=shared_dir, workdir=tmp_path, monkeypatch=monkeypatch)
    with pod_ns.entered():
        eventually(lambda: "0.0.0.0_9080" in envoy.listeners(), timeout=20)
        assert f"{POD}_9080" not in envoy.listeners()  # nothing binds the pod's IP
    outbound, v2 = "http.outbound_0.0.0.0_9080.downstream_rq_total", \
        "cluster.outbound|9080|v2|reviews.default.svc.cluster.local.upstream_rq_total"
    inbound, virtual_in = f"http.inbound_0.0.0.0_{APP_PORT}.downstream_rq_total", \
        "listener.0.0.0.0_15006.downstream_cx_total"
    virtual_out, passthrough = "listener.0.0.0.0_15001.downstream_cx_total", \
        "cluster.PassthroughCluster.upstream_cx_total"
    names = (outbound, v2, inbound, virtual_in, virtual_out, passthrough)
    before = stats(pod_ns, envoy, *names)

    # The app's plain curl to the service name: captured, routed by the VirtualService.
    assert curl(pod_ns, "http://reviews:9080/")["version"] == "v1"
    answer = curl(pod_ns, "http://reviews:9080/", "end-user: jason")
    assert answer["version"] == "v2"
    assert "x-request-id" in answer["headers"]  # (Envoy's)
    # A destination no service has: passed through to where it was going (ALLOW_ANY), by
    # 15001's own chain; on an HTTP port, by 0.0.0.0_9080's catch-all route, to the socket's
    # destination, never to one the Host header names (file mode's PassthroughCluster would).
    assert curl(pod_ns, f"http://{PEER}:{ELSEWHERE}/")["service"] == "elsewhere"
    outsider = curl(pod_ns, f"http://{PEER}:9080/", f"Host: {PEER}:{ELSEWHERE}")
    assert outsider["service"] == "outsider" and "x-request-id" in outsider["headers"]
    # The excluded outbound port goes straight out.
    direct = curl(pod_ns, f"http://{PEER}:{EXCLUDED_OUT}/")
    assert direct["service"] == "db" and "x-request-id" not in direct["headers"]
    after = stats(pod_ns, envoy, *names)
    assert after[outbound] - before[outbound] == 3
    assert after[v2] - before[v2] == 1
    assert after[passthrough] - before[passthrough] == 2
    # 15001 handed the reviews connections to 0.0.0.0_9080 and kept the passthrough one;
    # the excluded port's connection never reached it.
    assert after[virtual_out] - before[virtual_out] == 1

    # Inbound: the pod's declared port passes the sidecar (the app sees Envoy, from
    # 127.0.0.1); an undeclared port is passed through from 127.0.0.6; the excluded port
    # reaches the app directly, from the peer.
    via = curl(peer_ns, f"http://{POD}:{APP_PORT}/")
    assert via["service"] == "productpage" and via["client"] == "127.0.0.1" and "x-request-id" in via["headers"]
    assert curl(peer_ns, f"http://{POD}:{UNDECLARED_PORT}/")["client"] == "127.0.0.6"
    excluded = curl(peer_ns, f"http://{POD}:{EXCLUDED_IN}/")
    assert excluded["client"] == PEER and "x-request-id" not in excluded["headers"]
    last = stats(pod_ns, envoy, *names)
    assert last[inbound] - after[inbound] == 1
    assert last[virtual_in] - after[virtual_in] == 2  # not the excluded port's connection
    assert last[virtual_out] == after[virtual_out]  # the proxy's own connections are not captured


def test_two_captured_sidecars_talk_mutual_tls_and_strict_refuses_plaintext(
    request: pytest.FixtureRequest, namespaces: tuple[NetNamespace, NetNamespace], hosts_file: None,
    envoy_binary: str, shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both namespaces are injected pods: productpage (10.99.7.2) calls reviews (10.99.7.3,
    STRICT mTLS, where meshpilot also runs, its ports excluded from capture). The call goes
    client 15001 -> auto mTLS -> server 15006's mTLS chain -> the app, which learns the
    caller's SPIFFE ID; plaintext that bypasses the client's sidecar is refused by 15006."""
    pod_ns, peer_ns = namespaces
    run(["ip", "-n", pod_ns.name, "route", "add", "default", "dev", "eth0"])
    docs = [d for d in mesh(POD) if d["metadata"]["name"] not in ("reviews-v1", "reviews-v2", "reviews")
            or d["kind"] == "Service"]
    docs += [{"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "reviews-1", "namespace": "default",
                           "labels": {"app": "reviews", "version": "v1", "security.istio.io/tlsMode": "istio"}},
              "spec": {"serviceAccountName": "reviews", "containers": [{"name": "reviews"}]},
              "status": {"phase": "Running", "podIP": PEER}},
             {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
              "metadata": {"name": "reviews", "namespace": "default"},
              "spec": {"selector": {"matchLabels": {"app": "reviews"}}, "mtls": {"mode": "STRICT"}}}]
    server = start_meshpilot(request, peer_ns, PEER, docs, tmp_path)
    serve(request, peer_ns, ("0.0.0.0", 9080, "reviews", "v1"))
    def sidecar(ns: NetNamespace, pod_ip: str, app: str, annotations: dict[str, str]) -> EnvoyProcess:
        return captured_sidecar(request, ns, server, pod_ip=pod_ip, app=app, annotations=annotations,
                                envoy_binary=envoy_binary, shared=shared_dir, workdir=tmp_path, monkeypatch=monkeypatch)

    # reviews opts out of Delta xDS as an Istio pod would; productpage takes the default (delta).
    server_side = sidecar(peer_ns, PEER, "reviews", {
        inject.EXCLUDE_INBOUND: ",".join(str(p) for p in (server.xds_port, server.tls_port, server.http_port)),
        inject.PROXY_CONFIG: 'proxyMetadata:\n  ISTIO_DELTA_XDS: "false"\n'})
    client_side = sidecar(pod_ns, POD, "productpage", {})
    with peer_ns.entered():  # meshpilot listens in the peer's namespace
        streams = server.get("/debug/syncz")[1]
    assert {s["proxy"].split("~")[2]: s["protocol"] for s in streams} == {
        "reviews-1.default": "sotw", "productpage-1.default": "delta"}
    with peer_ns.entered():  # both have their certificates
        eventually(lambda: json.loads(server_side.admin_get("/certs"))["certificates"], timeout=20)
    mtls_in = "http.inbound_0.0.0.0_9080.downstream_rq_total"
    before = stats(peer_ns, server_side, mtls_in, "listener.0.0.0.0_15006.downstream_cx_total")

    answer = eventually(lambda: curl(pod_ns, "http://reviews:9080/"), timeout=20)
    assert answer["service"] == "reviews" and answer["client"] == "127.0.0.1"
    assert "URI=spiffe://cluster.local/ns/default/sa/productpage" in answer["headers"]["x-forwarded-client-cert"]
    with peer_ns.entered():  # over delta, productpage's routes came as virtual hosts (VHDS)
        types = {s["protocol"]: set(s["types"]) for s in server.get("/debug/syncz")[1]}
    assert "vhds" in types["delta"] and "vhds" not in types["sotw"], types
    assert stats(pod_ns, client_side, "cluster.outbound|9080||reviews.default.svc.cluster.local.ssl.handshake")[
        "cluster.outbound|9080||reviews.default.svc.cluster.local.ssl.handshake"] >= 1

    # Plaintext from the pod that skips its sidecar (the proxy's uid is not captured): STRICT refuses it.
    refused = subprocess.run([*pod_ns.exec_prefix(), "setpriv", f"--reuid={inject.PROXY_UID}",
                              f"--regid={inject.PROXY_UID}", "--clear-groups", "curl", "-sS", "--max-time", "5",
                              f"http://{PEER}:9080/"], capture_output=True, text=True, timeout=15)
    assert refused.returncode != 0, refused.stdout  # (curl: empty reply: 15006 closed it)
    after = stats(peer_ns, server_side, *before)
    assert after[mtls_in] - before[mtls_in] >= 1  # the mTLS request(s), not the plaintext one
    # 15006 accepted both the mTLS connection and the plaintext one (then closed it).
    assert after["listener.0.0.0.0_15006.downstream_cx_total"] - before["listener.0.0.0.0_15006.downstream_cx_total"] >= 2
