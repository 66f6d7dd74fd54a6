"""Parsing and validation of manifest text: models, and errors that name file, resource and field."""

from __future__ import annotations

import pytest
from source_manifests import docs, svc, vs

from translators.model import DestinationRule, ResourceKey, Service, VirtualService
from xds_server.sources.parse import parse_text


def only_errors(text: str, file: str = "mesh/r.yaml", **kw: object) -> list[str]:
    parsed = parse_text(text, file, **kw)  # type: ignore[arg-type]
    return [str(e) for e in parsed.errors] + [str(e) for d in parsed.documents for e in d.errors]


def test_multi_document_file_parses_into_models() -> None:
    text = docs(
        svc("reviews"),
        "\n",  # an empty document is skipped
        vs("reviews"),
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n"
        "metadata: {name: reviews, namespace: shop}\nspec: {host: reviews, subsets: [{name: v1}]}\n",
    )
    parsed = parse_text(text, "mesh/reviews.yaml")
    assert not parsed.failed
    kinds = [type(d.resource) for d in parsed.documents]
    assert kinds == [Service, VirtualService, DestinationRule]
    assert [d.key for d in parsed.documents] == [
        ResourceKey("Service", "default", "reviews"),
        ResourceKey("VirtualService", "default", "reviews"),
        ResourceKey("DestinationRule", "shop", "reviews"),
    ]
    assert all(d.resource is not None and d.resource.source == "mesh/reviews.yaml" for d in parsed.documents)
    assert all(not d.errors for d in parsed.documents)


def test_default_namespace_is_configurable() -> None:
    (doc,) = parse_text(svc("a"), "a.yaml", "prod").documents
    assert doc.key == ResourceKey("Service", "prod", "a")


def test_kind_list_is_expanded() -> None:
    text = (
        "apiVersion: v1\nkind: List\nitems:\n- "
        + svc("a").replace("\n", "\n  ")
        + "\n- "
        + svc("b").replace("\n", "\n  ")
    )
    parsed = parse_text(text, "list.yaml")
    assert [d.key.name for d in parsed.documents if d.key] == ["a", "b"]


def test_json_file() -> None:
    text = '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "j"}, "spec": {"ports": [{"port": 80}]}}'
    (doc,) = parse_text(text, "j.json", is_json=True).documents
    assert isinstance(doc.resource, Service) and doc.resource.spec.ports[0].port == 80


def test_weights_error_names_the_route() -> None:
    # Weights are relative, as in current Istio: 50/40 is a 5:4 split; only a total of 0 is wrong.
    assert only_errors(vs("reviews", weights=(50, 40))) == []
    assert only_errors(vs("reviews", weights=(0, 0))) == [
        "mesh/r.yaml: VirtualService default/reviews: spec.http[0].route: "
        "total destination weight is 0: give at least one destination a weight"
    ]


def test_no_hosts_is_a_delegate_which_sets_no_gateways() -> None:
    head = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\n"
    http = "http: [{route: [{destination: {host: reviews}}]}]"
    (doc,) = parse_text(head + f"spec: {{{http}}}\n", "vs.yaml").documents
    assert doc.errors == () and isinstance(doc.resource, VirtualService) and doc.resource.spec.hosts == []
    (err,) = parse_text(head + f"spec: {{gateways: [shop/ingress], {http}}}\n", "vs.yaml").documents[0].errors
    assert (err.file, err.resource, err.field, err.severity) == ("vs.yaml", "VirtualService shop/r", "spec.gateways", "error")
    assert err.message.startswith("a VirtualService without hosts is a delegate and must not set gateways")


def test_bad_port_number() -> None:
    (err,) = parse_text(svc("reviews", port=70000), "svc.yaml").documents[0].errors
    assert (err.resource, err.field) == ("Service default/reviews", "spec.ports[0].port")
    assert "65535" in err.message and "70000" in err.message


def test_union_field_path_has_no_pydantic_tags() -> None:
    text = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80, targetPort: [1]}]}\n"
    )
    (err,) = parse_text(text, "s.yaml").documents[0].errors
    assert err.field == "spec.ports[0].targetPort"


def test_one_of_error_is_on_the_match() -> None:
    text = vs("r").replace("- route:", "- match: [{uri: {exact: /a, prefix: /b}}]\n  route:")
    (err,) = parse_text(text, "vs.yaml").documents[0].errors
    assert (err.field, err.message) == ("spec.http[0].match[0].uri", "only one of exact, prefix, regex may be set (got exact, prefix)")
    # An empty match is "present" for headers and query parameters, and "any" for the uri (as istiod).
    present = vs("r").replace("- route:", "- match: [{headers: {x-a: {}}, queryParams: {q: {}}}]\n    route:")
    assert parse_text(present, "vs.yaml").documents[0].errors == ()
    assert parse_text(present.replace("queryParams: {q: {}}", "uri: {}"), "vs.yaml").documents[0].errors == ()


def test_missing_name_is_named_by_document_number() -> None:
    text = docs(
        svc("a"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {}\n"
        "spec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}\n",
    )
    assert only_errors(text) == ["mesh/r.yaml: VirtualService <doc 2>: metadata.name: field is required"]


def test_yaml_syntax_error_has_line_and_column() -> None:
    parsed = parse_text(docs(svc("a"), "kind: Service\nmetadata:\n  name: b\n   bad: [\n"), "bad.yaml")
    assert parsed.failed and parsed.documents == ()
    (err,) = parsed.errors
    assert (err.file, err.resource, err.field) == ("bad.yaml", "", "")
    assert err.message.startswith("YAML syntax error at line 14, column 7: ")


def test_wrong_api_version_is_an_error() -> None:
    text = svc("a").replace("apiVersion: v1", "apiVersion: networking.istio.io/v1")
    (err,) = parse_text(text, "a.yaml").documents[0].errors
    assert (err.severity, err.resource, err.field) == ("error", "Service default/a", "apiVersion")
    assert err.message == "apiVersion networking.istio.io/v1 is not valid for Service; use v1"


def test_unknown_kind_is_a_warning() -> None:
    text = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: gw}\nspec: {}\n"
    (doc,) = parse_text(text, "gw.yaml").documents
    assert doc.resource is None and doc.key is None
    (err,) = doc.errors
    assert (err.severity, err.resource, err.field, err.message) == (
        "warning",
        "WasmPlugin default/gw",
        "kind",
        "kind WasmPlugin is not read by meshpilot; ignored",
    )


def test_unknown_fields_are_warnings_per_path() -> None:
    # Route-destination headers are modelled; redirect.prefixRewrite is not (yet).
    text = (
        vs("r", weights=(60, 40))
        .replace("spec:\n", "spec:\n  futureField: []\n")
        .replace("      weight: 60", "      weight: 60\n      headers: {request: {set: {x-a: b}}}")
        .replace("  http:\n", "  http:\n  - match: [{uri: {prefix: /old}}]\n    redirect: {authority: new, prefixRewrite: /new}\n")
    )
    (doc,) = parse_text(text, "vs.yaml").documents
    assert doc.resource is not None
    assert [(e.severity, e.field, e.message) for e in doc.errors] == [
        ("warning", "spec.futureField", "field not supported by meshpilot yet; ignored"),
        ("warning", "spec.http[0].redirect.prefixRewrite", "field not supported by meshpilot yet; ignored"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        b"\x00\x01\x02\xff\xfe garbage",
        b"\x7fELF\x02\x01\x01\x00\x00\x00",
        "ok: \x00",
        "[" * 5000,
        "- " * 3000 + "x",
        "just a string",
        "- 1\n- 2\n",
        "kind: [1]\n",
        "kind: List\nitems: [null, 3, {kind: Service}]\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: {a: b}}\n",
        "apiVersion: v1\nkind: Service\nmetadata: [1]\nspec: 7\n",
        "a: &a [*a]\n",
        "? [a, b]\n: c\n",
    ],
)
def test_garbage_never_raises(text: str | bytes) -> None:
    parsed = parse_text(text, "junk.yaml")
    assert parsed.failed or any(d.errors for d in parsed.documents) or parsed.documents == ()
