"""ServiceEntry and WorkloadEntry through a real Envoy sidecar to real upstreams.

One mesh for the module: a ``meshpilot serve``, one client sidecar, upstreams on their
own loopback IPs and free ports (and one on 127.0.0.1, which the DNS entries reach as ``localhost``).
Every assertion is on traffic that went through Envoy: which upstream answered, how
often, and what the cluster Envoy received looks like.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from harness import ConfigDir, EnvoyProcess, LoopbackAllocator, MeshpilotServer, eventually, request_full
from harness.controlled_upstream import ControlledUpstream
from harness.http_mesh import track_logs

from xds_server.local.bootstrap import build_bootstrap

PORT = 9080  # the service port the client calls
NS = "default"
NET = "networking.istio.io/v1"
ODST_HEADER = "x-envoy-original-dst-host"


def cluster_name(host: str, subset: str = "") -> str:
    return f"outbound|{PORT}|{subset}|{host}"


def service_entry(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("ports", [{"number": PORT, "name": "http", "protocol": "HTTP"}])
    return {"apiVersion": NET, "kind": "ServiceEntry", "metadata": {"name": name, "namespace": NS}, "spec": spec}


def manifests(ups: dict[str, ControlledUpstream], local: ControlledUpstream) -> list[dict[str, Any]]:
    ip = {n: u.ip for n, u in ups.items()}
    port = {n: u.port for n, u in ups.items()}
    return [
        # DNS: Envoy resolves the endpoint's name (localhost, the upstream on 127.0.0.1)...
        service_entry("dns-endpoint", hosts=["dns.example.com"], resolution="DNS",
                      endpoints=[{"address": "localhost", "ports": {"http": local.port}}]),
        # ...or, with no endpoints, the host itself; DNS_ROUND_ROBIN the same way.
        service_entry("dns-host", hosts=["localhost"], resolution="DNS",
                      ports=[{"number": PORT, "name": "http", "protocol": "HTTP", "targetPort": local.port}]),
        service_entry("dns-rr", hosts=["rr.example.com"], resolution="DNS_ROUND_ROBIN",
                      endpoints=[{"address": "localhost", "ports": {"http": local.port}}]),
        # STATIC endpoints weighted 1:3.
        service_entry("weighted", hosts=["weighted.example.com"], resolution="STATIC", endpoints=[
            {"address": ip["light"], "ports": {"http": port["light"]}, "weight": 1},
            {"address": ip["heavy"], "ports": {"http": port["heavy"]}, "weight": 3}]),
        # workloadSelector over WorkloadEntries (one of another app, one in another namespace).
        service_entry("vms", hosts=["vms.example.com"], resolution="STATIC", workloadSelector={"labels": {"app": "vm"}}),
        {"apiVersion": NET, "kind": "WorkloadEntry", "metadata": {"name": "vm-1", "namespace": NS},
         "spec": {"address": ip["vm"], "labels": {"app": "vm"}, "ports": {"http": port["vm"]}}},
        {"apiVersion": NET, "kind": "WorkloadEntry", "metadata": {"name": "not-a-vm", "namespace": NS},
         "spec": {"address": ip["light"], "labels": {"app": "other"}}},
        {"apiVersion": NET, "kind": "WorkloadEntry", "metadata": {"name": "vm-elsewhere", "namespace": "other"},
         "spec": {"address": ip["heavy"], "labels": {"app": "vm"}}},
        # Subsets over the endpoints' labels, chosen by a VirtualService.
        service_entry("tiers", hosts=["tiers.example.com"], resolution="STATIC", endpoints=[
            {"address": ip["v1"], "ports": {"http": port["v1"]}, "labels": {"version": "v1"}},
            {"address": ip["v2"], "ports": {"http": port["v2"]}, "labels": {"version": "v2"}}]),
        {"apiVersion": NET, "kind": "DestinationRule", "metadata": {"name": "tiers", "namespace": NS},
         "spec": {"host": "tiers.example.com", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                           {"name": "v2", "labels": {"version": "v2"}}]}},
        {"apiVersion": NET, "kind": "VirtualService", "metadata": {"name": "tiers", "namespace": NS},
         "spec": {"hosts": ["tiers.example.com"], "http": [
             {"match": [{"headers": {"x-tier": {"exact": "v2"}}}],
              "route": [{"destination": {"host": "tiers.example.com", "subset": "v2"}}]},
             {"route": [{"destination": {"host": "tiers.example.com", "subset": "v1"}}]}]}},
        # NONE: the request names its destination; the second port overrides the port it names.
        service_entry("passthrough", hosts=["legacy.corp.example"], addresses=["127.0.0.0/8"], resolution="NONE"),
        service_entry("passthrough-port", hosts=["legacy-port.corp.example"], resolution="NONE",
                      ports=[{"number": PORT, "name": "http", "protocol": "HTTP", "targetPort": port["odst"]}]),
    ]


@dataclass
class Mesh:
    server: MeshpilotServer
    client: EnvoyProcess
    client_ip: str
    ups: dict[str, ControlledUpstream]
    local: ControlledUpstream

    def get(self, host: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        status, body, _ = request_full(self.client_ip, PORT, "/", host, headers=headers, timeout=5.0)
        return status, body

    def pod_of(self, host: str, headers: dict[str, str] | None = None) -> str:
        status, body = self.get(host, headers)
        assert status == 200, (host, status, body)
        return str(body["pod"])


@pytest.fixture(scope="module")
def mesh(envoy_binary: str, loopback: LoopbackAllocator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("service-entries")
    ups = {n: ControlledUpstream(loopback.allocate(), 0, pod=n) for n in ("light", "heavy", "vm", "v1", "v2", "odst")}
    local = ControlledUpstream("127.0.0.1", 0, pod="localhost")
    started: list[Any] = []
    try:
        for up in [*ups.values(), local]:
            started.append(up.start())
        config = ConfigDir(tmp / "mesh")
        config.write("mesh.yaml", manifests(ups, local))
        server = MeshpilotServer(config.path, workdir=tmp / "meshpilot")
        started.append(server)
        server.start()
        client_ip = loopback.allocate()
        client = EnvoyProcess(build_bootstrap(xds_address=server.xds_address, proxy_ip=client_ip, namespace=NS,
                                              pod="client", labels={"app": "client"}),
                              binary=envoy_binary, workdir=tmp / "envoy", name="client")
        started.append(client)
        client.start(wait="live")
        m = Mesh(server, client, client_ip, ups, local)
        expected = {cluster_name(h) for h in ("dns.example.com", "localhost", "weighted.example.com", "vms.example.com",
                                              "legacy.corp.example")} | {cluster_name("tiers.example.com", "v2")}
        eventually(lambda: expected <= set(client.clusters()), timeout=20, message="every cluster reaches the client")
        eventually(lambda: m.get("weighted.example.com")[0] == 200, timeout=15, message="the routes reach the client")
        yield m
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest, mesh: Mesh) -> None:
    track_logs(request, [mesh.client, mesh.server])


def test_no_configuration_errors(mesh: Mesh) -> None:
    status, errors = mesh.server.get("/debug/errors")
    assert status == 200 and [e for e in errors if e["resource"].startswith(("ServiceEntry", "WorkloadEntry"))] == []


@pytest.mark.parametrize(("host", "kind"), [("dns.example.com", "STRICT_DNS"), ("localhost", "STRICT_DNS"),
                                            ("rr.example.com", "LOGICAL_DNS")])
def test_dns_resolution_reaches_the_upstream_on_localhost(mesh: Mesh, host: str, kind: str) -> None:
    assert mesh.client.clusters()[cluster_name(host)]["type"] == kind
    before = mesh.local.requests
    assert [mesh.pod_of(host) for _ in range(3)] == ["localhost"] * 3
    assert mesh.local.requests - before == 3
    (address, port, health), *_ = mesh.client.endpoints(cluster_name(host))
    assert (address, port) == ("127.0.0.1", mesh.local.port), health


def test_static_endpoint_weights_split_traffic_one_to_three(mesh: Mesh) -> None:
    n = 400
    counts = collections.Counter(mesh.pod_of("weighted.example.com") for _ in range(n))
    assert set(counts) == {"light", "heavy"}, counts
    heavy = 100 * counts["heavy"] / n
    assert 67 <= heavy <= 83, counts  # 75% +- 8 points


def test_workload_selector_picks_the_selected_workload_entry_only(mesh: Mesh) -> None:
    assert {mesh.pod_of("vms.example.com") for _ in range(10)} == {"vm"}
    assert [(a, p) for a, p, _ in mesh.client.endpoints(cluster_name("vms.example.com"))] == \
        [(mesh.ups["vm"].ip, mesh.ups["vm"].port)]


def test_subsets_over_endpoint_labels_route_by_virtual_service(mesh: Mesh) -> None:
    assert {mesh.pod_of("tiers.example.com") for _ in range(6)} == {"v1"}
    assert {mesh.pod_of("tiers.example.com", {"x-tier": "v2"}) for _ in range(6)} == {"v2"}


def test_resolution_none_goes_where_the_request_says(mesh: Mesh) -> None:
    config = mesh.client.clusters()[cluster_name("legacy.corp.example")]
    assert (config["type"], config["lb_policy"]) == ("ORIGINAL_DST", "CLUSTER_PROVIDED")
    odst = mesh.ups["odst"]
    before = odst.requests
    for target in ("odst", "vm"):
        up = mesh.ups[target]
        assert mesh.pod_of("legacy.corp.example", {ODST_HEADER: f"{up.ip}:{up.port}"}) == target
    assert odst.requests - before == 1
    # Without the header there is no original destination: Envoy has no upstream to pick.
    status, _ = mesh.get("legacy.corp.example")
    assert status == 503
    # targetPort replaces the port the request names.
    assert mesh.pod_of("legacy-port.corp.example", {ODST_HEADER: f"{odst.ip}:1"}) == "odst"
