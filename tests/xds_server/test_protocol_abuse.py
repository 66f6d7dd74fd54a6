"""Protocol abuse over real gRPC against a real ``XdsServer``: requests the xDS protocol says to
ignore are ignored, each kind is logged once per stream (not once per request), and a
well-behaved stream on the same server keeps getting its pushes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import structlog
from harness import free_port

from tests.xds_server.adsclient import AdsClient, node
from tests.xds_server.test_protocol import PROXY_IP, Mesh, acked, cluster, names, service, sotw_subscribe
from translators.api import CLUSTER, ENDPOINT
from xds_server.xds.server import start_grpc

ABUSER_IP = "127.0.60.2"
BOGUS_TYPE = "type.googleapis.com/not.a.Real.Type"
BASE = (service("a", "127.0.50.1"), service("b", "127.0.50.2"))


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[Mesh, grpc.aio.Channel]]:
    m = Mesh()
    m.apply(*BASE)
    address = f"127.0.0.1:{free_port()}"
    server = await start_grpc(m.xds, address)
    channel = grpc.aio.insecure_channel(address)
    yield m, channel
    await channel.close()
    await server.stop(grace=None)


async def good_client(m: Mesh, channel: grpc.aio.Channel) -> AdsClient:
    """A stream that behaves like Envoy: subscribed to CDS, ACKed."""
    client = AdsClient(channel)
    await sotw_subscribe(m, client, CLUSTER)
    return client


async def still_served(m: Mesh, good: AdsClient, *extra: str) -> None:
    """A config change reaches the well-behaved stream, and it ACKs it."""
    m.apply(*BASE, *extra)
    pushed = await good.recv(timeout=30)
    assert pushed.type_url == CLUSTER
    await good.send(type_url=CLUSTER, version_info=pushed.version_info, response_nonce=pushed.nonce)


def ignored(logs: list[dict], reason: str) -> list[dict]:
    return [e for e in logs if e.get("event") == "xds request ignored" and e.get("reason") == reason]


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_unknown_type_urls_are_ignored_logged_once_and_harm_no_one(mesh, delta):
    m, channel = mesh
    good = await good_client(m, channel)
    abuser = AdsClient(channel, delta=delta)
    with structlog.testing.capture_logs() as logs:
        await abuser.send(node=node(ABUSER_IP, pod="abuser"), type_url=BOGUS_TYPE)
        for i in range(50):
            await abuser.send(type_url=BOGUS_TYPE, response_nonce=str(i))
        # The same stream may still ask for something real, and gets it: nothing was torn down.
        await abuser.send(type_url=CLUSTER)
        answer = await abuser.recv(timeout=30)
        assert answer.type_url == CLUSTER and cluster("a") in names(answer)
        assert await abuser.silent(0.3)  # the bogus requests got no response at all
    assert len(ignored(logs, "unknown type")) == 1
    await still_served(m, good, service("c", "127.0.50.3"))
    abuser.cancel()
    good.cancel()


async def test_sotw_made_up_and_stale_nonces_are_ignored_and_made_up_ones_logged_once(mesh):
    m, channel = mesh
    good = await good_client(m, channel)
    abuser = AdsClient(channel)
    first = await sotw_subscribe(m, abuser, ENDPOINT, [cluster("a")])
    st = m.xds.streams[max(m.xds.streams)].of(ENDPOINT)
    with structlog.testing.capture_logs() as logs:
        # Made-up nonces, and a change of subscription riding on one: the protocol says ignore it all.
        for i in range(30):
            await abuser.send(type_url=ENDPOINT, response_nonce=f"forged-{i}", version_info="v-forged",
                              resource_names=[cluster("a"), cluster("b")])
        for forged in ("999999999999", "9" * 10_000, "\u00b2", "-1", ""):  # none may crash the stream
            await abuser.send(type_url=ENDPOINT, response_nonce=forged, resource_names=[cluster("b")])
        # A nonce older than the latest is what Envoy sends in a race: ignored, and not worth a warning.
        await abuser.send(type_url=ENDPOINT, response_nonce=str(int(first.nonce) - 1),
                          resource_names=[cluster("b")])
        assert await abuser.silent(0.5)
    assert len(ignored(logs, "unknown nonce")) == 1
    assert st.acked_nonce == first.nonce and st.acked_version == first.version_info
    # The subscription really did not change: a moved endpoint of b is not pushed, one of a is.
    m.apply(service("a", "127.0.50.9"), service("b", "127.0.50.8"))
    pushed = await abuser.recv(timeout=30)
    assert names(pushed) == [cluster("a")]
    m.apply(*BASE)
    assert names(await abuser.recv(timeout=30)) == [cluster("a")]
    await still_served(m, good, service("c", "127.0.50.3"))
    abuser.cancel()
    good.cancel()


async def test_delta_acks_of_nonces_never_sent_are_ignored_and_logged_once(mesh):
    m, channel = mesh
    good = await good_client(m, channel)
    abuser = AdsClient(channel, delta=True)
    await abuser.send(node=node(ABUSER_IP, pod="abuser"), type_url=CLUSTER)
    first = await abuser.recv(timeout=30)
    await abuser.send(type_url=CLUSTER, response_nonce=first.nonce)
    await acked(m, CLUSTER, first.nonce)
    sid = max(m.xds.streams)
    with structlog.testing.capture_logs() as logs:
        for i in range(30):
            await abuser.send(type_url=CLUSTER, response_nonce=f"never-sent-{i}")
        assert await abuser.silent(0.5)
    assert len(ignored(logs, "unknown nonce")) == 1
    assert m.xds.streams[sid].of(CLUSTER).acked_nonce == first.nonce
    await still_served(m, good, service("c", "127.0.50.3"))
    pushed = await abuser.recv(timeout=30)
    assert cluster("c") in names(pushed)
    abuser.cancel()
    good.cancel()


async def test_sotw_ack_of_a_version_never_sent_records_what_was_sent(mesh):
    m, channel = mesh
    client = AdsClient(channel)
    await client.send(node=node(PROXY_IP), type_url=CLUSTER)
    resp = await client.recv(timeout=30)
    with structlog.testing.capture_logs() as logs:
        await client.send(type_url=CLUSTER, version_info="made-up-version", response_nonce=resp.nonce)
        await acked(m, CLUSTER, resp.nonce)
        # Repeating it is a stale request now (the nonce was answered): still one log line.
        for _ in range(10):
            await client.send(type_url=CLUSTER, version_info="made-up-version", response_nonce=resp.nonce)
        assert await client.silent(0.3)
    assert m.status(CLUSTER).acked_version == resp.version_info  # /debug/syncz shows the truth
    assert len(ignored(logs, "ack of a version never sent")) == 1
    client.cancel()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_a_flood_of_bogus_requests_is_logged_once_and_the_good_stream_keeps_its_pushes(mesh, delta):
    m, channel = mesh
    good = await good_client(m, channel)
    abuser = AdsClient(channel, delta=delta)
    await abuser.send(node=node(ABUSER_IP, pod="abuser"), type_url=CLUSTER)
    await abuser.recv(timeout=30)
    with structlog.testing.capture_logs() as logs:
        for i in range(5_000):
            await abuser.send(type_url=BOGUS_TYPE if i % 2 else CLUSTER, response_nonce=f"x{i}")
        await still_served(m, good, service("c", "127.0.50.3"))
        pushed = await abuser.recv(timeout=60)  # the abuser is still a client like any other
        assert cluster("c") in names(pushed)
    assert len(ignored(logs, "unknown type")) == 1 and len(ignored(logs, "unknown nonce")) == 1
    abuser.cancel()
    good.cancel()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_a_huge_subscription_of_names_that_do_not_exist(mesh, delta):
    m, channel = mesh
    good = await good_client(m, channel)
    abuser = AdsClient(channel, delta=delta)
    wanted = [cluster(f"n{i:06d}") for i in range(100_000)] + [cluster("a")]
    field = "resource_names_subscribe" if delta else "resource_names"
    started = time.perf_counter()
    await abuser.send(node=node(ABUSER_IP, pod="abuser"), type_url=ENDPOINT, **{field: wanted})
    first = await abuser.recv(timeout=60)
    took = time.perf_counter() - started
    assert names(first) == [cluster("a")]  # only what exists; the rest is sent when it appears
    if delta:
        await abuser.send(type_url=ENDPOINT, response_nonce=first.nonce)
    else:
        await abuser.send(type_url=ENDPOINT, response_nonce=first.nonce, version_info=first.version_info,
                          resource_names=wanted)
    # One of the 100,000 appears: it is sent, alone; the well-behaved stream gets its push too.
    started = time.perf_counter()
    await still_served(m, good, service("n000042", "127.0.50.42"))
    appeared = await abuser.recv(timeout=60)
    push_took = time.perf_counter() - started
    assert names(appeared) == [cluster("n000042")]
    print(f"100,001 names: first answer {took:.2f}s, push {push_took:.2f}s")
    abuser.cancel()
    good.cancel()


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


#: With gRPC's default pending-request limits, streams past about 1,800 failed to open (INTERNAL).
STREAMS = 2_000
#: Server and client share this process, so this covers both ends of each stream.
MAX_KIB_PER_STREAM = 200


async def test_a_client_opening_thousands_of_streams_on_one_channel(mesh):
    m, channel = mesh
    good = await good_client(m, channel)
    before = _rss_kib()
    started = time.perf_counter()
    clients = [AdsClient(channel) for _ in range(STREAMS)]
    await asyncio.gather(*(c.send(node=node(ABUSER_IP, pod=f"abuser-{i}"), type_url=CLUSTER)
                           for i, c in enumerate(clients)))
    answers = await asyncio.gather(*(c.recv(timeout=120) for c in clients))
    opened = time.perf_counter() - started
    assert all(cluster("a") in names(a) for a in answers)
    assert len(m.xds.streams) == STREAMS + 1
    per_stream = (_rss_kib() - before) / STREAMS
    # Every stream, the well-behaved one included, gets the next change.
    started = time.perf_counter()
    await still_served(m, good, service("c", "127.0.50.3"))
    pushes = await asyncio.gather(*(c.recv(timeout=120) for c in clients))
    pushed = time.perf_counter() - started
    assert all(cluster("c") in names(p) for p in pushes)
    print(f"{STREAMS} streams: opened in {opened:.1f}s, pushed in {pushed:.1f}s, {per_stream:.1f} KiB RSS each")
    assert per_stream < MAX_KIB_PER_STREAM
    for c in clients:
        c.cancel()
    for _ in range(600):  # every closed stream is forgotten by the server
        if len(m.xds.streams) == 1:
            break
        await asyncio.sleep(0.05)
    assert len(m.xds.streams) == 1
    good.cancel()
