"""Ingress Gateways through a real Envoy started from ``meshpilot bootstrap --role gateway``,
with real upstreams: HTTP by Host, HTTPS with a certificate from a Secret (over SDS, never in
a listener or a debug page), MUTUAL, httpsRedirect, a VirtualService for both the mesh and
the gateway, and server hosts whose namespace decides which VirtualService binds.

One mesh for the module: services ``web`` and ``api`` in namespace ``apps``, the Gateway
``istio-system/public`` and its Secret, one gateway Envoy (TLS xDS, so it may have secrets)
and one sidecar client.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import LoopbackAllocator
from harness.config_dir import ConfigDir
from harness.envoy import EnvoyProcess
from harness.http_mesh import track_logs
from harness.meshpilot import MeshpilotServer
from harness.tls_upstream import Pem, TestPki, TlsUpstream
from harness.traffic import eventually
from harness.upstream import UpstreamServer

from xds_server.local.bootstrap import build_bootstrap

REPO = Path(__file__).resolve().parents[2]
NS, GW_NS = "apps", "istio-system"
SERVICE_PORT, TARGET = 9080, 8080
HTTP, REDIRECT, HTTPS, MTLS, TCP, PASSTHROUGH = 8080, 8081, 8443, 8444, 9000, 9443
SECURE = "secure.example.com"
TLS_BACKENDS = ("alpha", "beta")  # TLS PASSTHROUGH by SNI <name>.example.com to service <name>


def _service(name: str, ip: str, port: tuple[str, int, int] = ("http", SERVICE_PORT, TARGET)) -> list[dict[str, Any]]:
    port_name, number, target = port
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
         "spec": {"selector": {"app": name}, "ports": [{"name": port_name, "port": number, "targetPort": target}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
         "status": {"phase": "Running", "podIP": ip}},
    ]


def _vs(name: str, namespace: str, hosts: list[str], gateways: list[str], http: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"hosts": hosts, "gateways": gateways, "http": http}}


def to(service: str) -> list[dict[str, Any]]:
    return [{"destination": {"host": f"{service}.{NS}.svc.cluster.local"}}]


def answer(body: str) -> dict[str, Any]:
    return {"status": 200, "body": {"string": body}}


def tls_secret(name: str, cert: Pem, ca: Pem | None = None) -> dict[str, Any]:
    data = {"tls.crt": cert.cert.read_bytes(), "tls.key": cert.key.read_bytes()}
    if ca is not None:
        data["ca.crt"] = ca.cert.read_bytes()
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": GW_NS},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


GATEWAY = {
    "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
    "metadata": {"name": "public", "namespace": GW_NS},
    "spec": {
        "selector": {"istio": "ingressgateway"},
        "servers": [
            {"port": {"number": HTTP, "name": "http", "protocol": "HTTP"},
             "hosts": ["*/web.example.com", "*/api.example.com", f"{NS}/*.{NS}.svc.cluster.local",
                       "other/only.example.com"]},
            {"port": {"number": REDIRECT, "name": "http-redirect", "protocol": "HTTP"},
             "hosts": [f"*/{SECURE}"], "tls": {"httpsRedirect": True}},
            {"port": {"number": HTTPS, "name": "https", "protocol": "HTTPS"},
             "hosts": [f"*/{SECURE}"],
             "tls": {"mode": "SIMPLE", "credentialName": "secure-cert", "minProtocolVersion": "TLSV1_2"}},
            {"port": {"number": MTLS, "name": "https-mtls", "protocol": "HTTPS"},
             "hosts": [f"*/{SECURE}"], "tls": {"mode": "MUTUAL", "credentialName": "secure-cert"}},
            {"port": {"number": TCP, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]},
            {"port": {"number": PASSTHROUGH, "name": "tls", "protocol": "TLS"},
             "hosts": [f"{NS}/{b}.example.com" for b in TLS_BACKENDS], "tls": {"mode": "PASSTHROUGH"}},
        ],
    },
}


@dataclass
class GatewayMesh:
    config: ConfigDir
    server: MeshpilotServer
    gateway: EnvoyProcess
    gateway_ip: str
    client_ip: str
    pki: TestPki
    ca: Pem
    server_cert: Pem
    processes: list[Any]

    def get(self, port: int, host: str, path: str = "/", headers: dict[str, str] | None = None,
            ip: str | None = None) -> tuple[int, Any, dict[str, str]]:
        conn = http.client.HTTPConnection(ip or self.gateway_ip, port, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            return resp.status, _body(resp.read()), {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    def https(self, port: int, path: str = "/", client: Pem | None = None, name: str = SECURE) -> tuple[int, Any, bytes]:
        """A request over TLS to ``name`` (SNI and Host), verifying the server against the test
        CA; (status, body, the certificate presented)."""
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        if client is not None:
            ctx.load_cert_chain(str(client.cert), str(client.key))
        with socket.create_connection((self.gateway_ip, port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as tls:
            presented = tls.getpeercert(binary_form=True) or b""
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        if not data:
            raise ConnectionResetError("the gateway closed the connection without an answer")
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), _body(body), presented


def _body(data: bytes) -> Any:
    text = data.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _gateway_bootstrap(server: MeshpilotServer, ip: str, out: Path) -> dict[str, Any]:
    """As a user makes it: ``meshpilot bootstrap --role gateway`` on serve's TLS port."""
    subprocess.run([sys.executable, "-m", "xds_server.app.cli", "bootstrap", "--role", "gateway",
                    "--xds-tls-address", server.xds_tls_address, "--ca-state", str(server.ca_state),
                    "--proxy-ip", ip, "--namespace", GW_NS, "--service-account", "istio-ingressgateway",
                    "--label", "istio=ingressgateway", "-o", str(out)], check=True, cwd=REPO, timeout=60)
    bootstrap: dict[str, Any] = json.loads(out.read_text())
    return bootstrap


@pytest.fixture(scope="module")
def mesh(envoy_binary: str, loopback: LoopbackAllocator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayMesh]:
    workdir = tmp_path_factory.mktemp("gateway")
    started: list[Any] = []
    try:
        web = UpstreamServer(loopback.allocate(), TARGET, service="web", pod="web").start()
        started.append(web)
        api = UpstreamServer(loopback.allocate(), TARGET, service="api", pod="api").start()
        started.append(api)
        pki = TestPki(workdir / "pki")
        ca = pki.ca("ingress-ca")
        server_cert = pki.issue(ca, "secure", sans=[SECURE])
        backends = {}
        for b in TLS_BACKENDS:
            backends[b] = TlsUpstream(loopback.allocate(), 8443, pki.issue(ca, b, sans=[f"{b}.example.com"]), pod=b)
            started.append(backends[b].start())
        config = ConfigDir(workdir / "mesh")
        config.write("services.yaml", [
            *_service("web", web.ip), *_service("api", api.ip),
            # web's pod again, as a TCP service: the gateway's TCP server proxies bytes to it
            {**_service("web-tcp", web.ip, ("tcp", TCP, TARGET))[0],
             "spec": {"selector": {"app": "web"}, "ports": [{"name": "tcp", "port": TCP, "targetPort": TARGET}]}},
            *(d for b, up in backends.items() for d in _service(b, up.ip, ("tls", 443, 8443)))])
        config.write("gateway.yaml", [GATEWAY, tls_secret("secure-cert", server_cert, ca)])
        config.write("routes.yaml", [
            _vs("by-host-web", NS, ["web.example.com"], [f"{GW_NS}/public"], [{"route": to("web")}]),
            _vs("by-host-api", "default", ["api.example.com"], [f"{GW_NS}/public"], [{"route": to("api")}]),
            _vs("secure", NS, [SECURE], [f"{GW_NS}/public"], [{"route": to("web")}]),
            # For both: the sidecars of the mesh and the gateway.
            _vs("both", NS, [f"web.{NS}.svc.cluster.local"], ["mesh", f"{GW_NS}/public"], [
                {"match": [{"headers": {"x-both": {"exact": "1"}}}], "directResponse": answer("both")},
                {"match": [{"headers": {"x-gw": {"exact": "1"}}, "gateways": [f"{GW_NS}/public"]}],
                 "directResponse": answer("gateway only")},
                {"route": to("web")}]),
            # The server host other/only.example.com admits only namespace other's VirtualService.
            _vs("only", NS, ["only.example.com"], [f"{GW_NS}/public"], [{"directResponse": answer(f"from {NS}")}]),
            _vs("only", "other", ["only.example.com"], [f"{GW_NS}/public"], [{"directResponse": answer("from other")}]),
            {**_vs("tcp", NS, ["*"], [f"{GW_NS}/public"], []),
             "spec": {"hosts": ["*"], "gateways": [f"{GW_NS}/public"],
                      "tcp": [{"match": [{"port": TCP}], "route": [{"destination": {"host": "web-tcp"}}]}]}},
            {**_vs("sni", NS, [], [], []),
             "spec": {"hosts": [f"{b}.example.com" for b in TLS_BACKENDS], "gateways": [f"{GW_NS}/public"],
                      "tls": [{"match": [{"sniHosts": [f"{b}.example.com"]}], "route": [{"destination": {"host": b}}]}
                              for b in TLS_BACKENDS]}},
        ])
        server = MeshpilotServer(config.path, workdir=workdir / "meshpilot")
        started.append(server)
        server.start()
        gateway_ip = loopback.allocate()
        # Access-log lines reach its output within 0.2 s (Envoy's default flushes every 10 s).
        gateway = EnvoyProcess(_gateway_bootstrap(server, gateway_ip, workdir / "gateway.json"), binary=envoy_binary,
                               workdir=workdir / "envoy", name="gateway",
                               extra_args=("--file-flush-interval-msec", "200"))
        started.append(gateway)
        gateway.start(wait="live", timeout=30)
        client_ip = loopback.allocate()
        client = EnvoyProcess(build_bootstrap(xds_address=server.xds_address, proxy_ip=client_ip, namespace=NS,
                                              pod="client", labels={"app": "client"}),
                              binary=envoy_binary, workdir=workdir / "envoy", name="client")
        started.append(client)
        client.start(wait="live", timeout=30)
        m = GatewayMesh(config, server, gateway, gateway_ip, client_ip, pki, ca, server_cert, [server, gateway, client])
        eventually(lambda: m.get(HTTP, "web.example.com")[0] == 200, timeout=30, message="the gateway routes")
        yield m
    finally:
        for p in reversed(started):
            p.stop()


@pytest.fixture(autouse=True)
def _logs(request: pytest.FixtureRequest, mesh: GatewayMesh) -> None:
    track_logs(request, mesh.processes)


def test_ingress_http_to_two_services_by_host(mesh: GatewayMesh) -> None:
    status, body, _ = mesh.get(HTTP, "web.example.com", "/hello")
    assert (status, body["service"], body["path"]) == (200, "web", "/hello")
    status, body, _ = mesh.get(HTTP, "api.example.com")
    assert (status, body["service"]) == (200, "api")
    status, _, _ = mesh.get(HTTP, "nobody.example.com")
    assert status == 404  # no server host and no VirtualService for it


def test_virtual_service_for_mesh_and_gateway_applies_at_both(mesh: GatewayMesh) -> None:
    host = f"web.{NS}.svc.cluster.local"
    at_gateway = mesh.get(HTTP, host, headers={"x-both": "1"})
    at_sidecar = mesh.get(SERVICE_PORT, host, headers={"x-both": "1"}, ip=mesh.client_ip)
    assert at_gateway[:2] == at_sidecar[:2] == (200, "both")
    # A match naming only the gateway: the gateway takes it, the sidecar goes on to the service.
    assert mesh.get(HTTP, host, headers={"x-gw": "1"})[:2] == (200, "gateway only")
    status, body, _ = mesh.get(SERVICE_PORT, host, headers={"x-gw": "1"}, ip=mesh.client_ip)
    assert (status, body["service"]) == (200, "web")


def test_namespace_prefixed_server_host_picks_the_virtual_service(mesh: GatewayMesh) -> None:
    assert mesh.get(HTTP, "only.example.com")[:2] == (200, "from other")


def test_https_redirect(mesh: GatewayMesh) -> None:
    status, _, headers = mesh.get(REDIRECT, SECURE, "/login?next=1")
    assert status == 301
    assert headers["location"].startswith(f"https://{SECURE}") and headers["location"].endswith("/login?next=1")


def test_https_with_a_certificate_from_a_secret(mesh: GatewayMesh) -> None:
    status, body, presented = eventually(lambda: mesh.https(HTTPS, "/tls"), timeout=20)
    assert (status, body["service"], body["path"]) == (200, "web", "/tls")
    assert presented == _der(mesh.server_cert)
    # The key went to Envoy over SDS only: not in a listener, a debug page or the log.
    key_pem = mesh.server_cert.key.read_bytes()
    needles = [base64.b64encode(key_pem).decode(), _pem_body(key_pem)]
    node = mesh.gateway.node_id
    _, config = mesh.server.get(f"/debug/config?proxy={node}")
    dumped = json.dumps(config)
    assert "kubernetes://secure-cert" in dumped  # the listener names the secret...
    pages = [dumped, mesh.server.log_path.read_text()]
    pages += [json.dumps(mesh.server.get(f"/debug/{p}")[1]) for p in ("world", "syncz", "errors", "pushes", "ca")]
    for page in pages:
        for needle in needles:
            assert needle not in page  # ...and nothing shows its key
    listeners = json.dumps(config["types"]["lds"])
    assert "inline" not in listeners


def test_mutual_tls_refuses_a_client_without_a_certificate(mesh: GatewayMesh) -> None:
    client = mesh.pki.issue(mesh.ca, "ingress-client", client=True)
    status, body, _ = eventually(lambda: mesh.https(MTLS, "/m", client=client), timeout=20)
    assert (status, body["service"]) == (200, "web")
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        mesh.https(MTLS, "/m")


def test_tls_passthrough_by_sni_to_two_backends(mesh: GatewayMesh) -> None:
    """The gateway does not terminate: each backend presents its own certificate and sees
    the client's SNI."""
    for b in TLS_BACKENDS:
        status, body, presented = eventually(lambda b=b: mesh.https(PASSTHROUGH, "/p", name=f"{b}.example.com"),
                                             timeout=20)
        assert (status, body["pod"], body["sni"], body["path"]) == (200, b, f"{b}.example.com", "/p")
        assert presented == _der_of(mesh.pki.directory / f"{b}.pem")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        mesh.https(PASSTHROUGH, name="gamma.example.com")  # no route for that SNI


def test_tcp_server_proxies_bytes(mesh: GatewayMesh) -> None:
    """tcp_proxy, not HTTP routing: a Host no HTTP route knows still reaches web's pod."""
    def raw() -> bytes:
        with socket.create_connection((mesh.gateway_ip, TCP), timeout=5) as conn:
            conn.sendall(b"GET /raw HTTP/1.1\r\nHost: nowhere.invalid\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            return data

    data = eventually(raw, timeout=20)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0] + b" "
    assert (json.loads(body)["service"], json.loads(body)["path"]) == ("web", "/raw")


def test_a_changed_secret_is_pushed(mesh: GatewayMesh) -> None:
    renewed = mesh.pki.issue(mesh.ca, "secure-renewed", sans=[SECURE])
    mesh.config.write("gateway.yaml", [GATEWAY, tls_secret("secure-cert", renewed, mesh.ca)])
    eventually(lambda: mesh.https(HTTPS)[2] == _der(renewed), timeout=20,
               message="the gateway presents the renewed certificate")


def _der(pem: Pem) -> bytes:
    return _der_of(pem.cert)


def _der_of(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def _pem_body(pem: bytes) -> str:
    """The base64 lines of a PEM block, as one string (what would leak if a key were printed)."""
    lines = pem.decode().strip().splitlines()
    return "".join(lines[1:-1])[:48]


def test_the_mesh_configs_access_log_reaches_the_gateway(mesh: GatewayMesh) -> None:
    """meshConfig.accessLogFile (the most common way to turn access logs on) logs at the
    gateway too, as the client side of the mesh (istiod's class for gateway listeners)."""
    def logged(path: str) -> list[str]:
        return [line for line in mesh.gateway.log_path.read_text(errors="replace").splitlines()
                if f'"GET {path} HTTP/1.1"' in line]

    mesh.config.write("mesh-config.yaml", {
        "apiVersion": "meshpilot.io/v1alpha1", "kind": "MeshConfig", "metadata": {"name": "mesh", "namespace": GW_NS},
        "spec": {"accessLogFile": "/dev/stdout"}})
    try:
        eventually(lambda: "envoy.access_loggers.file" in json.dumps(mesh.gateway.listeners()), timeout=20,
                   message="the gateway's listeners log")
        for _ in range(3):
            assert mesh.get(HTTP, "web.example.com", "/gw-logged")[0] == 200
        lines = eventually(lambda: (found := logged("/gw-logged")) and len(found) == 3 and found, timeout=10,
                           message="three lines for three requests")
        assert all(" 200 " in line and '"web.example.com"' in line for line in lines), lines
    finally:
        mesh.config.remove("mesh-config.yaml")
    eventually(lambda: "access_log" not in json.dumps(mesh.gateway.listeners()), timeout=20,
               message="and stop logging without it")
    assert mesh.get(HTTP, "web.example.com", "/gw-quiet")[0] == 200
    assert mesh.get(HTTP, "web.example.com", "/gw-marker")[0] == 200
    time.sleep(1)  # five flush intervals: a line would be in the file by now
    assert logged("/gw-quiet") == [] and logged("/gw-marker") == []
