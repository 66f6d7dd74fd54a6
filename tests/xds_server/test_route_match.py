"""route_match.py: Envoy's virtual host and route selection, on route configs the translator emits
(and on the matcher kinds it does not emit, which must be reported as not evaluated)."""

from __future__ import annotations

from typing import Any

import yaml
from google.protobuf import json_format

from translators.features.match import route_match
from translators.model import HTTPMatchRequest
from xds_server.app.route_match import Request, match_request, select_virtual_host


def _match(spec: str) -> dict[str, Any]:
    """The RouteMatch our translator makes of an Istio HTTPMatchRequest, in Envoy's JSON."""
    m = HTTPMatchRequest.model_validate(yaml.safe_load(spec))
    return json_format.MessageToDict(route_match(m), preserving_proto_field_name=True)


def _config(*matches: dict[str, Any]) -> dict[str, Any]:
    routes = [{"name": f"r{i}", "match": m, "route": {"cluster": f"c{i}"}} for i, m in enumerate(matches)]
    return {"virtual_hosts": [{"name": "reviews:9080", "domains": ["reviews", "reviews.default.svc.cluster.local"],
                               "routes": [*routes, {"name": "default", "match": {"prefix": "/"},
                                                    "route": {"cluster": "fallback"}}]}]}


def _route(config: dict[str, Any], path: str, method: str = "GET", **headers: str) -> str:
    got = match_request(config, Request("reviews:9080", path, method, {k.replace("_", "-"): v for k, v in headers.items()}))
    assert got.route is not None
    return str(got.route["name"])


def test_virtual_host_by_domain_exact_then_longest_wildcard() -> None:
    vhs = [{"name": "any", "domains": ["*"]}, {"name": "suffix", "domains": ["*.example.com"]},
           {"name": "longer", "domains": ["*.shop.example.com"]}, {"name": "prefix", "domains": ["api.*"]},
           {"name": "exact", "domains": ["a.shop.example.com"]}]
    assert select_virtual_host(vhs, "a.shop.example.com:80")["name"] == "exact"  # type: ignore[index]
    assert select_virtual_host(vhs, "b.shop.example.com")["name"] == "longer"  # type: ignore[index]
    assert select_virtual_host(vhs, "b.example.com")["name"] == "suffix"  # type: ignore[index]
    assert select_virtual_host(vhs, "api.other")["name"] == "prefix"  # type: ignore[index]
    assert select_virtual_host(vhs, "elsewhere")["name"] == "any"  # type: ignore[index]
    assert select_virtual_host(vhs[1:2], "example.com") is None  # a wildcard needs at least one character


def test_uri_kinds_case_and_query() -> None:
    config = _config(_match("uri: {exact: /pinned}"), _match("uri: {regex: '/r/[0-9]+'}"),
                     _match("{uri: {prefix: /API}, ignoreUriCase: true}"), _match("queryParams: {v: {exact: '2'}}"),
                     _match("queryParams: {debug: {}}"))
    assert _route(config, "/pinned") == "r0" and _route(config, "/pinned?x=1") == "r0"  # path: query left out
    assert _route(config, "/pinned/more") == "default"
    assert _route(config, "/r/42") == "r1" and _route(config, "/r/42x") == "default"  # RE2: the whole path
    assert _route(config, "/api/v1") == "r2"
    assert _route(config, "/x?v=2") == "r3" and _route(config, "/x?v=3") == "default"
    assert _route(config, "/x?debug") == "r4" and _route(config, "/x?debug=yes") == "r4"


def test_header_matchers() -> None:
    config = _config(_match("headers: {x-user: {exact: jason}}"), _match("withoutHeaders: {x-canary: {exact: 'no'}}"),
                     _match("headers: {x-any: {}}"), _match("{method: {exact: POST}, authority: {prefix: rev}}"))
    assert _route(config, "/", x_user="jason") == "r0"
    # withoutHeaders: a request without the header does not have the value either: it matches.
    assert _route(config, "/", x_user="other") == "r1"
    assert _route(config, "/", x_canary="no", x_any="") == "r2"
    assert _route(config, "/", "POST", x_canary="no") == "r3"
    assert _route(config, "/", "GET", x_canary="no") == "default"


def test_matchers_not_evaluated_are_reported() -> None:
    config = _config({"prefix": "/", "runtime_fraction": {"default_value": {"numerator": 50}}})
    got = match_request(config, Request("reviews", "/"))
    assert got.route is not None and got.route["name"] == "r0"
    assert got.unevaluated == [(0, "runtime_fraction")]
    config = _config({"path_separated_prefix": "/a"})
    got = match_request(config, Request("reviews", "/a/b"))
    assert got.unevaluated == [(0, "path_separated_prefix")]
