"""The harness itself, and one request through meshpilot and a real sidecar using all of it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from harness import (
    ConfigDir,
    EnvoyProcess,
    LoopbackAllocator,
    MeshpilotServer,
    UpstreamServer,
    eventually,
    request,
    request_full,
)

from xds_server.local.bootstrap import build_bootstrap


def test_loopback_addresses_are_unique_and_clear_of_the_demo() -> None:
    alloc = LoopbackAllocator(64)
    ips = [alloc.allocate() for _ in range(600)]
    assert len(set(ips)) == 600
    assert all(ip.startswith("127.64.") and not ip.endswith((".0", ".1", ".255")) for ip in ips)
    with pytest.raises(ValueError):
        LoopbackAllocator(10)


def test_upstream_answers_and_counts(start_upstream: Callable[..., UpstreamServer]) -> None:
    up = start_upstream(service="reviews", version="v1", pod="reviews-v1")
    status, body = request(up.ip, up.port, "/hello?x=1", "reviews")
    assert status == 200
    assert body["service"] == "reviews" and body["version"] == "v1" and body["pod"] == "reviews-v1"
    assert body["path"] == "/hello?x=1" and body["host"] == "reviews"
    status, _, headers = request_full(up.ip, up.port, "/?status=503")
    assert status == 503 and headers["x-echo-pod"] == "reviews-v1"
    assert up.requests == 2
    up.reset()
    assert up.requests == 0


def test_eventually_retries_and_reports() -> None:
    calls = []

    def third_time() -> int:
        calls.append(1)
        assert len(calls) >= 3, "not yet"
        return len(calls)

    assert eventually(third_time, timeout=2, interval=0.01) == 3
    with pytest.raises(AssertionError, match="never"):
        eventually(lambda: False, timeout=0.2, interval=0.01, message="never")


def test_a_request_through_meshpilot_and_a_sidecar(
    config_dir: ConfigDir,
    start_meshpilot: Callable[..., MeshpilotServer],
    start_envoy: Callable[..., EnvoyProcess],
    start_upstream: Callable[..., UpstreamServer],
    loopback: LoopbackAllocator,
) -> None:
    """A client sidecar, a Service whose only pod has no sidecar: the endpoint is the app itself."""
    client_ip, pod_ip = loopback.allocate(), loopback.allocate()
    app = start_upstream(pod_ip, 9000, service="echo", pod="echo-1")
    config_dir.write("mesh.yaml", [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "default"},
         "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": 8000, "targetPort": 9000}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "echo-1", "namespace": "default", "labels": {"app": "echo"}},
         "status": {"phase": "Running", "podIP": pod_ip}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "client", "namespace": "default", "labels": {"app": "client"}},
         "status": {"phase": "Running", "podIP": client_ip}},
    ])
    server = start_meshpilot(config_dir)
    assert server.get("/healthz")[0] == 200
    envoy = start_envoy(build_bootstrap(xds_address=server.xds_address, proxy_ip=client_ip, namespace="default",
                                        pod="client", labels={"app": "client"}), wait="live")

    eventually(lambda: request(client_ip, 8000, "/x", "echo")[0] == 200, timeout=15,
               message="the client's outbound listener routes to the echo pod")
    assert f"{client_ip}_8000" in envoy.listeners()
    assert "outbound|8000||echo.default.svc.cluster.local" in envoy.clusters()
    assert envoy.endpoints("outbound|8000||echo.default.svc.cluster.local") == [(pod_ip, 9000, "HEALTHY")]
    assert app.requests >= 1
    assert envoy.stat("control_plane.connected_state") == 1
