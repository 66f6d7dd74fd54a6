"""The resource index finds a proxy's workload by IP, and follows Pods as they move."""

from __future__ import annotations

from translators.model import Pod, WorkloadEntry, parse_resource
from translators.model.index import ResourceIndex


def pod(name: str, ip: str) -> Pod:
    return parse_resource({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns"},
                           "status": {"podIP": ip}})  # type: ignore[return-value]


def entry(name: str, ip: str) -> WorkloadEntry:
    return parse_resource({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                           "metadata": {"name": name, "namespace": "ns"}, "spec": {"address": ip}})  # type: ignore[return-value]


def test_workload_by_ip_follows_changes_and_prefers_pods():
    index = ResourceIndex()
    a, vm = pod("a", "127.0.70.1"), entry("vm", "127.0.70.2")
    resources = {a.key: a, vm.key: vm}
    index.apply(resources, resources.keys())
    assert index.workload_at("ns", "127.0.70.1") is a
    assert index.workload_at("ns", "127.0.70.2") is vm
    assert index.workload_at("other", "127.0.70.1") is None

    moved = pod("a", "127.0.70.3")
    index.apply({**resources, moved.key: moved}, [moved.key])
    assert index.workload_at("ns", "127.0.70.1") is None and index.workload_at("ns", "127.0.70.3") is moved

    shadow = pod("b", "127.0.70.2")  # a Pod and a WorkloadEntry on one IP: the Pod is the workload
    index.apply({shadow.key: shadow}, [shadow.key])
    assert index.workload_at("ns", "127.0.70.2") is shadow

    index.apply({}, [moved.key, shadow.key])
    assert index.workload_at("ns", "127.0.70.3") is None and index.workload_at("ns", "127.0.70.2") is vm
