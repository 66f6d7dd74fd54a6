"""/debug/pushes and meshpilot_proxy_convergence_seconds: a VirtualService edit, followed to
two real Envoy sidecars (one SotW, one delta) until both ACKed it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from harness import ConfigDir, EnvoyProcess, LoopbackAllocator, MeshpilotServer, UpstreamServer, eventually

from tests.e2e.test_traffic import TARGET, Mesh, reviews_service, routing


def test_edit_is_tracked_until_both_proxies_ack(
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
    server = start_meshpilot(config_dir)
    mesh = Mesh(config_dir, server, None, loopback.allocate(), v1, v2, start_envoy, loopback)  # type: ignore[arg-type]
    sotw_ip, delta_ip = mesh.client_ip, loopback.allocate()
    mesh.client = mesh.sidecar(sotw_ip, name="sotw")
    mesh.sidecar(delta_ip, delta=True, name="delta")
    for ip in (sotw_ip, delta_ip):
        eventually(lambda ip=ip: mesh.version("/", via=ip) == "v1", timeout=20, message=f"{ip} routes to v1")
    status, pushes = server.get("/debug/pushes")
    assert status == 200 and pushes, pushes
    before = max(p["version"] for p in pushes)

    config_dir.write("reviews-routing.yaml", routing(0, 100))
    for ip in (sotw_ip, delta_ip):
        eventually(lambda ip=ip: mesh.version("/", via=ip) == "v2", timeout=20, message=f"{ip} follows the edit")

    def converged() -> dict[str, Any]:
        newer = [p for p in server.get("/debug/pushes")[1] if p["version"] > before]
        assert newer, "the edit is not recorded"
        edit = newer[-1]  # newest first: the oldest newer one is the edit itself
        assert (edit["proxies"], edit["acked"], edit["pending"], edit["nacked"]) == (2, 2, 0, 0), edit
        return edit

    edit = eventually(converged, timeout=20)
    times = edit["ack_ms"]
    assert 0 < times["p50"] <= times["p99"] <= times["max"], times
    assert isinstance(edit["time"], float)

    metrics = server.get("/metrics")[1]
    count = re.search(r"^meshpilot_proxy_convergence_seconds_count (\S+)$", metrics, re.M)
    assert count is not None and float(count.group(1)) >= 2, metrics[-2000:]
    assert re.search(r'^meshpilot_proxy_convergence_seconds_bucket\{le="\+Inf"\} ', metrics, re.M)
