"""Proxyless gRPC: real grpcio clients and xDS-enabled servers configured by a real
`meshpilot serve`, with the bootstrap `meshpilot bootstrap --format grpc` writes.

No Envoy between them: gRPC's own xDS client reads meshpilot's listeners, routes,
clusters and endpoints, and every assertion is on calls that went from a grpcio client
process to grpcio server processes (tests/harness/grpc_apps.py).
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import ConfigDir, EnvoyProcess, LoopbackAllocator, MeshpilotServer, eventually
from harness.grpc_apps import METHOD, GreeterServer, GrpcClient
from harness.traffic import assert_share

from tests.conftest import _track
from xds_server.app.cli import main as meshpilot_cli
from xds_server.local.bootstrap import build_bootstrap

PORT = 50051  # the service port and the pods' port
NS = "default"
HOST = f"greeter.{NS}.svc.cluster.local"
TARGET = f"xds:///{HOST}:{PORT}"
FAREWELL_PORT = 50052


def pod(name: str, version: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": "greeter", "version": version}},
            "status": {"phase": "Running", "podIP": ip}}


def service(name: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": "greeter"}, "ports": [{"name": "grpc", "port": port, "targetPort": PORT}]}}


def destination_rule(subsets: dict[str, str], policy: dict[str, Any] | None = None) -> dict[str, Any]:
    """Subset name -> the version label it selects."""
    spec: dict[str, Any] = {"host": "greeter",
                            "subsets": [{"name": n, "labels": {"version": v}} for n, v in subsets.items()]}
    if policy is not None:
        spec["trafficPolicy"] = policy
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "greeter", "namespace": NS}, "spec": spec}


def virtual_service(*http: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "greeter", "namespace": NS}, "spec": {"hosts": ["greeter"], "http": list(http)}}


def to(subset: str, weight: int | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"destination": {"host": "greeter", "subset": subset}}
    if weight is not None:
        d["weight"] = weight
    return d


def split(a: str, b: str, a_weight: int) -> dict[str, Any]:
    return {"name": "split", "route": [to(a, a_weight), to(b, 100 - a_weight)]}


SUBSETS = {"v1": "v1", "v2": "v2", "v3": "v3"}
TESTER = {"name": "testers", "match": [{"headers": {"x-user": {"exact": "tester"}}}], "route": [to("v2")]}
ROUTES = virtual_service(TESTER, split("v1", "v2", 80))


@dataclass
class GrpcMesh:
    config: ConfigDir
    server: MeshpilotServer
    client: GrpcClient
    client_id: str
    v1: GreeterServer
    v2: GreeterServer
    v3: GreeterServer  # not xDS-enabled (see test_retry_policy_turns_unavailable_into_success)
    workdir: Path
    loopback: LoopbackAllocator
    processes: list[Any] = field(default_factory=list)
    vs: dict[str, Any] = field(default_factory=lambda: ROUTES)
    subsets: dict[str, str] = field(default_factory=lambda: dict(SUBSETS))
    policy: dict[str, Any] | None = None

    def spread(self, n: int, target: str = TARGET, **kw: Any) -> collections.Counter[str]:
        """Which pod answered each of ``n`` calls; failures counted by status code."""
        result = self.client.calls(target, n, **kw)
        return collections.Counter({**result["ok"], **result["errors"]})

    def routes(self, vs: dict[str, Any], settled: Callable[[], bool], what: str) -> None:
        """Write the VirtualService; return once the client's calls show it applies."""
        self.vs = vs
        self.config.write("greeter-vs.yaml", vs)
        eventually(settled, timeout=20, interval=0.1, message=f"the gRPC client {what}")

    def destination_rule(self, subsets: dict[str, str], policy: dict[str, Any] | None = None) -> None:
        self.subsets, self.policy = subsets, policy
        self.config.write("greeter-dr.yaml", destination_rule(subsets, policy))

    def bootstrap(self, ip: str, name: str, labels: dict[str, str]) -> Path:
        """``meshpilot bootstrap --format grpc`` for a proxyless pod, as a user runs it."""
        path = self.workdir / f"{name}.bootstrap.json"
        args = ["bootstrap", "--format", "grpc", "--xds-address", self.server.xds_address, "--proxy-ip", ip,
                "--namespace", NS, "--pod", name, "-o", str(path)]
        args += [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
        assert meshpilot_cli(args) == 0
        return path

    def syncz(self) -> list[dict[str, Any]]:
        status, streams = self.server.get("/debug/syncz")
        assert status == 200
        return streams  # type: ignore[no-any-return]


def _start_mesh(tmp: Path, loopback: LoopbackAllocator) -> Iterator[GrpcMesh]:
    config = ConfigDir(tmp / "mesh")
    v1_ip, v2_ip, v3_ip, client_ip = (loopback.allocate() for _ in range(4))
    config.write("greeter.yaml", [service("greeter", PORT), pod("greeter-v1", "v1", v1_ip),
                                  pod("greeter-v2", "v2", v2_ip), pod("greeter-v3", "v3", v3_ip)])
    config.write("greeter-dr.yaml", destination_rule(SUBSETS))
    config.write("greeter-vs.yaml", ROUTES)
    server = MeshpilotServer(config.path, workdir=tmp / "logs")
    processes: list[Any] = [server]
    try:
        server.start()
        mesh = GrpcMesh(config, server, None, "", None, None, None, tmp / "logs", loopback, processes)  # type: ignore[arg-type]
        labels = {"app": "greeter"}
        mesh.v1 = GreeterServer(v1_ip, PORT, "greeter-v1", "v1", mesh.workdir,
                                mesh.bootstrap(v1_ip, "greeter-v1", {**labels, "version": "v1"}))
        mesh.v2 = GreeterServer(v2_ip, PORT, "greeter-v2", "v2", mesh.workdir,
                                mesh.bootstrap(v2_ip, "greeter-v2", {**labels, "version": "v2"}))
        mesh.v3 = GreeterServer(v3_ip, PORT, "greeter-v3", "v3", mesh.workdir)
        processes += [mesh.v1, mesh.v2, mesh.v3]
        client_bootstrap = mesh.bootstrap(client_ip, "client", {"app": "client"})
        mesh.client_id = json.loads(client_bootstrap.read_text())["node"]["id"]
        mesh.client = GrpcClient(client_bootstrap, mesh.workdir)
        processes.append(mesh.client)
        eventually(lambda: mesh.v1.serving() and mesh.v2.serving() and mesh.v3.serving(), timeout=30,
                   message="the xDS-enabled greeters serve once meshpilot sent their inbound listeners")
        eventually(lambda: sum(mesh.client.calls(TARGET, 1, wait_for_ready=True, timeout=10)["ok"].values()) == 1,
                   timeout=30, message="the client reaches the greeters")
        yield mesh
    finally:
        for p in reversed(processes):
            p.stop()


@pytest.fixture(scope="module")
def module_mesh(tmp_path_factory: pytest.TempPathFactory, loopback: LoopbackAllocator) -> Iterator[GrpcMesh]:
    yield from _start_mesh(tmp_path_factory.mktemp("grpc"), loopback)


@pytest.fixture
def mesh(module_mesh: GrpcMesh, request: pytest.FixtureRequest) -> GrpcMesh:
    """The module's mesh, back on the default routes; its processes' logs go with a failure."""
    for p in module_mesh.processes:
        _track(request, p)
    if module_mesh.vs is not ROUTES or module_mesh.subsets != SUBSETS or module_mesh.policy is not None:
        module_mesh.destination_rule(SUBSETS)
        module_mesh.routes(ROUTES, lambda: set(module_mesh.spread(10, metadata={"x-user": "tester"})) == {"greeter-v2"}
                           and "greeter-v1" in module_mesh.spread(30), "is back on the default routes")
    return module_mesh


def no_nacks(streams: list[dict[str, Any]]) -> None:
    for s in streams:
        for t, st in s["types"].items():
            assert "nack" not in st, f"{s['proxy']} rejected {t}: {st['nack']}"


# ---------------------------------------------------------------- the tests


def test_bootstrap_is_what_grpc_and_istio_agent_expect(module_mesh: GrpcMesh) -> None:
    boot = json.loads((module_mesh.workdir / "client.bootstrap.json").read_text())
    (xds,) = boot["xds_servers"]
    assert xds == {"server_uri": module_mesh.server.xds_address, "channel_creds": [{"type": "insecure"}],
                   "server_features": ["xds_v3"]}
    assert boot["server_listener_resource_name_template"] == "xds.istio.io/grpc/lds/inbound/%s"
    node = boot["node"]
    assert node["id"].startswith("sidecar~") and node["id"].endswith(f".{NS}~{NS}.svc.cluster.local")
    assert node["metadata"]["GENERATOR"] == "grpc" and node["metadata"]["NAMESPACE"] == NS


def test_xds_servers_serve_only_with_their_inbound_listener(module_mesh: GrpcMesh) -> None:
    """The greeters serve (the fixture waited for it); a server no Service targets gets no
    listener and never starts serving."""
    ip = module_mesh.loopback.allocate()
    stray = GreeterServer(ip, PORT, "stray", "v1", module_mesh.workdir,
                          module_mesh.bootstrap(ip, "stray", {"app": "stray"}))
    try:
        def asked() -> bool:  # its xDS client has asked meshpilot, and been answered
            return any(s["proxy"].startswith(f"sidecar~{ip}~") and s["types"].get("lds", {}).get("acked_nonce")
                       for s in module_mesh.syncz())

        eventually(asked, timeout=20, message="the stray server asked for its listener")
        time.sleep(0.5)
        assert not stray.serving()
        assert module_mesh.v1.serving() and module_mesh.v2.serving()
    finally:
        stray.stop()


def test_split_80_20_between_subsets_over_500_calls(mesh: GrpcMesh) -> None:
    n = 500
    counts = mesh.spread(n)
    assert counts["greeter-v1"] + counts["greeter-v2"] == n, counts  # no call failed
    assert_share(counts["greeter-v1"], n, 80, counts)
    no_nacks(mesh.syncz())


def test_header_match_and_the_names_a_channel_may_use(mesh: GrpcMesh) -> None:
    assert mesh.spread(50, metadata={"x-user": "tester"}) == {"greeter-v2": 50}
    assert mesh.spread(50, metadata={"x-user": "someone"}).keys() == {"greeter-v1", "greeter-v2"}
    # The listener names Istio accepts, short ones in the client's own namespace.
    for target in ("xds:///greeter:50051", f"xds:///greeter.{NS}:50051", f"xds:///greeter.{NS}.svc:50051"):
        assert mesh.spread(10, target, metadata={"x-user": "tester"}, wait_for_ready=True, timeout=15) == \
            {"greeter-v2": 10}, target


def test_route_changes_and_subset_renames_while_calls_flow(mesh: GrpcMesh) -> None:
    """Every call of a continuous stream succeeds while the routes move between subsets,
    and while the subsets are renamed (the client drops its old clusters for new ones)."""
    mesh.client.loop_start(TARGET)
    try:
        mesh.routes(virtual_service(split("v1", "v2", 0)), lambda: mesh.spread(20) == {"greeter-v2": 20},
                    "sends everything to v2")
        # Rename, make-before-break: new subsets, the routes onto them, then the old ones go.
        mesh.destination_rule({"v1": "v1", "v2": "v2", "blue": "v1", "green": "v2"})
        mesh.routes(virtual_service(split("blue", "green", 100)), lambda: mesh.spread(20) == {"greeter-v1": 20},
                    "sends everything to blue")
        mesh.destination_rule({"blue": "v1", "green": "v2"})
        mesh.routes(virtual_service(split("blue", "green", 50)),
                    lambda: mesh.spread(40).keys() == {"greeter-v1", "greeter-v2"}, "splits blue and green")
        time.sleep(0.5)
    finally:
        flowed = mesh.client.loop_stop()
    assert flowed["errors"] == {}, flowed["details"]
    assert sum(flowed["ok"].values()) >= 50 and flowed["ok"].keys() == {"greeter-v1", "greeter-v2"}, flowed
    no_nacks(mesh.syncz())


def test_consistent_hash_on_a_header_is_ring_hash_for_grpc(mesh: GrpcMesh) -> None:
    """A DestinationRule's consistentHash: gRPC takes the RING_HASH cluster and the header
    hash policy (gRFC A42), so one user's calls stay on one pod."""
    mesh.destination_rule(SUBSETS, {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}})
    everyone = {"name": "everyone", "route": [{"destination": {"host": "greeter"}}]}
    mesh.routes(virtual_service(everyone), lambda: "greeter-v3" in mesh.spread(60), "routes to every pod")
    users = [f"user-{i}" for i in range(12)]

    def sticky() -> dict[str, str]:
        pods = {}
        for user in users:
            counts = mesh.spread(8, metadata={"x-user": user})
            assert len(counts) == 1, (user, counts)  # every call of a user on one pod
            pods[user] = next(iter(counts))
        return pods

    pods = eventually(sticky, timeout=20, message="calls stick to a pod per user")
    assert len(set(pods.values())) >= 2, pods  # and the users spread over the pods
    assert sticky() == pods
    no_nacks(mesh.syncz())


def test_removed_service_fails_the_channel_cleanly(mesh: GrpcMesh) -> None:
    farewell = f"xds:///farewell.{NS}.svc.cluster.local:{FAREWELL_PORT}"
    mesh.config.write("farewell.yaml", service("farewell", FAREWELL_PORT))
    eventually(lambda: sum(mesh.spread(5, farewell, timeout=3).values()) == 5
               and not mesh.client.calls(farewell, 5)["errors"], timeout=20, message="farewell answers")
    mesh.config.remove("farewell.yaml")

    def refused() -> dict[str, Any]:
        # UNAVAILABLE, not DEADLINE_EXCEEDED: the channel knows, it does not wait out the deadline.
        result = mesh.client.calls(farewell, 5, timeout=5)
        assert result["errors"] == {"UNAVAILABLE": 5}, result
        return result

    result = eventually(refused, timeout=20, message="calls to the removed service fail")
    assert any("does not exist" in d for d in result["details"]), result["details"]
    # The other service is unaffected; the removed one comes back when it is back.
    assert not mesh.client.calls(TARGET, 20)["errors"]
    mesh.config.write("farewell.yaml", service("farewell", FAREWELL_PORT))
    eventually(lambda: not mesh.client.calls(farewell, 5)["errors"], timeout=20, message="farewell is back")
    mesh.config.remove("farewell.yaml")


def test_retry_policy_turns_unavailable_into_success(mesh: GrpcMesh) -> None:
    """Each flaky call fails UNAVAILABLE on its first attempt only: with retries off every
    one fails, with the VirtualService's retries every one succeeds.

    The flaky calls go to greeter-v3, a server that is not xDS-enabled: grpcio 1.85's
    xDS-enabled server aborts its process on a trailers-only error answer (the only kind a
    client can retry), which is what a flaky first attempt is. The retries are the
    client's, from the route meshpilot sent it; the plain calls (to v1 or v2) show which
    version of the routes the client has."""

    def routes(retries: dict[str, Any] | None, plain: str) -> None:
        flaky = {"name": "flaky", "match": [{"headers": {"x-flaky": {}}}], "route": [to("v3")]}
        if retries is not None:
            flaky["retries"] = retries
        mesh.routes(virtual_service(flaky, {"name": "plain", "route": [to(plain)]}),
                    lambda: mesh.spread(10) == {f"greeter-{plain}": 10}, f"has the routes with retries {retries}")

    routes({"attempts": 0}, "v1")
    assert mesh.spread(20, flaky="off") == {"UNAVAILABLE": 20}
    routes({"attempts": 3, "retryOn": "unavailable"}, "v2")
    assert mesh.spread(20, flaky="on") == {"greeter-v3": 20}
    # Retries on Envoy's conditions only (5xx): nothing gRPC can retry on, and meshpilot says so.
    routes({"attempts": 3, "retryOn": "5xx"}, "v1")
    assert mesh.spread(10, flaky="5xx") == {"UNAVAILABLE": 10}
    _, errors = mesh.server.get("/debug/errors")
    assert any(e["field"] == "spec.http[0].retries.retryOn" and "proxyless gRPC" in e["message"] for e in errors), errors
    # Istio's default (no retries field): two retries on unavailable, which gRPC honours too.
    routes(None, "v2")
    assert mesh.spread(10, flaky="default") == {"greeter-v3": 10}


def test_envoy_and_grpc_clients_each_get_their_own_config(
    mesh: GrpcMesh, start_envoy: Callable[..., EnvoyProcess]
) -> None:
    ip = mesh.loopback.allocate()
    bootstrap = build_bootstrap(xds_address=mesh.server.xds_address, proxy_ip=ip, namespace=NS, pod="envoy-client",
                                labels={"app": "envoy-client"})
    envoy = start_envoy(bootstrap, wait="live")

    # Envoy routes the same VirtualService for a plain gRPC client calling through it.
    with grpc.insecure_channel(f"{ip}:{PORT}", options=[("grpc.default_authority", f"{HOST}:{PORT}")]) as channel:
        say = channel.unary_unary(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)

        def via_envoy(n: int, metadata: tuple[tuple[str, str], ...] = ()) -> collections.Counter[str]:
            return collections.Counter(json.loads(say(b"hi", metadata=metadata, timeout=5))["pod"] for _ in range(n))

        eventually(lambda: via_envoy(1), timeout=20, message="Envoy routes to the greeters")
        assert via_envoy(30, (("x-user", "tester"),)) == {"greeter-v2": 30}
        assert via_envoy(100).keys() == {"greeter-v1", "greeter-v2"}
    assert mesh.spread(30, metadata={"x-user": "tester"}) == {"greeter-v2": 30}

    def config_of(proxy_id: str) -> dict[str, Any]:
        status, body = mesh.server.get(f"/debug/config?proxy={proxy_id}")
        assert status == 200, body
        return {t: set(v["resources"]) for t, v in body["types"].items()}

    grpc_view = config_of(mesh.client_id)
    envoy_view = config_of(bootstrap["node"]["id"])
    assert f"{HOST}:{PORT}" in grpc_view["lds"] and f"greeter:{PORT}" in grpc_view["lds"]
    assert not any("_" in name and ":" not in name for name in grpc_view["lds"])  # no Envoy <ip>_<port>
    assert f"outbound|{PORT}||{HOST}" in grpc_view["rds"] and "BlackHoleCluster" not in grpc_view["cds"]
    assert f"{ip}_{PORT}" in envoy_view["lds"] and str(PORT) in envoy_view["rds"]
    assert not any(name.endswith(f":{PORT}") for name in envoy_view["lds"])  # no gRPC api listeners
    assert "BlackHoleCluster" in envoy_view["cds"]
    dump = json.dumps(envoy.config_dump())
    assert "api_listener" not in dump and "xds.istio.io/grpc" not in dump
    no_nacks(mesh.syncz())
