"""Telemetry (telemetry.istio.io) and the mesh config's telemetry providers, translated: which
Telemetry applies to a workload (Istio's scopes and overrides), the Envoy access logs and
tracing config it becomes, and the CEL filters it can and cannot express."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from pydantic import ValidationError

sys.path.append(str(Path(__file__).parent))
from translate_cases import world_of  # noqa: E402

from translators import Translator, api  # noqa: E402
from translators.features import telemetry as tel  # noqa: E402
from translators.model import cel, parse_resource  # noqa: E402
from translators.model.world import Proxy  # noqa: E402

WEB_IP, CLIENT_IP, DB_IP = "10.0.0.2", "10.0.0.3", "10.0.0.4"


def _base() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "default"},
         "spec": {"selector": {"app": "db"}, "ports": [{"name": "tcp", "port": 5432}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"}},
         "status": {"phase": "Running", "podIP": WEB_IP}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db-1", "namespace": "default", "labels": {"app": "db"}},
         "status": {"phase": "Running", "podIP": DB_IP}},
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "zipkin", "namespace": "istio-system"},
         "spec": {"hosts": ["zipkin.tracing.test"], "resolution": "STATIC", "location": "MESH_EXTERNAL",
                  "ports": [{"number": 9411, "name": "http", "protocol": "HTTP"}], "endpoints": [{"address": "10.9.9.9"}]}},
    ]


def mesh(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "meshpilot.io/v1alpha1", "kind": "MeshConfig", "metadata": {"name": "mesh", "namespace": "istio-system"},
            "spec": {"extensionProviders": [
                {"name": "zipkin", "zipkin": {"service": "zipkin.tracing.test", "port": 9411, "maxTagLength": 99}},
                {"name": "otel", "opentelemetry": {"service": "zipkin.tracing.test", "port": 9411}},
                {"name": "json", "envoyFileAccessLog": {"path": "/dev/stdout", "logFormat": {"labels": {"c": "%RESPONSE_CODE%"}}}},
                {"name": "nowhere", "zipkin": {"service": "missing.tracing.test", "port": 9411}},
            ], **spec}}


def telemetry(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


def translate(*docs: dict[str, Any], capture: bool = False) -> tuple[Translator, dict[str, dict[str, dict[str, Any]]]]:
    """The listeners of web's, the client's and db's sidecars, as JSON (``capture``: as injected pods')."""
    t = Translator()
    t.update(world_of([parse_resource(d, "t.yaml") for d in [*_base(), *docs]]))
    out = {}
    for name, ip, labels in (("web", WEB_IP, {"app": "web"}), ("client", CLIENT_IP, {"app": "client"}),
                             ("db", DB_IP, {"app": "db"})):
        proxy = Proxy(id=f"sidecar~{ip}~{name}-1.default~default.svc.cluster.local", ip=ip, namespace="default",
                      labels=labels, capture=capture)
        layers = t.for_proxy(proxy)[api.LISTENER]
        out[name] = {n: json_format.MessageToDict(m, preserving_proto_field_name=True)
                     for layer in layers for n, m in layer.resources.items()}
    return t, out


def filters(listener: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f["typed_config"] for chain in listener["filter_chains"] for f in chain["filters"]
            if f["typed_config"]["@type"].endswith(kind)]


def hcm(listener: dict[str, Any]) -> dict[str, Any]:
    (manager,) = filters(listener, "HttpConnectionManager")
    return manager


def test_no_telemetry_no_access_log_no_tracing() -> None:
    _, out = translate(mesh())
    text = json.dumps(out)
    assert "access_log" not in text and "tracing" not in text


def test_mesh_namespace_and_workload_override_each_other() -> None:
    _, out = translate(
        mesh(),
        telemetry("mesh", "istio-system", accessLogging=[{"providers": [{"name": "envoy"}]}]),
        telemetry("ns", "default", accessLogging=[{"filter": {"expression": "response.code >= 400"}}]),
        telemetry("web", "default", selector={"matchLabels": {"app": "web"}},
                  accessLogging=[{"providers": [{"name": "json"}], "match": {"mode": "SERVER"}}]))
    client_out = hcm(out["client"]["10.0.0.3_80"])["access_log"]
    # The namespace adds a filter to the mesh's provider (Istio's default text format).
    (log,) = client_out
    assert log["typed_config"]["log_format"]["text_format_source"]["inline_string"] == tel.TEXT_FORMAT
    assert log["filter"]["status_code_filter"]["comparison"] == {
        "op": "GE", "value": {"default_value": 400, "runtime_key": "meshpilot.access_log"}}
    # web's own Telemetry replaces the provider on its server side only, the filter stays.
    (inbound,) = hcm(out["web"]["inbound|10.0.0.2_8080"])["access_log"]
    assert inbound["typed_config"]["log_format"]["json_format"] == {"c": "%RESPONSE_CODE%"}
    assert inbound["filter"]["status_code_filter"]["comparison"]["value"]["default_value"] == 400
    assert hcm(out["web"]["10.0.0.2_80"])["access_log"][0]["typed_config"]["log_format"]["text_format_source"]
    # tcp_proxy logs too (db's inbound, everyone's outbound to db).
    (proxy,) = filters(out["db"]["inbound|10.0.0.4_5432"], "TcpProxy")
    assert proxy["access_log"][0]["name"] == "envoy.access_loggers.file"


def test_captured_proxies_log_on_the_virtual_listeners_and_their_chains() -> None:
    _, out = translate(mesh(), telemetry("mesh", "istio-system", accessLogging=[{"providers": [{"name": "envoy"}]}]),
                       capture=True)
    web, client = out["web"], out["client"]
    # 15006: the inbound port's chain and the passthrough chain of undeclared ports.
    assert len(filters(web["virtualInbound"], "HttpConnectionManager")[0]["access_log"]) == 1
    assert all(p["access_log"] for p in filters(web["virtualInbound"], "TcpProxy"))
    # 15001's passthrough, and the per-port listeners it hands connections to.
    assert all(p["access_log"] for p in filters(client["virtualOutbound"], "TcpProxy"))
    assert hcm(client["0.0.0.0_80"])["access_log"]
    _, quiet = translate(mesh(), capture=True)
    assert "access_log" not in json.dumps(quiet)


def test_disabled_and_the_mesh_configs_access_log_file_and_encoding() -> None:
    _, out = translate(mesh(accessLogFile="/dev/stdout", accessLogEncoding="JSON"),
                       telemetry("web", "default", selector={"matchLabels": {"app": "web"}},
                                 accessLogging=[{"disabled": True}]))
    (log,) = hcm(out["client"]["10.0.0.3_80"])["access_log"]
    assert log["typed_config"]["log_format"]["json_format"] == tel.JSON_FORMAT
    assert "access_log" not in json.dumps(out["web"])


def test_tracing_zipkin_with_sampling_and_tags_and_defaults() -> None:
    t, out = translate(mesh(defaultProviders={"tracing": ["zipkin"]}), telemetry("mesh", "istio-system", tracing=[{
        "randomSamplingPercentage": 12.5, "customTags": {
            "team": {"literal": {"value": "payments"}}, "pod": {"environment": {"name": "POD_NAME", "defaultValue": "?"}},
            "run": {"header": {"name": "x-run"}}}}]))
    trace = hcm(out["client"]["10.0.0.3_80"])["tracing"]
    assert trace["random_sampling"] == {"value": 12.5} and trace["max_path_tag_length"] == 99
    config = trace["provider"]["typed_config"]
    assert trace["provider"]["name"] == "envoy.tracers.zipkin"
    assert config["collector_cluster"] == "outbound|9411||zipkin.tracing.test"
    assert config["collector_endpoint"] == "/api/v2/spans" and config["trace_context_option"] == "USE_B3_WITH_W3C_PROPAGATION"
    assert {tag["tag"] for tag in trace["custom_tags"]} == {"team", "pod", "run"}
    assert hcm(out["web"]["inbound|10.0.0.2_8080"])["tracing"] == trace
    assert not [e for e in t.errors if "zipkin" in e.message]


def test_opentelemetry_and_disable_span_reporting_per_workload() -> None:
    _, out = translate(mesh(), telemetry("mesh", "istio-system", tracing=[{"providers": [{"name": "otel"}]}]),
                       telemetry("web", "default", selector={"matchLabels": {"app": "web"}},
                                 tracing=[{"disableSpanReporting": True}]))
    client_trace = hcm(out["client"]["10.0.0.3_80"])["tracing"]
    assert client_trace["provider"]["name"] == "envoy.tracers.opentelemetry"
    assert client_trace["provider"]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == \
        "outbound|9411||zipkin.tracing.test"
    assert client_trace["random_sampling"] == {"value": tel.DEFAULT_SAMPLING}
    # web keeps propagating (a tracer is configured) but reports nothing.
    assert hcm(out["web"]["inbound|10.0.0.2_8080"])["tracing"]["random_sampling"] == {}


def test_unknown_and_broken_providers_are_warnings_where_used() -> None:
    t, out = translate(mesh(), telemetry("mesh", "istio-system", tracing=[{"providers": [{"name": "nowhere"}]}],
                                         accessLogging=[{"providers": [{"name": "nope"}]}]))
    messages = {(e.resource, e.field, e.message) for e in t.errors}
    assert ("MeshConfig istio-system/mesh", "spec.extensionProviders[3].zipkin.service",
            "provider nowhere: could not find service missing.tracing.test in the service registry; proxies using it "
            "send no spans") in messages
    assert ("Telemetry istio-system/mesh", "spec.accessLogging[0].providers[0].name",
            "'nope' is not a provider of the mesh config: ignored") in messages
    assert "tracing" not in json.dumps(out["client"])


@pytest.mark.parametrize(("expression", "want"), [
    ("response.code >= 400", {"status_code_filter": {"comparison": {"op": "GE", "value": {
        "default_value": 400, "runtime_key": "meshpilot.access_log"}}}}),
    ("response.code > 499 || request.headers['x-debug'] == 'on'", {"or_filter": {"filters": [
        {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 500,
                                                                      "runtime_key": "meshpilot.access_log"}}}},
        {"header_filter": {"header": {"name": "x-debug", "string_match": {"exact": "on"}}}}]}}),
    ("!('x-skip' in request.headers) && response.duration > duration(\"1s\")", {"and_filter": {"filters": [
        {"header_filter": {"header": {"name": "x-skip", "present_match": True, "invert_match": True}}},
        {"duration_filter": {"comparison": {"op": "GE", "value": {"default_value": 1001,
                                                                   "runtime_key": "meshpilot.access_log"}}}}]}}),
])
def test_cel_filters_translate_to_envoy_access_log_filters(expression: str, want: dict[str, Any]) -> None:
    got = json_format.MessageToDict(tel.access_log_filter(cel.parse(expression)), preserving_proto_field_name=True)
    assert got == want


@pytest.mark.parametrize("expression", [
    "response.flags == 'UH'", "response.code >= '400'", "size(request.headers) > 3", "response.code >=",
    "request.headers['x'] > 'a'", "response.code < 0"])
def test_cel_that_envoy_filters_cannot_express_is_refused_at_its_field(expression: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_resource(telemetry("t", "default", accessLogging=[{"filter": {"expression": expression}}]), "t.yaml")
    (error,) = info.value.errors()
    assert error["loc"] == ("spec", "accessLogging", 0, "filter", "expression")
    assert "cannot translate" in error["msg"] and cel.SUPPORTED in error["msg"]


def test_telemetry_checks_name_their_fields() -> None:
    with pytest.raises(ValidationError) as info:
        parse_resource(telemetry("t", "default", selector={"matchLabels": {"app": "*"}}, tracing=[{
            "randomSamplingPercentage": 150, "customTags": {"x": {"literal": {"value": "a"}, "header": {"name": "h"}}}}]),
            "t.yaml")
    assert {e["loc"] for e in info.value.errors()} == {
        ("spec", "selector", "matchLabels", "app"), ("spec", "tracing", 0, "randomSamplingPercentage"),
        ("spec", "tracing", 0, "customTags", "x")}


def test_a_rebuilt_proxy_keeps_the_listeners_whose_telemetry_did_not_change() -> None:
    docs = [*_base(), mesh(), telemetry("mesh", "istio-system", accessLogging=[{"providers": [{"name": "envoy"}]}])]
    t = Translator()
    world = world_of([parse_resource(d, "t.yaml") for d in docs])
    t.update(world)
    web = Proxy(id=f"sidecar~{WEB_IP}~web-1.default~default.svc.cluster.local", ip=WEB_IP, namespace="default",
                labels={"app": "web"})

    def listeners() -> dict[str, Any]:
        return {n: m for layer in t.for_proxy(web)[api.LISTENER] for n, m in layer.resources.items()}

    before = listeners()
    # STRICT for web: its inbound listener changes, its outbound ones (and their telemetry) do not.
    strict = parse_resource({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                             "metadata": {"name": "web", "namespace": "default"},
                             "spec": {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}}}, "t.yaml")
    t.update(world.evolve({**world.resources, strict.key: strict}))
    after = listeners()
    assert after["inbound|10.0.0.2_8080"] is not before["inbound|10.0.0.2_8080"]
    assert after["10.0.0.2_5432"] is before["10.0.0.2_5432"]
    assert hcm(json_format.MessageToDict(after["inbound|10.0.0.2_8080"], preserving_proto_field_name=True))["access_log"]


def test_gateways_log_and_trace_as_the_client_side() -> None:
    """istiod classes gateway listeners as CLIENT: a provider for SERVER only leaves them alone."""
    gateway = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
               "metadata": {"name": "public", "namespace": "istio-system"},
               "spec": {"selector": {"istio": "ingressgateway"},
                        "servers": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}
    routes = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
              "metadata": {"name": "web-in", "namespace": "default"},
              "spec": {"hosts": ["web.example.com"], "gateways": ["istio-system/public"],
                       "http": [{"route": [{"destination": {"host": "web"}}]}]}}
    proxy = Proxy(id="router~10.0.0.9~gw-1.istio-system~istio-system.svc.cluster.local", ip="10.0.0.9",
                  namespace="istio-system", labels={"istio": "ingressgateway", "app": "istio-ingressgateway"},
                  role="gateway")

    def gateway_hcm(*docs: dict[str, Any]) -> dict[str, Any]:
        t = Translator()
        t.update(world_of([parse_resource(d, "t.yaml") for d in [*_base(), gateway, routes, *docs]]))
        layers = t.for_proxy(proxy)[api.LISTENER]
        (listener,) = [json_format.MessageToDict(m, preserving_proto_field_name=True)
                       for layer in layers for m in layer.resources.values()]
        assert t.for_proxy(proxy)[api.LISTENER][0] is layers[0]  # kept while nothing changes
        return hcm(listener)

    assert "access_log" not in gateway_hcm(mesh()) and "tracing" not in gateway_hcm(mesh())
    observed = gateway_hcm(mesh(accessLogFile="/dev/stdout", defaultProviders={"tracing": ["zipkin"]}))
    (log,) = observed["access_log"]
    assert log["typed_config"]["log_format"]["text_format_source"]["inline_string"] == tel.TEXT_FORMAT
    zipkin = observed["tracing"]["provider"]["typed_config"]
    assert zipkin["collector_cluster"] == "outbound|9411||zipkin.tracing.test"
    server_only = gateway_hcm(mesh(), telemetry("mesh", "istio-system", accessLogging=[
        {"providers": [{"name": "envoy"}], "match": {"mode": "SERVER"}}]))
    assert "access_log" not in server_only
