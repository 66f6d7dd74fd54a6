"""Issuing certificates to 2,000 proxies over SDS while pushing config to 200 others.

    python benchmarks/bench_sds.py [--services 200] [--sds-clients 2000] [--watchers 200] [--json]

The control plane runs here as ``serve`` wires it (Pipeline, MeshCA with a fresh state
directory, XdsServer, the plaintext and the TLS gRPC ports on 127.0.0.1). Two client
processes, so that client CPU is not the server's:

* ``bench_clients.py`` (as in ``run.py``): W Envoy-like delta ADS streams on the plaintext
  port, synced first; each reports when it received a marked RDS change;
* this file with ``--sds-child``: N standalone SDS streams (``StreamSecrets``) on the TLS
  port, each for its own service account (so N certificates are signed), with a token
  minted from the state directory, opened all at once on "go". Each records when it
  had both ``default`` and ``ROOTCA``.

Right after "go", a VirtualService change is applied every ``--change-every`` seconds (each
waits for all W watchers) until every SDS stream has its secrets. Reported: time until all N proxies hold
their certificates, and the latency of the changes to the W others during the burst
(p50/p99/max), beside the same change with no burst.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import bench_report as report
from bench_clients import cpu_seconds, emit
from run import Bench, ClientProcess, free_port, note, vs_change_mark

from xds_server.app.mesh_ca import MeshCA
from xds_server.app.serve import configure_logging
from xds_server.xds.server import XdsServer, start_grpc

HERE = Path(__file__).resolve().parent
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SDS_METHOD = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
NAMESPACE = "default"


# ------------------------------------------------------------------ the SDS client process


def sds_node(i: int) -> Any:
    from envoy.config.core.v3.base_pb2 import Node
    from google.protobuf.struct_pb2 import Struct

    ip, pod = f"127.5.{(i + 1) // 256}.{(i + 1) % 256}", f"sds-{i}"
    meta = Struct()
    meta.update({"NAMESPACE": NAMESPACE, "INSTANCE_IPS": ip, "NAME": pod, "LABELS": {"app": "sds-bench"},
                 "SERVICE_ACCOUNT": f"sds-{i}"})
    return Node(id=f"sidecar~{ip}~{pod}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local", cluster=pod, metadata=meta)


async def sds_child(args: argparse.Namespace) -> None:
    import grpc
    from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

    from ca import CertificateAuthority, TokenAuthority, WorkloadIdentity

    ca = CertificateAuthority.load_or_create(args.ca_state)
    tokens = TokenAuthority.load_or_create(args.ca_state, trust_domain=ca.trust_domain)
    creds = grpc.ssl_channel_credentials(root_certificates=ca.trust_bundle())
    n = args.clients
    minted = [tokens.issue_token(WorkloadIdentity(ca.trust_domain, NAMESPACE, f"sds-{i}")) for i in range(n)]
    channels = [grpc.aio.secure_channel(args.address, creds, options=[("grpc.use_local_subchannel_pool", 1),
                                                                       ("bench.channel", c)])
                for c in range((n + args.per_channel - 1) // args.per_channel)]
    for ch in channels:
        await ch.channel_ready()
    got: list[float | None] = [None] * n
    failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    all_done = asyncio.Event()
    count = 0
    go_at = time.monotonic()

    retries = 0

    async def stream(i: int) -> None:
        nonlocal retries
        for attempt in range(5):
            try:
                await attempt_stream(i)
                return
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                # Envoy reconnects a broken stream too; count it so the report shows it.
                if got[i] is not None or attempt == 4:
                    if not failed.done():
                        failed.set_result(f"sds stream {i}, {time.monotonic() - go_at:.1f} s after go, {count} "
                                          f"had secrets: {e.code().name}: {e.details()}")
                    return
                retries += 1
                await asyncio.sleep(0.1 * (attempt + 1))

    async def attempt_stream(i: int) -> None:
        nonlocal count
        outbox: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()
        outbox.put_nowait(DiscoveryRequest(node=sds_node(i), type_url=SECRET, resource_names=["default", "ROOTCA"]))

        async def requests() -> Any:
            while (req := await outbox.get()) is not None:
                yield req

        call: Any = channels[i // args.per_channel].stream_stream(
            SDS_METHOD, request_serializer=DiscoveryRequest.SerializeToString,
            response_deserializer=DiscoveryResponse.FromString,
        )(requests(), metadata=(("authorization", f"Bearer {minted[i]}"),))
        async for resp in call:
            outbox.put_nowait(DiscoveryRequest(type_url=SECRET, resource_names=["default", "ROOTCA"],
                                               version_info=resp.version_info, response_nonce=resp.nonce))
            if got[i] is None and len(resp.resources) == 2:
                got[i] = time.monotonic()
                count += 1
                if count == n:
                    all_done.set()

    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit(event="ready")
    tasks: list[asyncio.Task[None]] = []
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "go":
                started, cpu0 = time.monotonic(), cpu_seconds()
                go_at = started
                tasks = [asyncio.create_task(stream(i)) for i in range(n)]
                done = asyncio.ensure_future(all_done.wait())
                await asyncio.wait([done, failed], timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED)
                if failed.done():
                    emit(event="error", message=failed.result())
                elif not all_done.is_set():
                    emit(event="error", message=f"only {count}/{n} streams had secrets after {args.timeout} s")
                else:
                    emit(event="done", started=started, got=got, cpu=cpu_seconds() - cpu0, retries=retries)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close(grace=None)


class SdsProcess(ClientProcess):
    async def start_sds(self, address: str, ca_state: Path, clients: int, per_channel: int) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "bench_sds.py"), "--sds-child", "--address", address,
            "--ca-state", str(ca_state), "--sds-clients", str(clients), "--per-channel", str(per_channel),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self.stderr,
            limit=64 * 1024 * 1024,
        )


# ------------------------------------------------------------------ the control plane side


async def change(bench: Bench, watchers: ClientProcess, rep: int, k: int, vhds: bool = True) -> list[float]:
    """One VirtualService change; the latency until each of the ``k`` watchers received it
    (``vhds``: the server sends them virtual hosts over VHDS, its default)."""
    type_url, check = vs_change_mark(vhds)
    await watchers.send(cmd="mark", rep=rep, type=type_url, check=check)
    await watchers.event("marked", 10)
    resources = bench.change_vs()
    started = time.monotonic()
    bench.apply(resources)
    done = await watchers.event("done", 60)
    recv = [t - started for t in done["recv"]]
    assert len(recv) == k, len(recv)
    return recv


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    r: dict[str, Any] = {"args": vars(args) | {"ca_state": None}, "machine": report.machine()}
    bench = Bench(argparse.Namespace(services=args.services, clients=args.watchers, changes=0,
                                     per_channel=args.per_channel, ramp=args.ramp))
    bench.load()
    bench.cold()
    state = Path(tempfile.mkdtemp(prefix="bench-sds-")) / "ca"
    mesh_ca = MeshCA(state, workload_ttl=timedelta(hours=24))
    xds = XdsServer(bench.cache, mesh_ca.secrets)
    plain, tls = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    servers = [await start_grpc(xds, plain),
               await start_grpc(xds, tls, mesh_ca.server_credentials("127.0.0.1"))]
    ca_task = asyncio.create_task(mesh_ca.run())
    err_w, err_s = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    watchers, sds = ClientProcess(err_w), SdsProcess(err_s)
    try:
        await watchers.start(plain, args.watchers, args.per_channel, args.ramp)
        await watchers.event("synced", 240)
        note(f"{args.watchers} watchers synced")
        baseline: list[float] = []
        for rep in range(args.baseline):
            baseline += await change(bench, watchers, rep, args.watchers)
            await asyncio.sleep(0.2)
        note(f"baseline change: p99 {report.percentile(baseline, 99) * 1000:.0f} ms")
        await sds.start_sds(tls, state, args.sds_clients, args.per_channel)
        await sds.event("ready", 120)
        cpu0 = cpu_seconds()
        await sds.send(cmd="go")
        during: list[float] = []
        reps = 0
        finished = asyncio.ensure_future(sds.event("done", 300))
        while not finished.done():
            t0 = time.monotonic()
            during += await change(bench, watchers, 1000 + reps, args.watchers)
            reps += 1
            # Paced like real config churn: back to back, changes would take the CPU signing needs.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(finished), max(0.0, args.change_every - (time.monotonic() - t0)))
        done = finished.result()
        server_cpu = cpu_seconds() - cpu0
        got = [t - done["started"] for t in done["got"]]
        r["sds"] = {"proxies": args.sds_clients, "all_s": max(got), "secrets_s": report.summary(got),
                    "server_cpu_s": server_cpu, "retried_streams": done["retries"], "identities": len(mesh_ca.secrets.describe())}
        r["push"] = {"baseline_s": report.summary(baseline), "during_s": report.summary(during),
                     "changes_during": reps, "change_every_s": args.change_every}
        note(f"{args.sds_clients} proxies had their secrets after {max(got):.2f} s; {reps} changes meanwhile")
    finally:
        await sds.stop()
        await watchers.stop()
        err_w.close()
        err_s.close()
        ca_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ca_task
        for s in servers:
            await s.stop(grace=None)
        mesh_ca.close()
        shutil.rmtree(state.parent, ignore_errors=True)  # it holds a root key
    return r


def table(r: dict[str, Any]) -> str:
    ms = 1000.0
    s, p = r["sds"], r["push"]
    base, dur = p["baseline_s"], p["during_s"]
    n, w = s["proxies"], r["args"]["watchers"]
    rows = [
        ("| measurement | value |", "|---|---|"),
        (f"| certificates issued over SDS (distinct identities) | {s['identities']} |",),
        (f"| time until all {n} proxies hold `default` + `ROOTCA` | {s['all_s']:.2f} s |",),
        (f"| per proxy, from connect: p50 / p99 | {s['secrets_s']['p50']:.2f} s / {s['secrets_s']['p99']:.2f} s |",),
        (f"| SDS streams that failed before their secrets and reconnected | {s['retried_streams']} |",),
        (f"| control plane CPU during the burst | {s['server_cpu_s']:.2f} s |",),
        (f"| VS change to {w} other proxies during the burst ({p['changes_during']} changes, one per "
         f"{p['change_every_s']:g} s, {dur['n']} "
         f"deliveries): p50 / p99 / max | {dur['p50'] * ms:.0f} / {dur['p99'] * ms:.0f} / {dur['max'] * ms:.0f} ms |",),
        (f"| same change with no burst ({base.get('n', 0)} deliveries): p50 / p99 / max | "
         f"{base['p50'] * ms:.0f} / {base['p99'] * ms:.0f} / {base['max'] * ms:.0f} ms |",),
    ]
    m = r["machine"]
    head = f"SDS burst: {n} proxies, {w} watchers, {r['args']['services']} services; {m.get('cpu', '')}"
    return "\n".join([head, "", *(line for row in rows for line in row)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=200, help="services in the mesh (default 200)")
    p.add_argument("--sds-clients", type=int, default=2000, help="proxies asking for secrets at once (default 2000)")
    p.add_argument("--watchers", type=int, default=200, help="other proxies receiving config changes (default 200)")
    p.add_argument("--baseline", type=int, default=3, help="changes measured before the burst (default 3)")
    p.add_argument("--change-every", type=float, default=0.5, metavar="SECONDS",
                   help="one VirtualService change this often during the burst (default 0.5)")
    p.add_argument("--per-channel", type=int, default=100, help="streams per gRPC channel (default 100)")
    p.add_argument("--ramp", type=int, default=200, help="watchers connecting at once while syncing")
    p.add_argument("--json", action="store_true")
    # The SDS client process.
    p.add_argument("--sds-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    p.add_argument("--ca-state", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=240.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sds_child:
        args.clients = args.sds_clients
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(sds_child(args))
        return 0
    configure_logging("json", "warning")
    try:
        result = asyncio.run(measure(args))
    except KeyboardInterrupt:
        return 130
    print(table(result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
