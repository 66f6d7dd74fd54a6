"""The injected ``istio-init`` script, run as it runs in a pod, captures what it should.

Two network namespaces made by the test: the pod (10.99.7.2) and a peer (10.99.7.3) on a
veth pair. The script the injector puts in the pod's init container runs in the pod's
namespace with ``sh -c``; then, by real connections:

* the app's outbound TCP lands on 15001 with its original destination intact;
* the proxy's own (uid 1337) and the excluded port's reach the peer directly;
* inbound TCP to the pod lands on 15006, except the excluded inbound port, which reaches the app.

(The 15001/15006 listeners here are plain sockets: Envoy's capture listeners are not built yet.)
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from harness.kube import NetNamespace, run

from xds_server.admission import inject

POD, PEER = "10.99.7.2", "10.99.7.3"
SO_ORIGINAL_DST = 80

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("iptables") or not shutil.which("setpriv"),
    reason="needs root, iptables and setpriv (network namespaces)")


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
