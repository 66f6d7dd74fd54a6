"""K Envoy-like delta ADS clients in one process, driven by the benchmark over stdin/stdout.

Run by ``benchmarks/run.py`` as a separate process so the clients' CPU is not the
server's. Each client is one DeltaAggregatedResources stream with its own Istio node
(``sidecar~127.3.x.y~client-<i>.default~default.svc.cluster.local``) and behaves like
Envoy: wildcard CDS, EDS for every cluster received, wildcard LDS, RDS for the route
names the listeners' HTTP connection managers use, VHDS for the route configurations that
carry ``vhds`` (subscribed by route configuration name); every response is ACKed.

Protocol (one JSON object per line). The parent writes commands on stdin:

* ``{"cmd": "mark", "rep": r, "type": <type_url>, "check": "<vhost name>"}``: from now on
  each client records the monotonic time it received, and the time it had ACKed, its
  next response of that type; answered by ``{"event": "marked"}`` and later
  ``{"event": "done", ...}`` once every client has one;
* ``{"cmd": "expect", "clusters": [names]}``: answered by ``{"event": "expecting"}``, then
  ``{"event": "expected", "t": ...}`` once every client has ACKed a CDS response with all of
  these clusters and an EDS response with at least one endpoint for each (the Kubernetes
  benchmark, bench_kube.py: a big apply arrives in several pushes);
* ``{"cmd": "quit"}`` (or EOF): close every stream and exit.

and reads events on stdout: ``synced`` (every client has ACKed CDS, EDS, LDS and RDS),
``marked``, ``done``, ``error``. Times are ``time.monotonic()``: CLOCK_MONOTONIC is one
clock for every process on Linux, so the parent compares them with its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse
from google.protobuf.struct_pb2 import Struct

from xds_server.xds import vhds

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
VIRTUAL_HOST = "type.googleapis.com/envoy.config.route.v3.VirtualHost"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
NAMESPACE = "default"


def client_ip(i: int) -> str:
    i += 1
    return f"127.3.{i // 256}.{i % 256}"


def istio_node(i: int) -> Node:
    ip, pod = client_ip(i), f"client-{i}"
    meta = Struct()
    meta.update(
        {
            "NAMESPACE": NAMESPACE,
            "INSTANCE_IPS": ip,
            "NAME": pod,
            "LABELS": {"app": "bench-client", "instance": str(i)},
            "SERVICE_ACCOUNT": "bench-client",
        }
    )
    return Node(id=f"sidecar~{ip}~{pod}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local", cluster=pod, metadata=meta)


def vm_status(pid: str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak) in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def peek(raw: bytes) -> tuple[str, str]:
    """type_url and nonce of an encoded DeltaDiscoveryResponse, reading only its top-level
    fields: the simulated clients stay cheap, so the numbers are the server's. Real Envoys
    parse everything, on their own machines."""
    type_url = nonce = ""
    for number, _, value, end in vhds.fields(raw):
        if number == 4:
            type_url = raw[value:end].decode()
        elif number == 5:
            nonce = raw[value:end].decode()
    return type_url, nonce


def route_names(resp: DeltaDiscoveryResponse) -> set[str]:
    """The RDS names the HTTP connection managers of these listeners ask for."""
    names: set[str] = set()
    for res in resp.resources:
        listener = Listener()
        res.resource.Unpack(listener)
        chains = list(listener.filter_chains)
        if listener.HasField("default_filter_chain"):
            chains.append(listener.default_filter_chain)
        for chain in chains:
            for f in chain.filters:
                if f.typed_config.type_url == HCM:
                    hcm = HttpConnectionManager()
                    f.typed_config.Unpack(hcm)
                    if hcm.HasField("rds"):
                        names.add(hcm.rds.route_config_name)
    return names


def _submessages(raw: bytes, number: int) -> list[bytes]:
    """The top-level fields ``number`` of an encoded message (all length-delimited here)."""
    return [raw[value:end] for n, _, value, end in vhds.fields(raw) if n == number]


def vhds_names(raw: bytes) -> set[str]:
    """The route configurations of an encoded RDS response whose virtual hosts come over VHDS
    (field 9 set), read without parsing their (possibly large) tables."""
    out = set()
    for res in _submessages(raw, 2):  # DeltaDiscoveryResponse.resources
        (name,) = _submessages(res, 3)
        for any_ in _submessages(res, 2):
            for rc in _submessages(any_, 2):
                if _submessages(rc, 9):
                    out.add(name.decode())
    return out


def weights_of(resp: DeltaDiscoveryResponse, vhost: str) -> dict[str, int]:
    """cluster -> weight of the weighted route of one virtual host (to check a change arrived),
    in route configurations (RDS) or virtual hosts (VHDS)."""
    out: dict[str, int] = {}
    for res in resp.resources:
        if resp.type_url == VIRTUAL_HOST:
            vhosts = [VirtualHost.FromString(res.resource.value)]
        else:
            vhosts = list(RouteConfiguration.FromString(res.resource.value).virtual_hosts)
        for vh in vhosts:
            if vh.name != vhost:
                continue
            for route in vh.routes:
                if route.route.HasField("weighted_clusters"):
                    for c in route.route.weighted_clusters.clusters:
                        out[c.name] = c.weight.value
    return out


@dataclass
class Mark:
    rep: int
    type_url: str
    check: str
    recv: list[float | None]
    ack: list[float | None]
    done: int = 0
    extra: int = 0  # responses of other types while marked: a one-resource change should cause none
    bytes: int = 0
    weights: dict[str, int] = field(default_factory=dict)


class Fleet:
    def __init__(self, address: str, clients: int, per_channel: int, ramp: int):
        self.address = address
        # At most ``ramp`` clients between opening their stream and being synced (0: no limit).
        self.ramp = asyncio.Semaphore(ramp) if ramp > 0 else None
        self.k = clients
        self.per_channel = per_channel
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.synced = 0
        self.all_synced = asyncio.Event()
        self.mark: Mark | None = None
        self.expect: frozenset[str] | None = None
        self.expected = 0  # clients that have everything expected
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.responses = 0
        self.response_bytes = 0
        self.started = time.monotonic()

    async def start(self) -> None:
        options = [
            ("grpc.max_receive_message_length", 512 * 1024 * 1024),
            # Own TCP connection per channel, not one shared subchannel for all.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        for c in range((self.k + self.per_channel - 1) // self.per_channel):
            self.channels.append(grpc.aio.insecure_channel(self.address, options=[*options, ("bench.channel", c)]))
        for i in range(self.k):
            channel = self.channels[i // self.per_channel]
            self.tasks.append(asyncio.create_task(self.client(i, channel)))

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for ch in self.channels:
            await ch.close(grace=None)

    async def client(self, i: int, channel: grpc.aio.Channel) -> None:
        progress: list[str] = []
        try:
            if self.ramp is not None:
                await self.ramp.acquire()
            await self._client(i, channel, progress)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # one broken stream spoils the measurement: say so at once
            if isinstance(e, grpc.aio.AioRpcError):
                e = RuntimeError(f"{e.code().name}: {e.details()}")
            if not self.failed.done():
                self.failed.set_result(
                    f"client {i}, {time.monotonic() - self.started:.1f} s after start, had received "
                    f"{', '.join(progress) or 'nothing'}: {e}"
                )

    async def _client(self, i: int, channel: grpc.aio.Channel, progress: list[str]) -> None:
        call: Any = channel.stream_stream(
            DELTA_METHOD,
            request_serializer=DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=None,  # raw bytes: see peek()
        )()
        clusters: set[str] = set()
        routes: set[str] = set()
        vhosts_of: set[str] = set()  # route configurations subscribed to over VHDS
        started: set[str] = set()
        acked: set[str] = set()
        ready: set[str] = set()  # clusters whose last EDS response had endpoints (expect mode)
        synced = has_expected = False

        async def subscribe(type_url: str, add: set[str], remove: set[str]) -> None:
            if type_url not in started:
                started.add(type_url)
                await call.write(DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=sorted(add)))
            elif add or remove:
                await call.write(
                    DeltaDiscoveryRequest(
                        type_url=type_url, resource_names_subscribe=sorted(add), resource_names_unsubscribe=sorted(remove)
                    )
                )

        # Envoy's first request: wildcard CDS (no names), carrying the node.
        started.add(CLUSTER)
        await call.write(DeltaDiscoveryRequest(node=istio_node(i), type_url=CLUSTER))
        while True:
            raw = await call.read()
            now = time.monotonic()
            if raw is grpc.aio.EOF:
                raise EOFError("stream closed by the server")
            type_url, nonce = peek(raw)
            progress.append(type_url.rsplit(".", 1)[-1])
            self.responses += 1
            size = len(raw)
            self.response_bytes += size
            mark = self.mark
            record = mark is not None and mark.recv[i] is None and type_url == mark.type_url
            if mark is not None and not record:
                mark.extra += 1
            if record:
                assert mark is not None
                mark.recv[i] = now
                mark.bytes += size

            check = record and i == 0 and mark is not None and mark.check
            expecting = self.expect is not None and not has_expected
            resp = DeltaDiscoveryResponse.FromString(raw) if type_url in (CLUSTER, LISTENER) or check or (
                expecting and type_url == ENDPOINT) else None
            if expecting and type_url == ENDPOINT:
                assert resp is not None
                ready.difference_update(resp.removed_resources)
                for res in resp.resources:
                    cla = ClusterLoadAssignment.FromString(res.resource.value)
                    (ready.add if any(e.lb_endpoints for e in cla.endpoints) else ready.discard)(res.name)
            if type_url == CLUSTER:
                assert resp is not None
                names = {r.name for r in resp.resources}
                removed = set(resp.removed_resources)
                added = names - clusters
                clusters |= names
                clusters -= removed
                await subscribe(ENDPOINT, added, removed)
            elif type_url == LISTENER:
                assert resp is not None
                wanted = route_names(resp)
                await subscribe(ROUTE, wanted - routes, set())
                routes |= wanted
            elif type_url == ROUTE and not synced:
                found = vhds_names(raw) - vhosts_of
                if found:  # (a first VHDS request naming nothing would be a wildcard)
                    await subscribe(VIRTUAL_HOST, found, set())
                    vhosts_of |= found
            await call.write(DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce))
            if type_url == CLUSTER:
                await subscribe(LISTENER, set(), set())  # after clusters, as Envoy does
            acked.add(type_url)

            if record:
                assert mark is not None
                mark.ack[i] = time.monotonic()
                if check:
                    assert resp is not None
                    mark.weights = weights_of(resp, mark.check)
                mark.done += 1
                if mark.done == self.k:
                    emit(
                        event="done",
                        rep=mark.rep,
                        recv=mark.recv,
                        ack=mark.ack,
                        extra=mark.extra,
                        bytes=mark.bytes,
                        weights=mark.weights,
                        cpu=cpu_seconds(),
                        **vm_status(),
                    )
                    self.mark = None
            if expecting and self.expect is not None and self.expect <= clusters and self.expect <= ready:
                has_expected = True
                self.expected += 1
                if self.expected == self.k:
                    emit(event="expected", t=time.monotonic(), cpu=cpu_seconds(), **vm_status())
            if not synced and len(acked) == 4 + (VIRTUAL_HOST in started):
                synced = True
                if self.ramp is not None:
                    self.ramp.release()
                self.synced += 1
                if self.synced == self.k:
                    # Like the server: what the fleet holds now is long-lived; keep the
                    # cyclic collector off it so client pauses do not count as push latency.
                    gc.freeze()
                    self.all_synced.set()


def emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def main(args: argparse.Namespace) -> None:
    fleet = Fleet(args.address, args.clients, args.per_channel, args.ramp)
    stdin = await commands()
    started = time.monotonic()
    await fleet.start()
    try:
        synced = asyncio.ensure_future(fleet.all_synced.wait())
        await asyncio.wait([synced, fleet.failed], return_when=asyncio.FIRST_COMPLETED)
        if fleet.failed.done():
            emit(event="error", message=fleet.failed.result())
            return
        emit(
            event="synced",
            t=time.monotonic(),
            seconds=time.monotonic() - started,
            responses=fleet.responses,
            bytes=fleet.response_bytes,
            cpu=cpu_seconds(),
            **vm_status(),
        )
        while True:
            read = asyncio.ensure_future(stdin.readline())
            await asyncio.wait([read, fleet.failed], return_when=asyncio.FIRST_COMPLETED)
            if fleet.failed.done():
                read.cancel()
                emit(event="error", message=fleet.failed.result())
                return
            line = read.result()
            if not line:
                return
            cmd = json.loads(line)
            if cmd["cmd"] == "quit":
                return
            if cmd["cmd"] == "expect":
                fleet.expect = frozenset(cmd["clusters"])
                emit(event="expecting")
            if cmd["cmd"] == "mark":
                fleet.mark = Mark(cmd["rep"], cmd["type"], cmd.get("check", ""), [None] * fleet.k, [None] * fleet.k)
                emit(event="marked", rep=cmd["rep"], cpu=cpu_seconds())
    finally:
        await fleet.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--address", required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--per-channel", type=int, default=100)
    p.add_argument("--ramp", type=int, default=0)
    with contextlib.suppress(KeyboardInterrupt):  # the parent's Ctrl-C reaches us too
        asyncio.run(main(p.parse_args()))
