"""AuthorizationPolicy, RequestAuthentication and MeshConfig: validation at exact fields
(Istio's rules), which workloads a policy selects, and the memo contract: a policy
change reaches only the proxies it selects."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from translate_cases import world_of

from translators import Translator, api
from translators.model import Resource, parse_resource
from translators.model.world import Proxy, World
from xds_server.sources.parse import parse_text

FILE = "mesh/policy.yaml"


def _errors(kind: str, spec: dict[str, Any], api_version: str = "security.istio.io/v1", **meta: Any) -> list[tuple[str, str]]:
    doc = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "p", "namespace": "shop", **meta}, "spec": spec}
    (parsed,) = parse_text(json.dumps(doc), FILE, is_json=True).documents
    errors = [(e.field, e.message) for e in parsed.errors if e.severity == "error"]
    assert (parsed.resource is None) == bool(errors)
    return errors


def ap(**spec: Any) -> list[tuple[str, str]]:
    return _errors("AuthorizationPolicy", spec)


def ra(*rules: dict[str, Any], **spec: Any) -> list[tuple[str, str]]:
    return _errors("RequestAuthentication", {"jwtRules": list(rules), **spec})


def mesh(*providers: dict[str, Any]) -> list[tuple[str, str]]:
    return _errors("MeshConfig", {"extensionProviders": list(providers)}, "meshpilot.io/v1alpha1")


def only(errors: list[tuple[str, str]], field: str, *phrases: str) -> None:
    assert [f for f, _ in errors] == [field], errors
    for phrase in phrases:
        assert phrase in errors[0][1], (phrase, errors[0][1])


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize(("spec", "field", "phrase"), [
    ({"action": "DENY"}, "spec.rules", "DENY action without `rules`"),
    ({"action": "CUSTOM"}, "spec.rules", "CUSTOM action without `rules`"),
    ({"action": "CUSTOM", "rules": [{}]}, "spec.provider.name", "must not be empty"),
    ({"provider": {"name": "x"}, "rules": [{}]}, "spec.provider", "non CUSTOM action, found ALLOW"),
    ({"action": "CUSTOM", "provider": {"name": "x"}, "rules": [{"from": [{"source": {"principals": ["a"]}}]}]},
     "spec.rules[0].from[0].source.principals", "not supported with CUSTOM"),
    ({"action": "CUSTOM", "provider": {"name": "x"}, "rules": [{"when": [{"key": "request.auth.claims[a]", "values": ["b"]}]}]},
     "spec.rules[0].when[0].key", "not supported with CUSTOM"),
    ({"action": "NONE"}, "spec.action", "ALLOW"),
    ({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]}, "spec.rules[0].from[0].source.ipBlocks[0]",
     "bad CIDR range"),
    ({"rules": [{"from": [{"source": {"remoteIpBlocks": ["not-an-ip"]}}]}]},
     "spec.rules[0].from[0].source.remoteIpBlocks[0]", "bad IP address"),
    ({"rules": [{"from": [{"source": {}}]}]}, "spec.rules[0].from[0].source", "must not be empty"),
    ({"rules": [{"from": [{}]}]}, "spec.rules[0].from[0].source", "must not be nil"),
    ({"rules": [{"from": [{"source": {"namespaces": ["a"], "serviceAccounts": ["b"]}}]}]},
     "spec.rules[0].from[0].source", "cannot set serviceAccounts with namespaces"),
    ({"rules": [{"from": [{"source": {"serviceAccounts": ["a/b/c"]}}]}]},
     "spec.rules[0].from[0].source.serviceAccounts[0]", "expected format"),
    ({"rules": [{"to": [{"operation": {"ports": ["70000"]}}]}]}, "spec.rules[0].to[0].operation.ports[0]", "bad port"),
    ({"rules": [{"to": [{"operation": {"paths": ["/a/{**}/b/{*}"]}}]}]}, "spec.rules[0].to[0].operation.paths[0]",
     "{**} is not the last"),
    ({"rules": [{"to": [{"operation": {"paths": ["/a/{x}"]}}]}]}, "spec.rules[0].to[0].operation.paths[0]", "'{'"),
    ({"rules": [{"to": [{"operation": {"methods": [""]}}]}]}, "spec.rules[0].to[0].operation.methods[0]", "empty value"),
    ({"rules": [{"to": [{"operation": {}}]}]}, "spec.rules[0].to[0].operation", "must not be empty"),
    ({"rules": [{"when": [{"key": "request.headers[x]"}]}]}, "spec.rules[0].when[0]", "at least one of"),
    ({"rules": [{"when": [{"key": "request.headers", "values": ["a"]}]}]}, "spec.rules[0].when[0].key", "a[b]"),
    ({"rules": [{"when": [{"key": "destination.name", "values": ["a"]}]}]}, "spec.rules[0].when[0].key", "v1alpha1"),
    ({"rules": [{"when": [{"key": "source.colour", "values": ["a"]}]}]}, "spec.rules[0].when[0].key", "unknown attribute"),
    ({"rules": [{"when": [{"key": "source.serviceAccount", "values": ["a/b/c"]}]}]}, "spec.rules[0].when[0].values",
     "expected format"),
    ({"rules": [{"when": [{"key": "destination.port", "notValues": ["x"]}]}]}, "spec.rules[0].when[0].notValues", "bad port"),
    ({"selector": {"matchLabels": {"app": "a"}}, "targetRef": {"kind": "Service", "name": "a"}}, "spec", "only one of"),
    ({"targetRef": {"kind": "Service", "name": "a", "namespace": "b"}}, "spec.targetRef.namespace", "cross namespace"),
    ({"targetRefs": [{"kind": "Pod", "name": "a"}]}, "spec.targetRefs[0].kind", "targetRef must be to one of"),
    ({"selector": {"matchLabels": {"app": "a*"}}}, "spec.selector.matchLabels.app", "wildcard"),
])
def test_authorization_policy_errors(spec: dict[str, Any], field: str, phrase: str) -> None:
    only(ap(**spec), field, phrase)


def test_valid_authorization_policies_pass() -> None:
    assert ap() == []  # spec: {} (denies all)
    assert ap(action="DENY", rules=[{}]) == []
    assert ap(rules=[{"to": [{"operation": {"ports": [8080], "paths": ["/a/{*}/b/{**}", "*.html", "/x/*"]}}],
                      "when": [{"key": "destination.port", "values": [8080]},
                               {"key": "request.auth.claims[a][b]", "values": ["c"]},
                               {"key": "experimental.envoy.filters.a.b[c]", "values": ["d"]}]}]) == []


@pytest.mark.parametrize(("rule", "field", "phrase"), [
    ({}, "spec.jwtRules[0]", "issuer or jwksUri"),
    ({"issuer": "a", "jwksUri": "ftp://x/keys"}, "spec.jwtRules[0].jwksUri", "http:// or https://"),
    ({"issuer": "a", "jwks": "{not json"}, "spec.jwtRules[0].jwks", "jwks parse error"),
    ({"issuer": "a", "jwks": '{"keys": [{"n": "x"}]}'}, "spec.jwtRules[0].jwks", "kty"),
    ({"issuer": "a", "audiences": [""]}, "spec.jwtRules[0].audiences[0]", "non-empty"),
    ({"issuer": "a", "fromHeaders": [{"prefix": "x"}]}, "spec.jwtRules[0].fromHeaders[0].name", "non-empty"),
    ({"issuer": "a", "fromParams": [""]}, "spec.jwtRules[0].fromParams[0]", "non-empty"),
    ({"issuer": "a", "outputClaimToHeaders": [{"header": "x y", "claim": "c"}]},
     "spec.jwtRules[0].outputClaimToHeaders[0].header", "invalid header name"),
    ({"issuer": "a", "outputPayloadToHeader": "bad header"}, "spec.jwtRules[0].outputPayloadToHeader", "invalid header"),
    ({"issuer": "a", "timeout": "0s"}, "spec.jwtRules[0].timeout", "at least 1ms"),
])
def test_request_authentication_errors(rule: dict[str, Any], field: str, phrase: str) -> None:
    only(ra(rule), field, phrase)


def test_mesh_config_errors() -> None:
    http = {"service": "ext.foo.svc.cluster.local", "port": 8000}
    assert mesh({"name": "a", "envoyExtAuthzHttp": http}, {"name": "b", "envoyExtAuthzGrpc": {**http, "port": 9000}}) == []
    only(mesh({"name": "a", "envoyExtAuthzHttp": http}, {"name": "a", "envoyExtAuthzHttp": http}),
         "spec.extensionProviders[1].name", "duplicate")
    only(mesh({"name": "a", "envoyExtAuthzHttp": {**http, "port": 0}}), "spec.extensionProviders[0].envoyExtAuthzHttp.port",
         "[1, 65535]")
    only(mesh({"name": "a", "envoyExtAuthzHttp": {**http, "statusOnError": "999"}}),
         "spec.extensionProviders[0].envoyExtAuthzHttp.statusOnError", "unsupported")
    only(mesh({"name": "a", "envoyExtAuthzHttp": {**http, "pathPrefix": "check"}}),
         "spec.extensionProviders[0].envoyExtAuthzHttp.pathPrefix", "begin with `/`")
    only(mesh({"name": "a", "envoyExtAuthzHttp": {**http, "service": "a b"}}),
         "spec.extensionProviders[0].envoyExtAuthzHttp.service", "invalid")


# ---------------------------------------------------------------- selection and memo

def _doc(kind: str, name: str, namespace: str, spec: dict[str, Any], api_version: str = "security.istio.io/v1") -> Resource:
    return parse_resource({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace},
                           "spec": spec})


def _workload(app: str, ip: str, namespace: str = "default") -> list[Resource]:
    return [
        parse_resource({"apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "namespace": namespace},
                        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 9080, "targetPort": 8080}]}}),
        parse_resource({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{app}-1", "namespace": namespace,
                                                                       "labels": {"app": app}},
                        "status": {"podIP": ip}}),
    ]


WEB = Proxy(id="sidecar~10.0.0.1~web-1.default", ip="10.0.0.1", namespace="default", labels={"app": "web"})
API = Proxy(id="sidecar~10.0.0.2~api-1.default", ip="10.0.0.2", namespace="default", labels={"app": "api"})
OTHER = Proxy(id="sidecar~10.0.0.3~db-1.prod", ip="10.0.0.3", namespace="prod", labels={"app": "db"})


def _evolve(world: World, *replaced: Resource, removed: tuple[Resource, ...] = ()) -> World:
    resources = dict(world.resources)
    resources.update({r.key: r for r in replaced})
    for r in removed:
        del resources[r.key]
    return world.evolve(MappingProxyType(resources))


def _listeners(t: Translator, proxy: Proxy) -> api.Layer:
    return t.for_proxy(proxy)[api.LISTENER][0]


def _http_filters(layer: api.Layer, ip: str) -> list[str]:
    manager = hcm.HttpConnectionManager()
    layer.resources[f"inbound|{ip}_8080"].filter_chains[0].filters[0].typed_config.Unpack(manager)  # type: ignore[attr-defined]
    return [f.name for f in manager.http_filters]


PROXIES = {"web": WEB, "api": API, "db": OTHER}


def _all(t: Translator) -> dict[str, api.Layer]:
    return {name: _listeners(t, p) for name, p in PROXIES.items()}


def _setup() -> tuple[Translator, World, dict[str, api.Layer]]:
    t = Translator()
    world = world_of([*_workload("web", WEB.ip), *_workload("api", API.ip), *_workload("db", OTHER.ip, "prod")])
    t.update(world)
    return t, world, _all(t)


def _changed(t: Translator, before: dict[str, api.Layer]) -> set[str]:
    return {name for name, layer in before.items() if _listeners(t, PROXIES[name]) is not layer}


def test_a_policy_change_reaches_only_the_proxies_it_selects() -> None:
    t, world, before = _setup()
    allow_web = _doc("AuthorizationPolicy", "web-only", "default", {"selector": {"matchLabels": {"app": "web"}}})
    world = _evolve(world, allow_web)
    t.update(world)
    assert _changed(t, before) == {"web"}
    assert _http_filters(_listeners(t, WEB), WEB.ip)[0] == "envoy.filters.http.rbac"
    assert _http_filters(_listeners(t, API), API.ip)[0] == "envoy.filters.http.fault"

    before = _all(t)
    world = _evolve(world, _doc("RequestAuthentication", "api-jwt", "default",
                                {"targetRef": {"kind": "Service", "name": "api"},
                                 "jwtRules": [{"issuer": "a", "jwksUri": "http://10.9.9.9/keys"}]}))
    t.update(world)
    assert _changed(t, before) == {"api"}
    out = t.for_proxy(API)
    assert "jwks|80||10.9.9.9" in next(layer for layer in out[api.CLUSTER] if layer.key[0] == "clusters-inbound").resources

    before = _all(t)
    world = _evolve(world, _doc("AuthorizationPolicy", "prod-wide", "prod", {"action": "DENY", "rules": [{}]}))
    t.update(world)
    assert _changed(t, before) == {"db"}

    before = _all(t)
    world = _evolve(world, _doc("AuthorizationPolicy", "mesh-wide", "istio-system", {"action": "AUDIT", "rules": [{}]}))
    t.update(world)
    assert _changed(t, before) == {"web", "api", "db"}

    before = _all(t)
    world = _evolve(world, _doc("AuthorizationPolicy", "nobody", "default", {"selector": {"matchLabels": {"app": "x"}}}))
    t.update(world)
    assert _changed(t, before) == set()

    before = _all(t)
    world = _evolve(world, removed=(allow_web,))
    t.update(world)
    assert _changed(t, before) == {"web"}


def test_the_mesh_config_reaches_only_proxies_with_custom_policies() -> None:
    t, world, before = _setup()
    ext = _workload("ext", "10.0.0.9", "auth")
    custom = _doc("AuthorizationPolicy", "ext", "default", {"selector": {"matchLabels": {"app": "web"}},
                                                           "action": "CUSTOM", "provider": {"name": "ext"},
                                                           "rules": [{}]})
    world = _evolve(world, *ext, custom)
    t.update(world)
    deny = _http_filters(_listeners(t, WEB), WEB.ip)
    assert deny[:2] == ["envoy.filters.http.rbac", "envoy.filters.http.fault"]  # no provider: a DENY RBAC filter
    before = _all(t)
    config = _doc("MeshConfig", "mesh", "istio-system", {"extensionProviders": [
        {"name": "ext", "envoyExtAuthzHttp": {"service": "ext.auth.svc.cluster.local", "port": 9080}}]}, "meshpilot.io/v1alpha1")
    t.update(_evolve(world, config))
    assert _changed(t, before) == {"web"}
    assert _http_filters(_listeners(t, WEB), WEB.ip)[:2] == ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz"]
    assert not [e for e in t.errors if e.severity == "error"]


def test_a_proxy_without_inbound_ports_is_not_rebuilt_for_policies() -> None:
    t = Translator()
    world = world_of(_workload("web", WEB.ip))
    t.update(world)
    client = Proxy(id="sidecar~10.0.0.7~client.default", ip="10.0.0.7", namespace="default", labels={"app": "client"})
    before = _listeners(t, client)
    t.update(_evolve(world, _doc("AuthorizationPolicy", "deny-all", "default", {})))
    assert _listeners(t, client) is before
