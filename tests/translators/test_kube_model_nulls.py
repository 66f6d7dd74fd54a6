"""Kubernetes objects as the API server writes them, nulls included."""

from __future__ import annotations

from xds_server.sources.parse import parse_object


def test_an_endpointslice_without_endpoints_or_ports_is_empty_not_invalid() -> None:
    # What the EndpointSlice controller writes for a Service none of whose pods has an IP yet.
    doc = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "web-abcde", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4", "endpoints": None, "ports": None}
    parsed = parse_object(doc, "kubernetes", "shop/web-abcde", "shop")
    assert parsed.errors == ()
    assert parsed.resource is not None
    assert (parsed.resource.endpoints, parsed.resource.ports) == ([], [])  # type: ignore[attr-defined]


def test_an_endpointslice_with_endpoints_of_the_wrong_shape_is_still_refused() -> None:
    doc = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "web-abcde", "namespace": "shop"}, "addressType": "IPv4", "endpoints": "10.0.0.1"}
    parsed = parse_object(doc, "kubernetes", "shop/web-abcde", "shop")
    assert [e.field for e in parsed.errors] == ["endpoints"]
