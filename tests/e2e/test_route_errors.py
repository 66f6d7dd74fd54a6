"""A broken destination breaks its own route only, through real Envoy.

A route to a subset no DestinationRule defines keeps its cluster name (as istiod does):
Envoy answers 503 for that route alone, the other routes of the VirtualService and the
other services keep working, and /debug/errors names the field. Defining the subset heals
the route without touching the VirtualService.
"""

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

from xds_server.local.bootstrap import build_bootstrap

PORT = 9080
TARGET = 8080


def service(name: str, pods: dict[str, str]) -> list[dict[str, Any]]:
    """Service ``name`` and one Running pod per version (version -> IP)."""
    out: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": PORT, "targetPort": TARGET}]}}]
    out += [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": f"{name}-{v}", "namespace": "default", "labels": {"app": name, "version": v}},
             "status": {"phase": "Running", "podIP": ip}} for v, ip in pods.items()]
    return out


def subsets(*names: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"host": "reviews", "subsets": [{"name": n, "labels": {"version": n}} for n in names]}}


ROUTING = {
    "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
    "metadata": {"name": "reviews", "namespace": "default"},
    "spec": {"hosts": ["reviews"], "http": [
        {"name": "beta", "match": [{"uri": {"prefix": "/beta"}}],
         "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},  # not defined yet
        {"name": "stable", "route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
    ]},
}


def test_a_route_to_a_missing_subset_fails_alone_and_is_named(
    config_dir: ConfigDir,
    start_meshpilot: Callable[..., MeshpilotServer],
    start_envoy: Callable[..., EnvoyProcess],
    start_upstream: Callable[..., UpstreamServer],
    loopback: LoopbackAllocator,
) -> None:
    v1 = start_upstream(loopback.allocate(), TARGET, service="reviews", version="v1", pod="reviews-v1")
    v2 = start_upstream(loopback.allocate(), TARGET, service="reviews", version="v2", pod="reviews-v2")
    ratings = start_upstream(loopback.allocate(), TARGET, service="ratings", version="v1", pod="ratings-v1")
    config_dir.write("services.yaml", service("reviews", {"v1": v1.ip, "v2": v2.ip}) + service("ratings", {"v1": ratings.ip}))
    config_dir.write("reviews-rule.yaml", subsets("v1"))
    config_dir.write("reviews-routing.yaml", ROUTING)
    server = start_meshpilot(config_dir)
    client_ip = loopback.allocate()
    client = start_envoy(build_bootstrap(xds_address=server.xds_address, proxy_ip=client_ip, namespace="default",
                                         pod="client", labels={"app": "client"}), wait="live", name="client")

    def answer(path: str, host: str = "reviews") -> tuple[int, str]:
        status, body = request(client_ip, PORT, path, host)
        return status, (str(body.get("service")) + "/" + str(body.get("version")) if isinstance(body, dict) else "")

    eventually(lambda: answer("/") == (200, "reviews/v1"), timeout=20, message="the stable route serves")

    # The broken route answers 503 from Envoy itself: nothing reaches a reviews pod.
    before = (v1.requests, v2.requests)
    assert [answer("/beta/x")[0] for _ in range(10)] == [503] * 10
    assert (v1.requests, v2.requests) == before
    no_cluster = {k: v for k, v in client.stats("no_cluster").items() if k.startswith("http.outbound")}
    assert list(no_cluster.values()) == [10], no_cluster  # Envoy's router: "the route's cluster does not exist"
    # The other route of the same VirtualService, and another service, are unaffected.
    assert [answer(f"/stable/{i}") for i in range(10)] == [(200, "reviews/v1")] * 10
    assert [answer("/", "ratings") for _ in range(5)] == [(200, "ratings/v1")] * 5
    assert v1.requests - before[0] == 10 and ratings.requests == 5

    (problem,) = [e for e in server.get("/debug/errors")[1] if e["field"].endswith(".subset")]
    assert (problem["file"], problem["resource"], problem["field"], problem["severity"]) == (
        "reviews-routing.yaml", "VirtualService default/reviews", "spec.http[0].route[0].destination.subset", "error")
    assert problem["message"] == ("subset 'v2' is not defined by any DestinationRule for host "
                                  "reviews.default.svc.cluster.local; requests on this route get 503")

    # Defining the subset heals the route; the VirtualService was right all along.
    config_dir.write("reviews-rule.yaml", subsets("v1", "v2"))
    eventually(lambda: answer("/beta/x") == (200, "reviews/v2"), timeout=10, message="the subset appears")
    assert [e for e in server.get("/debug/errors")[1] if e["field"].endswith(".subset")] == []
    assert answer("/") == (200, "reviews/v1")
