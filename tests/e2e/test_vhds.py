"""VHDS through real Envoy: a delta Envoy gets its route configuration as a stub plus one
VirtualHost resource per service, routes by them, and a VirtualService edit reaches it as the
one virtual host it changed, a few hundred bytes instead of the port's whole table; a SotW
Envoy next to it still gets whole tables, and a delta Envoy whose Sidecar does not import the
edited host gets nothing at all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import (
    ConfigDir,
    EnvoyProcess,
    LoopbackAllocator,
    MeshpilotServer,
    UpstreamServer,
    eventually,
    request,
)

from tests.e2e.test_traffic import HOST, PORT, TARGET, reviews_service, routing
from xds_server.app.verbs import proxy_status
from xds_server.local.bootstrap import build_bootstrap

#: Services on the same port as reviews, so its route table is big enough for its size to show.
OTHERS = 30
RATINGS = "ratings.default.svc.cluster.local"


def other_services(ratings_ip: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ratings-0", "namespace": "default",
                                                         "labels": {"app": "ratings"}},
         "status": {"phase": "Running", "podIP": ratings_ip}}]
    for name in ["ratings", *(f"filler-{i}" for i in range(OTHERS))]:
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                     "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": PORT, "targetPort": TARGET}]}})
    return docs


def scoped_sidecar() -> dict[str, Any]:
    """Proxies labelled app=scoped import ratings only."""
    return {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": "scoped", "namespace": "default"},
            "spec": {"workloadSelector": {"labels": {"app": "scoped"}},
                     "egress": [{"hosts": [f"./{RATINGS}"]}]}}


def version(ip: str, host: str, path: str = "/") -> str:
    status, body = request(ip, PORT, path, host)
    return str(body.get("version")) if status == 200 and isinstance(body, dict) else f"HTTP {status}"


def test_delta_envoy_routes_by_vhds_and_an_edit_sends_one_virtual_host(
    config_dir: ConfigDir,
    start_meshpilot: Callable[..., MeshpilotServer],
    start_envoy: Callable[..., EnvoyProcess],
    start_upstream: Callable[..., UpstreamServer],
    loopback: LoopbackAllocator,
) -> None:
    v1 = start_upstream(loopback.allocate(), TARGET, service="reviews", version="v1", pod="reviews-v1")
    v2 = start_upstream(loopback.allocate(), TARGET, service="reviews", version="v2", pod="reviews-v2")
    ratings = start_upstream(loopback.allocate(), TARGET, service="ratings", version="r1", pod="ratings-0")
    config_dir.write("reviews.yaml", reviews_service(v1.ip, v2.ip))
    config_dir.write("others.yaml", other_services(ratings.ip))
    config_dir.write("scope.yaml", scoped_sidecar())
    config_dir.write("reviews-routing.yaml", routing(100, 0))
    server = start_meshpilot(config_dir)

    def sidecar(name: str, delta: bool) -> tuple[str, EnvoyProcess]:
        ip = loopback.allocate()
        return ip, start_envoy(build_bootstrap(xds_address=server.xds_address, proxy_ip=ip, namespace="default",
                                               pod=name, labels={"app": name}, delta=delta), wait="live", name=name)

    delta_ip, delta = sidecar("delta", True)
    sotw_ip, sotw = sidecar("sotw", False)
    scoped_ip, scoped = sidecar("scoped", True)

    for ip in (delta_ip, sotw_ip):
        for host in ("reviews", f"reviews:{PORT}", "reviews.default", HOST):
            eventually(lambda ip=ip, host=host: version(ip, host) == "v1", timeout=20, message=f"{ip} {host} -> v1")
        assert version(ip, "ratings.default.svc") == "r1"
        assert version(ip, "reviews", "/v2/x") == "v2"  # the VirtualService's other routes came along
    eventually(lambda: version(scoped_ip, "ratings") == "r1", timeout=20, message="the scoped proxy routes ratings")

    # The delta Envoy holds a stub with vhds and the virtual hosts VHDS gave it; the SotW one a whole table.
    delta_rc = delta.route_configs()[str(PORT)]
    assert "vhds" in delta_rc, delta_rc.keys()
    names = {vh["name"] for vh in delta_rc["virtual_hosts"]}
    assert {f"{PORT}/{HOST}", f"{PORT}/{RATINGS}", "allow_any"} <= names, names
    assert len(names) == OTHERS + 3, names
    sotw_rc = sotw.route_configs()[str(PORT)]
    assert "vhds" not in sotw_rc
    assert f"{HOST}:{PORT}" in {vh["name"] for vh in sotw_rc["virtual_hosts"]}

    def syncz() -> dict[str, dict[str, Any]]:
        status, streams = server.get("/debug/syncz")
        assert status == 200, streams
        return {s["proxy"].split("~")[2].split(".")[0]: s["types"] for s in streams}

    def settled() -> dict[str, dict[str, Any]]:  # every response ACKed
        seen = syncz()
        for proxy, types in seen.items():
            for t, st in types.items():
                assert st.get("acked_nonce") == st.get("sent_nonce"), (proxy, t, st)
        return seen

    before = eventually(settled, timeout=20)
    assert set(before["delta"]) == {"cds", "eds", "lds", "rds", "vhds"}, before["delta"]
    assert "vhds" not in before["sotw"]
    # proxy-status shows the virtual hosts of delta streams in a column of their own.
    lines = proxy_status.report(f"{server.host}:{server.http_port}").splitlines()
    assert lines[0].split()[:7] == ["NAME", "CDS", "LDS", "EDS", "RDS", "SDS", "VHDS"], lines[0]
    at = lines[0].index("VHDS")  # (columns are aligned; "NOT SENT" has a space in it)
    vhds = {line.split()[0].split("~")[2].split(".")[0]: line[at:].split()[0] for line in lines[1:] if "~" in line}
    assert vhds == {"delta": "SYNCED", "sotw": "-", "scoped": "SYNCED"}, lines

    config_dir.write("reviews-routing.yaml", routing(0, 100))
    for ip in (delta_ip, sotw_ip):
        eventually(lambda ip=ip: version(ip, "reviews") == "v2", timeout=20, message=f"{ip} follows the edit")
    assert version(delta_ip, "ratings") == "r1"
    after = eventually(settled, timeout=20)

    def sent(proxy: str, t: str) -> tuple[str, int]:
        st = after[proxy].get(t, {})
        changed = st.get("sent_nonce") != before[proxy].get(t, {}).get("sent_nonce")
        return ("new" if changed else "same"), st.get("sent_bytes", 0)

    # Delta: the route stub stays, one virtual host goes; SotW: the whole table again.
    assert sent("delta", "rds")[0] == "same"
    what, vh_bytes = sent("delta", "vhds")
    assert what == "new" and after["delta"]["vhds"]["sent_resources"] == 1, after["delta"]["vhds"]
    what, table_bytes = sent("sotw", "rds")
    assert what == "new" and after["sotw"]["rds"]["sent_resources"] == 1
    assert vh_bytes < 2048 and vh_bytes * 10 < table_bytes, (vh_bytes, table_bytes)
    # The scoped proxy does not import reviews: nothing at all was sent to it.
    assert all(sent("scoped", t)[0] == "same" for t in before["scoped"]), (before["scoped"], after["scoped"])

    # /debug/pushes counts the bytes the edit cost.
    status, pushes = server.get("/debug/pushes")
    assert status == 200
    edit = pushes[0]
    assert edit["proxies"] == 2 and edit["acked"] == 2, edit  # the scoped proxy was not even told
    assert edit["bytes"]["max_per_proxy"] >= table_bytes and edit["bytes"]["total"] >= table_bytes + vh_bytes, edit
    for envoy in (delta, sotw, scoped):
        assert envoy.stat("cluster_manager.cds.update_rejected") == 0
        assert envoy.alive


def test_vhds_off_gives_delta_envoys_whole_tables(
    config_dir: ConfigDir,
    start_meshpilot: Callable[..., MeshpilotServer],
    start_envoy: Callable[..., EnvoyProcess],
    start_upstream: Callable[..., UpstreamServer],
    loopback: LoopbackAllocator,
) -> None:
    v1 = start_upstream(loopback.allocate(), TARGET, service="reviews", version="v1", pod="reviews-v1")
    v2 = start_upstream(loopback.allocate(), TARGET, service="reviews", version="v2", pod="reviews-v2")
    config_dir.write("reviews.yaml", reviews_service(v1.ip, v2.ip))
    config_dir.write("reviews-routing.yaml", routing(100, 0))
    server = start_meshpilot(config_dir, extra_args=("--vhds", "off"))
    ip = loopback.allocate()
    envoy = start_envoy(build_bootstrap(xds_address=server.xds_address, proxy_ip=ip, namespace="default",
                                        pod="delta", labels={"app": "delta"}, delta=True), wait="live", name="delta")
    eventually(lambda: version(ip, "reviews") == "v1", timeout=20, message="the delta Envoy routes reviews to v1")
    rc = envoy.route_configs()[str(PORT)]
    assert "vhds" not in rc
    assert f"{HOST}:{PORT}" in {vh["name"] for vh in rc["virtual_hosts"]}
