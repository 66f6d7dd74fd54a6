"""The cache serializes each resource once, shares it, and knows exactly what changed."""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse

from translators.api import CLUSTER, Layer
from xds_server.xds.cache import ResourceSet, TypeView


def clusters(*names: str, timeout: int = 1) -> dict[str, Cluster]:
    out = {}
    for n in names:
        c = Cluster(name=n)
        c.connect_timeout.seconds = timeout
        out[n] = c
    return out


def test_unchanged_messages_are_not_reserialized_and_keep_their_version():
    first = clusters("a", "b")
    s1 = ResourceSet.build(Layer("k", first), CLUSTER, None)
    second = dict(first)
    second["b"] = clusters("b", timeout=2)["b"]  # changed
    second["c"] = clusters("c")["c"]  # added
    s2 = ResourceSet.build(Layer("k", second), CLUSTER, s1)
    assert s2.resources["a"] is s1.resources["a"]  # same message object: reused as is
    assert s2.resources["b"].version != s1.resources["b"].version
    assert s2.changed == {"b", "c"}
    # Equal content in a new object keeps the old Resource (and its cached wire bytes).
    third = {n: clusters(n, timeout=2 if n == "b" else 1)[n] for n in ("a", "b")}
    s3 = ResourceSet.build(Layer("k", third), CLUSTER, s2)
    assert s3.resources["b"] is s2.resources["b"] and s3.changed == {"c"}
    assert TypeView(CLUSTER, (s3,)).changes_since(TypeView(CLUSTER, (s1,))) == {"b", "c"}


def test_history_is_bounded_and_then_asks_for_a_full_compare():
    s = first = ResourceSet.build(Layer("k", clusters("a")), CLUSTER, None)
    for i in range(20):
        s = ResourceSet.build(Layer("k", clusters("a", timeout=i + 2)), CLUSTER, s)
    assert s.changes_since(first) is None


def test_versions_are_content_hashes_so_a_restart_gives_the_same_versions():
    a = ResourceSet.build(Layer("k", clusters("a", "b")), CLUSTER, None)
    b = ResourceSet.build(Layer("k", clusters("b", "a")), CLUSTER, None)
    assert {n: r.version for n, r in a.resources.items()} == {n: r.version for n, r in b.resources.items()}
    assert a.digest == b.digest


def test_preencoded_entries_are_valid_protobuf():
    res = ResourceSet.build(Layer("k", clusters("a")), CLUSTER, None).resources["a"]
    sotw = DiscoveryResponse.FromString(b"".join([res.sotw_entry, res.sotw_entry]))
    assert [x.type_url for x in sotw.resources] == [CLUSTER, CLUSTER]
    c = Cluster()
    sotw.resources[0].Unpack(c)
    assert c.name == "a" and c.connect_timeout.seconds == 1
    delta = DeltaDiscoveryResponse.FromString(res.delta_entry)
    assert delta.resources[0].name == "a" and delta.resources[0].version == res.version
    assert delta.resources[0].resource.value == res.data
