"""VirtualService HTTP route features through a real Envoy sidecar and real upstreams:
matching, weighted splits, rewrites, redirects, direct responses, CORS and header edits.

One mesh for the module (``harness.http_mesh``): each test writes its own VirtualService
and waits until the client's Envoy routes by it. Every assertion is on requests that went
through Envoy; what the upstream saw comes from the echo app's answer or its records.
"""

from __future__ import annotations

import base64
import collections
from collections.abc import Iterator
from typing import Any

import pytest
from harness import LoopbackAllocator
from harness.http_mesh import HttpMesh, Response, http_mesh, track_logs
from harness.traffic import assert_share


@pytest.fixture(scope="module")
def mesh(envoy_binary: str, loopback: LoopbackAllocator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpMesh]:
    with http_mesh(envoy_binary, loopback, tmp_path_factory.mktemp("http-routes")) as m:
        yield m


@pytest.fixture(autouse=True)
def _logs(request: pytest.FixtureRequest, mesh: HttpMesh) -> None:
    track_logs(request, mesh.processes)


def to(subset: str, **extra: Any) -> dict[str, Any]:
    return {"destination": {"host": "web", "subset": subset}, **extra}


def answer(body: str, status: int = 200) -> dict[str, Any]:
    return {"status": status, "body": {"string": body}}


# ---------------------------------------------------------------- matching


def test_match_headers_query_parameters_method_and_uri_case(mesh: HttpMesh) -> None:
    """Each kind of condition picks its own route (a direct response naming it); a request
    that fails a condition falls through to the last route, the v1 pod."""
    rules: list[tuple[str, list[dict[str, Any]]]] = [
        ("header-exact", [{"headers": {"x-user": {"exact": "jason"}}}]),
        ("header-prefix", [{"headers": {"x-team": {"prefix": "blue"}}}]),
        ("header-regex", [{"headers": {"x-id": {"regex": "[0-9]{3}"}}}]),
        ("header-present", [{"headers": {"x-flag": {}}}]),
        ("without-value", [{"uri": {"prefix": "/without"}, "withoutHeaders": {"x-skip": {"exact": "yes"}}}]),
        ("without-present", [{"uri": {"prefix": "/absent"}, "withoutHeaders": {"x-gone": {}}}]),
        ("without-star", [{"uri": {"prefix": "/nostar"}, "withoutHeaders": {"x-gone": {"regex": "*"}}}]),
        ("query-exact", [{"uri": {"prefix": "/query"}, "queryParams": {"q": {"exact": "1"}}}]),
        ("query-regex", [{"uri": {"prefix": "/query"}, "queryParams": {"r": {"regex": "a+b"}}}]),
        ("query-present", [{"uri": {"prefix": "/query"}, "queryParams": {"p": {}}}]),
        ("method-write", [{"uri": {"prefix": "/method"}, "method": {"exact": "POST"}},
                          {"uri": {"prefix": "/method"}, "method": {"regex": "PUT|PATCH"}}]),
        ("ignore-case", [{"uri": {"exact": "/Mixed/Case"}, "ignoreUriCase": True}]),
        ("case-sensitive", [{"uri": {"prefix": "/Strict"}}]),
        ("all-of", [{"uri": {"prefix": "/both"}, "headers": {"x-a": {"exact": "1"}},
                     "queryParams": {"b": {"exact": "2"}}}]),
    ]
    mesh.apply([{"name": n, "match": m, "directResponse": answer(n)} for n, m in rules] + [{"route": [to("v1")]}])

    def which(path: str, method: str = "GET", **headers: str) -> str:
        r = mesh.request(path, method=method, headers=headers)
        assert r.status == 200, (path, headers, r.status, r.body)
        if isinstance(r.body, dict):
            return f"fallback:{r.body['version']}"
        return str(r.body)

    fallback = "fallback:v1"
    expected: list[tuple[tuple[str, str, dict[str, str]], str]] = [
        (("/", "GET", {"x-user": "jason"}), "header-exact"),
        (("/", "GET", {"x-user": "jason2"}), fallback),
        (("/", "GET", {"x-user": "Jason"}), fallback),
        (("/", "GET", {"x-team": "blueberry"}), "header-prefix"),
        (("/", "GET", {"x-team": "navy-blue"}), fallback),
        (("/", "GET", {"x-id": "123"}), "header-regex"),
        (("/", "GET", {"x-id": "1234"}), fallback),  # RE2 matches the whole value
        (("/", "GET", {"x-id": "12a"}), fallback),
        (("/", "GET", {"x-flag": ""}), "header-present"),
        (("/", "GET", {"x-flag": "anything"}), "header-present"),
        (("/without", "GET", {}), "without-value"),
        (("/without", "GET", {"x-skip": "no"}), "without-value"),
        (("/without", "GET", {"x-skip": "yes"}), fallback),
        (("/absent", "GET", {}), "without-present"),
        (("/absent", "GET", {"x-gone": "1"}), fallback),
        (("/nostar", "GET", {}), "without-star"),  # Istio: "*" here means "present", not a regex
        (("/nostar", "GET", {"x-gone": ""}), fallback),
        (("/query?q=1", "GET", {}), "query-exact"),
        (("/query?q=10", "GET", {}), fallback),
        (("/query?r=aaab", "GET", {}), "query-regex"),
        (("/query?r=aaabc", "GET", {}), fallback),
        (("/query?x=1&p", "GET", {}), "query-present"),
        (("/query?p=5", "GET", {}), "query-present"),
        (("/query", "GET", {}), fallback),
        (("/method", "POST", {}), "method-write"),
        (("/method", "PUT", {}), "method-write"),
        (("/method", "PATCH", {}), "method-write"),
        (("/method", "GET", {}), fallback),
        (("/method", "DELETE", {}), fallback),
        (("/Mixed/Case", "GET", {}), "ignore-case"),
        (("/mixed/CASE", "GET", {}), "ignore-case"),
        (("/mixed/case/more", "GET", {}), fallback),  # still an exact match
        (("/Strict/x", "GET", {}), "case-sensitive"),
        (("/strict/x", "GET", {}), fallback),
        (("/both?b=2", "GET", {"x-a": "1"}), "all-of"),
        (("/both?b=2", "GET", {}), fallback),
        (("/both", "GET", {"x-a": "1"}), fallback),
    ]
    got = {(path, method, tuple(h.items())): which(path, method, **h) for (path, method, h), _ in expected}
    want = {(path, method, tuple(h.items())): rule for (path, method, h), rule in expected}
    assert got == want


# ---------------------------------------------------------------- weighted split


def test_three_way_split_50_30_20(mesh: HttpMesh) -> None:
    mesh.apply([{"route": [to("v1", weight=50), to("v2", weight=30), to("v3", weight=20)]}])
    n = 1000
    counts = collections.Counter(mesh.request("/split").seen["version"] for _ in range(n))
    assert sum(counts.values()) == n
    for version, share in (("v1", 50), ("v2", 30), ("v3", 20)):
        assert_share(counts[version], n, share, counts)
        assert mesh.pods[version].requests == counts[version]  # each pod served exactly its share


# ---------------------------------------------------------------- rewrites


def test_uri_prefix_regex_and_authority_rewrites_as_the_upstream_sees_them(mesh: HttpMesh) -> None:
    mesh.apply([
        {"name": "prefix", "match": [{"uri": {"prefix": "/old/"}}], "rewrite": {"uri": "/new/"}, "route": [to("v1")]},
        {"name": "regex", "match": [{"uri": {"regex": "/users/[0-9]+/profile"}}],
         "rewrite": {"uriRegexRewrite": {"match": "^/users/([0-9]+)/profile$", "rewrite": "/profiles/\\1"}},
         "route": [to("v1")]},
        {"name": "authority", "match": [{"uri": {"prefix": "/auth"}}],
         "rewrite": {"authority": "backend.internal"}, "route": [to("v1")]},
        {"name": "both", "match": [{"uri": {"exact": "/both"}}],
         "rewrite": {"uri": "/combined", "authority": "combined.internal:8000"}, "route": [to("v1")]},
        {"route": [to("v1")]},
    ])
    seen = mesh.request("/old/page?x=1").seen
    assert (seen["path"], seen["host"]) == ("/new/page?x=1", "web")
    assert seen["headers"]["x-envoy-original-path"] == "/old/page?x=1"
    assert mesh.request("/users/42/profile?tab=a").seen["path"] == "/profiles/42?tab=a"
    assert mesh.request("/users/42/profile/x").seen["path"] == "/users/42/profile/x"  # no match: not rewritten
    seen = mesh.request("/auth/me").seen
    assert (seen["path"], seen["host"]) == ("/auth/me", "backend.internal")
    seen = mesh.request("/both").seen
    assert (seen["path"], seen["host"]) == ("/combined", "combined.internal:8000")
    seen = mesh.request("/other", host="web.default.svc.cluster.local:9080").seen
    assert (seen["path"], seen["host"]) == ("/other", "web.default.svc.cluster.local:9080")  # untouched


# ---------------------------------------------------------------- redirects and direct responses


def test_redirect_codes_and_location(mesh: HttpMesh) -> None:
    redirects: list[tuple[str, dict[str, Any]]] = [
        ("/r301", {"uri": "/moved"}),
        ("/r302", {"uri": "/found", "redirectCode": 302}),
        ("/r307", {"authority": "other.example", "redirectCode": 307}),
        ("/r308", {"scheme": "https", "authority": "secure.example", "uri": "/s", "redirectCode": 308}),
        ("/port", {"authority": "other.example", "scheme": "https", "port": 8443}),
        ("/port443", {"authority": "secure.example", "scheme": "https", "port": 443}),
        ("/port80", {"authority": "plain.example", "port": 80}),
        ("/derive-request", {"authority": "other.example", "derivePort": "FROM_REQUEST_PORT"}),
        ("/derive-default", {"authority": "x.example", "scheme": "https", "derivePort": "FROM_PROTOCOL_DEFAULT"}),
    ]
    mesh.apply([{"match": [{"uri": {"exact": path}}], "redirect": r} for path, r in redirects] + [{"route": [to("v1")]}])
    expected = {
        "/r301": (301, "http://web/moved"),
        "/r302": (302, "http://web/found"),
        "/r307": (307, "http://other.example/r307"),
        "/r308": (308, "https://secure.example/s"),
        "/port": (301, "https://other.example:8443/port"),
        "/port443": (301, "https://secure.example/port443"),  # no explicit default port
        "/port80": (301, "http://plain.example/port80"),
        "/derive-request": (301, "http://other.example:9080/derive-request"),  # the port the client called
        "/derive-default": (301, "https://x.example/derive-default"),
    }
    got = {}
    for path in expected:
        r = mesh.request(path)
        got[path] = (r.status, r.header("location"))
    assert got == expected
    assert sum(p.requests for p in mesh.pods.values()) == 0  # Envoy answered them all itself


def test_direct_response_status_and_body(mesh: HttpMesh) -> None:
    raw = b"\x00binary\xffbody"
    mesh.apply([
        {"match": [{"uri": {"exact": "/teapot"}}], "directResponse": answer("short and stout", 418)},
        {"match": [{"uri": {"exact": "/bytes"}}],
         "directResponse": {"status": 503, "body": {"bytes": base64.b64encode(raw).decode()}}},
        {"match": [{"uri": {"exact": "/empty"}}], "directResponse": {"status": 204}},
        {"route": [to("v1")]},
    ])
    r = mesh.request("/teapot")
    assert (r.status, r.body) == (418, "short and stout")
    r = mesh.request("/bytes")
    assert (r.status, r.body) == (503, raw.decode("utf-8", "replace"))
    assert r.header("content-length") == str(len(raw))
    r = mesh.request("/empty")
    assert (r.status, r.body) == (204, "")
    assert sum(p.requests for p in mesh.pods.values()) == 0
    assert mesh.request("/teapot/no").seen["version"] == "v1"  # exact: the fallback gets the rest


# ---------------------------------------------------------------- CORS


def test_cors_preflight_and_simple_requests(mesh: HttpMesh) -> None:
    policy = {
        "allowOrigins": [{"exact": "https://good.example"}, {"regex": "https://[a-z]+\\.trusted\\.example"}],
        "allowMethods": ["GET", "POST"],
        "allowHeaders": ["x-custom"],
        "exposeHeaders": ["x-echo-pod"],
        "maxAge": "24h",
        "allowCredentials": True,
    }
    mesh.apply([
        {"match": [{"uri": {"prefix": "/ignore"}}], "corsPolicy": {**policy, "unmatchedPreflights": "IGNORE"},
         "route": [to("v1")]},
        {"corsPolicy": policy, "route": [to("v1")]},
    ])

    def preflight(origin: str, path: str = "/api") -> Response:
        return mesh.request(path, method="OPTIONS", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-custom"})

    def cors_headers(r: Response) -> dict[str, str | None]:
        return {k: r.header(k) for k in sorted(r.header_names) if k.startswith("access-control-")}

    for origin in ("https://good.example", "https://api.trusted.example"):
        r = preflight(origin)
        assert r.status == 200
        assert cors_headers(r) == {
            "access-control-allow-origin": origin,
            "access-control-allow-methods": "GET,POST",
            "access-control-allow-headers": "x-custom",
            "access-control-allow-credentials": "true",
            "access-control-expose-headers": "x-echo-pod",
            "access-control-max-age": "86400",
        }
    assert mesh.v1.requests == 0  # Envoy answered the preflights

    # Not an allowed origin: no CORS headers; by default the preflight goes on to the app.
    r = preflight("https://evil.example")
    assert cors_headers(r) == {}
    assert (r.status, r.seen["method"]) == (200, "OPTIONS")
    assert mesh.v1.requests == 1
    # unmatchedPreflights: IGNORE: Envoy answers it without the app, and allows no origin.
    r = preflight("https://evil.example", "/ignore")
    assert r.status == 200 and r.header("access-control-allow-origin") is None
    assert mesh.v1.requests == 1
    assert cors_headers(preflight("https://good.example", "/ignore"))["access-control-allow-origin"] == \
        "https://good.example"

    # A simple request: the app answers, Envoy adds the CORS response headers for allowed origins.
    r = mesh.request("/api", headers={"Origin": "https://good.example"})
    assert r.seen["version"] == "v1"
    assert cors_headers(r) == {"access-control-allow-origin": "https://good.example",
                               "access-control-allow-credentials": "true",
                               "access-control-expose-headers": "x-echo-pod"}
    r = mesh.request("/api", headers={"Origin": "https://good.example.evil"})
    assert r.seen["version"] == "v1" and cors_headers(r) == {}


# ---------------------------------------------------------------- header edits


REQUEST_OPS = {"set": {"x-set": "edited"}, "add": {"x-add": "edited", "x-new": "fresh"}, "remove": ["x-remove"]}
RESPONSE_OPS = {"set": {"x-resp-set": "edited"}, "add": {"x-resp-add": "edited"}, "remove": ["x-resp-remove"]}
# The upstream answers with these response headers (the echo app's ?header=).
UPSTREAM_HEADERS = "?header=x-resp-set:upstream&header=x-resp-add:upstream&header=x-resp-remove:upstream"


def _check_edits(r: Response) -> None:
    values = r.seen["header_values"]
    assert values["x-set"] == ["edited"]
    assert values["x-add"] == ["client", "edited"]
    assert values["x-new"] == ["fresh"]
    assert "x-remove" not in values
    assert values["x-keep"] == ["client"]
    assert r.values("x-resp-set") == ["edited"]
    assert r.values("x-resp-add") == ["upstream", "edited"]
    assert r.values("x-resp-remove") == []
    assert r.values("x-echo-pod")  # untouched


def test_header_set_add_remove_at_route_and_destination_level(mesh: HttpMesh) -> None:
    ops = {"request": REQUEST_OPS, "response": RESPONSE_OPS}
    mesh.apply([
        {"match": [{"uri": {"prefix": "/route-level"}}], "headers": ops, "route": [to("v1")]},
        {"match": [{"uri": {"prefix": "/destination-level"}}], "route": [to("v2", headers=ops)]},
        {"match": [{"uri": {"prefix": "/weighted"}}], "route": [
            to("v1", weight=50, headers={"request": {"set": {"x-dest": "v1", "host": "v1.internal"}},
                                         "response": {"set": {"x-dest-resp": "v1"}, "remove": ["x-echo-pod"]}}),
            to("v2", weight=50, headers={"request": {"set": {"x-dest": "v2"}},
                                         "response": {"add": {"x-dest-resp": "v2"}}}),
        ]},
        {"match": [{"uri": {"prefix": "/authority"}}], "headers": {"request": {"set": {":authority": "set.internal"}}},
         "route": [to("v1")]},
        {"route": [to("v1")]},
    ])
    client = {"x-set": "client", "x-add": "client", "x-remove": "client", "x-keep": "client"}
    for path, version in (("/route-level", "v1"), ("/destination-level", "v2")):
        r = mesh.request(path + UPSTREAM_HEADERS, headers=client)
        assert r.seen["version"] == version
        _check_edits(r)

    # A split: each destination's own edits go with the requests sent to it.
    by_version: dict[str, list[Response]] = {"v1": [], "v2": []}
    for _ in range(40):
        r = mesh.request("/weighted")
        by_version[r.seen["version"]].append(r)
    assert by_version["v1"] and by_version["v2"], {k: len(v) for k, v in by_version.items()}
    for r in by_version["v1"]:
        assert (r.seen["headers"]["x-dest"], r.seen["host"]) == ("v1", "v1.internal")
        assert r.values("x-dest-resp") == ["v1"] and r.values("x-echo-pod") == []
    for r in by_version["v2"]:
        assert (r.seen["headers"]["x-dest"], r.seen["host"]) == ("v2", "web")
        assert r.values("x-dest-resp") == ["v2"] and r.values("x-echo-pod") == ["web-v2"]

    # Setting :authority is a host rewrite; without edits nothing changes.
    assert mesh.request("/authority").seen["host"] == "set.internal"
    seen = mesh.request("/plain", headers=client).seen
    assert seen["host"] == "web" and "x-new" not in seen["headers"] and seen["headers"]["x-remove"] == "client"
