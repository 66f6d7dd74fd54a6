"""Sidecar through real Envoy: a Sidecar importing one namespace shrinks a proxy's config,
a change outside its scope sends it nothing (Envoy's xDS update counters stay put) while
one inside does, and outboundTrafficPolicy: ALLOW_ANY passes an unknown destination to the
upstream its Host names, REGISTRY_ONLY answers 502."""

from __future__ import annotations

import time
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

from xds_server.local.bootstrap import build_bootstrap

PORT = 9080  # every service's port
TARGET = 8080  # where its pods answer
NAMESPACES = ("a", "b", "c")
PER_NAMESPACE = 8
TYPES = ("cds", "eds", "lds", "rds")


def services(namespace: str, ips: list[str], names: list[str], port: int = PORT) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, ip in zip(names, ips, strict=True):
        out += [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
             "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port, "targetPort": TARGET}]}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-0", "namespace": namespace,
                                                             "labels": {"app": name}},
             "status": {"phase": "Running", "podIP": ip}},
        ]
    return out


def sidecar(namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": "default", "namespace": namespace}, "spec": spec}


def client(server: MeshpilotServer, start_envoy: Callable[..., EnvoyProcess], ip: str, namespace: str,
           name: str) -> EnvoyProcess:
    return start_envoy(build_bootstrap(xds_address=server.xds_address, proxy_ip=ip, namespace=namespace, pod=name,
                                       labels={"app": name}), wait="live", name=name)


def config_bytes(server: MeshpilotServer, envoy: EnvoyProcess) -> dict[str, int]:
    node = envoy.bootstrap_dump()["node"]["id"]
    status, body = server.get(f"/debug/config?proxy={node}")
    assert status == 200, body
    return {t: body["types"][t]["bytes"] for t in TYPES}


def updates(envoy: EnvoyProcess) -> int:
    """Every xDS update Envoy received (CDS, LDS, each RDS and EDS subscription): SotW ADS
    counts one attempt per response it is sent."""
    return sum(envoy.stats(r"update_attempt$").values())


def outbound_hosts(envoy: EnvoyProcess) -> set[str]:
    return {name.split("|")[3] for name in envoy.clusters() if name.startswith("outbound|")}


def test_sidecar_shrinks_config_and_out_of_scope_changes_push_nothing(
    config_dir: ConfigDir,
    start_meshpilot: Callable[..., MeshpilotServer],
    start_envoy: Callable[..., EnvoyProcess],
    start_upstream: Callable[..., UpstreamServer],
    loopback: LoopbackAllocator,
) -> None:
    app = start_upstream(loopback.allocate(), TARGET, service="a-s0")
    for ns in NAMESPACES:
        names = [f"s{i}" for i in range(PER_NAMESPACE)]
        ips = [app.ip if (ns, i) == ("a", 0) else f"10.{NAMESPACES.index(ns)}.0.{i + 1}" for i in range(PER_NAMESPACE)]
        # A port per namespace: the outbound listeners shrink with the scope too.
        config_dir.write(f"{ns}.yaml", services(ns, ips, names, PORT + NAMESPACES.index(ns)))
    server = start_meshpilot(config_dir)
    ip = loopback.allocate()
    scoped = client(server, start_envoy, ip, "a", "client")
    witness = client(server, start_envoy, loopback.allocate(), "c", "witness")  # no Sidecar applies to c
    eventually(lambda: request(ip, PORT, "/", "s0")[0] == 200,
               timeout=20, message="the client reaches s0 in its namespace")
    eventually(lambda: len(outbound_hosts(scoped)) == len(NAMESPACES) * PER_NAMESPACE, timeout=20)
    before = config_bytes(server, scoped)

    config_dir.write("sidecar-a.yaml", sidecar("a", {"egress": [{"hosts": ["./*"]}]}))
    a_hosts = {f"s{i}.a.svc.cluster.local" for i in range(PER_NAMESPACE)}
    eventually(lambda: outbound_hosts(scoped) == a_hosts, timeout=20, message="Envoy holds namespace a only")
    after = config_bytes(server, scoped)
    for t in TYPES:
        assert after[t] < before[t], (t, before, after)
    # Three namespaces alike, one imported: about a third (plus what every proxy has).
    assert sum(after.values()) < 0.55 * sum(before.values()), (before, after)
    assert request(ip, PORT, "/", "s0")[0] == 200  # traffic still flows inside the scope
    assert len(outbound_hosts(witness)) == len(NAMESPACES) * PER_NAMESPACE  # the witness is unscoped

    # Outside the scope: a new service in b. The witness gets it; the scoped client nothing.
    eventually(lambda: _settled(scoped), timeout=10)
    counted = updates(scoped)
    config_dir.write("b-new.yaml", services("b", ["10.1.1.1"], ["fresh"], PORT + 1))
    eventually(lambda: "fresh.b.svc.cluster.local" in outbound_hosts(witness), timeout=20,
               message="meshpilot pushed the change")
    assert updates(scoped) == counted
    config_dir.write("b-new.yaml", services("b", ["10.1.1.2"], ["fresh"], PORT + 1))  # and an endpoint move there
    eventually(lambda: ("10.1.1.2", TARGET, "HEALTHY") in witness.endpoints(f"outbound|{PORT + 1}||fresh.b.svc.cluster.local"),
               timeout=20)
    assert updates(scoped) == counted, "a change outside the Sidecar's scope reached the proxy"
    assert config_bytes(server, scoped) == after

    # Inside the scope: a new service in a reaches the client.
    config_dir.write("a-new.yaml", services("a", ["10.0.1.1"], ["fresh"]))
    eventually(lambda: "fresh.a.svc.cluster.local" in outbound_hosts(scoped), timeout=20)
    assert updates(scoped) > counted


def test_outbound_traffic_policy_allow_any_and_registry_only(
    config_dir: ConfigDir,
    start_meshpilot: Callable[..., MeshpilotServer],
    start_envoy: Callable[..., EnvoyProcess],
    start_upstream: Callable[..., UpstreamServer],
    loopback: LoopbackAllocator,
) -> None:
    known = start_upstream(loopback.allocate(), TARGET, service="known")
    external = start_upstream(loopback.allocate(), 0, service="external")  # in no registry
    config_dir.write("a.yaml", services("a", [known.ip], ["known"]))
    server = start_meshpilot(config_dir)
    ip = loopback.allocate()
    client(server, start_envoy, ip, "a", "client")
    outside = f"{external.ip}:{external.port}"

    def answer(host: str) -> tuple[int, str]:
        status, body = request(ip, PORT, "/", host)
        return status, body.get("service", "") if isinstance(body, dict) else ""

    # ALLOW_ANY (the mesh default): PassthroughCluster, to the address the Host names.
    eventually(lambda: answer("known") == (200, "known"), timeout=20)
    eventually(lambda: answer(outside) == (200, "external"), timeout=20, message="ALLOW_ANY passes it through")
    assert external.requests >= 1

    config_dir.write("sidecar.yaml", sidecar("a", {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}))
    eventually(lambda: answer(outside)[0] == 502, timeout=20, message="REGISTRY_ONLY blocks the unknown host")
    served = external.requests
    assert answer(outside)[0] == 502
    assert external.requests == served  # blocked at the proxy: nothing reached the outside
    assert answer("known") == (200, "known")

    # The mesh config says REGISTRY_ONLY; a Sidecar saying ALLOW_ANY wins for its proxies.
    config_dir.write("mesh.yaml", {"apiVersion": "meshpilot.io/v1alpha1", "kind": "MeshConfig",
                                   "metadata": {"name": "mesh", "namespace": "istio-system"},
                                   "spec": {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}})
    config_dir.write("sidecar.yaml", sidecar("a", {"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}}))
    eventually(lambda: answer(outside) == (200, "external"), timeout=20, message="the Sidecar's ALLOW_ANY wins")
    config_dir.remove("sidecar.yaml")
    eventually(lambda: answer(outside)[0] == 502, timeout=20, message="the mesh's REGISTRY_ONLY applies")


def _settled(envoy: EnvoyProcess) -> bool:
    """No xDS update arrived during a short while (the Sidecar's push is fully applied)."""
    first = updates(envoy)
    time.sleep(1.0)
    return updates(envoy) == first


def test_sidecar_ingress_listener_replaces_the_service_port(
    config_dir: ConfigDir,
    start_meshpilot: Callable[..., MeshpilotServer],
    start_envoy: Callable[..., EnvoyProcess],
    start_upstream: Callable[..., UpstreamServer],
    loopback: LoopbackAllocator,
) -> None:
    """The Sidecar's ingress port 9090 forwards to its defaultEndpoint 127.0.0.1:7070, the
    workload's loopback: where the app listens (the pod's app-address annotation)."""
    pod_ip, app_ip = loopback.allocate(), loopback.allocate()
    app = start_upstream(app_ip, 7070, service="web")
    web = services("a", [pod_ip], ["web"])
    web[1]["metadata"]["annotations"] = {"sidecar.meshpilot.io/app-address": app_ip}
    config_dir.write("web.yaml", web)
    config_dir.write("sidecar.yaml", {**sidecar("a", {
        "workloadSelector": {"labels": {"app": "web"}},
        "ingress": [{"port": {"number": 9090, "protocol": "HTTP", "name": "http"},
                     "defaultEndpoint": "127.0.0.1:7070"}]}), "metadata": {"name": "web", "namespace": "a"}})
    server = start_meshpilot(config_dir)
    proxy = client(server, start_envoy, pod_ip, "a", "web")
    eventually(lambda: f"inbound|{pod_ip}_9090" in proxy.listeners(), timeout=20)
    assert f"inbound|{pod_ip}_{TARGET}" not in proxy.listeners()  # the service's port is replaced
    status, body = request(pod_ip, 9090, "/", "web")
    assert status == 200 and body["listener"] == f"{app_ip}:7070", body
    assert app.requests == 1
    assert server.get("/debug/errors")[1] == []
