"""A translator that follows one change at a time gives what a fresh one gives for the
same world: the targeted registry rebuild (only the services a changed Service, Pod,
EndpointSlice or WorkloadEntry can touch) and the route table rebuild of the hosts whose
shape changed must never miss one."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from translate_cases import TYPES, render

from translators import Translator
from translators.model import Resource, parse_resource
from translators.model.world import Proxy, World

PROXY = Proxy(id="sidecar~10.0.0.100~client.default", ip="10.0.0.100", namespace="default",
              labels={"app": "client"})


def service(name: str, ns: str = "default", port: int = 80, selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": port, "targetPort": 8080}]}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def pod(name: str, ip: str, labels: dict[str, str], ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip}}


def endpoint_slice(name: str, service_name: str, ips: list[str], ns: str = "sliced") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "name": f"p-{ip.replace('.', '-')}"}} for ip in ips]}


def service_entry(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"hosts": [f"{name}.example.com"], "ports": [{"number": 9000, "name": "http", "protocol": "HTTP"}],
                     "resolution": "STATIC", "location": "MESH_INTERNAL", "workloadSelector": {"labels": selector}}}


def workload_entry(name: str, ip: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"address": ip, "labels": labels}}


def virtual_service(host: str, to: str, name: str = "", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name or f"to-{to}", "namespace": "default"},
            "spec": {"hosts": [host] if host else [], "http": [{"route": [{"destination": {"host": to}}]}], **spec}}


def delegating(host: str, child: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": f"root-{child}", "namespace": "default"},
            "spec": {"hosts": [host], "http": [{"match": [{"uri": {"prefix": "/"}}], "delegate": {"name": child}}]}}


def tcp_service() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "default"},
            "spec": {"ports": [{"name": "tcp-db", "port": 5432, "targetPort": 5432}], "selector": {"app": "db"}}}


def tcp_virtual_service(to: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"hosts": ["db"], "tcp": [{"route": [{"destination": {"host": to, "port": {"number": 5432}}}]}]}}


def destination_rule(host: str, ns: str = "default", lb: str = "ROUND_ROBIN", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": f"dr-{host}", "namespace": ns},
            "spec": {"host": f"{host}.default.svc.cluster.local", "trafficPolicy": {"loadBalancer": {"simple": lb}},
                     **spec}}


def selected_rule(host: str, lb: str, selector: dict[str, str]) -> dict[str, Any]:
    """A rule narrowed by workloadSelector to the client workloads it selects (PROXY's app=client)."""
    doc = destination_rule(host, lb=lb, workloadSelector={"matchLabels": selector})
    doc["metadata"]["name"] = f"selected-{host}"
    return doc


def base() -> list[dict[str, Any]]:
    docs = [service(f"s{i}", selector={"app": f"s{i}"}) for i in range(6)]
    docs += [pod(f"s{i}-a", f"10.1.0.{i + 1}", {"app": f"s{i}", "tier": "a"}) for i in range(6)]
    docs += [service("shared", selector={"tier": "a"}), virtual_service("s0", "s1")]
    docs += [service("sl", "sliced"), endpoint_slice("sl-1", "sl", ["10.2.0.1"]),
             pod("p-10-2-0-1", "10.2.0.1", {"x": "y"}, "sliced")]
    docs += [service_entry("ext", {"vm": "yes"}), workload_entry("vm1", "10.3.0.1", {"vm": "yes"})]
    docs += [tcp_service(), tcp_virtual_service("s1")]
    # A rule for everyone, and one that only the proxies of namespace "team" see (a split host).
    docs += [destination_rule("s1"), destination_rule("s3", "team", "LEAST_REQUEST")]
    # And one only the client workloads labelled app=client see (PROXY is one).
    docs += [selected_rule("s1", "RANDOM", {"app": "client"})]
    # Edited in place below (same names and hosts): the translator's swap-in-place path.
    docs += [virtual_service("s2", "s3", name="edited"), virtual_service("s4", "s5", name="local", exportTo=["."]),
             virtual_service("*.example.com", "s2", name="wild"), delegating("s5", "child"),
             virtual_service("", "s2", name="child")]
    return docs


#: One change each, applied in order on top of the last: (what, docs to put, (kind, ns, name) to delete).
EDITS: list[tuple[str, list[dict[str, Any]], list[tuple[str, str, str]]]] = [
    ("a Service's port", [service("s1", port=81, selector={"app": "s1"})], []),
    ("a split host's port", [service("s3", port=82, selector={"app": "s3"})], []),
    ("a split host's Pod", [pod("s3-b", "10.1.0.33", {"app": "s3"})], []),
    ("a client-namespace rule edited", [destination_rule("s3", "team", "RANDOM")], []),
    ("a selected rule edited", [selected_rule("s1", "LEAST_REQUEST", {"app": "client"})], []),
    ("a selected rule no longer selects the client", [selected_rule("s1", "LEAST_REQUEST", {"app": "nobody"})], []),
    ("a second selected rule, for another host", [selected_rule("s2", "RANDOM", {"app": "client"})], []),
    ("a rule deleted", [], [("DestinationRule", "default", "dr-s1")]),
    ("a split host deleted", [], [("Service", "default", "s3")]),
    ("a split host back", [service("s3", selector={"app": "s3"})], []),
    ("a Service's selector", [service("s2", selector={"app": "s3"})], []),
    ("a Pod's labels leave one Service for another", [pod("s3-a", "10.1.0.4", {"app": "s4", "tier": "b"})], []),
    ("a Pod's address", [pod("s4-a", "10.1.0.99", {"app": "s4", "tier": "a"})], []),
    ("a new Pod a Service selects", [pod("s5-b", "10.1.0.55", {"app": "s5", "tier": "a"})], []),
    ("a Pod becomes a VM's peer", [pod("s0-a", "10.1.0.1", {"app": "s0", "vm": "yes"})], []),
    ("a Pod deleted", [], [("Pod", "default", "s5-a")]),
    ("a new Service", [service("s9", selector={"app": "s5"})], []),
    ("a Service deleted", [], [("Service", "default", "s1")]),
    ("a slice's endpoints", [endpoint_slice("sl-1", "sl", ["10.2.0.1", "10.2.0.2"])], []),
    ("a Pod a slice names", [pod("p-10-2-0-2", "10.2.0.2", {"x": "z"}, "sliced")], []),
    ("a slice moved to another Service", [service("sl2", "sliced"), endpoint_slice("sl-1", "sl2", ["10.2.0.1"])], []),
    ("a WorkloadEntry's address", [workload_entry("vm1", "10.3.0.2", {"vm": "yes"})], []),
    ("a ServiceEntry's selector", [service_entry("ext", {"tier": "a"})], []),
    ("a VirtualService's destination", [virtual_service("s0", "s2")], []),
    ("a TCP VirtualService's destination (the port table)", [tcp_virtual_service("s3")], []),
    ("a VirtualService edited in place", [virtual_service("s2", "s4", name="edited")], []),
    ("an exportTo '.' VirtualService edited in place", [virtual_service("s4", "s2", name="local", exportTo=["."])], []),
    ("a wildcard VirtualService edited in place", [virtual_service("*.example.com", "s3", name="wild")], []),
    ("a delegate edited in place", [virtual_service("", "s4", name="child")], []),
    ("a VirtualService's hosts", [virtual_service("s3", "s4", name="edited")], []),
    ("a VirtualService's exportTo", [virtual_service("s4", "s2", name="local", exportTo=["other"])], []),
]


#: A client in the namespace whose own DestinationRule splits host s3 off the shared layers.
TEAM_PROXY = Proxy(id="sidecar~10.0.0.101~client.team", ip="10.0.0.101", namespace="team")


def snapshot(t: Translator) -> dict[str, Any]:
    out = t.for_proxy(PROXY)
    rendered: dict[str, Any] = {kind: render(out.get(type_url, [])) for kind, type_url in TYPES.items()}
    team = t.for_proxy(TEAM_PROXY)
    rendered["team"] = {kind: render(team.get(type_url, [])) for kind, type_url in TYPES.items()}
    rendered["errors"] = [e.as_dict() for e in t.errors]
    return rendered


def test_one_change_at_a_time_matches_a_fresh_translation() -> None:
    resources: dict[Any, Resource] = {}
    for d in base():
        r = parse_resource(d, "mesh.yaml")
        resources[r.key] = r
    world = World(1, MappingProxyType(dict(resources)), frozenset(resources))
    follower = Translator()
    follower.update(world)
    for what, put, deleted in EDITS:
        resources = dict(world.resources)
        for d in put:
            r = parse_resource(d, "mesh.yaml")
            resources[r.key] = r
        for kind, ns, name in deleted:
            (key,) = [k for k in resources if (k.kind, k.namespace, k.name) == (kind, ns, name)]
            del resources[key]
        world = world.evolve(MappingProxyType(resources))
        follower.update(world)
        fresh = Translator()
        fresh.update(world)
        assert snapshot(follower) == snapshot(fresh), what


@pytest.mark.parametrize("count", [1, 70])
def test_many_changed_services_read_the_namespace(count: int) -> None:
    """Past the targeted limit the whole namespace is re-read: the same result either way."""
    docs = [service(f"m{i}", selector={"app": f"m{i}"}) for i in range(80)]
    docs += [pod(f"m{i}-a", f"10.4.{i // 200}.{i % 200 + 1}", {"app": f"m{i}"}) for i in range(80)]
    resources = {r.key: r for r in (parse_resource(d, "m.yaml") for d in docs)}
    world = World(1, MappingProxyType(dict(resources)), frozenset(resources))
    follower = Translator()
    follower.update(world)
    for i in range(count):
        r = parse_resource(service(f"m{i}", port=82, selector={"app": f"m{i}"}), "m.yaml")
        resources[r.key] = r
    world = world.evolve(MappingProxyType(resources))
    follower.update(world)
    fresh = Translator()
    fresh.update(world)
    assert snapshot(follower) == snapshot(fresh)


def test_common_edits_patch_instead_of_rebuilding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Pod's address and an in-place VirtualService edit take the patch paths (the registry
    swaps the service in; the route table swaps the host's part in), and still match a fresh
    translation: the equality above would hold without them, this says they are used."""
    from translators.model.registry import Registry

    resources = {r.key: r for r in (parse_resource(d, "mesh.yaml") for d in base())}
    world = World(1, MappingProxyType(dict(resources)), frozenset(resources))
    follower = Translator()
    follower.update(world)
    full: list[str] = []
    assemble = Registry._assemble
    patched: list[bool] = []
    real_patch = Translator._patch_route_table

    def spy_assemble(self: Registry) -> None:
        full.append("registry")
        assemble(self)

    def spy_patch(self: Translator, hosts: set[str], shaped: frozenset[str] = frozenset()) -> bool:
        done = real_patch(self, hosts, shaped)
        if self is follower:
            patched.append(done)
        return done

    monkeypatch.setattr(Registry, "_assemble", spy_assemble)
    monkeypatch.setattr(Translator, "_patch_route_table", spy_patch)
    edits: list[tuple[dict[str, Any] | None, tuple[str, str] | None]] = [
        (pod("s4-a", "10.1.0.77", {"app": "s4", "tier": "a"}), None),  # the registry's swap; no route change
        (virtual_service("s2", "s5", name="edited"), None),  # a host's part swapped in its row
        (service("s5", port=85, selector={"app": "s5"}), None),  # a shape: its rows, and s2, which routes to it
        (service("n1", selector={"app": "s1"}), None),  # a host added
        (None, ("Service", "n1")),  # and removed
    ]
    for put, delete in edits:
        resources = dict(world.resources)
        if put is not None:
            r = parse_resource(put, "mesh.yaml")
            resources[r.key] = r
            keys = [r.key]
        else:
            assert delete is not None
            (key,) = [k for k in resources if (k.kind, k.name) == delete]
            del resources[key]
            keys = [key]
        world = world.evolve(MappingProxyType(resources), keys)
        follower.update(world)
        fresh = Translator()
        fresh.update(world)
        assert snapshot(follower) == snapshot(fresh)
    assert full.count("registry") == len(edits) + 2  # the fresh translators, and the host added and removed
    assert patched == [True, True, True, True]  # every route change of the follower was a patch


def test_a_host_defined_twice_elsewhere_does_not_stop_the_registry_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A warning about other services (a ServiceEntry redefining s0's host) leaves the
    registry's swap to the edits it does not involve; an edit to either side of the duplicate
    assembles afresh. Every step matches a fresh translation, the warning included."""
    from translators.model.registry import Registry

    twin = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "twin", "namespace": "default"},
            "spec": {"hosts": ["s0.default.svc.cluster.local"], "resolution": "STATIC",
                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                     "endpoints": [{"address": "10.5.0.1"}]}}
    resources = {r.key: r for r in (parse_resource(d, "mesh.yaml") for d in [*base(), twin])}
    world = World(1, MappingProxyType(dict(resources)), frozenset(resources))
    follower = Translator()
    follower.update(world)
    assert any("is already defined by" in e.message for e in follower.errors)
    assembled: list[Registry] = []
    assemble = Registry._assemble

    def spy_assemble(self: Registry) -> None:
        assembled.append(self)
        assemble(self)

    monkeypatch.setattr(Registry, "_assemble", spy_assemble)
    edits: list[tuple[dict[str, Any], bool]] = [
        (pod("s4-a", "10.1.0.77", {"app": "s4", "tier": "a"}), False),  # not involved: swapped in
        (service("s0", port=81, selector={"app": "s0"}), True),  # the Service that wins s0's host
        ({**twin, "spec": {**twin["spec"], "endpoints": [{"address": "10.5.0.2"}]}}, True),  # the one ignored
        (pod("s5-a", "10.1.0.78", {"app": "s5", "tier": "a"}), False),
    ]
    for put, assembles in edits:
        resources = dict(world.resources)
        r = parse_resource(put, "mesh.yaml")
        resources[r.key] = r
        world = world.evolve(MappingProxyType(resources), [r.key])
        assembled.clear()
        follower.update(world)
        assert (follower._registry in assembled) is assembles, put["metadata"]["name"]
        fresh = Translator()
        fresh.update(world)
        assert snapshot(follower) == snapshot(fresh), put["metadata"]["name"]
