"""The protocol tests' mesh: two services behind a real XdsServer on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from harness import free_port

from tests.xds_server.test_protocol import Mesh, service
from xds_server.xds.server import start_grpc


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[Mesh, grpc.aio.Channel]]:
    m = Mesh()
    m.apply(service("a", "127.0.50.1"), service("b", "127.0.50.2"))
    address = f"127.0.0.1:{free_port()}"
    server = await start_grpc(m.xds, address)
    channel = grpc.aio.insecure_channel(address)
    yield m, channel
    await channel.close()
    await server.stop(grace=None)
