"""LDS and CDS subscribed by name, as gRPC's xDS client does (GENERATOR=grpc nodes), driven
over real gRPC against the real server, translator and cache.

For these types a resource missing from a state-of-the-world response is deleted, so
every response must carry all the named resources that exist, not only the changed ones.
"""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from google.protobuf.struct_pb2 import Struct

from tests.xds_server.adsclient import AdsClient
from tests.xds_server.test_protocol import Mesh, acked, cluster, service, split, subsets
from translators.api import CLUSTER, LISTENER

IP = "127.0.61.1"


def grpc_node() -> Node:
    meta = Struct()
    meta.update({"NAMESPACE": "default", "INSTANCE_IPS": IP, "NAME": "app", "GENERATOR": "grpc"})
    return Node(id=f"sidecar~{IP}~app.default~default.svc.cluster.local", metadata=meta)


def names(resp: DiscoveryResponse) -> set[str]:
    out = set()
    for any_ in resp.resources:
        msg = Listener() if any_.type_url == LISTENER else Cluster()
        any_.Unpack(msg)
        out.add(msg.name)
    return out


async def ask(m: Mesh, client: AdsClient, type_url: str, wanted: list[str], last: DiscoveryResponse | None = None,
              ) -> DiscoveryResponse:
    """A request naming ``wanted`` (the first carries the node), its answer, and the ACK."""
    extra = {"response_nonce": last.nonce, "version_info": last.version_info} if last is not None else {"node": grpc_node()}
    await client.send(type_url=type_url, resource_names=wanted, **extra)
    resp = await client.recv()
    await client.send(type_url=type_url, resource_names=wanted, response_nonce=resp.nonce,
                      version_info=resp.version_info)
    await acked(m, type_url, resp.nonce)
    return resp


A, B = "a.default.svc.cluster.local:80", "b.default.svc.cluster.local:80"


async def test_named_lds_gets_what_it_names_and_learns_removals(mesh):
    m, channel = mesh
    client = AdsClient(channel)
    first = await ask(m, client, LISTENER, [A])
    assert names(first) == {A}
    # More names: the answer is the full state of the names, the one already held included.
    both = await ask(m, client, LISTENER, [A, B, "nope.default.svc.cluster.local:80"], first)
    assert names(both) == {A, B}
    # A change to nothing it names: nothing sent.
    m.apply(service("a", "127.0.51.1"), service("b", "127.0.51.2"), service("c", "127.0.51.3"))
    assert await client.silent()
    # b is removed: the next answer leaves it out, which is how the client learns.
    m.apply(service("a", "127.0.51.1"), service("c", "127.0.51.3"))
    gone = await client.recv()
    assert gone.type_url == LISTENER and names(gone) == {A}
    client.cancel()


async def test_named_cds_keeps_the_clusters_in_use_when_new_ones_are_asked_for(mesh):
    """A route change makes gRPC ask for new clusters (a subset rename): the answer must keep
    the clusters it still uses, or gRPC drops them and calls fail mid-change."""
    m, channel = mesh
    m.apply(service("a", "127.0.51.1"), service("b", "127.0.51.2"), subsets("a"), split("a", 80))
    client = AdsClient(channel)
    v1, v2 = cluster("a", subset="v1"), cluster("a", subset="v2")
    first = await ask(m, client, CLUSTER, [v1, v2])
    assert names(first) == {v1, v2}
    more = await ask(m, client, CLUSTER, [v1, v2, cluster("b")], first)
    assert names(more) == {v1, v2, cluster("b")}
    # Subsets gone from the DestinationRule: the pushed list no longer has them.
    m.apply(service("a", "127.0.51.1"), service("b", "127.0.51.2"))
    pushed = await client.recv()
    assert pushed.type_url == CLUSTER and names(pushed) == {cluster("b")}
    client.cancel()


async def test_envoy_on_the_same_server_still_gets_everything(mesh):
    from tests.xds_server.adsclient import node

    m, channel = mesh
    envoy = AdsClient(channel)
    await envoy.send(node=node("127.0.61.2"), type_url=LISTENER)
    resp = await envoy.recv()
    assert names(resp) == {"127.0.61.2_80"}  # its own outbound listener: no gRPC api listeners
    grpc_client = AdsClient(channel)
    first = await ask(m, grpc_client, LISTENER, [A])
    assert names(first) == {A}
    envoy.cancel()
    grpc_client.cancel()
