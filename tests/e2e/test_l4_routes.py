"""Protocol selection and VirtualService tcp/tls routes through real Envoy sidecars.

One mesh for the module, every service in ``default``:

* port 9080: ``web`` (HTTP pods, an unnamed port: detected) and ``echo-named`` (a raw
  TCP echo on a port named ``tcp-echo``); the client's listener detects HTTP and sends
  the rest to the TCP service;
* port 9100: ``side`` (HTTP, port ``http``) and ``echo-unnamed`` (raw TCP, unnamed port);
* port 9200: ``split`` (port ``tcp``, pods a and b) with a VirtualService tcp route 80/20;
* port 9443: ``tls-a`` and ``tls-b`` (port ``tls``, HTTPS backends) and a VirtualService
  with tls routes by SNI;
* port 9300: ``dual``, an unnamed port whose pod has its own sidecar: its inbound
  listener detects HTTP and raw TCP for the one app serving both.

Every assertion is on what came back through Envoy: each backend names itself.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import ConfigDir, EnvoyProcess, LoopbackAllocator, MeshpilotServer, UpstreamServer, eventually
from harness.http_mesh import track_logs
from harness.tcp_echo import TcpEcho, tcp_call, tls_call
from harness.tls_upstream import TestPki, TlsUpstream
from harness.traffic import assert_share

from xds_server.local.bootstrap import build_bootstrap, xds_tls_for

NS = "default"
TARGET = 8080


def host(name: str) -> str:
    return f"{name}.{NS}.svc.cluster.local"


def service(name: str, port: int, port_name: str = "", target: int = TARGET) -> dict[str, Any]:
    spec_port: dict[str, Any] = {"port": port, "targetPort": target}
    if port_name:
        spec_port["name"] = port_name
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": name}, "ports": [spec_port]}}


def pod(app: str, version: str, ip: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{app}-{version}", "namespace": NS, "labels": {"app": app, "version": version},
                         "annotations": annotations or {}},
            "status": {"phase": "Running", "podIP": ip}}


def subsets(name: str, *versions: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"host": name, "subsets": [{"name": v, "labels": {"version": v}} for v in versions]}}


def virtual_service(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


@dataclass
class L4Mesh:
    config: ConfigDir
    server: MeshpilotServer
    client_ip: str
    dual_ip: str  # the dual pod's IP: its sidecar's inbound listener
    echoes: dict[str, TcpEcho]
    tls: dict[str, TlsUpstream]
    processes: list[Any]

    def http(self, port: int, host_header: str, headers: dict[str, str] | None = None,
             ip: str | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(ip or self.client_ip, port, timeout=5)
        try:
            conn.request("GET", "/", headers={"Host": host_header, **(headers or {})})
            resp = conn.getresponse()
            text = resp.read().decode()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


@contextlib.contextmanager
def l4_mesh(envoy_binary: str, loopback: LoopbackAllocator, workdir: Path) -> Iterator[L4Mesh]:
    with contextlib.ExitStack() as stack:
        def started(server: Any) -> Any:
            server.start()
            stack.callback(server.stop)
            return server

        web_ip, split_a, split_b = loopback.allocate(), loopback.allocate(), loopback.allocate()
        web = started(UpstreamServer(web_ip, TARGET, service="web", version="v1", pod="web-v1"))
        echoes = {name: started(TcpEcho(loopback.allocate(), TARGET, name))
                  for name in ("echo-named", "echo-unnamed")}
        echoes["split-a"] = started(TcpEcho(split_a, TARGET, "split-a"))
        echoes["split-b"] = started(TcpEcho(split_b, TARGET, "split-b"))
        dual_ip, dual_app_ip = loopback.allocate(), loopback.allocate()
        echoes["dual"] = started(TcpEcho(dual_app_ip, 9300, "dual"))
        pki = TestPki(workdir / "pki")
        ca = pki.ca("test-ca")
        tls = {name: started(TlsUpstream(loopback.allocate(), 8443, pki.issue(ca, name, sans=[host(name)]), pod=name))
               for name in ("tls-a", "tls-b")}

        config = ConfigDir(workdir / "mesh")
        config.write("services.yaml", [
            service("web", 9080), pod("web", "v1", web.ip),
            service("side", 9100, "http"), pod("side", "v1", web.ip),
            service("echo-named", 9080, "tcp-echo"), pod("echo-named", "v1", echoes["echo-named"].ip),
            service("echo-unnamed", 9100), pod("echo-unnamed", "v1", echoes["echo-unnamed"].ip),
            service("split", 9200, "tcp"), pod("split", "a", split_a), pod("split", "b", split_b),
            subsets("split", "a", "b"),
            service("tls-a", 9443, "tls", 8443), pod("tls-a", "v1", tls["tls-a"].ip),
            service("tls-b", 9443, "tls", 8443), pod("tls-b", "v1", tls["tls-b"].ip),
            service("dual", 9300, target=9300),
            pod("dual", "v1", dual_ip, {"sidecar.meshpilot.io/app-address": dual_app_ip}),
        ])
        config.write("routing.yaml", [
            virtual_service("web", {"hosts": ["web"], "http": [
                {"match": [{"headers": {"x-route": {"exact": "canned"}}}],
                 "directResponse": {"status": 200, "body": {"string": "routed by header"}}},
                {"route": [{"destination": {"host": "web"}}]}]}),
            virtual_service("split", {"hosts": ["split"], "tcp": [
                {"match": [{"port": 9200}], "route": [
                    {"destination": {"host": "split", "subset": "a"}, "weight": 80},
                    {"destination": {"host": "split", "subset": "b"}, "weight": 20}]}]}),
            # SNI names that are no service's reach the TLS services through tls routes.
            virtual_service("tls", {"hosts": ["tls-a", "*.tls.example"], "tls": [
                {"match": [{"sniHosts": ["a.tls.example"]}], "route": [{"destination": {"host": "tls-a"}}]},
                {"match": [{"sniHosts": ["b.tls.example"], "port": 9443}],
                 "route": [{"destination": {"host": "tls-b"}}]}]}),
        ])
        server = started(MeshpilotServer(config.path, workdir=workdir / "meshpilot"))
        client_ip = loopback.allocate()
        envoys = []
        for name, ip, labels in (("client", client_ip, {"app": "client"}), ("dual", dual_ip, {"app": "dual"})):
            bootstrap = build_bootstrap(xds_address=server.xds_address, proxy_ip=ip, namespace=NS,
                                        pod=f"{name}-v1", labels=labels)
            envoy = EnvoyProcess(bootstrap, binary=envoy_binary, workdir=workdir / name, name=name)
            stack.callback(envoy.stop)
            envoy.start(wait="live", timeout=30)
            envoys.append(envoy)
        yield L4Mesh(config, server, client_ip, dual_ip, echoes, tls, [server, *envoys])


@pytest.fixture(scope="module")
def mesh(envoy_binary: str, loopback: LoopbackAllocator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[L4Mesh]:
    with l4_mesh(envoy_binary, loopback, tmp_path_factory.mktemp("l4")) as m:
        yield m


@pytest.fixture(autouse=True)
def _logs(request: pytest.FixtureRequest, mesh: L4Mesh) -> None:
    track_logs(request, mesh.processes)


def test_tcp_services_beside_http_services(mesh: L4Mesh) -> None:
    """Raw TCP on a ``tcp-echo`` port and on an unnamed port, each on a port number an
    HTTP service shares: HTTP is detected and routed by Host, the rest reaches the TCP service."""
    assert eventually(lambda: tcp_call(mesh.client_ip, 9080, "one"), timeout=20) == "echo-named: one"
    assert eventually(lambda: tcp_call(mesh.client_ip, 9100, "two"), timeout=20) == "echo-unnamed: two"
    status, body = mesh.http(9100, "side")  # (side's pod is web's server)
    assert status == 200 and body["pod"] == "web-v1" and body["host"] == "side", body
    status, body = mesh.http(9080, "web")
    assert status == 200 and body["service"] == "web", body
    # HTTP to the detected (unnamed) TCP service's name still goes to its endpoints, as HTTP.
    status, body = mesh.http(9100, "echo-unnamed")
    assert status == 200 and body["pod"] == "echo-unnamed" and body["protocol"] == "http", body
    assert "x-request-id" in body["headers"]  # through the HTTP connection manager, not tcp_proxy


def test_http_service_on_unnamed_port_keeps_its_routes(mesh: L4Mesh) -> None:
    status, body = eventually(lambda: mesh.http(9080, "web", {"x-route": "canned"}), timeout=20)
    assert (status, body) == (200, "routed by header")
    status, body = mesh.http(9080, "web", {"x-route": "other"})
    assert status == 200 and body["service"] == "web", body


def test_tcp_weighted_split_80_20(mesh: L4Mesh) -> None:
    eventually(lambda: tcp_call(mesh.client_ip, 9200).startswith("split-"), timeout=20)
    n = 400
    counts = collections.Counter(tcp_call(mesh.client_ip, 9200, f"c{i}").split(":")[0] for i in range(n))
    assert sum(counts.values()) == n and set(counts) <= {"split-a", "split-b"}, counts
    assert_share(counts["split-a"], n, 80, counts)


def test_tcp_routes_follow_virtual_service_changes(mesh: L4Mesh) -> None:
    """A VirtualService that takes over split's host (it sorts first: istiod's order for
    two in the same namespace) sends every new connection to b; removed, the split is back."""
    eventually(lambda: tcp_call(mesh.client_ip, 9200).startswith("split-"), timeout=20)
    mesh.config.write("a-split.yaml", virtual_service("a-split", {"hosts": ["split"], "tcp": [
        {"route": [{"destination": {"host": "split", "subset": "b"}}]}]}))
    try:
        eventually(lambda: all(tcp_call(mesh.client_ip, 9200, f"n{i}").startswith("split-b:") for i in range(20)),
                   timeout=20, message="every connection goes to b")
    finally:
        mesh.config.remove("a-split.yaml")
    eventually(lambda: any(tcp_call(mesh.client_ip, 9200, f"m{i}").startswith("split-a:") for i in range(20)),
               timeout=20, message="back to the 80/20 split")


def test_tls_routed_by_sni(mesh: L4Mesh) -> None:
    """Opaque TLS through the client's outbound listener: each TLS service by its own name,
    and the tls routes' SNI names to theirs; the backend saw the SNI the client sent."""
    cases = {host("tls-a"): "tls-a", host("tls-b"): "tls-b", "a.tls.example": "tls-a", "b.tls.example": "tls-b"}
    for sni, backend in cases.items():
        seen = eventually(lambda sni=sni: tls_call(mesh.client_ip, 9443, sni), timeout=20)  # type: ignore[misc]
        assert (seen["pod"], seen["sni"]) == (backend, sni), seen


def test_inbound_detects_http_and_tcp(mesh: L4Mesh) -> None:
    """The dual pod's sidecar, on an unnamed port: HTTP goes through its HTTP connection
    manager (which adds x-request-id), raw TCP straight to the app; also from the client."""
    assert eventually(lambda: tcp_call(mesh.dual_ip, 9300, "raw"), timeout=20) == "dual: raw"
    status, body = eventually(lambda: mesh.http(9300, "dual", ip=mesh.dual_ip), timeout=20)
    assert status == 200 and body["protocol"] == "http" and "x-request-id" in body["headers"], body
    assert eventually(lambda: tcp_call(mesh.client_ip, 9300, "via"), timeout=20) == "dual: via"
    status, body = mesh.http(9300, "dual")
    assert status == 200 and body["pod"] == "dual" and body["protocol"] == "http", body


# ---------------------------------------------------------------- detection inside mesh mTLS


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE"])
def test_auto_port_over_mesh_mtls(mode: str, config_dir: ConfigDir, start_meshpilot: Callable[..., MeshpilotServer],
                                  start_envoy: Callable[..., EnvoyProcess], loopback: LoopbackAllocator,
                                  tmp_path: Path) -> None:
    """Between two sidecars with mesh identities, an unnamed port carries HTTP (the server's
    HTTP chain, which tells the app the caller's SPIFFE ID) and raw TCP, both over mTLS."""
    pod_ip, app_ip = loopback.allocate(), loopback.allocate()
    app = TcpEcho(app_ip, 9300, "dual").start()
    try:
        dual_pod = pod("dual", "v1", pod_ip, {"sidecar.meshpilot.io/app-address": app_ip})
        dual_pod["metadata"]["labels"]["security.istio.io/tlsMode"] = "istio"  # it has a sidecar
        dual_pod["spec"] = {"serviceAccountName": "dual"}
        config_dir.write("mesh.yaml", [
            service("dual", 9300, target=9300), dual_pod,
            {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
             "metadata": {"name": "default", "namespace": NS}, "spec": {"mtls": {"mode": mode}}}])
        server = start_meshpilot(config_dir)
        client_ip = loopback.allocate()
        for name, ip, sa in (("dual", pod_ip, "dual"), ("client", client_ip, "client")):
            start_envoy(build_bootstrap(xds_address=server.xds_tls_address, proxy_ip=ip, namespace=NS,
                                        pod=f"{name}-v1", service_account=sa, labels={"app": name},
                                        xds_tls=xds_tls_for(server.ca_state, NS, sa)), wait="live", name=name)
        mesh = L4Mesh(config_dir, server, client_ip, pod_ip, {}, {}, [])
        status, body = eventually(lambda: mesh.http(9300, "dual"), timeout=30)
        assert status == 200 and body["protocol"] == "http", body
        assert f"URI=spiffe://cluster.local/ns/{NS}/sa/client" in body["headers"]["x-forwarded-client-cert"], body
        assert eventually(lambda: tcp_call(client_ip, 9300, "raw"), timeout=20) == "dual: raw"
        try:  # plaintext past the server's sidecar: only where PERMISSIVE allows it
            plain = tcp_call(pod_ip, 9300, "plain")
        except OSError:
            plain = ""
        # (STRICT: a TLS alert, or nothing, comes back)
        assert (plain == "dual: plain") == (mode == "PERMISSIVE"), plain
    finally:
        app.stop()
