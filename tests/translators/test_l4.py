"""VirtualService tcp/tls routes and protocol selection: validation at exact field paths,
the listeners they give (per proxy where sourceLabels say so), and memoization when a
VirtualService changes. The l4_routes golden case shows the full listeners; tests/e2e/
test_l4_routes.py the traffic."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from translate_cases import load_case, world_of

from translators import Translator, api
from translators.features import l4
from translators.model import Destination, RouteDestination, VirtualService, parse_resource
from translators.model.names import port_protocol
from translators.model.world import Proxy, World
from xds_server.sources.parse import parse_text

FILE = "mesh/db.yaml"
TO_DB: list[dict[str, Any]] = [{"destination": {"host": "db"}}]


def errors_of(spec: dict[str, Any]) -> list[tuple[str, str]]:
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "db", "namespace": "shop"}, "spec": spec}
    (parsed,) = parse_text(json.dumps(doc), FILE, is_json=True).documents
    return [(e.field, e.message) for e in parsed.errors if e.severity == "error"]


@pytest.mark.parametrize(("spec", "field", "phrase"), [
    ({"tcp": [{"route": []}]}, "spec.tcp[0].route", "TCP route is required"),
    ({"tcp": [{"route": [*TO_DB, {"destination": {"host": "db2"}}]}]}, "spec.tcp[0].route",
     "total destination weight is 0"),
    ({"tcp": [{"route": [{"destination": {"host": "db"}, "weight": -1}]}]}, "spec.tcp[0].route[0].weight",
     "greater than or equal to 0"),
    ({"tcp": [{"match": [{"destinationSubnets": ["10.0.0.0/8", "10.0.0.0/33"]}], "route": TO_DB}]},
     "spec.tcp[0].match[0].destinationSubnets[1]", "not an IP address or CIDR range"),
    ({"tcp": [{"match": [{"port": 0}], "route": TO_DB}]}, "spec.tcp[0].match[0].port", "greater than or equal to 1"),
    ({"tcp": [{"match": [{"sourceLabels": {"a b": "c"}}], "route": TO_DB}]}, "spec.tcp[0].match[0].sourceLabels.a b",
     ""),
    ({"tcp": [{"match": [{"gateways": ["a/"]}], "route": TO_DB}]}, "spec.tcp[0].match[0].gateways[0]",
     "must not be empty"),
    ({"tcp": [{"match": [{"sourceNamespace": "Not_A_Namespace"}], "route": TO_DB}]},
     "spec.tcp[0].match[0].sourceNamespace", "not a namespace name"),
    ({"tls": [{"route": TO_DB}]}, "spec.tls[0].match", "at least one match condition"),
    ({"tls": [{"match": [{"sniHosts": ["db"]}]}]}, "spec.tls[0].route", "TLS route is required"),
    ({"tls": [{"match": [{"port": 443}], "route": TO_DB}]}, "spec.tls[0].match[0].sniHosts",
     "at least one SNI host"),
    ({"tls": [{"match": [{"sniHosts": ["db", "other.example"]}], "route": TO_DB}]},
     "spec.tls[0].match[0].sniHosts[1]", "'other.example' is not a compatible subset of any of the virtual service hosts"),
    ({"tls": [{"match": [{"sniHosts": ["bad..name"]}], "route": TO_DB}]}, "spec.tls[0].match[0].sniHosts[0]", ""),
])
def test_validation_errors_at_their_fields(spec: dict[str, Any], field: str, phrase: str) -> None:
    errors = errors_of({"hosts": ["db"], **spec})
    assert [f for f, _ in errors] == [field], errors
    assert phrase in errors[0][1], errors


def test_sni_hosts_within_wildcard_hosts_are_valid() -> None:
    assert errors_of({"hosts": ["*.example.com", "db"], "tls": [
        {"match": [{"sniHosts": ["a.example.com", "*.b.example.com", "db"]}], "route": TO_DB}]}) == []
    assert errors_of({"hosts": ["a.example.com"], "tls": [
        {"match": [{"sniHosts": ["*.example.com"]}], "route": TO_DB}]})[0][0] == "spec.tls[0].match[0].sniHosts[0]"


def test_delegate_cannot_have_tcp_routes() -> None:
    assert errors_of({"tcp": [{"route": TO_DB}]}) == [
        ("spec.tcp", "a delegate VirtualService (no hosts) cannot have tcp routes")]


@pytest.mark.parametrize(("name", "app", "declared", "protocol"), [
    ("http", None, "", "http"), ("http2-web", None, "", "http2"), ("grpc-web", None, "", "grpc"),
    ("grpc", None, "", "grpc"), ("https-x", None, "", "https"), ("tls", None, "", "tls"),
    ("tcp-echo", None, "", "tcp"), ("mongo", None, "", "mongo"), ("mysql-main", None, "", "mysql"),
    ("redis", None, "", "redis"), ("", None, "", "auto"), ("web", None, "", "auto"), ("httpx", None, "", "auto"),
    ("web", "http", "", "http"), ("tcp", "kubernetes.io/h2c", "", "http2"), ("", None, "TCP", "tcp"),
    ("http", None, "HTTPS", "https"), ("", "unknown", "", "auto"),
])
def test_port_protocol(name: str, app: str | None, declared: str, protocol: str) -> None:
    assert port_protocol(name, app, declared) == protocol


def test_tcp_proxy_filter_weights() -> None:
    dests = [RouteDestination(destination=Destination(host="a"), weight=0),
             RouteDestination(destination=Destination(host="b"), weight=3),
             RouteDestination(destination=Destination(host="c"), weight=1)]
    proxy = tcp_proxy_pb2.TcpProxy()
    l4.tcp_proxy_filter("stats", dests, lambda d: f"c-{d.host}").typed_config.Unpack(proxy)
    assert proxy.stat_prefix == "stats"
    assert [(c.name, c.weight) for c in proxy.weighted_clusters.clusters] == [("c-b", 3), ("c-c", 1)]
    l4.tcp_proxy_filter("stats", dests[:1], lambda d: f"c-{d.host}").typed_config.Unpack(proxy)
    assert (proxy.cluster, proxy.stat_prefix) == ("c-a", "c-a")  # one destination: its weight does not matter


# ---------------------------------------------------------------- listeners


def _setup() -> tuple[Translator, World, Proxy]:
    resources, proxy = load_case("l4_routes")
    t = Translator()
    world = world_of(resources)
    t.update(world)
    return t, world, proxy


def _listener(t: Translator, proxy: Proxy, name: str) -> listener_pb2.Listener:
    (layer,) = t.for_proxy(proxy)[api.LISTENER]
    return layer.resources[name]  # type: ignore[return-value]


def _clusters(listener: listener_pb2.Listener) -> list[str]:
    out = []
    for chain in listener.filter_chains:
        for f in chain.filters:
            if f.name == l4.TCP_PROXY:
                proxy = tcp_proxy_pb2.TcpProxy()
                f.typed_config.Unpack(proxy)
                out.append(proxy.cluster or "+".join(c.name.split("|")[2] for c in proxy.weighted_clusters.clusters))
    return out


def test_source_labels_choose_the_route_per_proxy() -> None:
    t, _, proxy = _setup()
    assert _clusters(_listener(t, proxy, "10.1.0.7_5432")) == [
        "outbound|5432|primary|db.shop.svc.cluster.local", "primary+replica"]
    batch = Proxy(id="sidecar~10.1.0.9~batch", ip="10.1.0.9", namespace="shop", labels={"app": "batch"})
    assert _clusters(_listener(t, batch, "10.1.0.9_5432")) == ["outbound|5432|replica|db.shop.svc.cluster.local"]


def _evolve(world: World, resource: Any) -> World:
    resources = dict(world.resources)
    resources[resource.key] = resource
    return world.evolve(MappingProxyType(resources))


def test_listeners_follow_tcp_route_changes_and_only_them() -> None:
    t, world, proxy = _setup()
    before = t.for_proxy(proxy)[api.LISTENER][0].resources
    vs = world.get(VirtualService, "shop", "db")
    assert vs is not None
    doc = vs.model_dump(mode="json", exclude={"source"}, exclude_none=True)
    doc["spec"]["tcp"] = [{"route": [{"destination": {"host": "db", "subset": "replica"}}]}]
    world = _evolve(world, parse_resource(doc, vs.source))
    t.update(world)
    after = t.for_proxy(proxy)[api.LISTENER][0].resources
    assert _clusters(after["10.1.0.7_5432"]) == ["outbound|5432|replica|db.shop.svc.cluster.local"]
    assert [n for n in before if after[n] is not before[n]] == ["10.1.0.7_5432"]

    # An http-only change elsewhere leaves every listener (and the layer) as it was.
    pay = world.get(VirtualService, "shop", "pay")
    assert pay is not None
    doc = pay.model_dump(mode="json", exclude={"source"}, exclude_none=True)
    doc["metadata"]["labels"] = {"touched": "yes"}
    t.update(_evolve(world, parse_resource(doc, pay.source)))
    assert t.for_proxy(proxy)[api.LISTENER][0].resources is after


def test_builders_for_gateway_servers() -> None:
    """What a TCP or TLS PASSTHROUGH gateway server builds from a VirtualService's routes."""
    vs = parse_resource({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                         "metadata": {"name": "edge", "namespace": "shop"},
                         "spec": {"hosts": ["*.shop.example"], "gateways": ["shop/edge"], "tls": [
                             {"match": [{"sniHosts": ["a.shop.example"], "gateways": ["other/gw"]}],
                              "route": [{"destination": {"host": "x"}}]},
                             {"match": [{"sniHosts": ["a.shop.example", "b.shop.example"], "port": 443}],
                              "route": [{"destination": {"host": "a"}, "weight": 1},
                                        {"destination": {"host": "b"}, "weight": 3}]}],
                             "tcp": [{"match": [{"port": 31400}], "route": [{"destination": {"host": "db"}}]}]}})
    assert isinstance(vs, VirtualService)
    chains = l4.sni_filter_chains(vs.spec.tls, lambda d: f"outbound|443||{d.host}", "gw_443",
                                  l4.gateway_accepts(443, {"shop/edge"}))
    assert [list(c.filter_chain_match.server_names) for c in chains] == [["a.shop.example", "b.shop.example"]]
    proxy = tcp_proxy_pb2.TcpProxy()
    chains[0].filters[0].typed_config.Unpack(proxy)
    assert [(c.name, c.weight) for c in proxy.weighted_clusters.clusters] == [
        ("outbound|443||a", 1), ("outbound|443||b", 3)]
    tcp, catch_all = l4.tcp_route_chains(vs.spec.tcp, lambda d: f"outbound|31400||{d.host}", "gw_31400",
                                         l4.gateway_accepts(31400, {"shop/edge"}))
    assert catch_all and _clusters(listener_pb2.Listener(filter_chains=tcp)) == ["outbound|31400||db"]
    assert l4.tcp_route_chains(vs.spec.tcp, str, "gw", l4.gateway_accepts(8080, {"shop/edge"})) == ([], False)
