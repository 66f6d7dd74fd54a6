"""ServiceEntry and WorkloadEntry validation as Istio does it (ValidateServiceEntry,
ValidateWorkloadEntry), through ``parse_text``: each error at its exact field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sources.test_validation import _parse, only

HTTP = {"number": 80, "name": "http", "protocol": "HTTP"}


def se(**spec: Any) -> list[tuple[str, str]]:
    body: dict[str, Any] = {"hosts": ["api.example.com"], "ports": [HTTP], "resolution": "STATIC",
                            "endpoints": [{"address": "10.0.0.1"}]}
    body.update(spec)
    return _parse("ServiceEntry", {k: v for k, v in body.items() if v is not None})[1]


def we(**spec: Any) -> list[tuple[str, str]]:
    return _parse("WorkloadEntry", {"address": "10.0.0.1", **spec})[1]


def test_valid_entries_of_every_resolution() -> None:
    assert se() == []
    assert se(resolution="NONE", endpoints=None, addresses=["10.1.0.0/16"]) == []
    assert se(resolution="DNS", endpoints=None) == []
    assert se(resolution="DNS", endpoints=[{"address": "api.internal", "ports": {"http": 8080}, "weight": 3}]) == []
    assert se(resolution="DNS_ROUND_ROBIN", endpoints=[{"address": "a.example.com"}]) == []
    assert se(endpoints=None, workloadSelector={"labels": {"app": "vm"}}) == []
    assert se(hosts=["*.example.com"], resolution="NONE", endpoints=None) == []
    assert we(ports={"http": 8080}, labels={"app": "vm"}, weight=2, locality="r/z", serviceAccount="vm") == []
    assert we(address="vm1.corp.example") == []


@pytest.mark.parametrize(("spec", "field", "phrase"), [
    ({"resolution": "NONE"}, "spec.endpoints", "no endpoints should be provided for resolution type NONE"),
    ({"endpoints": [{"address": "10.0.0.1"}, {"address": "db.example.com"}]}, "spec.endpoints[1].address",
     "'db.example.com' is not a valid IP address"),
    ({"endpoints": [{"address": "10.0.0.1", "ports": {"web": 8080}}]}, "spec.endpoints[0].ports.web",
     "endpoint port web (8080) is not defined by the service entry"),
    ({"endpoints": [{"address": "10.0.0.1", "ports": {"Bad_Name": 8080}}]}, "spec.endpoints[0].ports.Bad_Name",
     "invalid port name"),
    ({"endpoints": [{"ports": {"http": 8080}}]}, "spec.endpoints[0].address", "address is required"),
    ({"endpoints": [{"address": "10.0.0.1", "labels": {"a b": "c"}}]}, "spec.endpoints[0].labels.a b", "a b"),
    ({"workloadSelector": {"labels": {"app": "vm"}}}, "spec.workloadSelector",
     "only one of workloadSelector or endpoints is allowed"),
    ({"resolution": "DNS", "endpoints": None, "hosts": ["*.example.com"]}, "spec.hosts[0]",
     "hosts must be FQDN if no endpoints are provided for resolution mode DNS"),
    ({"resolution": "DNS", "endpoints": [{"address": "-bad-.example.com"}]}, "spec.endpoints[0].address",
     "is not a valid FQDN or an IP address"),
    ({"resolution": "DNS_ROUND_ROBIN", "endpoints": [{"address": "a.example"}, {"address": "b.example"}]},
     "spec.endpoints", "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN"),
    ({"hosts": ["*"]}, "spec.hosts[0]", "invalid host '*'"),
    ({"hosts": ["api.example.com", "bad_host.example.com"]}, "spec.hosts[1]", "bad_host.example.com"),
    ({"addresses": ["10.0.0.300"]}, "spec.addresses[0]", "'10.0.0.300' is not an IP address or a CIDR block"),
    ({"resolution": "DNS", "endpoints": None, "addresses": ["10.1.0.0/16"]}, "spec.addresses",
     "CIDR addresses are allowed only for NONE/STATIC resolution types"),
    ({"ports": [HTTP, {"number": 80, "name": "http-alt", "protocol": "HTTP"}]}, "spec.ports[1].number",
     "service entry port 80 already defined"),
    ({"ports": [HTTP, {"number": 81, "name": "http", "protocol": "HTTP"}]}, "spec.ports[1].name",
     "service entry port name 'http' already defined"),
    ({"ports": [{"number": 80, "protocol": "HTTP"}]}, "spec.ports[0].name", "invalid port name: ''"),
    ({"ports": [{"number": 80, "name": "http", "protocol": "SPDY"}]}, "spec.ports[0].protocol",
     "unsupported protocol: SPDY"),
    ({"hosts": ["a.example.com", "b.example.com"], "ports": [{"number": 5432, "name": "tcp", "protocol": "TCP"}]},
     "spec.ports[0].protocol", "multiple hosts provided with non-HTTP, non-TLS ports"),
    ({"exportTo": [".", "*"]}, "spec.exportTo", "cannot be combined"),
])
def test_service_entry_errors(spec: dict[str, Any], field: str, phrase: str) -> None:
    only(se(**spec), field, phrase)


def test_several_errors_each_at_its_field() -> None:
    errors = se(endpoints=[{"address": "10.0.0.1", "ports": {"http": 8080}},
                           {"address": "10.0.0.2", "ports": {"http": 8080, "grpc": 9090}}],
                addresses=["nope"])
    assert sorted(f for f, _ in errors) == ["spec.addresses[0]", "spec.endpoints[1].ports.grpc"]


def test_multiple_hosts_with_tcp_are_fine_for_resolution_none() -> None:
    tcp = [{"number": 5432, "name": "tcp", "protocol": "TCP"}]
    assert se(hosts=["a.example.com", "b.example.com"], ports=tcp, resolution="NONE", endpoints=None) == []


@pytest.mark.parametrize(("spec", "field", "phrase"), [
    ({"address": ""}, "spec.address", "address is required"),
    ({"address": "not an address"}, "spec.address", "is not a valid FQDN or an IP address"),
    ({"address": "unix:///var/run/app.sock"}, "spec.address", "unix domain socket addresses are not supported"),
    ({"ports": {"http_1": 8080}}, "spec.ports.http_1", "invalid port name"),
    ({"ports": {"http": 0}}, "spec.ports.http", "greater than or equal to 1"),
])
def test_workload_entry_errors(spec: dict[str, Any], field: str, phrase: str) -> None:
    only(we(**spec), field, phrase)


def test_workload_entry_without_address_on_a_network_is_accepted() -> None:
    assert we(address="", network="net-2") == []
