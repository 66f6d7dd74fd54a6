"""Gateway layers follow translators.api's contract: replicas of a gateway share them, and
a change gives new objects only where it changes something."""

from __future__ import annotations

from types import MappingProxyType

from translate_cases import load_case, world_of

from translators import Translator, api
from translators.gateway import FORGET_AFTER
from translators.model import Resource, VirtualService, parse_resource
from translators.model.world import Proxy, World


def _evolve(world: World, *replaced: Resource) -> World:
    resources = dict(world.resources)
    resources.update({r.key: r for r in replaced})
    return world.evolve(MappingProxyType(resources))


def _vs(name: str, namespace: str, spec: dict) -> VirtualService:
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    vs = parse_resource(doc)
    assert isinstance(vs, VirtualService)
    return vs


def _layers(t: Translator, proxy: Proxy) -> tuple[api.Layer, api.Layer]:
    out = t.for_proxy(proxy)
    (listeners,), (routes,) = out[api.LISTENER], out[api.ROUTE]
    return listeners, routes


def test_replicas_share_routes_and_unrelated_changes_keep_every_object() -> None:
    resources, proxy = load_case("gateway_ingress")
    replica = Proxy(id="router~10.0.0.52~gw2", role="gateway", ip="10.0.0.52", namespace=proxy.namespace,
                    labels=proxy.labels)
    t = Translator()
    world = world_of(resources)
    t.update(world)
    listeners, routes = _layers(t, proxy)
    replica_listeners, replica_routes = _layers(t, replica)
    assert replica_routes is routes  # one route layer for the same selection
    assert replica_listeners is not listeners and set(replica_listeners.resources) != set(listeners.resources)

    # A VirtualService for the mesh only: the gateway's layers are the same objects.
    world = _evolve(world, _vs("mesh-only", "apps", {"hosts": ["web"], "http": [
        {"route": [{"destination": {"host": "web"}}], "timeout": "3s"}]}))
    t.update(world)
    assert _layers(t, proxy) == (listeners, routes)

    # A bound VirtualService changes: new routes for that host only, the listeners stay.
    world = _evolve(world, _vs("extra", "apps", {"hosts": ["web.example.com"], "gateways": ["istio-system/public"],
                                                  "http": [{"match": [{"uri": {"prefix": "/other"}}],
                                                            "route": [{"destination": {"host": "api"}}]}]}))
    t.update(world)
    new_listeners, new_routes = _layers(t, proxy)
    assert new_listeners is listeners and new_routes is not routes
    assert new_routes.resources["http.8080"] is not routes.resources["http.8080"]
    for name in ("http.8081", "https.8443.https.public.istio-system"):
        assert new_routes.resources[name] is routes.resources[name]
    assert "/other" in str(new_routes.resources["http.8080"])


def test_a_proxy_no_gateway_selects_gets_no_listeners() -> None:
    resources, proxy = load_case("gateway_ingress")
    t = Translator()
    t.update(world_of(resources))
    other = Proxy(id="router~10.0.0.60~x", role="gateway", ip="10.0.0.60", namespace="istio-system",
                  labels={"istio": "something-else"})
    listeners, routes = _layers(t, other)
    assert dict(listeners.resources) == {} and dict(routes.resources) == {}


def test_a_changed_delegate_reaches_the_gateway() -> None:
    resources, proxy = load_case("gateway_ingress")
    root = _vs("delegating", "apps", {"hosts": ["second.example.com"], "gateways": ["second"], "http": [
        {"match": [{"uri": {"prefix": "/d"}}], "delegate": {"name": "part"}}]})
    part = _vs("part", "apps", {"http": [{"match": [{"uri": {"prefix": "/d/one"}}],
                                          "route": [{"destination": {"host": "web"}}]}]})
    t = Translator()
    world = world_of([*resources, root, part])
    t.update(world)
    _, routes = _layers(t, proxy)
    assert "/d/one" in str(routes.resources["http.8080"])
    t.update(_evolve(world, _vs("part", "apps", {"http": [{"match": [{"uri": {"prefix": "/d/two"}}],
                                                            "route": [{"destination": {"host": "web"}}]}]})))
    _, routes = _layers(t, proxy)
    assert "/d/two" in str(routes.resources["http.8080"]) and "/d/one" not in str(routes.resources["http.8080"])


def test_gateways_that_went_away_are_forgotten() -> None:
    resources, proxy = load_case("gateway_ingress")
    t = Translator()
    world = world_of(resources)
    t.update(world)
    _layers(t, proxy)
    gone = t._gateways._views
    assert len(gone) == 1
    for i in range(FORGET_AFTER + 1):  # changes to a bound VirtualService, and no one asks
        world = _evolve(world, _vs("extra", "apps", {"hosts": ["web.example.com"], "gateways": ["istio-system/public"],
                                                      "http": [{"route": [{"destination": {"host": "api"}}],
                                                                "timeout": f"{i + 1}s"}]}))
        t.update(world)
    assert t._gateways._views == {}
