"""The test cluster itself: real API server, real controllers, the built kubectl and helm."""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

from harness.kube import KUBE_VERSION, KubeCluster, pod_manifest


def _slices(cluster: KubeCluster, namespace: str, service: str) -> list[dict[str, Any]]:
    return list(cluster.get("endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}")["items"])


def _eventually(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_kubectl_and_server_are_the_pinned_version(kube_cluster: KubeCluster) -> None:
    out = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == KUBE_VERSION
    assert out["serverVersion"]["gitVersion"] == KUBE_VERSION
    # Not /usr/bin/kubectl (v1.32 on these machines, outside the version skew): the built one.
    assert shutil.which("kubectl") == str(kube_cluster.bin / "kubectl")


def test_helm_runs_against_the_cluster(kube_cluster: KubeCluster) -> None:
    assert kube_cluster.helm("version", "--short").stdout.startswith("v3.22.0")
    # Helm reaches the API server (an empty release list, not a connection error).
    listed = json.loads(kube_cluster.helm("list", "--all-namespaces", "-o", "json").stdout)
    assert listed == []


def test_endpointslice_follows_a_service_and_a_ready_pod(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    ip = kube_cluster.pod_ip()
    assert ip.startswith("10.244.")
    kube_cluster.apply(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": ns},
         "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        pod_manifest("echo-1", ns, {"app": "echo"}),
    )
    # The Pod exists but has no IP yet: the controller publishes no endpoint for it.
    assert _eventually(lambda: _slices(kube_cluster, ns, "echo"))
    assert all(not s.get("endpoints") for s in _slices(kube_cluster, ns, "echo"))

    kube_cluster.set_pod_ready(ns, "echo-1", ip)

    def ready_endpoints() -> list[tuple[str, bool]]:
        return [
            (addr, bool(ep["conditions"].get("ready")))
            for s in _slices(kube_cluster, ns, "echo")
            for ep in s.get("endpoints") or []
            for addr in ep["addresses"]
        ]

    assert _eventually(lambda: ready_endpoints() == [(ip, True)]), ready_endpoints()
    (slice_,) = _slices(kube_cluster, ns, "echo")
    assert slice_["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert slice_["endpoints"][0]["targetRef"]["name"] == "echo-1"

    # Unready, then gone: the controller follows.
    kube_cluster.set_pod_ready(ns, "echo-1", ip, ready=False)
    assert _eventually(lambda: ready_endpoints() == [(ip, False)]), ready_endpoints()
    kube_cluster.kubectl("delete", "pod", "echo-1", "-n", ns, "--grace-period=0", "--force")
    assert _eventually(lambda: ready_endpoints() == []), ready_endpoints()
