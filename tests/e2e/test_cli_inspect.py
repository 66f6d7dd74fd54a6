"""`meshpilot describe`, `explain` and `diff` against a real `meshpilot serve` and a real Envoy sidecar,
and the "parses but cannot work" warnings (a subset with no endpoint, a VirtualService bound to no
Gateway) in `analyze` and `/debug/errors`.

explain is checked against Envoy itself: for each request, the subset it names is the one whose
upstream answered through the sidecar. diff is checked against the server: after the new directory
is applied, diff of it against the server finds no change.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from harness import ConfigDir, eventually, request

from .test_cli_verbs import Mesh, mesh, meshpilot  # noqa: F401  (mesh is a fixture)
from .test_traffic import HOST, PORT, reviews_service, routing

MATCHERS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: by-header
    match: [{headers: {x-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: by-regex
    match: [{uri: {regex: "/r/[0-9]+"}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: by-query
    match: [{queryParams: {v: {exact: "2"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: by-method
    match: [{method: {exact: POST}, uri: {prefix: /m}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: to-v3
    match: [{uri: {prefix: /v3}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - name: rest
    route: [{destination: {host: reviews, subset: v1}, weight: 100}, {destination: {host: reviews, subset: v2}, weight: 0}]
"""


def with_v3(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reviews DestinationRule with a subset v3 that no pod carries."""
    dr = next(d for d in docs if d["kind"] == "DestinationRule")
    dr["spec"]["subsets"].append({"name": "v3", "labels": {"version": "v3"}})
    return docs


def explain(m: Mesh, path: str, *extra: str) -> dict[str, Any]:
    return m.cli_json("explain", "client", "--host", "reviews", "--port", str(PORT), "--path", path, *extra)


def subset_of(cluster: str) -> str:
    return cluster.split("|")[2]


def test_explain_names_the_route_envoy_takes_and_why_it_fails(mesh: Mesh) -> None:  # noqa: F811
    mesh.config.write("reviews.yaml", with_v3(reviews_service(mesh.v1.ip, _v2_ip(mesh))))
    mesh.config.write("reviews-routing.yaml", MATCHERS)
    eventually(lambda: request(mesh.client_ip, PORT, "/v3", "reviews")[0] == 503, timeout=15,
               message="the sidecar has the new routes (v3: no endpoints)")
    cases = [  # (path, method, headers, the rule explain must name)
        ("/x", "GET", {"x-user": "jason"}, "by-header"),
        ("/r/42", "GET", {}, "by-regex"),
        ("/r/42x", "GET", {}, "rest"),  # RE2 matches the whole path
        ("/q?v=2", "GET", {}, "by-query"),
        ("/q?v=3", "GET", {}, "rest"),
        ("/m/1", "POST", {}, "by-method"),
        ("/m/1", "GET", {}, "rest"),
    ]
    for path, method, headers, rule in cases:
        args = ["--method", method, *(a for k, v in headers.items() for a in ("--header", f"{k}={v}"))]
        got = explain(mesh, path, *args)
        assert got["route"]["name"] == rule, (path, method, headers, got)
        assert got["virtual_service"]["name"] == "default/reviews" and got["virtual_service"]["rule_name"] == rule
        (cluster, *others) = [c for c in got["clusters"] if c["weight"] != 0]
        assert not others and cluster["endpoints"] == 1 and not got["problems"], got
        status, body = request(mesh.client_ip, PORT, path, "reviews", method=method, headers=headers)
        assert status == 200 and body["version"] == subset_of(cluster["name"]), (path, status, body, cluster)

    # A subset no pod carries: explain says why Envoy answers 503.
    got = explain(mesh, "/v3/a")
    assert got["route"]["name"] == "to-v3" and got["clusters"][0]["name"] == f"outbound|{PORT}|v3|{HOST}"
    assert got["clusters"][0]["endpoints"] == 0
    assert any("has no endpoints (EDS)" in p for p in got["problems"]), got
    text = mesh.cli("explain", "client", "--host", f"reviews:{PORT}", "--path", "/v3/a").stdout
    assert f"Cluster: outbound|{PORT}|v3|{HOST} (EDS, 0 endpoints)" in text
    assert "VirtualService: default/reviews http[4] (to-v3)" in text and "Problem: cluster" in text
    assert request(mesh.client_ip, PORT, "/v3/a", "reviews")[0] == 503
    unknown = explain(mesh, "/", "--host", "nowhere")  # last --host wins
    assert unknown["virtual_host"]["name"] == "allow_any" and "no service of this proxy has host 'nowhere'" in unknown[
        "problems"][0]

    # Config the proxy rejected: explain says it runs an older version.
    mesh.config.write("reviews-routing.yaml", MATCHERS.replace(
        "  - name: rest\n", "  - name: rest\n    headers: {request: {set: {x-trace: '%NO_SUCH_COMMAND%'}}}\n"))
    def nacked() -> dict[str, Any]:
        got = explain(mesh, "/")
        assert got["nacks"], got
        return got

    got = eventually(nacked, timeout=10, message="explain sees the NACK")
    assert "NO_SUCH_COMMAND" in got["nacks"]["rds"]["message"]
    assert "NACKED: the proxy rejected its last RDS" in mesh.cli(
        "explain", "client", "--host", "reviews", "--port", str(PORT), "--path", "/").stdout


def _v2_ip(m: Mesh) -> str:
    docs = [d for d in yaml.safe_load_all((m.config.path / "reviews.yaml").read_text()) if d["kind"] == "Pod"]
    return next(d["status"]["podIP"] for d in docs if d["metadata"]["name"] == "reviews-v2")


def test_describe_service_and_pod(mesh: Mesh) -> None:  # noqa: F811
    mesh.config.write("reviews.yaml", with_v3(reviews_service(mesh.v1.ip, _v2_ip(mesh))))
    mesh.config.write("security.yaml", [
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "default", "namespace": "default"}, "spec": {"mtls": {"mode": "PERMISSIVE"}}},
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "reviews-viewers", "namespace": "default"},
         "spec": {"selector": {"matchLabels": {"app": "reviews"}}, "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}},
    ])
    def with_policies() -> dict[str, Any]:
        d = mesh.cli_json("describe", "service", "reviews")
        assert len(d["destination_rules"][0]["subsets"]) == 3 and mesh.cli_json(
            "describe", "pod", "reviews-v1")["authorization_policies"], d
        return d

    svc = eventually(with_policies, timeout=10, message="describe sees subset v3 and the policies")
    assert svc["host"] == HOST and svc["ports"] == [
        {"port": PORT, "name": "http", "protocol": "HTTP", "target_port": 8080, "ready_endpoints": 2}]
    assert {s["name"]: s["endpoints"] for s in svc["destination_rules"][0]["subsets"]} == {"v1": 1, "v2": 1, "v3": 0}
    (vs,) = svc["virtual_services"]
    assert vs["name"] == "default/reviews" and [r["name"] for r in vs["http"]] == ["v2-by-prefix", "v1-exact", "split"]
    (problem,) = svc["problems"]
    assert problem["field"] == "spec.subsets[2].labels" and "subset v3 selects no endpoint" in problem["message"]
    text = mesh.cli("describe", "svc", "reviews", "-n", "default").stdout
    assert f"Port: http {PORT}/HTTP -> 8080, 2 ready endpoints" in text
    assert "Subset: v3 (version=v3): 0 endpoints" in text and "Warning: DestinationRule default/reviews" in text

    pod = mesh.cli_json("describe", "pod", "reviews-v1")
    assert pod["ip"] == mesh.v1.ip and pod["proxy"] is None and [s["host"] for s in pod["services"]] == [HOST]
    assert pod["peer_authentication"] == {"mode": "PERMISSIVE", "ports": {}, "policies": ["PeerAuthentication default/default"]}
    assert [a["name"] for a in pod["authorization_policies"]] == ["default/reviews-viewers"]
    client = mesh.cli_json("describe", "pod", "client")  # no Pod resource: the connected proxy
    assert client["proxy"]["id"] == mesh.proxy_id and client["authorization_policies"] == []
    (stream,) = client["proxy"]["status"]
    assert stream["types"]["rds"]["status"] == "SYNCED"
    text = mesh.cli("describe", "pod", "client").stdout
    assert f"Proxy: {mesh.proxy_id} (identity: spiffe://cluster.local/ns/default/sa/client)" in text
    assert "No service selects this pod." in text
    assert "      CDS SYNCED  LDS SYNCED  EDS SYNCED  RDS SYNCED  SDS SYNCED  (sotw)" in text
    assert f"ACKed versions: CDS {stream['types']['cds']['acked_version']}, EDS " in text
    missing = mesh.cli("describe", "service", "nope", check=1)
    assert "no service default/nope" in missing.stderr and HOST in missing.stderr


def test_diff_predicts_what_the_server_then_serves(mesh: Mesh, tmp_path: Path) -> None:  # noqa: F811
    new = ConfigDir(tmp_path / "new")  # (it makes the directory)
    for f in mesh.config.path.iterdir():
        shutil.copy(f, new.path / f.name)
    same = mesh.cli("diff", "--config-dir", str(new.path))
    assert same.stdout.strip() == f"{mesh.proxy_id}: no change"

    new.write("reviews-routing.yaml", routing(30, 70))
    new.write("reviews.yaml", with_v3(reviews_service(mesh.v1.ip, _v2_ip(mesh))))
    report = json.loads(mesh.cli("diff", "--config-dir", str(new.path), "-o", "json", check=1).stdout)
    changes = report["proxies"][mesh.proxy_id]
    v3 = f"outbound|{PORT}|v3|{HOST}"
    assert changes["cds"]["added"] == [v3] and changes["eds"]["added"] == [v3]
    assert list(changes["rds"]["changed"]) == [str(PORT)] and "lds" not in changes
    text = mesh.cli("diff", "--config-dir", str(new.path), "--details", "--server", mesh.server.http_address,
                    check=1).stdout
    assert f"CDS + {v3}" in text and f"RDS ~ {PORT}" in text
    assert any(ln.strip().startswith('-') and '"weight": 80' in ln for ln in text.splitlines()), text
    assert any(ln.strip().startswith('+') and '"weight": 30' in ln for ln in text.splitlines()), text

    # Apply it: the server now serves exactly what diff predicted.
    for f in new.path.iterdir():
        shutil.copy(f, mesh.config.path / f.name)
    eventually(lambda: meshpilot("diff", "--config-dir", str(new.path), "--http-address", mesh.server.http_address,
                                 check=None).returncode == 0, timeout=10, message="the server serves the new config")
    assert mesh.cli("diff", "--config-dir", str(tmp_path / "nope"), check=2).stderr


def test_warnings_for_config_that_cannot_work(config_dir: ConfigDir, start_meshpilot: Any, loopback: Any) -> None:
    config_dir.write("reviews.yaml", with_v3(reviews_service(loopback.allocate(), loopback.allocate())))
    config_dir.write("gateway-vs.yaml", {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "edge", "namespace": "default"},
        "spec": {"hosts": ["shop.example.com"], "gateways": ["edge-gateway", "istio-system/other"],
                 "http": [{"route": [{"destination": {"host": "reviews"}}]}]}})
    report = json.loads(meshpilot("analyze", str(config_dir.path), "-o", "json").stdout)
    problems = {(e["resource"], e["field"]): e["message"] for es in report["files"].values() for e in es}
    assert "subset v3 selects no endpoint of reviews.default.svc.cluster.local (version=v3)" in problems[
        ("DestinationRule default/reviews", "spec.subsets[2].labels")]
    assert problems[("VirtualService default/edge", "spec.gateways[0]")] == "gateway default/edge-gateway does not exist"
    assert problems[("VirtualService default/edge", "spec.gateways[1]")] == "gateway istio-system/other does not exist"
    server = start_meshpilot(config_dir)
    served = {(e["resource"], e["field"]) for e in server.get("/debug/errors")[1]}
    assert {("DestinationRule default/reviews", "spec.subsets[2].labels"),
            ("VirtualService default/edge", "spec.gateways[0]")} <= served


def test_new_verbs_help_shows_defaults() -> None:
    def help_of(verb: str) -> str:
        return " ".join(meshpilot(verb, "--help").stdout.split())

    assert "its namespace (default: default)" in help_of("describe")
    explain_help = help_of("explain")
    assert "(default: /)" in explain_help and "(default: GET)" in explain_help
    assert "default: from --host, else the only route config" in explain_help
    diff_help = help_of("diff")
    assert "(default: 127.0.0.1:15014)" in diff_help and "(default: table)" in diff_help


NO_UPSTREAM = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: teapot
    match: [{uri: {prefix: /tea}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: moved
    match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 301}
  - name: canned
    match: [{uri: {exact: /canned}}]
    directResponse: {status: 204}
  - name: rest
    route: [{destination: {host: reviews, subset: v1}}]
"""


def test_explain_says_when_no_upstream_is_called(mesh: Mesh) -> None:  # noqa: F811
    mesh.config.write("reviews-routing.yaml", NO_UPSTREAM)
    eventually(lambda: request(mesh.client_ip, PORT, "/canned", "reviews")[0] == 204, timeout=15,
               message="the sidecar has the new routes")
    for path, status, rule, problem in (
            ("/tea", 418, "teapot", "fault injection aborts with 418 (100% of requests)"),
            ("/old/x", 301, "moved", "the route redirects"),
            ("/canned", 204, "canned", "the route answers 204 itself (direct response): no upstream is called")):
        got = explain(mesh, path)
        assert got["route"]["name"] == rule and any(p.startswith(problem) for p in got["problems"]), got
        assert request(mesh.client_ip, PORT, path, "reviews")[0] == status
    ok = explain(mesh, "/fine")
    assert ok["route"]["name"] == "rest" and ok["problems"] == []
