"""How VirtualServices merge at a gateway (istiod's buildGatewayHTTPRouteConfig)."""

from __future__ import annotations

from typing import Any

from translate_cases import world_of

from translators import Translator, api
from translators.model import parse_resource
from translators.model.world import Proxy

GATEWAY = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": "edge"},
           "spec": {"selector": {"istio": "ingressgateway"},
                    "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}
PROXY = Proxy(id="router~10.0.0.9~gw", role="gateway", ip="10.0.0.9", namespace="edge", labels={"istio": "ingressgateway"})


def vs(name: str, namespace: str, http: list[dict[str, Any]], hosts: tuple[str, ...] = ("shop.example.com",),
       **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"hosts": list(hosts), "gateways": ["edge/gw"], "http": http, **spec}}


def answer(text: str, **match: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"directResponse": {"status": 200, "body": {"string": text}}}
    if match:
        entry["match"] = [match]
    return entry


def routes_of(*docs: dict[str, Any]) -> dict[str, list[str]]:
    """virtual host -> the bodies its routes answer, in order."""
    t = Translator()
    t.update(world_of([parse_resource(d) for d in (GATEWAY, *docs)]))
    (layer,) = t.for_proxy(PROXY)[api.ROUTE]
    config = layer.resources["http.80"]
    return {vh.name: [r.direct_response.body.inline_string for r in vh.routes] for vh in config.virtual_hosts}


def test_virtual_services_for_one_host_concatenate_with_catch_alls_last() -> None:
    got = routes_of(vs("a-all", "shop", [answer("a-all")]),
                    vs("b-specific", "shop", [answer("b-path", uri={"prefix": "/b"})]))
    assert got == {"shop.example.com:80": ["b-path", "a-all"]}


def test_private_virtual_services_of_the_gateways_namespace_come_first() -> None:
    got = routes_of(vs("a-public", "shop", [answer("public", uri={"prefix": "/x"})]),
                    vs("z-private", "edge", [answer("private", uri={"prefix": "/x"})], exportTo=["."]),
                    vs("hidden", "shop", [answer("hidden", uri={"prefix": "/y"})], exportTo=["."]))
    assert got == {"shop.example.com:80": ["private", "public"]}  # and shop's private one is not seen


def test_wildcard_hosts_intersect_to_the_narrower() -> None:
    got = routes_of(vs("wild", "shop", [answer("wild")], hosts=("*.example.com",)))
    assert got == {"*.example.com:80": ["wild"]}
    narrow = {**GATEWAY, "spec": {**GATEWAY["spec"], "servers": [
        {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["shop/a.example.com", "b.example.com"]}]}}
    t = Translator()
    t.update(world_of([parse_resource(d) for d in (narrow, vs("wild", "shop", [answer("wild")], hosts=("*.example.com",)))]))
    (layer,) = t.for_proxy(PROXY)[api.ROUTE]
    assert [vh.name for vh in layer.resources["http.80"].virtual_hosts] == ["a.example.com:80", "b.example.com:80"]


def test_no_virtual_service_gives_a_404_host() -> None:
    assert routes_of() == {"blackhole:80": []}


def test_delegates_and_match_gateways() -> None:
    root = vs("root", "shop", [{"match": [{"uri": {"prefix": "/cart"}}], "delegate": {"name": "cart", "namespace": "team"}},
                               {**answer("other gateway", uri={"prefix": "/x"}), "match": [
                                   {"uri": {"prefix": "/x"}, "gateways": ["edge/another"]}]},
                               answer("root")])
    delegate = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "cart", "namespace": "team"},
                "spec": {"http": [answer("cart", uri={"prefix": "/cart/items"})]}}
    assert routes_of(root, delegate) == {"shop.example.com:80": ["cart", "root"]}
