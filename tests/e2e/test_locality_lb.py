"""Locality load balancing through real Envoy: failover by priority when the local pod is
ejected, and a distribute split between zones, as seen from a sidecar in us-east/z1."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import ConfigDir, EnvoyProcess, LoopbackAllocator, MeshpilotServer, eventually, request
from harness.controlled_upstream import ControlledUpstream

from xds_server.local.bootstrap import build_bootstrap

PORT, TARGET = 9080, 8080


def _pod(name: str, ip: str, where: str, tier: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"app": "backend", "tier": tier, "istio-locality": where.replace("/", ".")}},
            "status": {"phase": "Running", "podIP": ip}}


def _rule(traffic_policy: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "backend", "namespace": "default"},
            "spec": {"host": "backend", "trafficPolicy": traffic_policy}}


@pytest.fixture
def pods(loopback: LoopbackAllocator) -> Iterator[dict[str, ControlledUpstream]]:
    started = {name: ControlledUpstream(loopback.allocate(), TARGET, pod=name).start()
               for name in ("local", "same-region", "far")}
    yield started
    for p in started.values():
        p.stop()


@pytest.fixture
def client(config_dir: ConfigDir, pods: dict[str, ControlledUpstream], loopback: LoopbackAllocator,
           start_meshpilot: Callable[..., MeshpilotServer], start_envoy: Callable[..., EnvoyProcess]) -> str:
    config_dir.write("backend.yaml", [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "backend", "namespace": "default"},
         "spec": {"selector": {"app": "backend"}, "ports": [{"name": "http", "port": PORT, "targetPort": TARGET}]}},
        _pod("backend-local", pods["local"].ip, "us-east/z1", "gold"),
        _pod("backend-same-region", pods["same-region"].ip, "us-east/z2", "silver"),
        _pod("backend-far", pods["far"].ip, "eu-west/z1", "silver"),
    ])
    server = start_meshpilot(config_dir)
    ip = loopback.allocate()
    start_envoy(build_bootstrap(xds_address=server.xds_address, proxy_ip=ip, namespace="default", pod="client",
                                labels={"app": "client", "tier": "silver"}, locality="us-east/z1"),
                wait="live", name="client")
    return ip


def _hits(ip: str, n: int) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        status, body = request(ip, PORT, "/", "backend")
        out[body["pod"] if status == 200 and isinstance(body, dict) else f"HTTP {status}"] += 1
    return out


def test_failover_prefers_the_local_zone_then_the_region(
        client: str, config_dir: ConfigDir, pods: dict[str, ControlledUpstream]) -> None:
    config_dir.write("rule.yaml", _rule({"outlierDetection": {
        "consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "30s", "maxEjectionPercent": 100}}))
    eventually(lambda: _hits(client, 30) == collections.Counter({"local": 30}), timeout=15,
               message="all traffic stays in the proxy's own zone")
    for pod in pods.values():
        pod.reset()  # (before the rule arrived, requests were spread over all three)
    pods["local"].status = 503  # the local pod fails: ejected, and traffic fails over within the region
    eventually(lambda: _hits(client, 30) == collections.Counter({"same-region": 30}), timeout=15,
               message="traffic fails over to the same region, not to the far one")
    assert pods["far"].requests == 0
    pods["same-region"].status = 503
    eventually(lambda: _hits(client, 20)["far"] == 20, timeout=15, message="then to the far region")


def test_distribute_splits_between_zones(client: str, config_dir: ConfigDir) -> None:
    config_dir.write("rule.yaml", _rule({"loadBalancer": {"simple": "ROUND_ROBIN", "localityLbSetting": {
        "distribute": [{"from": "us-east/z1/*", "to": {"us-east/z1/*": 80, "us-east/z2/*": 20}}]}}}))
    eventually(lambda: _hits(client, 20)["far"] == 0 and sum(_hits(client, 20).values()) == 20, timeout=15)

    def split() -> collections.Counter[str]:
        counts = _hits(client, 500)
        assert counts["far"] == 0 and counts["local"] + counts["same-region"] == 500, counts
        assert abs(100 * counts["local"] / 500 - 80) <= 6, counts
        return counts

    eventually(split, timeout=30, interval=0.5, message="an 80/20 split between the two us-east zones")


def test_failover_priority_orders_endpoints_by_the_labels_they_share(
        client: str, config_dir: ConfigDir, pods: dict[str, ControlledUpstream]) -> None:
    """The client is tier silver in us-east: silver pods in us-east first (both labels match),
    then silver elsewhere, then the gold pod, even though it is in the client's own zone."""
    config_dir.write("rule.yaml", _rule({
        "outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "30s",
                             "maxEjectionPercent": 100},
        "loadBalancer": {"localityLbSetting": {"failoverPriority": ["tier", "topology.kubernetes.io/region"]}}}))
    eventually(lambda: _hits(client, 30) == collections.Counter({"same-region": 30}), timeout=15,
               message="the endpoint sharing both labels takes all traffic")
    pods["same-region"].status = 503
    eventually(lambda: _hits(client, 20) == collections.Counter({"far": 20}), timeout=15,
               message="then the one sharing the first label")
