"""VirtualService and DestinationRule validation as Istio does it (plus what Envoy would
refuse), through ``parse_text``: every error names the file, the resource and the exact
field, and says what is wrong. No Envoy here; tests/e2e has the configs Envoy sees."""

from __future__ import annotations

import json
from typing import Any

import pytest

from translators.model import DestinationRule, VirtualService
from translators.model.types import ENVOY_MAX_PROGRAM_SIZE, check_regex
from xds_server.sources.parse import parse_text

FILE = "mesh/reviews.yaml"
ROUTE: dict[str, Any] = {"route": [{"destination": {"host": "reviews"}}]}


def _parse(kind: str, spec: dict[str, Any]) -> tuple[Any, list[tuple[str, str]]]:
    doc = {"apiVersion": "networking.istio.io/v1", "kind": kind,
           "metadata": {"name": "reviews", "namespace": "shop"}, "spec": spec}
    (parsed,) = parse_text(json.dumps(doc), FILE, is_json=True).documents
    for e in parsed.errors:
        assert (e.file, e.resource) == (FILE, f"{kind} shop/reviews"), e
    errors = [(e.field, e.message) for e in parsed.errors if e.severity == "error"]
    assert (parsed.resource is None) == bool(errors)
    return parsed.resource, errors


def vs(http: list[dict[str, Any]] | None = None, **spec: Any) -> list[tuple[str, str]]:
    """The errors of a VirtualService for host reviews with these http entries."""
    return _parse("VirtualService", {"hosts": ["reviews"], "http": [ROUTE] if http is None else http, **spec})[1]


def entry(**fields: Any) -> list[dict[str, Any]]:
    """One http entry: a route to reviews plus ``fields``."""
    return [{**ROUTE, **fields}]


def dr(traffic_policy: dict[str, Any] | None = None, **spec: Any) -> list[tuple[str, str]]:
    body: dict[str, Any] = {"host": "reviews", **spec}
    if traffic_policy is not None:
        body["trafficPolicy"] = traffic_policy
    return _parse("DestinationRule", body)[1]


def only(errors: list[tuple[str, str]], field: str, *phrases: str) -> None:
    """Exactly one error, on ``field``, whose message says each of ``phrases``."""
    assert [f for f, _ in errors] == [field], errors
    message = errors[0][1]
    for phrase in phrases:
        assert phrase in message, (phrase, message)


# ---------------------------------------------------------------- regexes (RE2, as Envoy compiles them)


def test_check_regex_uses_re2_and_envoys_program_size_limit() -> None:
    with pytest.raises(ValueError, match=r"RE2 cannot compile '\(': missing \)"):
        check_regex("(")
    with pytest.raises(ValueError, match=r"RE2 cannot compile '\(a\)\\\\1': invalid escape sequence: \\1"):
        check_regex("(a)\\1")  # backreferences are not RE2
    assert check_regex("[a-z]{1000}")  # over Envoy's default limit (100), within the one our bootstrap sets
    with pytest.raises(ValueError, match=f"program of size 40004; Envoy rejects programs larger than {ENVOY_MAX_PROGRAM_SIZE}"):
        check_regex("a{1000}" * 40)  # valid RE2, too big for Envoy
    with pytest.raises(ValueError, match=r"invalid repetition size: \{1001\}"):
        check_regex("a{1001}")
    with pytest.raises(ValueError, match="regex must not be empty"):
        check_regex("")
    assert check_regex("^/api/v[0-9]+/.*$") == "^/api/v[0-9]+/.*$"


@pytest.mark.parametrize(("http", "field", "phrase"), [
    ([{"match": [{"uri": {"regex": "("}}], **ROUTE}], "spec.http[0].match[0].uri.regex", "RE2 cannot compile '('"),
    ([{"match": [{"headers": {"x-user": {"regex": "(a)\\1"}}}], **ROUTE}],
     "spec.http[0].match[0].headers.x-user.regex", "invalid escape sequence"),
    ([{"match": [{"queryParams": {"q": {"regex": "[a-z]{1000}" * 40}}}], **ROUTE}],
     "spec.http[0].match[0].queryParams.q.regex", "Envoy rejects programs larger than 32768"),
    (entry(rewrite={"uriRegexRewrite": {"match": "(", "rewrite": "/x"}}),
     "spec.http[0].rewrite.uriRegexRewrite.match", "RE2 cannot compile"),
    (entry(corsPolicy={"allowOrigins": [{"regex": "a{1001}"}]}),
     "spec.http[0].corsPolicy.allowOrigins[0].regex", "invalid repetition size"),
    ([{"match": [{"uri": {"regex": ""}}], **ROUTE}], "spec.http[0].match[0].uri.regex", "regex must not be empty"),
    ([{"match": [{"headers": {"x-a": {"regex": "*"}}}], **ROUTE}],
     "spec.http[0].match[0].headers.x-a.regex", "'*' is not a regex"),
])
def test_regexes_are_compiled_by_re2(http: list[dict[str, Any]], field: str, phrase: str) -> None:
    only(vs(http), field, phrase)


def test_a_valid_regex_and_the_presence_star_of_without_headers_pass() -> None:
    ok = [{"match": [{"uri": {"regex": "^/api/v[0-9]+/.*$"}, "withoutHeaders": {"x-debug": {"regex": "*"}}}], **ROUTE}]
    assert vs(ok) == []


# ---------------------------------------------------------------- numbers, percentages, durations


@pytest.mark.parametrize(("http", "field", "phrase"), [
    (entry(fault={"abort": {"httpStatus": 503, "percentage": {"value": 101}}}),
     "spec.http[0].fault.abort.percentage.value", "less than or equal to 100"),
    (entry(fault={"delay": {"fixedDelay": "1s", "percentage": {"value": 0.00001}}}),
     "spec.http[0].fault.delay.percentage", "neither 0 nor in [0.0001, 100]"),
    (entry(fault={"delay": {"fixedDelay": "1s", "percent": 150}}), "spec.http[0].fault.delay.percent", "100"),
    (entry(mirror={"host": "reviews"}, mirrorPercentage={"value": -1}),
     "spec.http[0].mirrorPercentage.value", "greater than or equal to 0"),
    (entry(mirrors=[{"destination": {"host": "reviews"}, "percentage": {"value": 150}}]),
     "spec.http[0].mirrors[0].percentage.value", "less than or equal to 100"),
    ([{"route": [{"destination": {"host": "reviews"}, "weight": -1}]}],
     "spec.http[0].route[0].weight", "greater than or equal to 0"),
    ([{"route": [{"destination": {"host": "reviews"}, "weight": 2**31}]}],
     "spec.http[0].route[0].weight", "less than or equal to 2147483647"),
    ([{"route": [{"destination": {"host": "reviews", "subset": s}, "weight": 0} for s in ("v1", "v2")]}],
     "spec.http[0].route", "total destination weight is 0"),
    (entry(retries={"attempts": 2**31}), "spec.http[0].retries.attempts", "less than or equal to 2147483647"),
])
def test_numbers_and_percentages_out_of_range(http: list[dict[str, Any]], field: str, phrase: str) -> None:
    only(vs(http), field, phrase)


def test_weights_are_relative() -> None:
    (resource, errors) = _parse("VirtualService", {"hosts": ["reviews"], "http": [{"route": [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 3},
        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 1}]}]})
    assert errors == [] and [d.weight for d in resource.spec.http[0].route] == [3, 1]


@pytest.mark.parametrize(("value", "phrase"), [
    ("-1s", "duration must not be negative (got '-1s')"),
    ("0s", "duration must be at least 1ms (got '0s')"),
    ("0", "duration must be at least 1ms (got '0')"),
    ("500us", "duration must be at least 1ms (got '500us')"),
    ("1.0005s", "duration must be a whole number of milliseconds (got '1.0005s')"),
    ("10", "invalid duration '10'"),
    ("1y", "invalid duration '1y'"),
    ("3000000h", "is too long (at most 2562047h)"),
    ({"seconds": -1}, "duration must not be negative"),
])
def test_bad_durations(value: Any, phrase: str) -> None:
    only(vs(entry(timeout=value)), "spec.http[0].timeout", phrase)
    only(vs(entry(retries={"attempts": 1, "perTryTimeout": value})), "spec.http[0].retries.perTryTimeout", phrase)


@pytest.mark.parametrize(("text", "nanos"), [
    ("1h", 3_600_000_000_000), ("2m", 120_000_000_000), ("1.5s", 1_500_000_000), ("100ms", 100_000_000),
    ("1m30s", 90_000_000_000), ("1h0m0.25s", 3_600_250_000_000), (".5s", 500_000_000), ("1000000us", 1_000_000_000),
    ({"seconds": 2, "nanos": 5_000_000}, 2_005_000_000),
])
def test_go_durations(text: Any, nanos: int) -> None:
    resource, errors = _parse("VirtualService", {"hosts": ["reviews"], "http": entry(timeout=text)})
    assert errors == [] and resource.spec.http[0].timeout.nanos == nanos


def test_zero_means_off_only_where_istio_says_so() -> None:
    assert dr({"connectionPool": {"tcp": {"idleTimeout": "0s"}}}) == []  # no idle timeout
    only(dr({"connectionPool": {"tcp": {"idleTimeout": "500us"}}}), "spec.trafficPolicy.connectionPool.tcp.idleTimeout",
         "at least 1ms")
    only(dr({"connectionPool": {"http": {"idleTimeout": "0s"}}}), "spec.trafficPolicy.connectionPool.http.idleTimeout",
         "at least 1ms")
    only(dr(subsets=[{"name": "v1", "trafficPolicy": {"portLevelSettings": [
        {"port": {"number": 9080}, "outlierDetection": {"interval": "0.5ms"}}]}}]),
        "spec.subsets[0].trafficPolicy.portLevelSettings[0].outlierDetection.interval", "at least 1ms")


# ---------------------------------------------------------------- retries, redirects, direct responses


@pytest.mark.parametrize(("retries", "field", "phrase"), [
    ({"attempts": 2, "retryOn": "5xx,bogus"}, "spec.http[0].retries.retryOn", "'bogus' is not a retry condition Envoy knows"),
    ({"attempts": 2, "retryOn": "599"}, "spec.http[0].retries.retryOn", "'599' is not a retry condition"),
    ({"attempts": 0, "retryOn": "5xx"}, "spec.http[0].retries.attempts", "attempts is 0, which turns retries off"),
    ({"perTryTimeout": "1s"}, "spec.http[0].retries.attempts", "but perTryTimeout is set"),
])
def test_retries(retries: dict[str, Any], field: str, phrase: str) -> None:
    only(vs(entry(retries=retries)), field, phrase)


def test_known_retry_conditions_and_status_codes_pass() -> None:
    on = "5xx,gateway-error,reset,connect-failure,retriable-4xx,refused-stream,retriable-status-codes,429,503,unavailable"
    assert vs(entry(retries={"attempts": 3, "retryOn": on, "perTryTimeout": "2s", "backoff": "25ms"})) == []
    assert vs(entry(retries={"attempts": 0})) == []  # retries off


@pytest.mark.parametrize(("redirect", "field", "phrase"), [
    ({"uri": "/new", "redirectCode": 300}, "spec.http[0].redirect.redirectCode", "301, 302, 303, 307 or 308"),
    ({"uri": "/new", "redirectCode": 304}, "spec.http[0].redirect.redirectCode", "(got 304)"),
    ({"uri": "/new", "scheme": "ftp"}, "spec.http[0].redirect.scheme", "must be http or https"),
    ({}, "spec.http[0].redirect", "must set at least one of uri, authority, scheme, port, derivePort"),
    ({"authority": "a", "port": 8080, "derivePort": "FROM_REQUEST_PORT"}, "spec.http[0].redirect",
     "only one of port, derivePort"),
    ({"uri": "/a\r\nSet-Cookie: x"}, "spec.http[0].redirect.uri", "NUL, CR or LF"),
])
def test_redirects(redirect: dict[str, Any], field: str, phrase: str) -> None:
    only(vs([{"redirect": redirect}]), field, phrase)


def test_every_redirect_code_envoy_has_passes() -> None:
    for code in (301, 302, 303, 307, 308):
        assert vs([{"redirect": {"uri": "/new", "redirectCode": code}}]) == []


@pytest.mark.parametrize(("direct", "field", "phrase"), [
    ({"status": 199}, "spec.http[0].directResponse.status", "greater than or equal to 200"),
    ({"status": 600}, "spec.http[0].directResponse.status", "less than or equal to 599"),
    ({"status": 200, "body": {"bytes": "not base64!"}}, "spec.http[0].directResponse.body.bytes", "must be base64"),
    ({"status": 200, "body": {"string": "a", "bytes": "YQ=="}}, "spec.http[0].directResponse.body", "only one of string, bytes"),
    ({"status": 200, "body": {"string": "x" * (1024 * 1024 + 1)}}, "spec.http[0].directResponse.body.string",
     "at most 1 MiB"),
])
def test_direct_responses(direct: dict[str, Any], field: str, phrase: str) -> None:
    only(vs([{"directResponse": direct}]), field, phrase)


def test_direct_response_status_range_ends_pass() -> None:
    assert vs([{"directResponse": {"status": 200, "body": {"bytes": "aGk="}}}, {"directResponse": {"status": 599}}]) == []


# ---------------------------------------------------------------- one action per route, fault, mirror


@pytest.mark.parametrize(("http", "field", "phrase"), [
    ([{**ROUTE, "redirect": {"uri": "/x"}}], "spec.http[0]",
     "only one of route, redirect, directResponse, delegate may be set (got route, redirect)"),
    ([{"directResponse": {"status": 200}, "delegate": {"name": "d"}}], "spec.http[0]", "(got directResponse, delegate)"),
    ([{"name": "nothing"}], "spec.http[0]", "one of route, redirect, directResponse, delegate must be set"),
    ([{"directResponse": {"status": 200}, "fault": {"abort": {"httpStatus": 500}}}], "spec.http[0].fault",
     "fault cannot be used with directResponse"),
    ([{"redirect": {"uri": "/x"}, "rewrite": {"uri": "/y"}}], "spec.http[0].rewrite", "rewrite cannot be used with redirect"),
    (entry(mirror={"host": "reviews"}, mirrors=[{"destination": {"host": "reviews"}}]), "spec.http[0].mirrors",
     "only one of mirror, mirrors"),
    (entry(fault={"abort": {"percentage": {"value": 10}}}), "spec.http[0].fault.abort",
     "exactly one of httpStatus, grpcStatus, http2Error must be set (got none)"),
    (entry(fault={"abort": {"httpStatus": 500, "grpcStatus": "UNAVAILABLE"}}), "spec.http[0].fault.abort",
     "(got ['httpStatus', 'grpcStatus'])"),
    (entry(fault={"abort": {"grpcStatus": "NOPE"}}), "spec.http[0].fault.abort.grpcStatus", "gRPC status 'NOPE'"),
    (entry(fault={"abort": {"http2Error": "REFUSED_STREAM"}}), "spec.http[0].fault.abort.http2Error",
     "not supported"),
    (entry(fault={"abort": {"httpStatus": 700}}), "spec.http[0].fault.abort.httpStatus", "less than or equal to 599"),
    (entry(fault={}), "spec.http[0].fault", "must set delay, abort or both"),
    (entry(fault={"delay": {"percentage": {"value": 5}}}), "spec.http[0].fault.delay.fixedDelay", "fixedDelay must be set"),
    (entry(fault={"delay": {"exponentialDelay": "1s"}}), "spec.http[0].fault.delay.exponentialDelay", "use fixedDelay"),
])
def test_conflicts_and_faults(http: list[dict[str, Any]], field: str, phrase: str) -> None:
    only(vs(http), field, phrase)


# ---------------------------------------------------------------- headers, matches, destinations


@pytest.mark.parametrize(("http", "field", "phrase"), [
    (entry(headers={"request": {"set": {"x-a": "100%"}}}), "spec.http[0].headers.request.set.x-a",
     "write a literal % as %%"),
    (entry(headers={"request": {"add": {"x-a": "a\nb"}}}), "spec.http[0].headers.request.add.x-a", "control character"),
    (entry(headers={"request": {"set": {"x-a": "a" * 16385}}}), "spec.http[0].headers.request.set.x-a",
     "longer than Envoy's limit of 16384 bytes"),
    (entry(headers={"request": {"set": {":path": "/x"}}}), "spec.http[0].headers.request.set.:path", "pseudo-headers"),
    (entry(headers={"request": {"remove": ["host"]}}), "spec.http[0].headers.request.remove[0]", "Host header"),
    (entry(headers={"response": {"set": {"Host": "x"}}}), "spec.http[0].headers.response.set.Host", "Host header"),
    (entry(headers={"response": {"remove": [""]}}), "spec.http[0].headers.response.remove[0]", "must not be empty"),
    ([{"route": [{"destination": {"host": "reviews"}, "headers": {"request": {"set": {"x-b": "%BROKEN"}}}}]}],
     "spec.http[0].route[0].headers.request.set.x-b", "does not start a command"),
    (entry(rewrite={"authority": "a"}, headers={"request": {"set": {"host": "b"}}}),
     "spec.http[0].headers.request.set.host", "the authority is set more than once"),
])
def test_header_operations(http: list[dict[str, Any]], field: str, phrase: str) -> None:
    only(vs(http), field, phrase)


def test_header_values_envoy_formats_pass() -> None:
    values = {"x-a": "100%%", "x-b": "%REQ(x-request-id)%", "x-c": "%START_TIME(%s.%3f)%", "x-d": "a\tb"}
    assert vs(entry(headers={"request": {"set": values, "remove": ["x-old"]}, "response": {"add": {"x-e": "1"}}})) == []


@pytest.mark.parametrize(("match", "field", "phrase"), [
    ({"headers": {"x a": {"exact": "b"}}}, "spec.http[0].match[0].headers.x a", "not a valid header name"),
    ({"headers": {"x-a": {"prefix": ""}}}, "spec.http[0].match[0].headers.x-a.prefix", "prefix must not be empty"),
    ({"method": {"prefix": ""}}, "spec.http[0].match[0].method.prefix", "prefix must not be empty"),
    ({"uri": {"exact": "/a", "prefix": "/b"}}, "spec.http[0].match[0].uri", "only one of exact, prefix, regex"),
    ({"queryParams": {"q": {"prefix": "a"}}}, "spec.http[0].match[0].queryParams.q.prefix", "use exact or regex"),
    ({"queryParams": {"": {"exact": "a"}}}, "spec.http[0].match[0].queryParams.", "must not be empty"),
    ({"sourceNamespace": "not_a_namespace"}, "spec.http[0].match[0].sourceNamespace", "not a namespace name"),
    ({"sourceLabels": {"app/": "x"}}, "spec.http[0].match[0].sourceLabels.app/", "invalid label key"),
    ({"sourceLabels": {"app": "a b"}}, "spec.http[0].match[0].sourceLabels.app", "invalid label value"),
    ({"gateways": ["a/b/c"]}, "spec.http[0].match[0].gateways[0]", "invalid name"),
    ({"port": 0}, "spec.http[0].match[0].port", "greater than or equal to 1"),
    ({"headers": {"@request.auth.claims.group": {"exact": "a"}}},
     "spec.http[0].match[0].headers.@request.auth.claims.group", "only supported for gateways"),
])
def test_matches(match: dict[str, Any], field: str, phrase: str) -> None:
    only(vs([{"match": [match], **ROUTE}]), field, phrase)


def test_matches_istio_allows_pass() -> None:
    match = {"uri": {"prefix": ""}, "headers": {"X-Upper": {"exact": ""}, "x-present": {}, ":authority": {"exact": "a"}},
             "queryParams": {"debug": {}}, "withoutHeaders": {"x-no": {}}, "sourceNamespace": "team-a",
             "sourceLabels": {"app.kubernetes.io/name": "web"}, "gateways": ["mesh"], "port": 9080}
    assert vs([{"match": [match], **ROUTE}]) == []


@pytest.mark.parametrize(("destination", "field", "phrase"), [
    ({"host": "*"}, "spec.http[0].route[0].destination.host", "cannot be '*'"),
    ({"host": "a b"}, "spec.http[0].route[0].destination.host", "host name 'a b' is invalid"),
    ({"host": "10.0.0.1"}, "spec.http[0].route[0].destination.host", "all digits"),
    ({"host": "reviews", "subset": "v_1"}, "spec.http[0].route[0].destination.subset", "not a DNS-1123 label"),
    ({"host": "reviews", "port": {"number": 70000}}, "spec.http[0].route[0].destination.port.number", "65535"),
])
def test_destinations(destination: dict[str, Any], field: str, phrase: str) -> None:
    only(vs([{"route": [{"destination": destination}]}]), field, phrase)


@pytest.mark.parametrize(("cors", "field", "phrase"), [
    ({"allowMethods": ["FETCH"]}, "spec.http[0].corsPolicy.allowMethods[0]", "'FETCH' is not an HTTP method"),
    ({"allowHeaders": ["x a"]}, "spec.http[0].corsPolicy.allowHeaders[0]", "not a valid header name"),
    ({"maxAge": "1500ms"}, "spec.http[0].corsPolicy.maxAge", "whole seconds"),
    ({"allowOrigins": [{"exact": ""}]}, "spec.http[0].corsPolicy.allowOrigins[0]", "non-empty exact, prefix or regex"),
])
def test_cors(cors: dict[str, Any], field: str, phrase: str) -> None:
    only(vs(entry(corsPolicy=cors)), field, phrase)


@pytest.mark.parametrize(("rewrite", "field", "phrase"), [
    ({}, "spec.http[0].rewrite", "at least one of uri, uriRegexRewrite, authority"),
    ({"uri": "/a", "uriRegexRewrite": {"match": "^/b", "rewrite": "/c"}}, "spec.http[0].rewrite",
     "only one of uri, uriRegexRewrite"),
    ({"uriRegexRewrite": {"match": "^/b", "rewrite": ""}}, "spec.http[0].rewrite.uriRegexRewrite.rewrite", "at least 1"),
    ({"authority": "a\r\nb"}, "spec.http[0].rewrite.authority", "NUL, CR or LF"),
])
def test_rewrites(rewrite: dict[str, Any], field: str, phrase: str) -> None:
    only(vs(entry(rewrite=rewrite)), field, phrase)


# ---------------------------------------------------------------- hosts, gateways, delegates, exportTo


@pytest.mark.parametrize(("spec", "field", "phrase"), [
    ({"hosts": ["*"]}, "spec.hosts[0]", "'*' is not allowed for a VirtualService of the mesh"),
    ({"hosts": ["reviews", "reviews"]}, "spec.hosts[1]", "duplicate host"),
    ({"hosts": ["*.example.com", "a.example.com"]}, "spec.hosts[1]", "overlaps '*.example.com'"),
    ({"hosts": ["a b"]}, "spec.hosts[0]", "host name 'a b' is invalid"),
    ({"hosts": [], "gateways": ["shop/ingress"]}, "spec.gateways", "without hosts is a delegate and must not set gateways"),
    ({"gateways": ["a/"]}, "spec.gateways[0]", "must not be empty"),
    ({"http": []}, "spec.http", "http, tcp or tls must be provided"),
    ({"hosts": [], "http": [{"delegate": {"name": "other"}}]}, "spec.http[0].delegate", "cannot delegate again"),
    ({"http": [{"delegate": {"name": "d", "namespace": "Not_NS"}}]}, "spec.http[0].delegate.namespace",
     "not a namespace name"),
])
def test_virtual_service_spec(spec: dict[str, Any], field: str, phrase: str) -> None:
    only(vs(**spec), field, phrase)


def test_ip_hosts_and_gateway_only_wildcards_pass() -> None:
    assert vs(hosts=["10.0.0.7", "reviews.shop.svc.cluster.local"]) == []
    assert vs(hosts=["*"], gateways=["shop/ingress"]) == []
    resource, errors = _parse("VirtualService", {"http": [ROUTE]})  # a delegate
    assert errors == [] and isinstance(resource, VirtualService)


@pytest.mark.parametrize(("export_to", "field", "phrase"), [
    ([".", "*"], "spec.exportTo", "'*' (every namespace) cannot be combined"),
    (["~"], "spec.exportTo[0]", "'~' (no one) is only allowed on a ServiceEntry"),
    (["Not_A_Namespace"], "spec.exportTo[0]", "must be '.', '*', '~' or a namespace name"),
    (["team-a", "team-a"], "spec.exportTo[1]", "duplicate exportTo entry 'team-a'"),
    ([".", "shop"], "spec.exportTo[1]", "'.' is 'shop'"),
])
def test_export_to(export_to: list[str], field: str, phrase: str) -> None:
    only(vs(exportTo=export_to), field, phrase)
    only(dr(exportTo=export_to), field, phrase)


def test_export_to_values_pass() -> None:
    for export_to in (["."], ["*"], [".", "team-a", "team-b"]):
        assert vs(exportTo=export_to) == [] and dr(exportTo=export_to) == []


def test_destination_rule_with_a_workload_selector_stays_in_its_namespace() -> None:
    selector = {"matchLabels": {"app": "reviews"}}
    assert dr(exportTo=["."], workloadSelector=selector) == []
    only(dr(exportTo=[".", "team-a"], workloadSelector=selector), "spec.exportTo", "only be exported to its own namespace")


# ---------------------------------------------------------------- DestinationRule


@pytest.mark.parametrize(("policy", "field", "phrase"), [
    ({"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user", "useSourceIp": True}}},
     "spec.trafficPolicy.loadBalancer.consistentHash",
     "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName must be set "
     "(got ['httpHeaderName', 'useSourceIp'])"),
    ({"loadBalancer": {"consistentHash": {"httpHeaderName": ""}}},
     "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName", "not a valid header name"),
    ({"loadBalancer": {"consistentHash": {"httpQueryParameterName": ""}}},
     "spec.trafficPolicy.loadBalancer.consistentHash.httpQueryParameterName", "must not be empty"),
    ({"loadBalancer": {"simple": "RANDOM", "consistentHash": {"useSourceIp": True}}},
     "spec.trafficPolicy.loadBalancer", "only one of simple, consistentHash"),
    ({"loadBalancer": {"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 1000}}}},
     "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "prime number below 5000011"),
    ({"loadBalancer": {"consistentHash": {"useSourceIp": True, "maglev": {}}}},
     "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "tableSize must be set for maglev"),
    ({"loadBalancer": {"consistentHash": {"useSourceIp": True, "ringHash": {"minimumRingSize": 9_000_000}}}},
     "spec.trafficPolicy.loadBalancer.consistentHash.ringHash.minimumRingSize", "8388608"),
    ({"loadBalancer": {"consistentHash": {"useSourceIp": True, "minimumRingSize": 64, "ringHash": {}}}},
     "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize", "cannot be used with ringHash"),
    ({"loadBalancer": {"simple": "ROUND_ROBIN", "warmup": {"duration": "10s", "aggression": 0}}},
     "spec.trafficPolicy.loadBalancer.warmup.aggression", "greater than 0"),
    ({"loadBalancer": {"localityLbSetting": {"distribute": [{"from": "us/*", "to": {"us/a/*": 50, "us/b/*": 40}}]}}},
     "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to", "add up to 100"),
    ({"loadBalancer": {"localityLbSetting": {"failover": [{"from": "us", "to": "us"}]}}},
     "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]", "two different regions"),
    ({"portLevelSettings": [{"port": {"number": 80}, "tls": {"mode": "SIMPLE"}},
                            {"port": {"number": 80}, "tls": {"mode": "DISABLE"}}]},
     "spec.trafficPolicy.portLevelSettings[1].port.number", "port 80 has more than one entry"),
    ({"portLevelSettings": [{"port": {"number": 80}}]}, "spec.trafficPolicy.portLevelSettings[0]",
     "must set at least one of"),
    ({}, "spec.trafficPolicy", "must set at least one field"),
    ({"connectionPool": {}}, "spec.trafficPolicy.connectionPool", "must set tcp, http or both"),
    ({"connectionPool": {"tcp": {"maxConnections": -1}}}, "spec.trafficPolicy.connectionPool.tcp.maxConnections",
     "greater than or equal to 0"),
    ({"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE", "useClientProtocol": True}}},
     "spec.trafficPolicy.connectionPool.http.useClientProtocol", "cannot be true when h2UpgradePolicy is UPGRADE"),
    ({"outlierDetection": {"consecutiveLocalOriginFailures": 3}},
     "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures", "needs splitExternalLocalOriginErrors"),
    ({"outlierDetection": {"maxEjectionPercent": 101}}, "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
     "less than or equal to 100"),
    ({"tls": {"mode": "SIMPLE", "insecureSkipVerify": True, "caCertificates": "/ca.pem"}},
     "spec.trafficPolicy.tls.caCertificates", "cannot be set when insecureSkipVerify is true"),
    ({"tls": {"mode": "MUTUAL", "credentialName": "c", "privateKey": "/k.pem"}}, "spec.trafficPolicy.tls.privateKey",
     "cannot be set with credentialName"),
    ({"tls": {"mode": "SIMPLE", "sni": "a" * 256}}, "spec.trafficPolicy.tls.sni", "at most 255"),
])
def test_traffic_policies(policy: dict[str, Any], field: str, phrase: str) -> None:
    only(dr(policy), field, phrase)


def test_mutual_tls_needs_a_certificate_and_a_key() -> None:
    assert dr({"tls": {"mode": "MUTUAL"}}) == [
        ("spec.trafficPolicy.tls.clientCertificate", "MUTUAL needs a client certificate (or a credentialName)"),
        ("spec.trafficPolicy.tls.privateKey", "MUTUAL needs a private key (or a credentialName)"),
    ]
    assert dr({"tls": {"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem"}}) == []
    assert dr({"tls": {"mode": "MUTUAL", "credentialName": "client-cert"}}) == []


@pytest.mark.parametrize(("spec", "field", "phrase"), [
    ({"host": "a b"}, "spec.host", "host name 'a b' is invalid"),
    ({"subsets": [{"name": "v_1"}]}, "spec.subsets[0].name", "not a DNS-1123 label"),
    ({"subsets": [{"name": "v1"}, {"name": "v1"}]}, "spec.subsets[1].name", "duplicate subset name 'v1'"),
    ({"subsets": [{"name": "v1", "labels": {"version!": "v1"}}]}, "spec.subsets[0].labels.version!", "invalid label key"),
    ({"subsets": [{"name": "v1", "trafficPolicy": {"loadBalancer": {"consistentHash": {}}}}]},
     "spec.subsets[0].trafficPolicy.loadBalancer.consistentHash", "(got none)"),
    ({"workloadSelector": {"matchLabels": {"app": "*"}}}, "spec.workloadSelector.matchLabels", "wildcards are not supported"),
])
def test_destination_rule_spec(spec: dict[str, Any], field: str, phrase: str) -> None:
    only(dr(**spec), field, phrase)


def test_a_full_destination_rule_passes() -> None:
    policy = {
        "loadBalancer": {"consistentHash": {"httpCookie": {"name": "user", "path": "/", "ttl": "0s"},
                                            "ringHash": {"minimumRingSize": 1024}}},
        "connectionPool": {"tcp": {"maxConnections": 100, "connectTimeout": "250ms", "idleTimeout": "1h",
                                   "tcpKeepalive": {"probes": 3, "time": "2h", "interval": "75s"}},
                           "http": {"http1MaxPendingRequests": 10, "maxRequestsPerConnection": 1, "maxRetries": 3,
                                    "idleTimeout": "30s", "h2UpgradePolicy": "UPGRADE", "maxConcurrentStreams": 100}},
        "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s",
                             "maxEjectionPercent": 50, "splitExternalLocalOriginErrors": True,
                             "consecutiveLocalOriginFailures": 2},
        "tls": {"mode": "SIMPLE", "sni": "reviews.example", "subjectAltNames": ["reviews.example"]},
        "portLevelSettings": [{"port": {"number": 9080}, "loadBalancer": {"simple": "ROUND_ROBIN",
                                                                         "warmup": {"duration": "30s"}}}],
    }
    resource, errors = _parse("DestinationRule", {"host": "reviews", "trafficPolicy": policy, "exportTo": ["."],
                                                  "subsets": [{"name": "v1", "labels": {"version": "v1"},
                                                               "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}]})
    assert errors == [] and isinstance(resource, DestinationRule)
