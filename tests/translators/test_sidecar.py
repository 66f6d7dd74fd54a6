"""Sidecar: validation at exact field paths, selection as istiod does it, and scoping as
selection over the shared layers (same objects when a change is outside the scope)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from pydantic import ValidationError
from translate_cases import world_of

from translators import Translator, api
from translators.model import Resource, parse_resource
from translators.model.sidecar import Sidecar
from translators.model.world import Proxy, World
from translators.scope import SidecarIndex


def sidecar(spec: dict[str, Any], name: str = "sc", namespace: str = "a") -> Sidecar:
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    out = parse_resource(doc, "sidecar.yaml")
    assert isinstance(out, Sidecar)
    return out


def service(name: str, namespace: str, port: int = 8080, selector: str | None = None) -> Resource:
    return parse_resource({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
                           "spec": {"selector": {"app": selector or name},
                                    "ports": [{"name": "http", "port": port}]}}, "svc.yaml")


def pod(name: str, namespace: str, ip: str, labels: dict[str, str]) -> Resource:
    return parse_resource({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": namespace, "labels": labels}, "status": {"podIP": ip}}, "pod.yaml")


def errors_at(spec: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        sidecar(spec)
    return {".".join(str(x) if not isinstance(x, int) else f"[{x}]" for x in e["loc"]).replace(".[", "["): e["msg"]
            for e in info.value.errors()}


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("spec", "field", "needle"), [
    ({}, "spec", "empty configuration"),
    ({"egress": [{"hosts": ["reviews.a.svc.cluster.local"]}]}, "spec.egress[0].hosts[0]", "namespace/dnsName"),
    ({"egress": [{"hosts": ["a/reviews"]}]}, "spec.egress[0].hosts[0]", "short names"),
    ({"egress": [{"hosts": ["Bad_NS/*"]}]}, "spec.egress[0].hosts[0]", "invalid namespace"),
    ({"egress": [{"hosts": ["a/*foo.com"]}]}, "spec.egress[0].hosts[0]", "partial wildcard"),
    ({"egress": [{"hosts": []}]}, "spec.egress[0].hosts", "at least one host"),
    ({"egress": [{"hosts": ["*/*"]}, {"hosts": ["./*"]}]}, "spec.egress[0].port", "should be the last"),
    ({"egress": [{"hosts": ["*/*"]}, {"port": {"number": 80}, "hosts": ["./*"]}]}, "spec.egress[0].port",
     "should be the last"),
    ({"egress": [{"port": {"number": 80, "protocol": "bogus"}, "hosts": ["./*"]}]}, "spec.egress[0].port.protocol",
     "unsupported protocol"),
    ({"egress": [{"port": {"number": 0}, "hosts": ["./*"]}]}, "spec.egress[0].bind", "unix domain socket"),
    ({"egress": [{"port": {"number": 80}, "bind": "nope", "hosts": ["./*"]}]}, "spec.egress[0].bind", "IP address"),
    ({"ingress": [{"defaultEndpoint": "127.0.0.1:80"}]}, "spec.ingress[0].port", "port is required"),
    ({"ingress": [{"port": {"number": 80}, "defaultEndpoint": "10.0.0.1:80"}]}, "spec.ingress[0].defaultEndpoint",
     "127.0.0.1:<port>"),
    ({"ingress": [{"port": {"number": 80}, "defaultEndpoint": "127.0.0.1:x"}]}, "spec.ingress[0].defaultEndpoint",
     "not a number"),
    ({"ingress": [{"port": {"number": 80}}, {"port": {"number": 80}}]}, "spec.ingress[1].port.number", "unique"),
    ({"ingress": [{"port": {"number": 80, "protocol": "HTTP"}, "tls": {"mode": "ISTIO_MUTUAL"}}]},
     "spec.ingress[0].tls.mode", "cannot set mode"),
    ({"ingress": [{"port": {"number": 80, "protocol": "HTTP"}, "tls": {"mode": "SIMPLE"}}]},
     "spec.ingress[0].tls", "non HTTPS/TLS"),
    ({"outboundTrafficPolicy": {"mode": "ALLOW_ANY_DYNAMIC_DNS"}}, "spec.outboundTrafficPolicy.mode", "MeshConfig"),
    ({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY", "egressProxy": {"host": "egress.example.com"}}},
     "spec.outboundTrafficPolicy.egressProxy", "ALLOW_ANY"),
    ({"workloadSelector": {"labels": {"app": "*"}}, "egress": [{"hosts": ["./*"]}]}, "spec.workloadSelector.labels",
     "wildcards"),
])
def test_validation_names_the_field(spec: dict[str, Any], field: str, needle: str) -> None:
    found = errors_at(spec)
    assert field in found, found
    assert needle in found[field]


def test_valid_hosts_and_warnings() -> None:
    sc = sidecar({"egress": [{"hosts": ["./*", "istio-system/*", "*/reviews.b.svc.cluster.local", "~/*",
                                        "~c/ratings.c.svc.cluster.local", "b/*.example.com", "a/x.a.svc.cluster.local"]}],
                  "ingress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "http"},
                               "defaultEndpoint": "127.0.0.1:8080"}]})
    assert [f for f, _ in sc.warnings()] == ["spec.egress[0].hosts[6]"]  # ./* already imports namespace a
    assert sidecar({"workloadSelector": {"labels": {}}, "egress": [{"hosts": ["*/*"]}]}).warnings()[0][0] == \
        "spec.workloadSelector"


# ---------------------------------------------------------------- selection


def test_selection_order_and_conflicts() -> None:
    chosen = sidecar({"workloadSelector": {"labels": {"app": "x"}}, "egress": [{"hosts": ["./*"]}]}, "a-first")
    other = sidecar({"workloadSelector": {"labels": {"tier": "web"}}, "egress": [{"hosts": ["./*"]}]}, "b-second")
    default = sidecar({"egress": [{"hosts": ["*/*"]}]}, "default")
    second_default = sidecar({"egress": [{"hosts": ["*/*"]}]}, "zz-default")
    root = sidecar({"egress": [{"hosts": ["./*"]}]}, "default", "istio-system")
    index = SidecarIndex([other, chosen, default, second_default, root], "istio-system")
    assert [e.resource for e in index.errors] == ["Sidecar a/zz-default"]
    picked, conflicts = index.select("a", {"app": "x", "tier": "web"})
    assert picked is chosen
    assert [(e.resource, e.field) for e in conflicts] == [("Sidecar a/b-second", "spec.workloadSelector")]
    assert index.select("a", {"app": "y"}) == (default, ())
    assert index.select("elsewhere", {"app": "x"}) == (root, ())
    assert SidecarIndex([chosen], "istio-system").select("a", {}) == (None, ())


# ---------------------------------------------------------------- scoping

NAMESPACES = ("a", "b", "c")


def _mesh(*extra: Resource) -> list[Resource]:
    out: list[Resource] = []
    for ns in NAMESPACES:
        for i in range(3):
            out += [service(f"s{i}", ns, 8080 + i), pod(f"s{i}-pod", ns, f"10.{ord(ns)}.0.{i + 1}", {"app": f"s{i}"})]
    return [*out, *extra]


def _evolve(world: World, *changed: Resource, removed: tuple = ()) -> World:
    resources = {k: v for k, v in world.resources.items() if k not in removed}
    resources.update({r.key: r for r in changed})
    return world.evolve(MappingProxyType(resources))


PROXY = Proxy(id="client", ip="10.97.9.9", namespace="a", labels={"app": "client"})


def _names(out: dict[str, list[api.Layer]], type_url: str) -> set[str]:
    return {n for layer in out[type_url] for n in layer.resources}


def test_scope_cuts_every_type_and_out_of_scope_changes_keep_the_same_objects() -> None:
    t = Translator()
    world = world_of(_mesh())
    t.update(world)
    everything = t.for_proxy(PROXY)
    world = _evolve(world, sidecar({"egress": [{"hosts": ["./*"]}],
                                    "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}, "default"))
    t.update(world)
    scoped = t.for_proxy(PROXY)
    hosts = {n.split("|")[3] for n in _names(scoped, api.CLUSTER) if n.startswith("outbound|")}
    assert hosts == {f"s{i}.a.svc.cluster.local" for i in range(3)}
    assert len(_names(scoped, api.CLUSTER)) < len(_names(everything, api.CLUSTER))
    assert {n.split("|")[3] for n in _names(scoped, api.ENDPOINT)} == hosts
    assert _names(scoped, api.LISTENER) == {f"10.97.9.9_{8080 + i}" for i in range(3)}
    (rc,) = [scoped[api.ROUTE][0].resources[str(8080 + i)] for i in range(1)]
    assert [vh.name for vh in rc.virtual_hosts] == ["s0.a.svc.cluster.local:8080", "block_all"]  # type: ignore[attr-defined]
    assert rc.virtual_hosts[-1].routes[0].direct_response.status == 502  # type: ignore[attr-defined]

    # A new service and an endpoint change in namespace b: nothing of the scoped proxy changes.
    moved = pod("s0-pod", "b", "10.98.0.77", {"app": "s0"})
    t.update(_evolve(world, service("new", "b", 8080), pod("new-pod", "b", "10.98.1.1", {"app": "new"}), moved))
    after = t.for_proxy(PROXY)
    for type_url in (api.CLUSTER, api.ENDPOINT, api.LISTENER, api.ROUTE):
        assert [layer.resources for layer in after[type_url]] == [layer.resources for layer in scoped[type_url]]
        assert all(x is y for x, y in zip(after[type_url], scoped[type_url], strict=True)), type_url

    # An endpoint change inside the scope: the endpoints layer changes, and only it.
    world = t._world  # type: ignore[attr-defined]
    assert world is not None
    t.update(_evolve(world, pod("s1-pod", "a", "10.97.0.55", {"app": "s1"})))
    inside = t.for_proxy(PROXY)
    assert inside[api.ENDPOINT][0] is not after[api.ENDPOINT][0]
    assert inside[api.CLUSTER][0] is after[api.CLUSTER][0]
    assert inside[api.ROUTE][0] is after[api.ROUTE][0]


def test_proxies_with_one_sidecar_share_layers_and_virtual_service_destinations_are_imported() -> None:
    vs = parse_resource({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                         "metadata": {"name": "s0", "namespace": "a"},
                         "spec": {"hosts": ["s0.a.svc.cluster.local"], "http": [{"route": [
                             {"destination": {"host": "s2.c.svc.cluster.local", "port": {"number": 8082}}}]}]}})
    sc = sidecar({"egress": [{"hosts": ["a/s0.a.svc.cluster.local"]}]}, "default")
    t = Translator()
    t.update(world_of(_mesh(vs, sc)))
    one, two = t.for_proxy(PROXY), t.for_proxy(Proxy(id="other", ip="10.97.9.10", namespace="a"))
    assert {n.split("|")[3] for n in _names(one, api.CLUSTER) if n.startswith("outbound|")} == {
        "s0.a.svc.cluster.local", "s2.c.svc.cluster.local"}
    for type_url in (api.CLUSTER, api.ENDPOINT, api.ROUTE):
        assert all(x is y for x, y in zip(one[type_url], two[type_url], strict=True))
    assert list(one[api.ROUTE][0].resources) == ["8080", "8082"]  # s2 imported: its own virtual host too
    assert one[api.ROUTE][0].resources["8080"].virtual_hosts[-1].name == "allow_any"  # type: ignore[attr-defined]


def test_root_namespace_default_applies_with_the_proxy_namespace() -> None:
    root = sidecar({"egress": [{"hosts": ["./*"]}]}, "default", "istio-system")
    t = Translator()
    t.update(world_of(_mesh(root)))
    out = t.for_proxy(Proxy(id="p", ip="10.98.9.9", namespace="b"))
    assert {n.split("|")[3] for n in _names(out, api.CLUSTER) if n.startswith("outbound|")} == {
        f"s{i}.b.svc.cluster.local" for i in range(3)}


def test_mesh_registry_only_and_sidecar_ingress() -> None:
    mesh = parse_resource({"apiVersion": "meshpilot.io/v1alpha1", "kind": "MeshConfig",
                           "metadata": {"name": "mesh", "namespace": "istio-system"},
                           "spec": {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}})
    sc = sidecar({"workloadSelector": {"labels": {"app": "s0"}},
                  "ingress": [{"port": {"number": 9090, "protocol": "HTTP", "name": "http"},
                               "defaultEndpoint": "127.0.0.1:7070"}]}, "s0-ingress")
    t = Translator()
    t.update(world_of(_mesh(mesh, sc)))
    out = t.for_proxy(Proxy(id="s0", ip="10.97.0.1", namespace="a"))
    assert out[api.ROUTE][0].resources["8081"].virtual_hosts[-1].name == "block_all"  # type: ignore[attr-defined]
    assert "inbound|10.97.0.1_9090" in _names(out, api.LISTENER)
    assert "inbound|10.97.0.1_8080" not in _names(out, api.LISTENER)  # the service's port is replaced
    (cluster,) = [c for layer in out[api.CLUSTER] for n, c in layer.resources.items() if n == "inbound|9090||"]
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address  # type: ignore[attr-defined]
    assert (address.address, address.port_value) == ("127.0.0.1", 7070)


def test_virtual_service_change_outside_the_scope_keeps_the_route_layer() -> None:
    def vs(host: str, prefix: str) -> Resource:
        ns = host.split(".")[1]
        return parse_resource({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                               "metadata": {"name": host.split(".")[0], "namespace": ns},
                               "spec": {"hosts": [host], "http": [{"match": [{"uri": {"prefix": prefix}}],
                                                                    "route": [{"destination": {"host": host}}]}]}})
    sc = sidecar({"egress": [{"hosts": ["./*"]}]}, "default")
    t = Translator()
    world = world_of(_mesh(sc, vs("s0.b.svc.cluster.local", "/one")))
    t.update(world)
    before = t.for_proxy(PROXY)
    world = _evolve(world, vs("s0.b.svc.cluster.local", "/two"))  # b is not imported
    t.update(world)
    assert t.for_proxy(PROXY)[api.ROUTE][0] is before[api.ROUTE][0]
    t.update(_evolve(world, vs("s0.a.svc.cluster.local", "/three")))  # a is
    after = t.for_proxy(PROXY)
    assert after[api.ROUTE][0] is not before[api.ROUTE][0]
    assert after[api.CLUSTER][0] is before[api.CLUSTER][0]


def test_removing_the_sidecar_gives_back_the_shared_layers_and_export_to_limits_imports() -> None:
    private = service("hidden", "b")
    private = private.model_copy(update={"metadata": private.metadata.model_copy(
        update={"annotations": {"networking.istio.io/exportTo": "."}})})
    sc = sidecar({"egress": [{"hosts": ["*/*", "~c/*"]}]}, "default")
    t = Translator()
    world = world_of(_mesh(sc, private))
    t.update(world)
    scoped = t.for_proxy(PROXY)
    hosts = {n.split("|")[3] for n in _names(scoped, api.CLUSTER) if n.startswith("outbound|")}
    assert hosts == {f"s{i}.{ns}.svc.cluster.local" for i in range(3) for ns in ("a", "b")}  # not c, not hidden
    assert all(isinstance(layer.key, tuple) and layer.key[0] == "scoped" for layer in scoped[api.CLUSTER])
    t.update(_evolve(world, removed=(sc.key,)))
    shared = t.for_proxy(PROXY)
    assert not any(layer.key[0] == "scoped" for layer in shared[api.CLUSTER])  # type: ignore[index]
    assert shared[api.ROUTE][0].key == ("routes", "a")


def test_an_egress_listener_with_a_port_imports_its_hosts_on_that_port_only() -> None:
    two_ports = parse_resource({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "multi", "namespace": "b"},
                                "spec": {"selector": {"app": "multi"}, "ports": [{"name": "http", "port": 7000},
                                                                                  {"name": "http-admin", "port": 7001}]}})
    sc = sidecar({"egress": [{"port": {"number": 7001, "protocol": "HTTP", "name": "http-admin"},
                              "hosts": ["b/*"]},  # s0..s2 of b have no port 7001: not imported
                             {"hosts": ["./*"]}]}, "default")
    t = Translator()
    t.update(world_of(_mesh(sc, two_ports, pod("multi-0", "b", "10.98.5.5", {"app": "multi"}))))
    out = t.for_proxy(PROXY)
    b_clusters = {n for n in _names(out, api.CLUSTER) if n.endswith(".b.svc.cluster.local")}
    assert b_clusters == {"outbound|7001||multi.b.svc.cluster.local"}
    assert {n for n in _names(out, api.ENDPOINT) if n.endswith(".b.svc.cluster.local")} == b_clusters
    assert "10.97.9.9_7001" in _names(out, api.LISTENER) and "10.97.9.9_7000" not in _names(out, api.LISTENER)
    assert [vh.name for vh in out[api.ROUTE][0].resources["7001"].virtual_hosts] == [  # type: ignore[attr-defined]
        "multi.b.svc.cluster.local:7001", "allow_any"]
    assert "7000" not in out[api.ROUTE][0].resources


def test_proxies_of_one_namespace_with_different_catch_alls_get_their_own_route_layers() -> None:
    mesh = parse_resource({"apiVersion": "meshpilot.io/v1alpha1", "kind": "MeshConfig",
                           "metadata": {"name": "mesh", "namespace": "istio-system"},
                           "spec": {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}})
    open_door = sidecar({"workloadSelector": {"labels": {"app": "client"}},
                         "outboundTrafficPolicy": {"mode": "ALLOW_ANY"}}, "open")
    t = Translator()
    t.update(world_of(_mesh(mesh, open_door)))
    other = Proxy(id="other", ip="10.97.9.10", namespace="a", labels={"app": "other"})
    for _ in range(2):  # asked alternately, each keeps its own layer
        mine, theirs = t.for_proxy(PROXY)[api.ROUTE][0], t.for_proxy(other)[api.ROUTE][0]
        assert mine.key != theirs.key
        assert mine.resources["8080"].virtual_hosts[-1].name == "allow_any"  # type: ignore[attr-defined]
        assert theirs.resources["8080"].virtual_hosts[-1].name == "block_all"  # type: ignore[attr-defined]
    assert t.for_proxy(PROXY)[api.ROUTE][0] is mine and t.for_proxy(other)[api.ROUTE][0] is theirs


def test_policies_apply_to_sidecar_ingress_listeners_of_a_workload_no_service_selects() -> None:
    deny = parse_resource({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                           "metadata": {"name": "deny", "namespace": "a"},
                           "spec": {"selector": {"matchLabels": {"app": "lonely"}}, "action": "DENY",
                                    "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}})
    sc = sidecar({"workloadSelector": {"labels": {"app": "lonely"}},
                  "ingress": [{"port": {"number": 9090, "protocol": "HTTP", "name": "http"}}]}, "lonely")
    t = Translator()
    t.update(world_of(_mesh(sc, deny, pod("lonely-0", "a", "10.97.7.7", {"app": "lonely"}))))
    out = t.for_proxy(Proxy(id="lonely", ip="10.97.7.7", namespace="a", labels={"app": "lonely"}))
    (listener,) = [lst for layer in out[api.LISTENER] for n, lst in layer.resources.items() if n.startswith("inbound|")]
    assert "envoy.filters.http.rbac" in str(listener)


def test_a_captured_proxys_catch_all_follows_the_mesh_mode_and_file_mode_proxies_keep_their_listeners() -> None:
    """15001's catch-all is the proxy's outboundTrafficPolicy: a MeshConfig change alone (the
    same port table) rebuilds it; a proxy without capture keeps its per-IP listeners."""
    world = world_of(_mesh())
    t = Translator()
    t.update(world)
    captured = Proxy(id="c", ip="10.97.0.1", namespace="a", labels={"app": "s0"}, capture=True)

    def catch_all() -> str:
        (layer,) = t.for_proxy(captured)[api.LISTENER]
        chain = layer.resources["virtualOutbound"].filter_chains[-1]  # type: ignore[attr-defined]
        return str(chain.filters[0].typed_config.value)

    names = _names(t.for_proxy(captured), api.LISTENER)
    assert {"virtualOutbound", "virtualInbound", "0.0.0.0_8081"} <= names
    assert not any(n.startswith("10.97.0.1") or n.startswith("inbound|") for n in names)
    assert "PassthroughCluster" in catch_all()
    passthrough = next(layer.resources["PassthroughCluster"] for layer in t.for_proxy(captured)[api.CLUSTER]
                       if "PassthroughCluster" in layer.resources)
    assert not passthrough.HasField("original_dst_lb_config")  # type: ignore[attr-defined]  # the socket's destination
    mesh = parse_resource({"apiVersion": "meshpilot.io/v1alpha1", "kind": "MeshConfig",
                           "metadata": {"name": "mesh", "namespace": "istio-system"},
                           "spec": {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}})
    t.update(_evolve(world, mesh))
    assert "BlackHoleCluster" in catch_all()
    plain = _names(t.for_proxy(Proxy(id="p", ip="10.97.0.1", namespace="a", labels={"app": "s0"})), api.LISTENER)
    assert "10.97.0.1_8081" in plain and "inbound|10.97.0.1_8080" in plain and "virtualOutbound" not in plain
