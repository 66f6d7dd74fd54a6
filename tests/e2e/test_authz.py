"""AuthorizationPolicy and RequestAuthentication through real Envoy: a ``web`` workload
with a sidecar (two HTTP ports and a TCP port), its apps behind it, a real ext_authz
server and a JWKS server written here, tokens signed here; requests go straight to the
sidecar's inbound listeners from chosen loopback source addresses.

Each test writes its policies and waits until Envoy runs them (every generation carries
an AUDIT policy named after it, which never blocks), then counts answers: 200 against
403 (401 for bad tokens), and the requests the apps and the ext_authz server saw.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from harness.config_dir import ConfigDir
from harness.envoy import EnvoyProcess
from harness.http_mesh import track_logs
from harness.meshpilot import MeshpilotServer
from harness.net import LoopbackAllocator
from harness.traffic import eventually
from harness.upstream import UpstreamServer

from xds_server.local.bootstrap import build_bootstrap, xds_tls_for

NS = "default"
HTTP, ADMIN, TCP = 8080, 8081, 9000  # the pod's ports: two HTTP, one TCP
EXT_PORT = 8000
ISSUER = "https://issuer.test"
SECURITY = "security.istio.io/v1"
MARKER = "/__marker__"


# ---------------------------------------------------------------- servers written for the test


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] = {}) -> None:  # noqa: B006
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server:
    def __init__(self, ip: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer((ip, port), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> _Server:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[0], self.httpd.server_address[1]  # type: ignore[return-value]


class ExtAuthzServer(_Server):
    """An HTTP ext_authz service: allows a request that carries ``x-ext-authz: allow``."""

    def __init__(self, ip: str, port: int) -> None:
        self.checks: list[dict[str, Any]] = []

        class Handler(_Quiet):
            def _check(self) -> None:
                owner: ExtAuthzServer = self.server.owner  # type: ignore[attr-defined]
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                owner.checks.append({"method": self.command, "path": self.path,
                                     "headers": {k.lower(): v for k, v in self.headers.items()}})
                if self.headers.get("x-ext-authz") == "allow":
                    self._send(200, b"", {"x-ext-authz-check-result": "allowed"})
                else:
                    self._send(403, b"denied by ext_authz", {"x-ext-authz-check-result": "denied"})

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _check  # noqa: N815

        super().__init__(ip, port, Handler)


class JwksServer(_Server):
    """Serves the test's public keys at ``/jwks.json``, counting fetches."""

    def __init__(self, ip: str, keys: list[rsa.RSAPrivateKey]) -> None:
        self.fetches = 0
        jwks = {"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key())), "kid": f"key-{i}",
                          "alg": "RS256", "use": "sig"} for i, k in enumerate(keys)]}
        body = json.dumps(jwks).encode()

        class Handler(_Quiet):
            def do_GET(self) -> None:  # noqa: N802
                self.server.owner.fetches += 1  # type: ignore[attr-defined]
                if self.path == "/jwks.json":
                    self._send(200, body, {"content-type": "application/json"})
                else:
                    self._send(404, b"")

        super().__init__(ip, 0, Handler)

    @property
    def uri(self) -> str:
        ip, port = self.address
        return f"http://{ip}:{port}/jwks.json"


# ---------------------------------------------------------------- the mesh


@dataclass
class Answer:
    status: int  # 0: the connection was closed without an answer
    body: Any
    headers: dict[str, str]


@dataclass
class AuthzMesh:
    config: ConfigDir
    server: MeshpilotServer
    envoy: EnvoyProcess
    pod_ip: str
    sources: list[str]  # loopback addresses requests can come from
    apps: dict[int, UpstreamServer]
    ext: ExtAuthzServer
    jwks: JwksServer
    key: rsa.RSAPrivateKey  # its public half is in the JWKS
    stranger: rsa.RSAPrivateKey  # not in the JWKS
    generation: int = 0
    processes: list[Any] = field(default_factory=list)

    def apply(self, *docs: dict[str, Any], mesh_config: dict[str, Any] | None = None, timeout: float = 30.0,
              also: tuple[EnvoyProcess, str] | None = None) -> None:
        """Make ``docs`` the only policies; return once the three inbound listeners (and the
        listener ``also`` names, of another sidecar) run them."""
        self.generation += 1
        marker = f"marker-{self.generation}"
        self.config.write("mesh-config.yaml", [mesh_config] if mesh_config else [])
        self.config.write("policies.yaml", [*docs, {
            "apiVersion": SECURITY, "kind": "AuthorizationPolicy", "metadata": {"name": marker, "namespace": NS},
            "spec": {"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": [MARKER]}}]}]}}])

        def running() -> bool:
            found = self.envoy.listeners()
            names = [f"inbound|{self.pod_ip}_{p}" for p in (HTTP, ADMIN, TCP)]
            if also is not None:
                other = also[0].listeners()
                if also[1] not in other or f"policy[{marker}]" not in json.dumps(other[also[1]]):
                    return False
            return all(n in found and f"policy[{marker}]" in json.dumps(found[n]) for n in names)

        eventually(running, timeout=timeout, interval=0.1, message=f"Envoy runs the policies of generation {self.generation}")
        for app in self.apps.values():
            app.reset()
        self.ext.checks.clear()

    def get(self, path: str = "/", *, port: int = HTTP, method: str = "GET", headers: Mapping[str, str] | None = None,
            source: int = 0, host: str = "web") -> Answer:
        """One request to the sidecar's inbound listener on ``port``, from ``sources[source]``."""
        conn = http.client.HTTPConnection(self.pod_ip, port, timeout=10, source_address=(self.sources[source], 0))
        try:
            conn.request(method, path, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            data = resp.read().decode("utf-8", "replace")
            out_headers = {k.lower(): v for k, v in resp.getheaders()}
        except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
            return Answer(0, None, {})
        finally:
            conn.close()
        try:
            body: Any = json.loads(data)
        except ValueError:
            body = data
        return Answer(resp.status, body, out_headers)

    def statuses(self, path: str = "/", n: int = 3, **kwargs: Any) -> Counter[int]:
        return Counter(self.get(path, **kwargs).status for _ in range(n))

    def token(self, sub: str = "alice", *, key: rsa.RSAPrivateKey | None = None, expires_in: int = 600,
              **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "sub": sub, "aud": "web", "iat": now, "exp": now + expires_in, **claims}
        return jwt.encode(payload, key or self.key, algorithm="RS256", headers={"kid": "key-0"})

    def stat(self, name: str) -> int:
        return self.envoy.stat(name)


def _web(app_ip: str, pod_ip: str, ext_ip: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
         "spec": {"selector": {"app": "web"}, "ports": [
             {"name": "http", "port": 9080, "targetPort": HTTP},
             {"name": "http-admin", "port": 9081, "targetPort": ADMIN},
             {"name": "tcp", "port": 9090, "targetPort": TCP}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "web-1", "namespace": NS, "labels": {"app": "web"},
                      "annotations": {"sidecar.meshpilot.io/app-address": app_ip}},
         "status": {"phase": "Running", "podIP": pod_ip}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext-authz", "namespace": NS},
         "spec": {"selector": {"app": "ext-authz"}, "ports": [{"name": "http", "port": EXT_PORT}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "ext-authz-1", "namespace": NS, "labels": {"app": "ext-authz"}},
         "status": {"phase": "Running", "podIP": ext_ip}},
    ]


@pytest.fixture(scope="module")
def mesh(envoy_binary: str, loopback: LoopbackAllocator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthzMesh]:
    workdir = tmp_path_factory.mktemp("authz")
    with contextlib.ExitStack() as stack:
        pod_ip, app_ip, ext_ip, jwks_ip = (loopback.allocate() for _ in range(4))
        apps = {}
        for port in (HTTP, ADMIN, TCP):
            apps[port] = UpstreamServer(app_ip, port, service="web", version="v1", pod="web-1").start()
            stack.callback(apps[port].stop)
        ext = ExtAuthzServer(ext_ip, EXT_PORT).start()
        stack.callback(ext.stop)
        key, stranger = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
        jwks = JwksServer(jwks_ip, [key]).start()
        stack.callback(jwks.stop)
        config = ConfigDir(workdir / "mesh")
        config.write("web.yaml", _web(app_ip, pod_ip, ext_ip))
        server = MeshpilotServer(config.path, workdir=workdir / "meshpilot")
        stack.callback(server.stop)
        server.start()
        bootstrap = build_bootstrap(xds_address=server.xds_address, proxy_ip=pod_ip, namespace=NS, pod="web-1",
                                    labels={"app": "web"})
        envoy = EnvoyProcess(bootstrap, binary=envoy_binary, workdir=workdir / "envoy", name="web")
        stack.callback(envoy.stop)
        envoy.start(wait="live", timeout=30)
        yield AuthzMesh(config, server, envoy, pod_ip, [loopback.allocate() for _ in range(3)], apps, ext, jwks, key,
                        stranger, processes=[server, envoy])


@pytest.fixture
def m(mesh: AuthzMesh, request: pytest.FixtureRequest) -> AuthzMesh:
    track_logs(request, mesh.processes)
    return mesh


def policy(name: str, spec: dict[str, Any], namespace: str = NS, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": SECURITY, "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace, **meta}, "spec": spec}


def request_authentication(name: str, *rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": SECURITY, "kind": "RequestAuthentication", "metadata": {"name": name, "namespace": NS},
            "spec": {"jwtRules": list(rules), **spec}}


# ---------------------------------------------------------------- ALLOW, DENY, AUDIT

CELLS = [(port, method, path) for port in (HTTP, ADMIN) for method in ("GET", "POST")
         for path in ("/public/a", "/public", "/exact", "/exact/more", "/page.html", "/private")]
RULE = {"to": [{"operation": {"methods": ["GET"], "paths": ["/public/*", "/exact", "*.html"], "ports": [str(HTTP)]}}]}
SELECTED = {(HTTP, "GET", p) for p in ("/public/a", "/exact", "/page.html")}


def _matrix(m: AuthzMesh) -> dict[tuple[int, str, str], int]:
    return {cell: m.get(cell[2], port=cell[0], method=cell[1]).status for cell in CELLS}


def test_allow_and_deny_matrices_over_paths_methods_and_ports(m: AuthzMesh) -> None:
    m.apply()
    assert set(_matrix(m).values()) == {200}  # no ALLOW policy: everything is allowed
    assert m.apps[HTTP].requests + m.apps[ADMIN].requests == len(CELLS)

    m.apply(policy("allow-some", {"rules": [RULE]}))
    got = _matrix(m)
    assert {c for c, s in got.items() if s == 200} == SELECTED
    assert {c for c, s in got.items() if s == 403} == set(CELLS) - SELECTED
    assert m.get("/private").body == "RBAC: access denied"
    assert m.apps[HTTP].requests == len(SELECTED) and m.apps[ADMIN].requests == 0  # denied ones never reach the app

    m.apply(policy("deny-some", {"action": "DENY", "rules": [RULE]}))
    got = _matrix(m)
    assert {c for c, s in got.items() if s == 403} == SELECTED  # the same rule, the other way round
    assert {c for c, s in got.items() if s == 200} == set(CELLS) - SELECTED
    assert m.apps[HTTP].requests + m.apps[ADMIN].requests == len(CELLS) - len(SELECTED)


def test_path_templates_exact_and_prefix_and_normalized_paths(m: AuthzMesh) -> None:
    m.apply(policy("allow-templates", {"rules": [{"to": [{"operation": {
        "paths": ["/api/{*}/items/{**}", "/files/*"], "notPaths": ["/files/secret*"]}}]}]}))
    assert m.get("/api/v1/items/a/b").status == 200
    assert m.get("/api/v1/v2/items/a").status == 403  # {*} is one segment
    assert m.get("/files/report").status == 200
    assert m.get("/files/secret.txt").status == 403
    # The path is normalized before it is matched: no escaping a prefix with '..'.
    assert m.get("/files/../private").status == 403
    assert m.get("/public/../files/x").status == 200
    assert m.apps[HTTP].seen[-1]["path"] == "/files/x"


def test_an_empty_allow_policy_denies_everything_http_and_tcp(m: AuthzMesh) -> None:
    m.apply()
    assert m.get(port=TCP).status == 200  # HTTP through the TCP port's tcp_proxy
    m.apply(policy("allow-nothing", {}))
    assert m.statuses(port=HTTP) == Counter({403: 3})
    assert m.statuses(port=ADMIN) == Counter({403: 3})
    assert m.statuses(port=TCP) == Counter({0: 3})  # the connection is closed
    assert m.apps[TCP].requests == 0

    # An ALLOW rule naming only HTTP fields cannot match a TCP connection: still denied there.
    m.apply(policy("allow-get", {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}))
    assert m.get().status == 200 and m.get(method="POST").status == 403
    assert m.statuses(port=TCP) == Counter({0: 3})
    m.apply(policy("allow-tcp-port", {"rules": [{"to": [{"operation": {"ports": [str(TCP)]}}]}]}))
    assert m.statuses(port=TCP) == Counter({200: 3})
    assert m.statuses(port=HTTP) == Counter({403: 3})


def test_deny_beats_allow_and_audit_never_blocks(m: AuthzMesh) -> None:
    m.apply(
        policy("allow-api", {"rules": [{"to": [{"operation": {"paths": ["/api/*", "/audited/*"]}}]}]}),
        policy("deny-admin", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/api/admin/*"]}}]}]}),
        policy("audit", {"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/audited/*", "/api/admin/*"]}}]}]}),
        policy("dry-run-deny", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/api/dry/*"]}}]}]},
               annotations={"istio.io/dry-run": "true"}),
    )
    shadow = "http.inbound_0.0.0.0_8080.rbac.istio_dry_run_deny_.shadow_denied"
    before = m.stat(shadow)
    assert m.statuses("/api/items") == Counter({200: 3})
    assert m.statuses("/api/admin/users") == Counter({403: 3})
    assert m.statuses("/audited/x") == Counter({200: 3})  # AUDIT marks requests for the access log, never blocks
    assert m.statuses("/api/dry/x") == Counter({200: 3})  # a dry-run DENY is only counted
    assert m.statuses("/other") == Counter({403: 3})
    assert m.apps[HTTP].requests == 9
    assert m.stat(shadow) - before == 3
    filters = m.envoy.listeners()[f"inbound|{m.pod_ip}_{HTTP}"]["filter_chains"][0]["filters"][0]["typed_config"]
    audit = filters["http_filters"][0]["typed_config"]["rules"]
    assert audit["action"] == "LOG" and "ns[default]-policy[audit]-rule[0]" in audit["policies"]


def test_sources_hosts_and_when_conditions(m: AuthzMesh) -> None:
    m.apply(policy("from-first", {"rules": [{"from": [{"source": {"ipBlocks": [m.sources[0], m.sources[1]],
                                                                   "notIpBlocks": [m.sources[1]]}}]}]}))
    assert [m.get(source=i).status for i in range(3)] == [200, 403, 403]
    assert m.get(port=TCP, source=0).status == 200 and m.get(port=TCP, source=2).status == 0

    m.apply(policy("remote", {"rules": [{"from": [{"source": {"remoteIpBlocks": ["203.0.113.0/24"],
                                                               "notRemoteIpBlocks": ["203.0.113.9"]}}]}]}))
    assert m.get(headers={"x-forwarded-for": "203.0.113.7"}).status == 200
    assert m.get(headers={"x-forwarded-for": "203.0.113.9"}).status == 403
    assert m.get().status == 403

    m.apply(policy("hosts-and-headers", {"rules": [{
        "to": [{"operation": {"hosts": ["web.example.com", "*.shop.example.com"], "notHosts": ["admin.shop.example.com"]}}],
        "when": [{"key": "request.headers[x-user]", "values": ["alice", "bob*"], "notValues": ["*-test"]},
                 {"key": "destination.port", "values": [str(HTTP)]},
                 {"key": "source.ip", "notValues": [m.sources[2]]}]}]}))
    ok = {"x-user": "alice"}
    assert m.get(host="web.example.com", headers=ok).status == 200
    assert m.get(host="WEB.Example.com", headers=ok).status == 200  # hosts ignore case
    assert m.get(host="a.shop.example.com", headers={"x-user": "bobby"}).status == 200
    assert m.get(host="admin.shop.example.com", headers=ok).status == 403
    assert m.get(host="other.example.com", headers=ok).status == 403
    assert m.get(host="web.example.com", headers={"x-user": "bob-test"}).status == 403
    assert m.get(host="web.example.com").status == 403
    assert m.get(host="web.example.com", headers=ok, port=ADMIN).status == 403  # destination.port
    assert m.get(host="web.example.com", headers=ok, source=2).status == 403  # source.ip notValues


def test_selector_target_ref_namespace_and_root_namespace(m: AuthzMesh) -> None:
    deny_all = {"action": "DENY", "rules": [{}]}
    m.apply(policy("other-app", {**deny_all, "selector": {"matchLabels": {"app": "other"}}}),
            policy("other-namespace", deny_all, namespace="prod"),
            policy("other-service", {**deny_all, "targetRef": {"kind": "Service", "name": "ext-authz"}}))
    assert m.statuses() == Counter({200: 3})
    m.apply(policy("by-selector", {**deny_all, "selector": {"matchLabels": {"app": "web"}}}))
    assert m.statuses() == Counter({403: 3})
    m.apply(policy("by-service", {**deny_all, "targetRefs": [{"kind": "Service", "name": "web"}]}))
    assert m.statuses() == Counter({403: 3})
    m.apply(policy("mesh-wide", deny_all, namespace="istio-system"))
    assert m.statuses() == Counter({403: 3})


# ---------------------------------------------------------------- CUSTOM: ext_authz


MESH_CONFIG = {
    "apiVersion": "meshpilot.io/v1alpha1", "kind": "MeshConfig", "metadata": {"name": "mesh", "namespace": "istio-system"},
    "spec": {"extensionProviders": [{"name": "ext", "envoyExtAuthzHttp": {
        "service": f"ext-authz.{NS}.svc.cluster.local", "port": EXT_PORT, "pathPrefix": "/check",
        "includeRequestHeadersInCheck": ["x-ext-authz"],
        "headersToUpstreamOnAllow": ["x-ext-authz-check-result"],
        "headersToDownstreamOnDeny": ["x-ext-authz-check-result"]}}]},
}


def test_custom_action_asks_the_ext_authz_server(m: AuthzMesh) -> None:
    m.apply(policy("ext", {"action": "CUSTOM", "provider": {"name": "ext"},
                           "rules": [{"to": [{"operation": {"paths": ["/ext/*"]}}]}]}),
            policy("deny-blocked", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/ext/blocked"]}}]}]}),
            mesh_config=MESH_CONFIG)
    allow = {"x-ext-authz": "allow"}
    assert m.statuses("/ext/a", headers=allow) == Counter({200: 3})
    seen = m.apps[HTTP].seen[-1]["headers"]
    assert seen["x-ext-authz-check-result"] == "allowed"  # the server's header, passed upstream
    denied = m.get("/ext/a")
    assert (denied.status, denied.body, denied.headers.get("x-ext-authz-check-result")) == (403, "denied by ext_authz", "denied")
    assert m.apps[HTTP].requests == 3
    assert [c["path"] for c in m.ext.checks] == ["/check/ext/a"] * 4
    assert m.ext.checks[0]["headers"]["x-ext-authz"] == "allow"

    # Paths the CUSTOM rules do not select are not sent to the server.
    m.ext.checks.clear()
    assert m.statuses("/other") == Counter({200: 3})
    assert m.ext.checks == []
    # CUSTOM first, then DENY: the server allows, the DENY policy still denies.
    blocked = m.get("/ext/blocked", headers=allow)
    assert (blocked.status, blocked.body) == (403, "RBAC: access denied")
    assert len(m.ext.checks) == 1

    # A provider the mesh config does not define: what its rules select is denied.
    m.apply(policy("ext", {"action": "CUSTOM", "provider": {"name": "missing"},
                           "rules": [{"to": [{"operation": {"paths": ["/ext/*"]}}]}]}), mesh_config=MESH_CONFIG)
    assert m.get("/ext/a", headers=allow).status == 403 and m.get("/other").status == 200
    assert m.ext.checks == []
    errors = m.server.get("/debug/errors")[1]
    assert any(e["resource"] == "AuthorizationPolicy default/ext" and "not defined" in e["message"] for e in errors)


# ---------------------------------------------------------------- RequestAuthentication


def _payload(header: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))))


def test_jwt_valid_invalid_expired_missing(m: AuthzMesh) -> None:
    m.apply(request_authentication("jwt", {"issuer": ISSUER, "jwksUri": m.jwks.uri, "audiences": ["web"],
                                           "outputPayloadToHeader": "x-jwt-payload"}))

    def bearer(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    valid = m.get(headers=bearer(m.token(groups=["admins"])))
    assert valid.status == 200
    seen = m.apps[HTTP].seen[-1]["headers"]
    assert _payload(seen["x-jwt-payload"])["sub"] == "alice"  # the payload, as the app sees it
    assert _payload(seen["x-jwt-payload"])["groups"] == ["admins"]
    assert "authorization" not in seen  # forwardOriginalToken is false
    assert m.jwks.fetches >= 1  # Envoy fetched the keys itself

    invalid = m.get(headers=bearer(m.token(key=m.stranger)))
    assert (invalid.status, invalid.body) == (401, "Jwt verification fails")
    expired = m.get(headers=bearer(m.token(expires_in=-120)))
    assert (expired.status, expired.body) == (401, "Jwt is expired")
    wrong_audience = m.get(headers=bearer(m.token(aud="other")))
    assert (wrong_audience.status, wrong_audience.body) == (403, "Audiences in Jwt are not allowed")  # Envoy's answer
    assert m.get(headers=bearer("not.a.jwt")).status == 401
    assert m.get().status == 200  # no token: authentication passes
    assert m.apps[HTTP].requests == 2

    # With an AuthorizationPolicy that wants a request principal, a missing token is 403.
    m.apply(
        request_authentication("jwt", {"issuer": ISSUER, "jwksUri": m.jwks.uri}),
        policy("require-alice", {"rules": [
            {"from": [{"source": {"requestPrincipals": [f"{ISSUER}/alice"]}}]},
            {"from": [{"source": {"requestPrincipals": ["*"], "notRequestPrincipals": [f"{ISSUER}/mallory"]}}],
             "when": [{"key": "request.auth.claims[groups]", "values": ["admins"]}]},
        ]}),
    )
    assert m.get(headers=bearer(m.token("alice"))).status == 200
    assert m.get(headers=bearer(m.token("bob"))).status == 403
    assert m.get(headers=bearer(m.token("bob", groups=["users", "admins"]))).status == 200
    assert m.get(headers=bearer(m.token("mallory", groups=["admins"]))).status == 403
    assert m.get().status == 403  # missing
    assert m.get(headers=bearer(m.token("alice", key=m.stranger))).status == 401  # invalid stays 401
    assert m.get(headers=bearer(m.token("alice", expires_in=-120))).status == 401


def test_jwt_token_locations_and_forwarding(m: AuthzMesh) -> None:
    m.apply(
        request_authentication("jwt", {"issuer": ISSUER, "jwksUri": m.jwks.uri, "forwardOriginalToken": True,
                                       "fromHeaders": [{"name": "x-token", "prefix": "Token "}],
                                       "fromParams": ["access"],
                                       "outputClaimToHeaders": [{"header": "x-jwt-sub", "claim": "sub"}]},
                               selector={"matchLabels": {"app": "web"}}),
        policy("require-jwt", {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}),
    )
    token = m.token("carol")
    assert m.get(headers={"x-token": f"Token {token}"}).status == 200
    seen = m.apps[HTTP].seen[-1]["headers"]
    assert seen["x-token"] == f"Token {token}"  # forwarded as it came
    assert seen["x-jwt-sub"] == "carol"
    assert m.get(f"/?access={token}").status == 200
    assert m.get(headers={"authorization": f"Bearer {token}"}).status == 403  # not a location of this rule
    assert m.get(headers={"x-token": f"Token {m.token(key=m.stranger)}"}).status == 401


# ---------------------------------------------------------------- peer identities (mutual TLS)


def test_principals_and_namespaces_need_the_peers_certificate(
        m: AuthzMesh, loopback: LoopbackAllocator, start_envoy: Callable[..., EnvoyProcess],
        start_upstream: Callable[..., UpstreamServer]) -> None:
    """A ``secure`` workload and a ``client``, both with certificates over SDS: the client's
    requests go over auto mTLS and carry its SPIFFE ID; the test's own plaintext requests
    (PERMISSIVE accepts them) carry none."""
    m.apply()  # no policies left from earlier tests
    pod_ip, app_ip, client_ip = loopback.allocate(), loopback.allocate(), loopback.allocate()
    start_upstream(app_ip, 8082, service="secure", pod="secure-1")
    m.config.write("secure.yaml", [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "secure", "namespace": NS},
         "spec": {"selector": {"app": "secure"}, "ports": [{"name": "http", "port": 9082, "targetPort": 8082}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "secure-1", "namespace": NS, "labels": {"app": "secure", "security.istio.io/tlsMode": "istio"},
                      "annotations": {"sidecar.meshpilot.io/app-address": app_ip}},
         "spec": {"serviceAccountName": "secure"}, "status": {"phase": "Running", "podIP": pod_ip}},
        # A new upstream connection per request: a listener update applies to new connections
        # only, and the client's pooled ones would keep the previous policies until drained.
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "secure", "namespace": NS},
         "spec": {"host": "secure", "trafficPolicy": {"connectionPool": {"http": {"maxRequestsPerConnection": 1}}}}},
    ])
    try:
        envoys = {}
        for ip, sa in ((pod_ip, "secure"), (client_ip, "client")):
            bootstrap = build_bootstrap(xds_address=m.server.xds_tls_address, proxy_ip=ip, namespace=NS, pod=f"{sa}-1",
                                        service_account=sa, labels={"app": sa},
                                        xds_tls=xds_tls_for(m.server.ca_state, NS, sa))
            envoys[sa] = start_envoy(bootstrap, wait="live", name=sa)

        def through_mesh() -> Answer:
            conn = http.client.HTTPConnection(client_ip, 9082, timeout=10)
            try:
                conn.request("GET", "/", headers={"Host": "secure"})
                resp = conn.getresponse()
                data = resp.read().decode()
            finally:
                conn.close()
            return Answer(resp.status, json.loads(data) if resp.status == 200 else data, {})

        def direct() -> int:
            conn = http.client.HTTPConnection(pod_ip, 8082, timeout=10, source_address=(m.sources[0], 0))
            try:
                conn.request("GET", "/", headers={"Host": "secure"})
                return conn.getresponse().status
            finally:
                conn.close()

        first = eventually(lambda: (a := through_mesh()).status == 200 and a, timeout=30, message="client -> secure")
        assert "URI=spiffe://cluster.local/ns/default/sa/client" in first.body["headers"]["x-forwarded-client-cert"]
        inbound = f"inbound|{pod_ip}_8082"
        selector = {"matchLabels": {"app": "secure"}}

        m.apply(policy("only-client", {"selector": selector, "rules": [{"from": [{"source": {
            "principals": ["cluster.local/ns/default/sa/client"]}}]}]}), also=(envoys["secure"], inbound))
        assert [through_mesh().status for _ in range(3)] == [200] * 3
        assert [direct() for _ in range(3)] == [403] * 3  # no certificate, no principal

        m.apply(policy("someone-else", {"selector": selector, "rules": [{"from": [{"source": {
            "principals": ["cluster.local/ns/default/sa/other", "*/sa/secure"]}}]}]}), also=(envoys["secure"], inbound))
        assert [through_mesh().status for _ in range(3)] == [403] * 3

        m.apply(policy("namespaces", {"selector": selector, "rules": [{"from": [{"source": {"namespaces": ["def*"]}}]}]}),
                also=(envoys["secure"], inbound))
        assert through_mesh().status == 200 and direct() == 403
        m.apply(policy("not-namespace", {"selector": selector, "action": "DENY", "rules": [
            {"from": [{"source": {"notNamespaces": ["default"]}}]}]}), also=(envoys["secure"], inbound))
        assert through_mesh().status == 200 and direct() == 403  # plaintext is in no namespace
        m.apply(policy("service-account", {"selector": selector, "rules": [
            {"when": [{"key": "source.serviceAccount", "values": ["default/client"]}]}]}), also=(envoys["secure"], inbound))
        assert through_mesh().status == 200 and direct() == 403
    finally:
        m.config.remove("secure.yaml")
