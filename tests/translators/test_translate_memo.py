"""The memoization contract of translators.api: unchanged inputs give identical objects."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from translate_cases import load_case, world_of

from translators import Translator, api
from translators.model import EndpointSlice, Resource, VirtualService, parse_resource
from translators.model.world import Proxy, World


def _evolve(world: World, *replaced: Resource) -> World:
    resources = dict(world.resources)
    resources.update({r.key: r for r in replaced})
    return world.evolve(MappingProxyType(resources))


#: The outbound clusters of the cases' proxies: they proved no mesh identity (no certificate),
#: so they get the shared layer's plaintext form (no auto mTLS), itself shared by all such proxies.
OUTBOUND_CLUSTERS = ("clusters-plaintext", ("clusters", "outbound"))


def _layer(out: dict[str, list[api.Layer]], type_url: str, key: object) -> api.Layer:
    return next(layer for layer in out[type_url] if layer.key == key)


def _setup(case: str = "vs_split") -> tuple[Translator, World, Proxy]:
    resources, proxy = load_case(case)
    t = Translator()
    world = world_of(resources)
    t.update(world)
    return t, world, proxy


def test_same_world_same_objects() -> None:
    t, _, proxy = _setup()
    a, b = t.for_proxy(proxy), t.for_proxy(proxy)
    for type_url in a:
        assert [layer.resources for layer in a[type_url]] == [layer.resources for layer in b[type_url]]
        assert all(x.resources is y.resources for x, y in zip(a[type_url], b[type_url], strict=True))


def test_layer_keys() -> None:
    t, _, proxy = _setup()
    out = t.for_proxy(proxy)
    # This proxy serves nothing, so it has no inbound layer and shares its cluster view
    # with every proxy like it (the inbound golden case covers a proxy that has one).
    assert [layer.key for layer in out[api.CLUSTER]] == [OUTBOUND_CLUSTERS]
    assert [layer.key for layer in out[api.ENDPOINT]] == [("endpoints", "outbound")]
    assert [layer.key for layer in out[api.ROUTE]] == [("routes", "default")]
    assert [layer.key for layer in out[api.LISTENER]] == [("listeners", proxy.key)]


def test_virtual_service_change_touches_routes_only() -> None:
    t, world, proxy = _setup()
    before = t.for_proxy(proxy)
    vs = world.get(VirtualService, "default", "reviews")
    assert vs is not None
    spec = vs.spec.model_copy(update={"http": vs.spec.http[1:]})
    t.update(_evolve(world, vs.model_copy(update={"spec": spec})))
    after = t.for_proxy(proxy)

    for type_url in (api.CLUSTER, api.ENDPOINT, api.LISTENER):
        assert all(x.resources is y.resources for x, y in zip(before[type_url], after[type_url], strict=True))
    assert after[api.ROUTE][0].resources is not before[api.ROUTE][0].resources
    assert len(after[api.ROUTE][0].resources["9080"].virtual_hosts[0].routes) == 1
    old_clusters = _layer(before, api.CLUSTER, OUTBOUND_CLUSTERS).resources
    new_clusters = _layer(after, api.CLUSTER, OUTBOUND_CLUSTERS).resources
    assert all(new_clusters[name] is old_clusters[name] for name in old_clusters)


def test_endpoint_change_keeps_other_services() -> None:
    resources, proxy = load_case("vs_split")
    # a second, unrelated service: basic's reviews, moved to namespace "other"
    extra = load_case("basic")[0]
    moved = [r.model_copy(update={"metadata": r.metadata.model_copy(update={"namespace": "other"})}) for r in extra]
    t = Translator()
    world = world_of(resources + moved)
    t.update(world)
    before = t.for_proxy(proxy)

    slice_ = world.get(EndpointSlice, "default", "reviews-1")
    assert slice_ is not None
    t.update(_evolve(world, slice_.model_copy(update={"endpoints": slice_.endpoints[:1]})))
    after = t.for_proxy(proxy)

    old_eps = before[api.ENDPOINT][0].resources
    new_eps = after[api.ENDPOINT][0].resources
    assert new_eps is not old_eps
    assert new_eps["outbound|9080||reviews.other.svc.cluster.local"] is old_eps["outbound|9080||reviews.other.svc.cluster.local"]
    assert new_eps["outbound|9080||reviews.default.svc.cluster.local"] is not old_eps["outbound|9080||reviews.default.svc.cluster.local"]
    # Endpoints do not change EDS clusters, routes or listeners.
    for type_url in (api.CLUSTER, api.ROUTE, api.LISTENER):
        assert all(x.resources is y.resources for x, y in zip(before[type_url], after[type_url], strict=True))


def test_unrelated_world_version_keeps_everything() -> None:
    t, world, proxy = _setup()
    before = t.for_proxy(proxy)
    t.update(world.evolve(world.resources))  # nothing changed
    after = t.for_proxy(proxy)
    for type_url in before:
        assert all(x.resources is y.resources for x, y in zip(before[type_url], after[type_url], strict=True))


def test_skipped_world_version_is_diffed() -> None:
    t, world, proxy = _setup()
    vs = world.get(VirtualService, "default", "reviews")
    assert vs is not None
    w2 = _evolve(world, vs.model_copy(update={"spec": vs.spec.model_copy(update={"http": vs.spec.http[1:]})}))
    w3 = w2.evolve(w2.resources)
    t.update(w3)  # w2 never seen: its change must still be picked up
    routes = t.for_proxy(proxy)[api.ROUTE][0].resources["9080"]
    assert len(routes.virtual_hosts[0].routes) == 1


def test_removal() -> None:
    t, world, proxy = _setup("basic")
    t.update(world.evolve(MappingProxyType({})))
    out = t.for_proxy(proxy)
    assert list(out[api.CLUSTER][0].resources) == ["BlackHoleCluster", "PassthroughCluster"]
    assert not out[api.ENDPOINT][0].resources
    assert not out[api.LISTENER][0].resources
    assert not out[api.ROUTE][0].resources


def test_errors_follow_the_world() -> None:
    t, world, _ = _setup("missing_subset")
    assert any(e.severity == "error" for e in t.errors)
    t.update(world.evolve(MappingProxyType({k: r for k, r in world.resources.items() if k.kind != "VirtualService"})))
    assert not [e for e in t.errors if e.resource.startswith("VirtualService")]


def test_workload_change_rebuilds_inbound_only_for_its_namespace() -> None:
    t, world, proxy = _setup("inbound")
    before = t.for_proxy(proxy)
    pod = next(r for r in world.resources.values() if r.kind == "Pod")
    meta = pod.metadata.model_copy(update={"annotations": {"sidecar.meshpilot.io/app-address": "127.0.0.3"}})
    t.update(_evolve(world, pod.model_copy(update={"metadata": meta})))
    after = t.for_proxy(proxy)
    inbound = _layer(after, api.CLUSTER, ("clusters-inbound", proxy.key)).resources
    assert inbound is not _layer(before, api.CLUSTER, ("clusters-inbound", proxy.key)).resources
    address = inbound["inbound|8080||"].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert address.socket_address.address == "127.0.0.3"
    assert after[api.ROUTE][0].resources is before[api.ROUTE][0].resources
    assert _layer(after, api.CLUSTER, OUTBOUND_CLUSTERS) is _layer(before, api.CLUSTER, OUTBOUND_CLUSTERS)


# ---------------------------------------------------------------- narrowing and views


def _resources(layers: list[api.Layer]) -> dict[str, object]:
    return {name: msg for layer in layers for name, msg in layer.resources.items()}


def test_destination_rule_change_rebuilds_only_the_hosts_it_names() -> None:
    t, world, proxy = _setup("dr_lookup_order")
    before = _resources(t.for_proxy(proxy)[api.CLUSTER])
    from translators.model import DestinationRule

    dr = world.get(DestinationRule, "client", "ratings-for-client")
    assert dr is not None
    tp = dr.spec.trafficPolicy.model_copy(update={"loadBalancer": None})  # type: ignore[union-attr]
    t.update(_evolve(world, dr.model_copy(update={"spec": dr.spec.model_copy(update={"trafficPolicy": tp})})))
    after = _resources(t.for_proxy(proxy)[api.CLUSTER])
    ratings = "outbound|9080||ratings.shop.svc.cluster.local"
    assert after[ratings] is not before[ratings]
    assert after[ratings].lb_policy != before[ratings].lb_policy  # type: ignore[attr-defined]
    for name in before.keys() - {ratings}:
        assert after[name] is before[name], name  # not translated again


def test_client_namespace_rules_make_a_view_per_namespace() -> None:
    t, _, proxy = _setup("dr_lookup_order")
    client = _resources(t.for_proxy(proxy)[api.CLUSTER])
    shop = _resources(t.for_proxy(Proxy(id="s", ip="10.0.0.7", namespace="shop"))[api.CLUSTER])
    elsewhere = _resources(t.for_proxy(Proxy(id="e", ip="10.0.0.8", namespace="elsewhere"))[api.CLUSTER])
    ratings = "outbound|9080||ratings.shop.svc.cluster.local"
    details = "outbound|9080||details.shop.svc.cluster.local"
    from envoy.config.cluster.v3.cluster_pb2 import Cluster

    assert client[ratings].lb_policy == Cluster.RANDOM  # type: ignore[attr-defined]  # the client's own rule
    assert shop[ratings].lb_policy == Cluster.ROUND_ROBIN  # type: ignore[attr-defined]  # the service's rule
    assert shop[details].lb_policy == Cluster.ROUND_ROBIN  # type: ignore[attr-defined]  # exported to "." only
    assert elsewhere[details].lb_policy == Cluster.LEAST_REQUEST  # type: ignore[attr-defined]  # root's rule instead
    assert elsewhere[details].circuit_breakers.thresholds[0].max_connections.value == 100  # type: ignore[attr-defined]
    # Two namespaces with no rules of their own share one view.
    other = t.for_proxy(Proxy(id="o", ip="10.0.0.9", namespace="yet-another"))[api.CLUSTER]
    assert [layer.resources for layer in other] == [layer.resources for layer in t.for_proxy(
        Proxy(id="e", ip="10.0.0.8", namespace="elsewhere"))[api.CLUSTER]]


def test_delegate_change_reaches_the_root_host() -> None:
    t, world, proxy = _setup("vs_delegate")
    before = _resources(t.for_proxy(proxy)[api.ROUTE])["8000"]
    leaf = world.get(VirtualService, "shop", "reviews-routes")
    assert leaf is not None
    spec = leaf.spec.model_copy(update={"http": leaf.spec.http[2:]})  # only the catch-all "all" is left
    t.update(_evolve(world, leaf.model_copy(update={"spec": spec})))
    after = _resources(t.for_proxy(proxy)[api.ROUTE])["8000"]
    names = [r.name for vh in after.virtual_hosts for r in vh.routes]  # type: ignore[attr-defined]
    assert "reviews-v2" not in names and "reviews-all" in names
    assert before is not after


def test_source_conditions_give_proxies_their_own_routes_and_share_the_rest() -> None:
    t, _, proxy = _setup("vs_source_match")

    def routes_of(p: Proxy) -> list[str]:
        (rc,) = _resources(t.for_proxy(p)[api.ROUTE]).values()
        return [r.name for vh in rc.virtual_hosts[:-1] for r in vh.routes]  # type: ignore[attr-defined]

    assert routes_of(proxy) == ["from-productpage", "everyone-else"]
    other_ns = Proxy(id="x", ip="10.0.0.5", namespace="other")
    assert "from-other-namespace" in routes_of(other_ns)
    plain = Proxy(id="y", ip="10.0.0.6", namespace="default", labels={"app": "reviews"})
    plain2 = Proxy(id="z", ip="10.0.0.7", namespace="default", labels={"app": "details"})
    assert routes_of(plain) == ["everyone-else"]
    assert t.for_proxy(plain)[api.ROUTE][0] is t.for_proxy(plain2)[api.ROUTE][0]  # one shared layer


def test_virtual_service_export_to_gives_namespaces_their_own_view() -> None:
    t, world, proxy = _setup("vs_export_to")

    def routes_of(ns: str) -> dict[str, list[str]]:
        (rc,) = _resources(t.for_proxy(Proxy(id=ns, ip="10.0.0.9", namespace=ns))[api.ROUTE]).values()
        return {vh.name.split(".")[0]: [r.name for r in vh.routes] for vh in rc.virtual_hosts[:-1]}  # type: ignore[attr-defined]

    assert routes_of("team-a") == {"details": ["exported-to-a"], "ratings": ["team-a-private"], "reviews": ["default"]}
    assert routes_of("team-b") == {"details": ["exported-to-a"], "ratings": ["public"], "reviews": ["default"]}
    assert routes_of("shop") == {"details": ["default"], "ratings": ["public"], "reviews": ["default"]}
    assert t.for_proxy(Proxy(id="c", ip="10.0.0.9", namespace="team-c"))[api.ROUTE][0].resources["9080"] \
        is not t.for_proxy(Proxy(id="a", ip="10.0.0.9", namespace="team-a"))[api.ROUTE][0].resources["9080"]
    # Dropping the private VirtualService brings team-a back to the public one.
    resources = dict(world.resources)
    del resources[world.get(VirtualService, "team-a", "ratings-team-a").key]  # type: ignore[union-attr]
    t.update(world.evolve(MappingProxyType(resources)))
    assert routes_of("team-a")["ratings"] == ["public"]


def test_a_captured_proxys_listeners_follow_tcp_routes_and_addresses_and_keep_what_did_not_change() -> None:
    """mysql and mariadb share 3306, so mysql's tcp routes are not in the shared port table:
    its <clusterIP>_3306 listener still follows them, and a new ClusterIP moves mariadb's;
    every other listener stays the same object."""
    t, world, proxy = _setup("capture_listeners")

    def listeners() -> dict[str, Any]:
        (layer,) = t.for_proxy(proxy)[api.LISTENER]
        return dict(layer.resources)

    def weights(listener: Any) -> list[int]:
        proxy_config = tcp_proxy_pb2.TcpProxy()
        listener.filter_chains[-1].filters[-1].typed_config.Unpack(proxy_config)
        return [c.weight for c in proxy_config.weighted_clusters.clusters]

    before = listeners()
    assert weights(before["10.96.0.12_3306"]) == [20, 80]
    vs = parse_resource({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                         "metadata": {"name": "mysql", "namespace": "default"},
                         "spec": {"hosts": ["mysql"], "tcp": [{"route": [
                             {"destination": {"host": "mariadb"}, "weight": 50},
                             {"destination": {"host": "mysql"}, "weight": 50}]}]}}, "vs.yaml")
    world = _evolve(world, vs)
    t.update(world)
    after = listeners()
    assert weights(after["10.96.0.12_3306"]) == [50, 50]
    assert [n for n in after if after[n] is not before[n]] == ["10.96.0.12_3306"]

    mariadb = parse_resource({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mariadb", "namespace": "default"},
                              "spec": {"clusterIP": "10.96.0.99", "selector": {"app": "mariadb"},
                                       "ports": [{"name": "tcp", "port": 3306}]}}, "svc.yaml")
    t.update(_evolve(world, mariadb))
    moved = listeners()
    assert "10.96.0.99_3306" in moved and "10.96.0.13_3306" not in moved
    assert moved["virtualInbound"] is before["virtualInbound"] and moved["0.0.0.0_9080"] is before["0.0.0.0_9080"]


def test_route_configurations_leave_as_their_deterministic_bytes() -> None:
    """Route configurations are assembled from encoded virtual hosts, never re-serialized:
    the bytes must be what deterministic serialization of the message gives (versions,
    VHDS splitting and Envoy all read them)."""
    t, _, proxy = _setup()
    (layer,) = t.for_proxy(proxy)[api.ROUTE]
    assert isinstance(layer.resources, api.EncodedResources) and layer.resources.data
    for name, data in layer.resources.data.items():
        message = layer.resources[name]
        assert message.name == name and len(message.virtual_hosts) >= 2  # type: ignore[attr-defined]
        assert message.SerializeToString(deterministic=True) == data
