"""VHDS over delta ADS, driven by a real gRPC client the way Envoy drives it: the route stub,
the namespace subscription to its virtual hosts, on-demand names, unsubscribe, and a
VirtualService edit that sends one virtual host (SotW streams keep whole tables)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.route.v3.route_components_pb2 import VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse
from harness import free_port

from tests.xds_server.adsclient import AdsClient
from tests.xds_server.test_protocol import (
    Mesh,
    acked,
    delta_subscribe,
    service,
    sotw_subscribe,
    split,
    subsets,
)
from translators.api import ROUTE, VIRTUAL_HOST
from xds_server.xds.cache import Resource, WireResource
from xds_server.xds.server import start_grpc
from xds_server.xds.vhds import split_route

A = "a.default.svc.cluster.local"
B = "b.default.svc.cluster.local"


@pytest.fixture
async def vmesh() -> AsyncIterator[tuple[Mesh, grpc.aio.Channel]]:
    m = Mesh(vhds=True)
    m.apply(service("a", "127.0.50.1"), subsets("a"), split("a", 80), service("b", "127.0.50.2"))
    address = f"127.0.0.1:{free_port()}"
    server = await start_grpc(m.xds, address)
    channel = grpc.aio.insecure_channel(address)
    yield m, channel
    await channel.close()
    await server.stop(grace=None)


def hosts(resp: DeltaDiscoveryResponse) -> dict[str, VirtualHost]:
    out = {}
    for r in resp.resources:
        vh = VirtualHost()
        r.resource.Unpack(vh)
        out[r.name] = vh
    return out


async def subscribed(m: Mesh, channel: grpc.aio.Channel, names: tuple[str, ...] = ("80",),
                     ) -> tuple[AdsClient, dict[str, VirtualHost]]:
    """A delta client that took the route stub of port 80 and then its virtual hosts; ``names``:
    what its first VHDS request names (Envoy names nothing)."""
    client = AdsClient(channel, delta=True)
    resp = await delta_subscribe(m, client, ROUTE, ["80"])
    (res,) = resp.resources
    rc = RouteConfiguration()
    res.resource.Unpack(rc)
    assert rc.HasField("vhds") and rc.vhds.config_source.HasField("ads")
    assert [vh.name for vh in rc.virtual_hosts] == ["allow_any"]  # only the catch-all stays in the stub
    assert rc.ignore_port_in_host_matching and not rc.validate_clusters.value  # the rest of the config is kept
    await client.send(type_url=VIRTUAL_HOST, resource_names_subscribe=list(names))
    resp = await client.recv()
    await client.send(type_url=VIRTUAL_HOST, response_nonce=resp.nonce)
    await acked(m, VIRTUAL_HOST, resp.nonce)
    return client, hosts(resp)


async def test_virtual_hosts_are_named_by_route_config_and_domain(vmesh):
    m, channel = vmesh
    client, got = await subscribed(m, channel)
    assert set(got) == {f"80/{A}", f"80/{B}"}
    for name, vh in got.items():
        assert vh.name == name  # Envoy removes virtual hosts by the name they carry
    assert list(got[f"80/{A}"].domains) == [A, "a.default.svc", "a.default", "a"]
    weights = [c.weight.value for c in got[f"80/{A}"].routes[0].route.weighted_clusters.clusters]
    assert weights == [80, 20]
    assert await client.silent()
    client.cancel()


async def test_an_edit_sends_the_one_virtual_host_it_changed_and_no_route_config(vmesh):
    m, channel = vmesh
    client, _ = await subscribed(m, channel)
    m.apply(service("a", "127.0.50.1"), subsets("a"), split("a", 30), service("b", "127.0.50.2"))
    resp = await client.recv()
    assert resp.type_url == VIRTUAL_HOST, resp.type_url
    got = hosts(resp)
    assert list(got) == [f"80/{A}"]
    assert [c.weight.value for c in got[f"80/{A}"].routes[0].route.weighted_clusters.clusters] == [30, 70]
    assert len(resp.SerializeToString()) < 1024
    await client.send(type_url=VIRTUAL_HOST, response_nonce=resp.nonce)
    assert await client.silent()  # no RouteConfiguration: its stub did not change
    client.cancel()


async def test_a_service_removed_removes_its_virtual_host(vmesh):
    m, channel = vmesh
    client, _ = await subscribed(m, channel)
    m.apply(service("a", "127.0.50.1"), subsets("a"), split("a", 80))
    seen = {}
    for _ in range(3):  # clusters and endpoints go too; the virtual host goes before them
        resp = await client.recv()
        seen[resp.type_url] = resp
        await client.send(type_url=resp.type_url, response_nonce=resp.nonce)
        if VIRTUAL_HOST in seen:
            break
    assert list(seen[VIRTUAL_HOST].removed_resources) == [f"80/{B}"]
    client.cancel()


async def test_on_demand_names_are_answered_with_an_alias(vmesh):
    m, channel = vmesh
    client, _ = await subscribed(m, channel)
    await client.send(type_url=VIRTUAL_HOST, resource_names_subscribe=["80/a.default:80", "80/nowhere.example.com"])
    resp = await client.recv()
    by_alias = {a: r for r in resp.resources for a in r.aliases}
    found = by_alias["80/a.default:80"]
    assert found.name == f"80/{A}" and found.HasField("resource") and found.version
    missing = by_alias["80/nowhere.example.com"]
    assert missing.name == "80/nowhere.example.com" and not missing.HasField("resource")
    client.cancel()


async def test_unsubscribed_route_config_gets_no_virtual_hosts_until_subscribed_again(vmesh):
    m, channel = vmesh
    client, _ = await subscribed(m, channel)
    await client.send(type_url=VIRTUAL_HOST, resource_names_unsubscribe=["80"])
    assert await client.silent()
    m.apply(service("a", "127.0.50.1"), subsets("a"), split("a", 30), service("b", "127.0.50.2"))
    assert await client.silent()  # nothing it asks for changed
    await client.send(type_url=VIRTUAL_HOST, resource_names_subscribe=["80"])
    resp = await client.recv()
    got = hosts(resp)
    assert set(got) == {f"80/{A}", f"80/{B}"}  # everything in it is new to the client again
    assert [c.weight.value for c in got[f"80/{A}"].routes[0].route.weighted_clusters.clusters] == [30, 70]
    client.cancel()


async def test_a_route_config_with_no_virtual_hosts_of_its_own_is_still_answered(vmesh):
    m, channel = vmesh
    client, _ = await subscribed(m, channel)
    await client.send(type_url=VIRTUAL_HOST, resource_names_subscribe=["7777"])
    resp = await client.recv()  # Envoy's route configuration waits for this answer
    assert not resp.resources and not resp.removed_resources
    client.cancel()


async def test_sotw_streams_keep_whole_tables(vmesh):
    m, channel = vmesh
    client = AdsClient(channel)
    resp = await sotw_subscribe(m, client, ROUTE, ["80"])
    rc = RouteConfiguration()
    resp.resources[0].Unpack(rc)
    assert not rc.HasField("vhds")
    assert {vh.name for vh in rc.virtual_hosts} == {f"{A}:80", f"{B}:80", "allow_any"}
    client.cancel()


def test_split_route_puts_the_table_back_together():
    """Stub plus virtual hosts (names aside) is the route configuration; equal virtual hosts
    share one resource."""
    m = Mesh()
    m.apply(service("a", "127.0.50.1"), subsets("a"), split("a", 80), service("b", "127.0.50.2"))
    from tests.xds_server.adsclient import node
    from xds_server.app.node import proxy_from_node

    view = m.cache.view(proxy_from_node(node("127.0.61.1")))
    rc_res = view.of(ROUTE).get("80")
    assert isinstance(rc_res, Resource)
    memo: dict = {}
    first = split_route(rc_res, memo)
    again = split_route(rc_res, memo)
    assert all(x is y for x, y in zip(first.hosts, again.hosts, strict=True))
    stub = RouteConfiguration.FromString(first.stub.data)
    whole = RouteConfiguration.FromString(rc_res.data)
    rebuilt = RouteConfiguration()
    rebuilt.CopyFrom(stub)
    rebuilt.ClearField("vhds")
    rebuilt.ClearField("virtual_hosts")
    for h in first.hosts:
        vh = VirtualHost.FromString(h.data)
        assert vh.name == h.name and h.name == f"80/{vh.domains[0]}"
        vh.name = next(v.name for v in whole.virtual_hosts if v.domains[0] == vh.domains[0])
        rebuilt.virtual_hosts.append(vh)
    rebuilt.virtual_hosts.extend(stub.virtual_hosts)
    assert rebuilt == whole
    assert first.domains["a.default"] == f"80/{A}"
    # Split by the pieces translation assembled it from (remembered per piece): the same result.
    assert isinstance(rc_res, WireResource) and len(rc_res.pieces) > 3
    pieces: dict = {}
    for _ in range(2):
        by_pieces = split_route(rc_res, {}, pieces)
        assert by_pieces.stub.data == first.stub.data and by_pieces.domains == first.domains
        assert [h.data for h in by_pieces.hosts] == [h.data for h in first.hosts]
    assert len(pieces) == len(rc_res.pieces)


async def test_a_new_port_brings_a_new_route_config_and_its_virtual_hosts(vmesh):
    """Explicit VHDS names: the client subscribes to the new route configuration's namespace."""
    m, channel = vmesh
    client, _ = await subscribed(m, channel)
    m.apply(service("a", "127.0.50.1"), subsets("a"), split("a", 80), service("b", "127.0.50.2"),
            service("c", "127.0.50.3", port=7070))
    assert await client.silent()  # nothing new on port 80 (and this client takes no listeners)
    await client.send(type_url=ROUTE, resource_names_subscribe=["7070"])
    resp = await client.recv()
    assert resp.type_url == ROUTE and [r.name for r in resp.resources] == ["7070"]
    await client.send(type_url=ROUTE, response_nonce=resp.nonce)
    await client.send(type_url=VIRTUAL_HOST, resource_names_subscribe=["7070"])
    resp = await client.recv()
    assert resp.type_url == VIRTUAL_HOST
    assert set(hosts(resp)) == {"7070/c.default.svc.cluster.local"}
    client.cancel()


async def test_envoy_style_vhds_follows_rds_and_virtual_hosts_come_after_their_stub(vmesh):
    """Envoy's VHDS requests name nothing: the virtual hosts of the route configurations it
    asked RDS for are sent, and a new route configuration's go right after its stub (sent
    before it, Envoy would drop them: no subscription wants them yet)."""
    m, channel = vmesh
    client, got = await subscribed(m, channel, names=())
    assert set(got) == {f"80/{A}", f"80/{B}"}
    m.apply(service("a", "127.0.50.1"), subsets("a"), split("a", 80), service("b", "127.0.50.2"),
            service("c", "127.0.50.3", port=7070))
    assert await client.silent()  # port 7070 is not asked for yet: its virtual host is not sent
    await client.send(type_url=ROUTE, resource_names_subscribe=["7070"])
    stub = await client.recv()
    assert stub.type_url == ROUTE and [r.name for r in stub.resources] == ["7070"]
    resp = await client.recv()
    assert resp.type_url == VIRTUAL_HOST and set(hosts(resp)) == {"7070/c.default.svc.cluster.local"}
    await client.send(type_url=ROUTE, response_nonce=stub.nonce)
    await client.send(type_url=VIRTUAL_HOST, response_nonce=resp.nonce)
    await client.send(type_url=ROUTE, resource_names_unsubscribe=["7070"])
    assert await client.silent()  # (and the server has read the unsubscribe before the change below)
    m.apply(service("a", "127.0.50.1"), subsets("a"), split("a", 80), service("b", "127.0.50.2"),
            service("c", "127.0.50.3", port=7070), subsets("c"), split("c", 10))
    assert await client.silent()  # 7070 dropped from RDS: its virtual hosts are not wanted either
    client.cancel()
