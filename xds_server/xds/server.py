"""gRPC: the ADS (state of the world) and Delta ADS services over grpc.aio.

Responses leave as bytes already assembled from each resource's pre-encoded entry, so
the methods are registered with an identity serializer instead of the generated stubs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

from xds_server.app.node import NodeError, proxy_from_node
from xds_server.xds.cache import XdsCache
from xds_server.xds.protocol import DeltaStream, SharedResponses, SotwStream
from xds_server.xds.status import STREAMS, StreamStatus

log = structlog.get_logger("xds")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_VIEW_CHANGED = object()


def _identity(payload: bytes) -> bytes:
    return payload


class XdsServer:
    def __init__(self, cache: XdsCache):
        self.cache = cache
        self.streams: dict[int, StreamStatus] = {}
        self.shared = SharedResponses()
        self._ids = 0

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self.stream_sotw,
                    request_deserializer=DiscoveryRequest.FromString,
                    response_serializer=_identity,
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self.stream_delta,
                    request_deserializer=DeltaDiscoveryRequest.FromString,
                    response_serializer=_identity,
                ),
            },
        )

    async def stream_sotw(self, requests: AsyncIterator[DiscoveryRequest], context: Any) -> None:
        await self._serve(requests, context, "sotw")

    async def stream_delta(self, requests: AsyncIterator[DeltaDiscoveryRequest], context: Any) -> None:
        await self._serve(requests, context, "delta")

    async def _serve(self, requests: AsyncIterator[Any], context: Any, protocol: str) -> None:
        try:
            first = await anext(aiter(requests))
        except StopAsyncIteration:
            return
        try:
            proxy = proxy_from_node(first.node)
        except NodeError as e:
            log.warning("stream refused", reason=str(e), protocol=protocol)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        self._ids += 1
        sid = self._ids
        status = StreamStatus(proxy.id, protocol)
        stream = (SotwStream if protocol == "sotw" else DeltaStream)(status, self.shared)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        view_pending = False

        def on_view(_view: object) -> None:
            nonlocal view_pending
            if not view_pending:  # merge bursts: the stream reads the latest view anyway
                view_pending = True
                queue.put_nowait(_VIEW_CHANGED)

        async def read() -> None:
            try:
                async for req in requests:
                    queue.put_nowait(req)
            finally:
                queue.put_nowait(None)

        unwatch = self.cache.watch(proxy, on_view)
        self.streams[sid] = status
        STREAMS.labels(protocol).inc()
        reader = asyncio.create_task(read())
        log.info("stream opened", proxy=proxy.id, ip=proxy.ip, namespace=proxy.namespace, protocol=protocol)
        try:
            item: Any = first
            while item is not None:
                if item is _VIEW_CHANGED:
                    view_pending = False
                    outgoing = stream.on_view(self.cache.view(proxy))
                else:
                    outgoing = stream.on_request(item, self.cache.view(proxy))
                for out in outgoing:
                    await context.write(out.payload)
                item = await queue.get()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception:
            # A bug, not a protocol event: the proxy reconnects, but the log must say why.
            log.exception("stream failed", proxy=proxy.id, protocol=protocol)
            raise
        finally:
            unwatch()
            reader.cancel()
            del self.streams[sid]
            STREAMS.labels(protocol).dec()
            log.info("stream closed", proxy=proxy.id, protocol=protocol)


async def start_grpc(server_impl: XdsServer, address: str) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_concurrent_streams", 100_000),
            # A thousand proxies connecting at once can queue calls for a while; the
            # default would cancel them after 30 s.
            ("grpc.server_max_unrequested_time_in_server", 600),
        ]
    )
    server.add_generic_rpc_handlers((server_impl.handler(),))
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen for xDS on {address}")
    await server.start()
    return server
