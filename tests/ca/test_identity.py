from __future__ import annotations

import pytest

from ca import InvalidIdentity, WorkloadIdentity


def test_spiffe_id_is_istio_layout() -> None:
    ident = WorkloadIdentity.of("bookinfo", "bookinfo-productpage")
    assert ident.spiffe_id == "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"
    assert str(ident) == ident.spiffe_id
    assert WorkloadIdentity("example.org", "ns", "sa").spiffe_id == "spiffe://example.org/ns/ns/sa/sa"


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "spiffe://cluster.local/ns/default/sa/default",
        "spiffe://td_1.example-2/ns/a-b/sa/x.y-z",
    ],
)
def test_parse_round_trips(spiffe_id: str) -> None:
    assert WorkloadIdentity.parse(spiffe_id).spiffe_id == spiffe_id


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "http://cluster.local/ns/default/sa/default",
        "spiffe://cluster.local/ns/default/sa/default/",
        "spiffe://cluster.local/ns/default/sa/default/extra",
        "spiffe://cluster.local/ns/default",
        "spiffe://cluster.local/sa/default/ns/default",
        "spiffe:///ns/default/sa/default",
        "spiffe://Cluster.Local/ns/default/sa/default",
        "spiffe://cluster.local/ns/de%2Ffault/sa/default",
        "spiffe://cluster.local/ns/default/sa/default?x=1",
    ],
)
def test_parse_refuses_anything_else(spiffe_id: str) -> None:
    with pytest.raises(InvalidIdentity):
        WorkloadIdentity.parse(spiffe_id)


@pytest.mark.parametrize("namespace", ["", "Default", "my_ns", "-ns", "ns-", "a/b", "a.b", "n" * 64, "ns\n"])
def test_namespace_is_a_dns1123_label(namespace: str) -> None:
    with pytest.raises(InvalidIdentity, match="namespace"):
        WorkloadIdentity.of(namespace, "sa")
    WorkloadIdentity.of("n" * 63, "sa")  # the limit itself is fine


@pytest.mark.parametrize("sa", ["", "SA", "a_b", "a..b", ".a", "a.", "a/b", "x" * 254, "a.-b"])
def test_service_account_is_a_dns1123_subdomain(sa: str) -> None:
    with pytest.raises(InvalidIdentity, match="service account"):
        WorkloadIdentity.of("default", sa)
    WorkloadIdentity.of("default", "a.b-c.d")


@pytest.mark.parametrize("td", ["", "Cluster.local", "a/b", "a b", "x" * 256])
def test_trust_domain_charset(td: str) -> None:
    with pytest.raises(InvalidIdentity, match="trust domain"):
        WorkloadIdentity(td, "default", "sa")


def test_identities_are_values() -> None:
    assert WorkloadIdentity.of("a", "b") == WorkloadIdentity("cluster.local", "a", "b")
    assert len({WorkloadIdentity.of("a", "b"), WorkloadIdentity.of("a", "b")}) == 1
