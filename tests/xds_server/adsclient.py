"""A minimal ADS client over real gRPC, for driving the server the way Envoy does."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.protobuf.struct_pb2 import Struct
from google.rpc.status_pb2 import Status


def node(ip: str, namespace: str = "default", pod: str = "client", labels: dict[str, str] | None = None) -> Node:
    meta = Struct()
    meta.update({"NAMESPACE": namespace, "INSTANCE_IPS": ip, "NAME": pod, "LABELS": labels or {}})
    return Node(id=f"sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local", cluster=pod, metadata=meta)


def nack(message: str) -> Status:
    return Status(code=3, message=message)


class AdsClient:
    """One ADS stream. A background task reads responses into a queue, so waiting for
    silence never swallows a response."""

    def __init__(self, channel: grpc.aio.Channel, delta: bool = False):
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.delta = delta
        self.call: Any = stub.DeltaAggregatedResources() if delta else stub.StreamAggregatedResources()
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                resp = await self.call.read()
                self._responses.put_nowait(resp)
                if resp is grpc.aio.EOF:
                    return
        except grpc.aio.AioRpcError as e:
            self._responses.put_nowait(e)

    async def send(self, **fields: Any) -> None:
        req = DeltaDiscoveryRequest(**fields) if self.delta else DiscoveryRequest(**fields)
        await self.call.write(req)

    async def recv(self, timeout: float = 5.0) -> Any:
        resp = await asyncio.wait_for(self._responses.get(), timeout)
        if resp is grpc.aio.EOF:
            raise EOFError("stream closed by server")
        if isinstance(resp, Exception):
            raise resp
        assert isinstance(resp, DeltaDiscoveryResponse if self.delta else DiscoveryResponse)
        return resp

    async def silent(self, seconds: float = 0.3) -> bool:
        """True when nothing arrives for ``seconds``; fails the test otherwise."""
        await asyncio.sleep(seconds)
        if not self._responses.empty():
            raise AssertionError(f"expected no response, got {self._responses.get_nowait()}")
        return True

    def cancel(self) -> None:
        self._reader.cancel()
        self.call.cancel()
