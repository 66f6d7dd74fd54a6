"""Traffic through real Envoy sidecars, configured by a real `meshpilot serve` from files on disk.

Every assertion is on requests that went through Envoy to real upstream servers.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from harness.traffic import assert_share

from xds_server.local.bootstrap import build_bootstrap

PORT = 9080  # the service port clients call
TARGET = 8080  # where the pods answer
HOST = "reviews.default.svc.cluster.local"


def reviews_service(v1_ip: str, v2_ip: str) -> list[dict[str, Any]]:
    def pod(name: str, version: str, ip: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "labels": {"app": "reviews", "version": version}},
                "status": {"phase": "Running", "podIP": ip}}

    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "default"},
         "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": PORT, "targetPort": TARGET}]}},
        pod("reviews-v1", "v1", v1_ip),
        pod("reviews-v2", "v2", v2_ip),
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
         "metadata": {"name": "reviews", "namespace": "default"},
         "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                 {"name": "v2", "labels": {"version": "v2"}}]}},
    ]


def routing(v1: int, v2: int, second: str = "v2") -> str:
    """The VirtualService as a user writes it: by path first, then a weighted split of v1
    and ``second``."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews]
  http:
  - name: v2-by-prefix
    match:
    - uri: {{prefix: /v2}}
    route:
    - destination: {{host: reviews, subset: v2}}
  - name: v1-exact
    match:
    - uri: {{exact: /pinned}}
    route:
    - destination: {{host: reviews, subset: v1}}
  - name: split
    route:
    - destination: {{host: reviews, subset: v1}}
      weight: {v1}
    - destination: {{host: reviews, subset: {second}}}
      weight: {v2}
"""


@dataclass
class Mesh:
    config: ConfigDir
    server: MeshpilotServer
    client: EnvoyProcess
    client_ip: str
    v1: UpstreamServer
    v2: UpstreamServer
    start_envoy: Callable[..., EnvoyProcess]
    loopback: LoopbackAllocator

    def version(self, path: str = "/", via: str | None = None, host: str = "reviews") -> str:
        status, body = request(via or self.client_ip, PORT, path, host)
        return str(body.get("version")) if status == 200 and isinstance(body, dict) else f"HTTP {status}"

    def split(self, n: int, via: str | None = None) -> collections.Counter[str]:
        return collections.Counter(self.version("/", via) for _ in range(n))

    def sidecar(self, ip: str, *, delta: bool = False, name: str = "client", labels: dict[str, str] | None = None,
                ) -> EnvoyProcess:
        return self.start_envoy(
            build_bootstrap(xds_address=self.server.xds_address, proxy_ip=ip, namespace="default", pod=name,
                            labels=labels or {"app": name}, delta=delta),
            wait="live", name=name)


@pytest.fixture
def mesh(
    config_dir: ConfigDir,
    start_meshpilot: Callable[..., MeshpilotServer],
    start_envoy: Callable[..., EnvoyProcess],
    start_upstream: Callable[..., UpstreamServer],
    loopback: LoopbackAllocator,
) -> Mesh:
    client_ip = loopback.allocate()
    v1 = start_upstream(loopback.allocate(), TARGET, service="reviews", version="v1", pod="reviews-v1")
    v2 = start_upstream(loopback.allocate(), TARGET, service="reviews", version="v2", pod="reviews-v2")
    config_dir.write("reviews.yaml", reviews_service(v1.ip, v2.ip))
    config_dir.write("reviews-routing.yaml", routing(80, 20))
    server = start_meshpilot(config_dir)
    m = Mesh(config_dir, server, None, client_ip, v1, v2, start_envoy, loopback)  # type: ignore[arg-type]
    m.client = m.sidecar(client_ip)
    eventually(lambda: m.version("/v2/ready") == "v2", timeout=15, message="the client sidecar routes to reviews")
    return m


def test_routes_by_path_and_host_forms(mesh: Mesh) -> None:
    assert {mesh.version("/v2/anything") for _ in range(20)} == {"v2"}
    assert {mesh.version("/pinned") for _ in range(20)} == {"v1"}
    # Every name a client in the namespace may use for the service reaches it.
    for host in ("reviews", f"reviews:{PORT}", "reviews.default", "reviews.default.svc", HOST, f"{HOST}:{PORT}"):
        assert mesh.version("/v2/x", host=host) == "v2", host
    status, _ = request(mesh.client_ip, PORT, "/", "unknown.example.com")
    # No service: ALLOW_ANY's PassthroughCluster, whose destination is the address the Host
    # names; a name is no address, so Envoy answers 503 and nothing is forwarded.
    assert status == 503


def test_weighted_split_80_20(mesh: Mesh) -> None:
    n = 1000  # at least 500 asked for
    counts = mesh.split(n)
    assert counts["v1"] + counts["v2"] == n, counts
    assert_share(counts["v1"], n, 80, counts)
    assert mesh.v1.requests + mesh.v2.requests >= n  # the upstreams really served them


def test_edit_on_disk_changes_traffic_within_two_seconds(mesh: Mesh) -> None:
    mesh.config.write("reviews-routing.yaml", routing(0, 100))
    started = time.monotonic()

    def all_v2() -> bool:
        return mesh.split(20) == collections.Counter({"v2": 20})

    eventually(all_v2, timeout=10, interval=0.05, message="traffic moves to v2")
    assert time.monotonic() - started < 2.0


def test_invalid_edit_keeps_serving_the_last_good_config_and_names_the_problem(mesh: Mesh) -> None:
    # Every weight of the split 0 (weights are relative; only an all-zero split is wrong):
    # rejected; the old VirtualService keeps serving.
    mesh.config.write("reviews-routing.yaml", routing(0, 0))
    errors = eventually(lambda: mesh.server.get("/debug/errors")[1] or False, timeout=5)
    (err,) = [e for e in errors if e["severity"] == "error"]
    assert err["file"] == "reviews-routing.yaml"
    assert err["resource"] == "VirtualService default/reviews"
    assert err["field"] == "spec.http[2].route"
    assert err["message"] == "total destination weight is 0: give at least one destination a weight"
    counts = mesh.split(200)
    assert 0.65 <= counts["v1"] / 200 <= 0.93 and counts["v1"] + counts["v2"] == 200, counts
    assert mesh.version("/pinned") == "v1"

    # A file that is not even YAML: all it provided keeps serving.
    mesh.config.write("reviews-routing.yaml", "apiVersion: [unclosed\n")
    eventually(lambda: any("YAML" in e["message"] for e in mesh.server.get("/debug/errors")[1]), timeout=5)
    assert mesh.version("/v2/x") == "v2" and mesh.version("/pinned") == "v1"
    assert mesh.server.alive

    # Fixed: applied, and the errors are gone.
    mesh.config.write("reviews-routing.yaml", routing(0, 100))
    eventually(lambda: mesh.split(20) == collections.Counter({"v2": 20}), timeout=5)
    assert mesh.server.get("/debug/errors")[1] == []  # the NACK is settled by the next push
    assert mesh.server.get("/debug/errors")[1] == []


def test_config_dump_shows_the_versions_the_server_saw_accepted(mesh: Mesh) -> None:
    def synced() -> dict[str, Any]:
        (stream,) = [s for s in mesh.server.get("/debug/syncz")[1] if s["proxy"].startswith(f"sidecar~{mesh.client_ip}~")]
        types = stream["types"]
        assert all(types[t].get("acked_nonce") == types[t]["sent_nonce"] for t in ("cds", "eds", "lds", "rds"))
        return types

    types = eventually(synced, timeout=5)
    dump = mesh.client.config_dump()
    by_type = {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}
    clusters = by_type["ClustersConfigDump"]
    assert clusters["version_info"] == types["cds"]["acked_version"]
    assert {c["cluster"]["name"] for c in clusters["dynamic_active_clusters"]} >= {
        f"outbound|{PORT}||{HOST}", f"outbound|{PORT}|v1|{HOST}", f"outbound|{PORT}|v2|{HOST}"}
    assert by_type["ListenersConfigDump"]["version_info"] == types["lds"]["acked_version"]
    (route,) = by_type["RoutesConfigDump"]["dynamic_route_configs"]
    assert route["version_info"] == types["rds"]["acked_version"]
    assert route["route_config"]["name"] == str(PORT)


def test_a_delta_envoy_and_a_sotw_envoy_both_converge(mesh: Mesh) -> None:
    delta_ip = mesh.loopback.allocate()
    delta = mesh.sidecar(delta_ip, delta=True, name="delta-client")
    eventually(lambda: mesh.version("/v2/x", via=delta_ip) == "v2", timeout=15)
    protocols = {s["proxy"].split("~")[1]: s["protocol"] for s in mesh.server.get("/debug/syncz")[1]}
    assert protocols == {mesh.client_ip: "sotw", delta_ip: "delta"}

    mesh.config.write("reviews-routing.yaml", routing(0, 100))
    for ip in (mesh.client_ip, delta_ip):
        eventually(lambda ip=ip: mesh.split(20, via=ip) == collections.Counter({"v2": 20}), timeout=5,
                   message=f"{ip} converges")
    # Delta versions each resource: Envoy holds exactly the versions the server says it should.
    (proxy_id,) = [s["proxy"] for s in mesh.server.get("/debug/syncz")[1] if s["protocol"] == "delta"]
    should = mesh.server.get(f"/debug/config?proxy={proxy_id}")[1]["types"]
    routes = {c["route_config"]["name"]: c for c in delta.config_dump("dynamic_route_configs")["configs"]}
    assert routes.keys() == should["rds"]["resources"].keys()
    # Its virtual hosts came over VHDS (a route configuration's version_info is then its last
    # VHDS update's): it holds exactly the virtual hosts the server says it should.
    held = {vh["name"] for c in routes.values() for vh in c["route_config"]["virtual_hosts"] if "/" in vh["name"]}
    assert held and held == set(should["vhds"]["resources"])
    clusters = {c["cluster"]["name"]: c["version_info"]
                for c in delta.config_dump("dynamic_active_clusters")["configs"]}
    assert clusters == should["cds"]["resources"]
    assert delta.stat("control_plane.connected_state") == 1 and mesh.client.stat("control_plane.connected_state") == 1


def test_envoy_keeps_serving_without_the_control_plane_and_resyncs(mesh: Mesh) -> None:
    """Both protocols: a delta Envoy reconnects with initial_resource_versions, which the
    restarted control plane (same content, same versions) answers with only what changed."""
    delta_ip = mesh.loopback.allocate()
    delta = mesh.sidecar(delta_ip, delta=True, name="delta-client")
    eventually(lambda: mesh.version("/v2/x", via=delta_ip) == "v2", timeout=15)
    clusters_before = {c["cluster"]["name"]: c["version_info"]
                       for c in delta.config_dump("dynamic_active_clusters")["configs"]}

    mesh.server.kill()
    for envoy in (mesh.client, delta):
        eventually(lambda e=envoy: e.stat("control_plane.connected_state") == 0, timeout=10)
    for ip in (mesh.client_ip, delta_ip):
        counts = mesh.split(200, via=ip)  # still the last config: 80/20
        assert counts["v1"] + counts["v2"] == 200 and counts["v1"] > counts["v2"], counts

    mesh.config.write("reviews-routing.yaml", routing(0, 100))  # changed while it is down
    mesh.server.restart()
    for envoy in (mesh.client, delta):
        eventually(lambda e=envoy: e.stat("control_plane.connected_state") == 1, timeout=30,
                   message="Envoy reconnects to the restarted control plane")
    for ip in (mesh.client_ip, delta_ip):
        eventually(lambda ip=ip: mesh.split(20, via=ip) == collections.Counter({"v2": 20}), timeout=10,
                   message="the change made while the control plane was down arrives")
    # Clusters did not change: the delta Envoy kept them, same versions, nothing re-sent.
    clusters_after = {c["cluster"]["name"]: c["version_info"]
                      for c in delta.config_dump("dynamic_active_clusters")["configs"]}
    assert clusters_after == clusters_before
    (stream,) = [s for s in mesh.server.get("/debug/syncz")[1] if s["protocol"] == "delta"]
    assert stream["types"]["cds"]["sent_resources"] == 0  # the reconnect's CDS answer was empty


def test_inbound_sidecar_hands_requests_to_its_app(mesh: Mesh, start_upstream: Callable[..., UpstreamServer]) -> None:
    """A v3 pod with a sidecar: clients reach its inbound listener on the pod IP, which forwards
    to the app on the address from the pod's annotation."""
    pod_ip, app_ip = mesh.loopback.allocate(), mesh.loopback.allocate()
    app = start_upstream(app_ip, TARGET, service="reviews", version="v3", pod="reviews-v3")
    mesh.config.write("reviews-v3.yaml", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "reviews-v3", "namespace": "default", "labels": {"app": "reviews", "version": "v3"},
                     "annotations": {"sidecar.meshpilot.io/app-address": app_ip}},
        "status": {"phase": "Running", "podIP": pod_ip}})
    v3 = mesh.sidecar(pod_ip, name="reviews-v3", labels={"app": "reviews", "version": "v3"})
    assert f"inbound|{pod_ip}_{TARGET}" in v3.listeners()
    # Everything not matched by path goes to a new v3 subset.
    mesh.config.write("reviews-routing.yaml", routing(0, 100, second="v3"))
    mesh.config.write("reviews.yaml", [*reviews_service(mesh.v1.ip, mesh.v2.ip)[:3], {
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"host": "reviews", "subsets": [{"name": n, "labels": {"version": n}} for n in ("v1", "v2", "v3")]}}])
    eventually(lambda: mesh.split(10) == collections.Counter({"v3": 10}), timeout=10,
               message="requests reach v3 through its sidecar")
    status, body = request(mesh.client_ip, PORT, "/", "reviews")
    assert body["listener"] == f"{app_ip}:{TARGET}"  # the app answered on its own address
    assert app.requests >= 11
    assert v3.stat(f"listener.{pod_ip}_{TARGET}.downstream_cx_total") >= 1


def test_a_config_envoy_rejects_is_recorded_not_resent_and_the_old_one_keeps_serving(mesh: Mesh) -> None:
    """meshpilot compiles regexes with RE2 itself, so an invalid one is reported and never
    reaches Envoy. What is left for Envoy to reject depends on the proxy: here a header value
    naming a substitution command (``%...%``) this Envoy build does not have (the commands
    differ between Envoy versions and builds; meshpilot checks only the syntax)."""
    pushes = _rds_pushes(mesh)
    mesh.config.write("reviews-routing.yaml", routing(0, 100).replace("uri: {exact: /pinned}", "uri: {regex: '(unclosed'}"))
    errors = eventually(lambda: [e for e in mesh.server.get("/debug/errors")[1] if e["severity"] == "error"] or False,
                        timeout=5)
    assert [(e["file"], e["resource"], e["field"]) for e in errors] == [
        ("reviews-routing.yaml", "VirtualService default/reviews", "spec.http[1].match[0].uri.regex")]
    assert errors[0]["message"] == "RE2 cannot compile '(unclosed': missing ): (unclosed"
    assert _rds_pushes(mesh) == pushes and "nack" not in _client_types(mesh)["rds"]  # Envoy never saw it
    counts = mesh.split(100)  # the accepted 80/20 config still serves
    assert counts["v1"] + counts["v2"] == 100 and counts["v1"] > counts["v2"], counts

    unknown = routing(0, 100).replace("    - uri: {exact: /pinned}\n",
                                      "    - uri: {exact: /pinned}\n    headers: {request: {set: {x-trace: '%NO_SUCH_COMMAND%'}}}\n")
    mesh.config.write("reviews-routing.yaml", unknown)

    def nacked() -> dict[str, Any]:
        nack = _client_types(mesh)["rds"].get("nack")
        assert nack, _client_types(mesh)
        return dict(nack)

    nack = eventually(nacked, timeout=5)
    assert "NO_SUCH_COMMAND" in nack["message"], nack
    # Valid as far as meshpilot can tell; the NACK is tied back to what the rejected push changed.
    (blamed,) = mesh.server.get("/debug/errors")[1]
    assert (blamed["file"], blamed["resource"], blamed["severity"]) == (
        "reviews-routing.yaml", "VirtualService default/reviews", "error"), blamed
    assert blamed["field"].startswith("rds rejected by proxy sidecar~") and "NO_SUCH_COMMAND" in blamed["message"]
    assert _rds_pushes(mesh) == pushes + 1  # the rejected route config, once
    time.sleep(1.0)
    assert _rds_pushes(mesh) == pushes + 1  # no loop re-sending what was rejected
    counts = mesh.split(100)  # the accepted 80/20 config still serves
    assert counts["v1"] + counts["v2"] == 100 and counts["v1"] > counts["v2"], counts
    assert mesh.version("/pinned") == "v1"

    mesh.config.write("reviews-routing.yaml", routing(0, 100))
    eventually(lambda: mesh.split(20) == collections.Counter({"v2": 20}), timeout=5)
    assert mesh.server.get("/debug/errors")[1] == []  # the NACK is settled by the next push


def _client_types(mesh: Mesh) -> dict[str, Any]:
    (stream,) = [s for s in mesh.server.get("/debug/syncz")[1] if s["proxy"].startswith(f"sidecar~{mesh.client_ip}~")]
    return dict(stream["types"])


def _rds_pushes(mesh: Mesh) -> float:
    _, text = mesh.server.get("/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in str(text).splitlines()
               if line.startswith('meshpilot_xds_pushes_total{') and 'type="rds"' in line)
