"""The Python bound: a minimal SotW ADS server that does nothing but serve.

    python benchmarks/peers/py_ads.py --services N --xds HOST:PORT --http HOST:PORT \
        --listener-address IP [--listener-port 80] [--upstream IP] [--upstream-port P]

N EDS clusters ``svc-<i>`` (one endpoint each), one listener with one RDS route
configuration of N virtual hosts: the same shapes as the go-control-plane peer
(benchmarks/peers/gcp/main.go). Every resource is serialized once, packed in an ``Any``
ahead of time; a response only assembles them. ``POST /change?what=endpoint`` alternates
svc-0's endpoint port, ``?what=route`` puts the new version in svc-0's virtual host's
``x-peer-version`` header; the changed type is pushed to every open stream. grpc.aio and the protobuf messages, nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, duration_pb2

PREFIX = "type.googleapis.com/envoy.config."
CLUSTER = PREFIX + "cluster.v3.Cluster"
ENDPOINT = PREFIX + "endpoint.v3.ClusterLoadAssignment"
LISTENER = PREFIX + "listener.v3.Listener"
ROUTE = PREFIX + "route.v3.RouteConfiguration"
ROUTE_NAME = "http.80"


def packed(message: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                          resource_api_version=config_source_pb2.V3)


def socket(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port))


def cluster(i: int) -> any_pb2.Any:
    return packed(cluster_pb2.Cluster(
        name=f"svc-{i}", type=cluster_pb2.Cluster.EDS, connect_timeout=duration_pb2.Duration(seconds=1),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads())))


def endpoints(i: int, ip: str, port: int) -> any_pb2.Any:
    endpoint = endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=socket(ip, port)))
    return packed(endpoint_pb2.ClusterLoadAssignment(
        cluster_name=f"svc-{i}", endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])]))


def virtual_host(i: int, version: str) -> route_components_pb2.VirtualHost:
    name = f"svc-{i}"
    return route_components_pb2.VirtualHost(
        name=name, domains=[name, f"{name}.default.svc.cluster.local"],
        routes=[route_components_pb2.Route(match=route_components_pb2.RouteMatch(prefix="/"),
                                           route=route_components_pb2.RouteAction(cluster=name))],
        response_headers_to_add=[base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-peer-version",
                                                                                           value=version))])


def listener(ip: str, port: int) -> any_pb2.Any:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="peer", rds=hcm_pb2.Rds(route_config_name=ROUTE_NAME, config_source=ads()),
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=packed(router_pb2.Router()))])
    chain = listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=packed(manager))])
    return packed(listener_pb2.Listener(name="http", address=socket(ip, port), filter_chains=[chain]))


class Mesh:
    """Prebuilt resources per type, a version, and the streams to tell about a new one."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        n = args.services
        self.version = 1
        self.second = False
        # Per type, like the go-control-plane peer: a change resends the type it changed only.
        self.versions = {CLUSTER: 1, ENDPOINT: 1, LISTENER: 1, ROUTE: 1}
        self.hosts = [virtual_host(i, "1") for i in range(n)]
        self.resources: dict[str, list[any_pb2.Any]] = {
            CLUSTER: [cluster(i) for i in range(n)],
            ENDPOINT: [endpoints(i, args.upstream, args.upstream_port) for i in range(n)],
            LISTENER: [listener(args.listener_address, args.listener_port)],
            ROUTE: [self.route()],
        }
        self.streams: set[asyncio.Queue[None]] = set()

    def route(self) -> any_pb2.Any:
        return packed(route_pb2.RouteConfiguration(name=ROUTE_NAME, virtual_hosts=self.hosts))

    def change(self, what: str) -> int:
        self.version += 1
        if what == "endpoint":
            self.second = not self.second  # svc-0's endpoint alternates between the two ports
            port = self.args.upstream_port2 if self.second else self.args.upstream_port
            self.resources[ENDPOINT][0] = endpoints(0, self.args.upstream, port)
            self.versions[ENDPOINT] = self.version
        else:
            self.hosts[0] = virtual_host(0, str(self.version))
            self.resources[ROUTE] = [self.route()]
            self.versions[ROUTE] = self.version
        for queue in self.streams:
            queue.put_nowait(None)
        return self.version


class Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    async def StreamAggregatedResources(self, requests: Any, context: Any) -> Any:  # noqa: N802 (gRPC's name)
        mesh = self.mesh
        wake: asyncio.Queue[None] = asyncio.Queue()
        out: asyncio.Queue[discovery_pb2.DiscoveryResponse | None] = asyncio.Queue()
        sent: dict[str, int] = {}  # type -> version last sent
        subscribed: set[str] = set()

        def response(type_url: str) -> discovery_pb2.DiscoveryResponse:
            version = sent[type_url] = mesh.versions.get(type_url, 1)
            return discovery_pb2.DiscoveryResponse(version_info=str(version), type_url=type_url,
                                                   nonce=f"{type_url[-8:]}-{version}",
                                                   resources=mesh.resources.get(type_url, []))

        async def read() -> None:
            async for request in requests:
                type_url = request.type_url
                subscribed.add(type_url)
                current = mesh.versions.get(type_url, 1)
                if request.error_detail.code or request.version_info == str(current):
                    continue  # a NACK or an ACK of what it has
                if sent.get(type_url) == current and request.response_nonce:
                    continue  # an ACK of an older response whose newer one is on its way
                out.put_nowait(response(type_url))
            out.put_nowait(None)

        async def push() -> None:
            while True:
                await wake.get()
                for type_url in sorted(subscribed):
                    if sent.get(type_url) != mesh.versions.get(type_url, 1):
                        out.put_nowait(response(type_url))

        mesh.streams.add(wake)
        tasks = [asyncio.create_task(read()), asyncio.create_task(push())]
        try:
            while (message := await out.get()) is not None:
                yield message
        finally:
            mesh.streams.discard(wake)
            for task in tasks:
                task.cancel()


async def control(mesh: Mesh, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Just enough HTTP/1.0 for ``POST /change?what=endpoint|route``: answers the new version."""
    head = await reader.readuntil(b"\r\n\r\n")
    path, _, query = head.split(b" ", 2)[1].partition(b"?")
    what = query.removeprefix(b"what=").decode()
    if path == b"/change" and what in ("endpoint", "route"):
        body, status = f"{mesh.change(what)}\n".encode(), b"200 OK"
    else:
        body, status = b"not found\n", b"404 Not Found"
    writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    writer.close()


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--xds", default="127.0.0.1:18000")
    parser.add_argument("--http", default="127.0.0.1:18001")
    parser.add_argument("--listener-address", default="127.0.0.1")
    parser.add_argument("--listener-port", type=int, default=80)
    parser.add_argument("--upstream", default="127.0.0.1")
    parser.add_argument("--upstream-port", type=int, default=8080)
    parser.add_argument("--upstream-port2", type=int, default=8081)
    args = parser.parse_args(argv)
    mesh = Mesh(args)
    server = grpc.aio.server(options=[("grpc.max_send_message_length", -1)])
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Ads(mesh), server)
    server.add_insecure_port(args.xds)
    await server.start()
    host, port = args.http.rsplit(":", 1)
    http = await asyncio.start_server(lambda r, w: control(mesh, r, w), host, int(port))
    print("ready", file=sys.stderr, flush=True)
    async with http:
        await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
