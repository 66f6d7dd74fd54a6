"""Slow and stuck clients over real gRPC against a real ``XdsServer``: a proxy that stops reading
its stream (and keeps sending requests) stalls only itself. Others get every change on time;
the server holds, for the stuck stream, at most one pending view change and a bounded number
of unhandled requests, however many changes are made; its memory does not follow the number
of changes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from harness import free_port

from tests.xds_server.adsclient import AdsClient, node
from tests.xds_server.test_protocol import PROXY_IP, Mesh, cluster, names, service
from tests.xds_server.test_protocol_abuse import _rss_kib
from translators.api import CLUSTER
from translators.model import Resource, ResourceKey
from xds_server.sources.parse import parse_text
from xds_server.xds.server import MAX_QUEUED_REQUESTS, start_grpc

STUCK_IP = "127.0.60.3"
#: Enough clusters that each push to the stuck stream is far bigger than any flow-control window.
SERVICES = 1_500
CHANGES = 40
#: A request the size of a real subscription (1,000 names): the flood is megabytes, not bytes.
FLOOD_NAMES = [cluster(f"flood{i:04d}") for i in range(1_000)]
MAX_GROWTH_KIB = 128 * 1024


def _parsed(*manifests: str) -> dict[ResourceKey, Resource]:
    out: dict[ResourceKey, Resource] = {}
    for i, text in enumerate(manifests):
        parsed = parse_text(text, f"slow-{i}.yaml")
        assert not parsed.errors, parsed.errors
        out.update({d.resource.key: d.resource for d in parsed.documents if d.resource is not None})
    return out


async def test_a_stuck_client_flooding_requests_delays_no_one_and_holds_bounded_state() -> None:
    m = Mesh()
    resources = _parsed(*(service(f"svc{i:04d}", f"127.0.{51 + i // 250}.{1 + i % 250}") for i in range(SERVICES)))
    m.world = m.world.evolve(resources)
    m.cache.update(m.world)
    address = f"127.0.0.1:{free_port()}"
    server = await start_grpc(m.xds, address)
    good_channel, stuck_channel = grpc.aio.insecure_channel(address), grpc.aio.insecure_channel(address)
    try:
        good = AdsClient(good_channel)
        await good.send(node=node(PROXY_IP), type_url=CLUSTER)
        first = await good.recv(timeout=60)
        await good.send(type_url=CLUSTER, version_info=first.version_info, response_nonce=first.nonce)
        push_bytes = first.ByteSize()

        # The stuck proxy subscribes, then never reads a response, and sends requests without pause.
        stuck: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(stuck_channel).StreamAggregatedResources()
        await stuck.write(DiscoveryRequest(node=node(STUCK_IP, pod="stuck"), type_url=CLUSTER))
        flooded = 0
        flooding = True

        async def flood() -> None:
            nonlocal flooded
            while flooding:
                await stuck.write(DiscoveryRequest(type_url=CLUSTER, response_nonce=f"x{flooded}",
                                                   resource_names=FLOOD_NAMES))
                flooded += 1

        flooder = asyncio.create_task(flood())
        for _ in range(600):
            if len(m.xds.streams) == 2:
                break
            await asyncio.sleep(0.05)
        sid = max(m.xds.streams)
        inbox, status = m.xds.inboxes[sid], m.xds.streams[sid]
        before = _rss_kib()

        worst_lag = 0.0
        most_views = most_requests = 0
        for i in range(CHANGES):
            extra = _parsed(service(f"new{i:03d}", f"127.0.59.{1 + i}"))
            resources.update(extra)
            m.world = m.world.evolve(resources)
            started = time.perf_counter()
            m.cache.update(m.world)
            pushed = await good.recv(timeout=30)
            worst_lag = max(worst_lag, time.perf_counter() - started)
            assert cluster(f"new{i:03d}") in names(pushed)
            await good.send(type_url=CLUSTER, version_info=pushed.version_info, response_nonce=pushed.nonce)
            most_views = max(most_views, inbox.pending_views)
            most_requests = max(most_requests, len(inbox.requests))
        growth = _rss_kib() - before
        latest = pushed.version_info
        flooded_at_end = flooded
        await asyncio.sleep(0.5)
        print(f"stuck client: {CHANGES} changes of {push_bytes // 1024} KiB, good stream's worst lag "
              f"{worst_lag * 1000:.0f} ms, server RSS +{growth // 1024} MiB, pending views <= {most_views}, "
              f"queued requests <= {most_requests}, requests the flooder got out: {flooded}")

        # The stuck stream really is stuck: the server is blocked writing an older version to it...
        assert status.of(CLUSTER).sent_version != latest and inbox.pending_views == 1
        # ...and its flood was pushed back: a few windows' worth got out, not thousands a second.
        assert flooded == flooded_at_end, "the flooding client was never slowed down"
        assert most_views <= 1 and most_requests <= MAX_QUEUED_REQUESTS
        assert worst_lag < 2.0
        # A sanity bound: the growth is the translator's and the good stream's (both ends are in
        # this process); the stuck stream's share is bounded by the inbox assertions above.
        assert growth < MAX_GROWTH_KIB

        # Once it reads again it gets the latest state, not a backlog of one response per change.
        flooding = False  # not cancel(): cancelling a pending write cancels the whole call
        read = 0
        while True:
            response = await asyncio.wait_for(stuck.read(), 30)
            read += 1
            if response.version_info == latest:
                break
        print(f"the stuck client, reading again, got the latest state in {read} responses")
        assert read < CHANGES // 2, f"{read} responses: a backlog was kept"
        await asyncio.wait_for(flooder, 30)
        stuck.cancel()
        good.cancel()
    finally:
        await good_channel.close()
        await stuck_channel.close()
        await server.stop(grace=None)
