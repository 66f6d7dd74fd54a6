"""The xDS protocol, driven by a real gRPC client against the real server, translator and cache.

Each test feeds the control plane YAML (as a user would write it) and speaks ADS the
way Envoy does: ACK, NACK, stale nonces, subscriptions, reconnects.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse
from harness import free_port

from tests.xds_server.adsclient import AdsClient, nack, node
from translators.api import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE
from translators.model.world import World
from translators.translate import Translator
from xds_server.sources.parse import parse_text
from xds_server.xds.cache import XdsCache
from xds_server.xds.server import XdsServer, start_grpc

PROXY_IP = "127.0.60.1"


def service(name: str, ip: str, port: int = 80, version: str = "v1") -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: {port}, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}-1, namespace: default, labels: {{app: {name}, version: {version}}}}}
status: {{podIP: {ip}}}
"""


def subsets(name: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {name}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
"""


def policy(name: str, lb: str) -> str:
    """The subsets of ``subsets(name)`` plus a load-balancer policy: changes every cluster of
    ``name`` and none of its endpoints."""
    return subsets(name) + f"  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}\n"


def split(name: str, v1: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}]
  http:
  - route:
    - {{destination: {{host: {name}, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: {name}, subset: v2}}, weight: {100 - v1}}}
"""


def cluster(name: str, port: int = 80, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{name}.default.svc.cluster.local"


class Mesh:
    """The control plane in-process: real translator, cache and gRPC server."""

    def __init__(self, vhds: bool = False) -> None:
        """``vhds``: delta clients get virtual hosts over VHDS (test_vhds.py); off here, so the
        protocol tests see whole route tables on both protocols."""
        self.translator = Translator()
        self.cache = XdsCache(self.translator)
        self.xds = XdsServer(self.cache, vhds=vhds)
        self.world = World()

    def apply(self, *manifests: str) -> None:
        resources = {}
        for i, text in enumerate(manifests):
            parsed = parse_text(text, f"test-{i}.yaml")
            assert not parsed.errors, parsed.errors
            for doc in parsed.documents:
                assert doc.resource is not None, doc.errors
                resources[doc.resource.key] = doc.resource
        self.world = self.world.evolve(resources)
        self.cache.update(self.world)

    def status(self, type_url: str):  # type: ignore[no-untyped-def]
        (stream,) = self.xds.streams.values()
        return stream.of(type_url)


def names(resp: DiscoveryResponse | DeltaDiscoveryResponse) -> list[str]:
    if isinstance(resp, DeltaDiscoveryResponse):
        return [r.name for r in resp.resources]
    out = []
    for any_ in resp.resources:
        if any_.type_url == CLUSTER:
            c = Cluster()
            any_.Unpack(c)
            out.append(c.name)
        elif any_.type_url == ENDPOINT:
            cla = ClusterLoadAssignment()
            any_.Unpack(cla)
            out.append(cla.cluster_name)
        else:
            out.append(any_.type_url)
    return out


def payloads(resp: DiscoveryResponse) -> dict[str, bytes]:
    """SotW resources by name, as bytes."""
    return dict(zip(names(resp), (a.value for a in resp.resources), strict=True))


async def acked(m: Mesh, type_url: str, nonce: str) -> None:
    """Wait until the server has processed the ACK of ``nonce``: a config change applied
    earlier would make that ACK stale, and the server would rightly ignore it."""
    for _ in range(200):
        if any(s.of(type_url).acked_nonce == nonce for s in m.xds.streams.values()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"server never saw the ACK of {nonce}")


async def sotw_subscribe(m: Mesh, client: AdsClient, type_url: str, resource_names: list[str] | None = None) -> DiscoveryResponse:
    await client.send(node=node(PROXY_IP), type_url=type_url, resource_names=resource_names or [])
    resp = await client.recv()
    await client.send(type_url=type_url, version_info=resp.version_info, response_nonce=resp.nonce,
                      resource_names=resource_names or [])
    await acked(m, type_url, resp.nonce)
    return resp


# ------------------------------------------------------------------ state of the world


async def test_sotw_cds_then_ack_is_silent(mesh):
    m, channel = mesh
    client = AdsClient(channel)
    resp = await sotw_subscribe(m, client, CLUSTER)
    assert resp.type_url == CLUSTER and resp.nonce and resp.version_info
    assert {cluster("a"), cluster("b")} <= set(names(resp))
    assert await client.silent()
    assert m.status(CLUSTER).acked_version == resp.version_info
    client.cancel()


async def test_sotw_nack_is_recorded_and_not_resent(mesh):
    m, channel = mesh
    client = AdsClient(channel)
    first = await sotw_subscribe(m, client, CLUSTER)
    m.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"), subsets("a"))
    pushed = await client.recv()
    assert cluster("a", subset="v2") in names(pushed)
    await client.send(type_url=CLUSTER, version_info=first.version_info, response_nonce=pushed.nonce,
                      error_detail=nack("cluster rejected for the test"))
    assert await client.silent(0.5)  # no loop re-sending the rejected config
    st = m.status(CLUSTER)
    assert st.acked_version == first.version_info  # the proxy stays on what it accepted
    assert st.nack["message"] == "cluster rejected for the test" and st.nack["nonce"] == pushed.nonce
    # The next real change is sent.
    m.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"), subsets("a"), service("c", "127.0.50.3"))
    after = await client.recv()
    assert cluster("c") in names(after) and after.version_info != pushed.version_info
    client.cancel()


async def test_sotw_stale_nonce_is_ignored(mesh):
    m, channel = mesh
    client = AdsClient(channel)
    eds_a = [cluster("a")]
    first = await sotw_subscribe(m, client, ENDPOINT, eds_a)
    m.apply(service("a", "127.0.50.9"), service("b", "127.0.50.2"))  # a's endpoint moves
    pushed = await client.recv()
    assert pushed.nonce != first.nonce
    # An answer to the superseded response, asking for more: stale, ignored.
    await client.send(type_url=ENDPOINT, version_info=first.version_info, response_nonce=first.nonce,
                      resource_names=eds_a + [cluster("b")])
    assert await client.silent()
    # The same with the current nonce is served: only what is new to the client.
    await client.send(type_url=ENDPOINT, version_info=pushed.version_info, response_nonce=pushed.nonce,
                      resource_names=eds_a + [cluster("b")])
    resp = await client.recv()
    assert len(resp.resources) == 1 and b"127.0.50.2" in resp.resources[0].value
    client.cancel()


async def test_sotw_resource_requested_before_it_exists_is_sent_when_it_appears(mesh):
    m, channel = mesh
    client = AdsClient(channel)
    resp = await sotw_subscribe(m, client, ROUTE, ["9090"])
    assert len(resp.resources) == 0
    m.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"), service("late", "127.0.50.5", port=9090))
    resp = await client.recv()
    assert len(resp.resources) == 1 and b"late.default.svc.cluster.local" in resp.resources[0].value
    client.cancel()


async def test_sotw_nothing_sent_when_nothing_changed_for_the_proxy(mesh):
    m, channel = mesh
    client = AdsClient(channel)
    for type_url in (CLUSTER, LISTENER):
        await sotw_subscribe(m, client, type_url)
    await sotw_subscribe(m, client, ENDPOINT, [cluster("a"), cluster("b")])
    await sotw_subscribe(m, client, ROUTE, ["80"])
    # The same manifests parsed again: new objects, same meaning.
    m.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"))
    assert await client.silent(0.5)
    client.cancel()


async def test_sotw_push_order_is_make_before_break(mesh):
    m, channel = mesh
    base = [service("a", "127.0.50.1"), service("b", "127.0.50.2"), subsets("a"), split("a", 80)]
    m.apply(*base)
    client = AdsClient(channel)
    await sotw_subscribe(m, client, CLUSTER)
    await sotw_subscribe(m, client, ENDPOINT, [cluster("a"), cluster("a", subset="v1"), cluster("b")])
    await sotw_subscribe(m, client, LISTENER)
    await sotw_subscribe(m, client, ROUTE, ["80"])
    # One change touching every type, and removing service b (and its cluster).
    m.apply(service("a", "127.0.50.7"), subsets("a"), split("a", 50), service("d", "127.0.50.4", port=9090))
    got = [await client.recv() for _ in range(5)]
    assert [r.type_url for r in got] == [CLUSTER, ENDPOINT, LISTENER, ROUTE, CLUSTER]
    assert cluster("b") in names(got[0])  # kept while listeners and routes move off it
    assert cluster("b") not in names(got[-1]) and cluster("d", 9090) in names(got[-1])
    assert await client.silent()
    client.cancel()


async def test_sotw_updated_eds_clusters_are_followed_by_their_unchanged_assignments(mesh):
    """Envoy keeps an EDS cluster it updates warming until the cluster's assignment arrives,
    even unchanged; without it the update waits out initial_fetch_timeout (15 s)."""
    m, channel = mesh
    m.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"), subsets("a"))
    client = AdsClient(channel)
    await sotw_subscribe(m, client, CLUSTER)
    eds = [cluster("a"), cluster("a", subset="v1"), cluster("b")]  # v2 is not asked for
    before = await sotw_subscribe(m, client, ENDPOINT, eds)

    m.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"), policy("a", "ROUND_ROBIN"))
    cds = await client.recv()
    assert cds.type_url == CLUSTER
    resp = await client.recv()
    assert resp.type_url == ENDPOINT and resp.nonce != before.nonce
    # The assignments of a's updated clusters that Envoy asks for, the very bytes it has; not b's.
    assert sorted(names(resp)) == sorted([cluster("a"), cluster("a", subset="v1")])
    assert all(payloads(before)[n] == value for n, value in payloads(resp).items())
    # The request Envoy sends when it starts warming answers the superseded response: stale.
    await client.send(type_url=ENDPOINT, version_info=before.version_info, response_nonce=before.nonce,
                      resource_names=eds)
    await client.send(type_url=CLUSTER, version_info=cds.version_info, response_nonce=cds.nonce)
    await client.send(type_url=ENDPOINT, version_info=resp.version_info, response_nonce=resp.nonce,
                      resource_names=eds)
    await acked(m, ENDPOINT, resp.nonce)
    assert await client.silent()
    # Clusters left alone: no assignment is re-sent.
    m.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"), policy("a", "ROUND_ROBIN"), split("a", 50))
    assert await client.silent()
    client.cancel()


async def test_sotw_clusters_answered_after_endpoints_on_a_new_stream_are_followed_by_every_assignment(mesh):
    """On a new stream the server cannot know which clusters Envoy held: any may be updated, so warming."""
    m, channel = mesh
    client = AdsClient(channel)
    eds = [cluster("a"), cluster("b")]
    await sotw_subscribe(m, client, ENDPOINT, eds)
    await client.send(type_url=CLUSTER)
    assert (await client.recv()).type_url == CLUSTER
    resp = await client.recv()
    assert resp.type_url == ENDPOINT and sorted(names(resp)) == eds
    client.cancel()


async def test_stream_without_node_id_is_refused(mesh):
    _, channel = mesh
    client = AdsClient(channel)
    await client.send(type_url=CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "node.id" in (err.value.details() or "")


# ------------------------------------------------------------------ delta


async def delta_subscribe(m: Mesh, client: AdsClient, type_url: str, subscribe: list[str] | None = None, **extra):  # type: ignore[no-untyped-def]
    await client.send(node=node(PROXY_IP), type_url=type_url, resource_names_subscribe=subscribe or [], **extra)
    resp = await client.recv()
    await client.send(type_url=type_url, response_nonce=resp.nonce)
    await acked(m, type_url, resp.nonce)
    return resp


async def test_delta_wildcard_then_removal(mesh):
    m, channel = mesh
    client = AdsClient(channel, delta=True)
    resp = await delta_subscribe(m, client, CLUSTER)
    assert {cluster("a"), cluster("b")} <= set(names(resp))
    assert all(r.version for r in resp.resources)
    assert await client.silent()
    m.apply(service("a", "127.0.50.1"))
    resp = await client.recv()
    assert list(resp.removed_resources) == [cluster("b")] and not resp.resources
    client.cancel()


async def test_delta_reconnect_to_a_restarted_control_plane_sends_only_the_difference(mesh):
    m, channel = mesh
    client = AdsClient(channel, delta=True)
    first = await delta_subscribe(m, client, CLUSTER)
    client.cancel()
    have = {r.name: r.version for r in first.resources}
    have[cluster("a")] = "stale"
    have["outbound|80||gone.default.svc.cluster.local"] = "0000"

    # A new control plane process: versions are content hashes, so they still match.
    restarted = Mesh()
    restarted.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"))
    address = f"127.0.0.1:{free_port()}"
    server = await start_grpc(restarted.xds, address)
    async with grpc.aio.insecure_channel(address) as ch2:
        again = AdsClient(ch2, delta=True)
        resp = await delta_subscribe(restarted, again, CLUSTER, initial_resource_versions=have)
        assert names(resp) == [cluster("a")]
        assert list(resp.removed_resources) == ["outbound|80||gone.default.svc.cluster.local"]
        again.cancel()
    await server.stop(grace=None)


async def test_delta_named_subscribe_and_unsubscribe(mesh):
    m, channel = mesh
    client = AdsClient(channel, delta=True)
    resp = await delta_subscribe(m, client, ENDPOINT, [cluster("a")])
    assert names(resp) == [cluster("a")]
    # One request may both subscribe and unsubscribe; its answer shows it was processed.
    await client.send(type_url=ENDPOINT, response_nonce=resp.nonce,
                      resource_names_subscribe=[cluster("b")], resource_names_unsubscribe=[cluster("a")])
    resp = await client.recv()
    assert names(resp) == [cluster("b")] and not resp.removed_resources
    await client.send(type_url=ENDPOINT, response_nonce=resp.nonce)
    m.apply(service("a", "127.0.50.8"), service("b", "127.0.50.2"))  # only a changes
    assert await client.silent()
    m.apply(service("a", "127.0.50.8"), service("b", "127.0.50.9"))  # now b
    resp = await client.recv()
    assert names(resp) == [cluster("b")] and b"127.0.50.9" in resp.resources[0].resource.value
    client.cancel()


async def test_delta_nack_is_recorded_and_not_resent(mesh):
    m, channel = mesh
    client = AdsClient(channel, delta=True)
    await delta_subscribe(m, client, CLUSTER)
    m.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"), service("c", "127.0.50.3"))
    pushed = await client.recv()
    await client.send(type_url=CLUSTER, response_nonce=pushed.nonce, error_detail=nack("no thanks"))
    assert await client.silent(0.5)
    assert m.status(CLUSTER).nack["message"] == "no thanks"
    client.cancel()


async def test_delta_updated_eds_clusters_are_followed_by_their_unchanged_assignments(mesh):
    m, channel = mesh
    m.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"), subsets("a"))
    client = AdsClient(channel, delta=True)
    await delta_subscribe(m, client, CLUSTER)
    eds = await delta_subscribe(m, client, ENDPOINT, [cluster("a"), cluster("a", subset="v1"), cluster("b")])
    versions = {r.name: r.version for r in eds.resources}

    m.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"), policy("a", "ROUND_ROBIN"))
    cds = await client.recv()
    assert cds.type_url == CLUSTER
    assert sorted(names(cds)) == sorted([cluster("a"), cluster("a", subset="v1"), cluster("a", subset="v2")])
    resp = await client.recv()
    # Sent although Envoy holds these very versions: its updated clusters wait for them.
    assert resp.type_url == ENDPOINT and not resp.removed_resources
    assert {r.name: r.version for r in resp.resources} == {n: versions[n] for n in (cluster("a"), cluster("a", subset="v1"))}
    await client.send(type_url=CLUSTER, response_nonce=cds.nonce)
    await client.send(type_url=ENDPOINT, response_nonce=resp.nonce)
    assert await client.silent()
    client.cancel()


async def test_delta_reconnect_resends_assignments_of_clusters_that_changed_while_away(mesh):
    """A reconnecting Envoy's endpoint versions all match, but the clusters updated in the
    meantime warm until their assignments arrive: those are sent, and only those."""
    m, channel = mesh
    m.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"), subsets("a"))
    client = AdsClient(channel, delta=True)
    clusters = await delta_subscribe(m, client, CLUSTER)
    eds = await delta_subscribe(m, client, ENDPOINT, [cluster("a"), cluster("b")])
    client.cancel()
    m.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"), policy("a", "RANDOM"))

    again = AdsClient(channel, delta=True)
    cds = await delta_subscribe(m, again, CLUSTER,
                                initial_resource_versions={r.name: r.version for r in clusters.resources})
    assert sorted(names(cds)) == sorted([cluster("a"), cluster("a", subset="v1"), cluster("a", subset="v2")])
    await again.send(type_url=ENDPOINT, resource_names_subscribe=[cluster("a"), cluster("b")],
                     initial_resource_versions={r.name: r.version for r in eds.resources})
    resp = await again.recv()
    assert names(resp) == [cluster("a")] and not resp.removed_resources
    again.cancel()


async def test_both_protocols_push_in_order(mesh):
    m, channel = mesh
    m.apply(service("a", "127.0.50.1"), subsets("a"), split("a", 80))
    client = AdsClient(channel, delta=True)
    await delta_subscribe(m, client, CLUSTER)
    await client.send(type_url=ENDPOINT, resource_names_subscribe=[cluster("a", subset="v1")])
    await client.send(type_url=ENDPOINT, response_nonce=(await client.recv()).nonce)
    await delta_subscribe(m, client, LISTENER)
    await client.send(type_url=ROUTE, resource_names_subscribe=["80"])
    await client.send(type_url=ROUTE, response_nonce=(await client.recv()).nonce)
    m.apply(service("a", "127.0.50.6"), subsets("a"), split("a", 30), service("e", "127.0.50.5", port=7070))
    got = [await client.recv() for _ in range(4)]
    order = [r.type_url for r in got]
    assert order == sorted(order, key=PUSH_ORDER.index)
    assert set(order) == {CLUSTER, ENDPOINT, LISTENER, ROUTE}
    client.cancel()


def test_streams_in_the_same_state_share_one_encoded_response():
    """Two sidecars in one namespace: a change is diffed and encoded once for both."""
    from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest

    from xds_server.app.node import proxy_from_node
    from xds_server.xds.protocol import DeltaStream, SharedResponses
    from xds_server.xds.status import StreamStatus

    m = Mesh()
    m.apply(service("a", "127.0.50.1"), subsets("a"), split("a", 80))
    shared = SharedResponses()
    proxies = [proxy_from_node(node(ip)) for ip in ("127.0.61.1", "127.0.61.2")]
    streams = [DeltaStream(StreamStatus(p.id, "delta"), shared) for p in proxies]
    first = {}
    for p, s in zip(proxies, streams, strict=True):
        for type_url in (CLUSTER, LISTENER):
            first[(p.ip, type_url)] = s.on_request(DeltaDiscoveryRequest(type_url=type_url), m.cache.view(p))[0]
        s.on_request(DeltaDiscoveryRequest(type_url=ROUTE, resource_names_subscribe=["80"]), m.cache.view(p))
    a, b = (p.ip for p in proxies)
    assert first[(a, CLUSTER)].payload is first[(b, CLUSTER)].payload  # same clusters: one encoding
    assert first[(a, LISTENER)].payload != first[(b, LISTENER)].payload  # each binds its own IP

    m.apply(service("a", "127.0.50.1"), subsets("a"), split("a", 50))
    pushed = [s.on_view(m.cache.view(p)) for p, s in zip(proxies, streams, strict=True)]
    assert [[o.type_url for o in out] for out in pushed] == [[ROUTE], [ROUTE]]
    assert pushed[0][0].payload is pushed[1][0].payload


def test_streams_in_the_same_state_share_the_assignments_re_sent_for_warming():
    """The unchanged assignments that follow a cluster update are encoded once too, in both protocols."""
    from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

    from xds_server.app.node import proxy_from_node
    from xds_server.xds.protocol import DeltaStream, SharedResponses, SotwStream
    from xds_server.xds.status import StreamStatus

    m = Mesh()
    m.apply(service("a", "127.0.50.1"), subsets("a"), split("a", 80))
    eds = [cluster("a"), cluster("a", subset="v1"), cluster("a", subset="v2")]
    shared = SharedResponses()
    proxies = [proxy_from_node(node(f"127.0.61.{i}")) for i in range(1, 5)]
    streams = [(SotwStream if i < 2 else DeltaStream)(StreamStatus(p.id, "x"), shared) for i, p in enumerate(proxies)]
    for p, s in zip(proxies, streams, strict=True):
        if isinstance(s, SotwStream):
            s.on_request(DiscoveryRequest(type_url=CLUSTER), m.cache.view(p))
            s.on_request(DiscoveryRequest(type_url=ENDPOINT, resource_names=eds), m.cache.view(p))
        else:
            s.on_request(DeltaDiscoveryRequest(type_url=CLUSTER), m.cache.view(p))
            s.on_request(DeltaDiscoveryRequest(type_url=ENDPOINT, resource_names_subscribe=eds), m.cache.view(p))

    m.apply(service("a", "127.0.50.1"), policy("a", "ROUND_ROBIN"), split("a", 80))
    pushed = [s.on_view(m.cache.view(p)) for p, s in zip(proxies, streams, strict=True)]
    assert [[o.type_url for o in out] for out in pushed] == [[CLUSTER, ENDPOINT]] * 4
    assert all(out[1].count == 3 for out in pushed)
    assert pushed[0][1].payload is pushed[1][1].payload  # SotW
    assert pushed[2][1].payload is pushed[3][1].payload  # delta
    assert pushed[2][0].payload is pushed[3][0].payload
