"""Reliability under load: a reconnect storm, stuck clients, a soak.

    python benchmarks/bench_reliability.py storm [--streams 2000] [--services 200] [--protocol delta|sotw]
    python benchmarks/bench_reliability.py slow  [--stuck 200] [--streams 200] [--changes 60]
    python benchmarks/bench_reliability.py soak  [--streams 2000] [--minutes 10] [--every 1] [--tracemalloc]

The control plane runs here as ``run.py`` wires it (Pipeline, XdsServer, start_grpc on
127.0.0.1); Envoy-like delta ADS streams run in ``bench_clients.py``'s process (as in
``run.py`` and ``bench_sds.py``), so client CPU and memory are not the server's.

* ``storm``: a restart. A control plane serving the fleet stops; a fresh one (fresh
  Pipeline, cold translation, same port) starts, and the fleet's N streams reconnect at once
  (no ramp; Envoy's reconnect jitter, at most 1 s with meshpilot's bootstrap, is left out,
  so this is harsher than real). Reported: time from the new server listening until every
  stream has ACKed CDS, EDS, LDS and RDS (``--protocol sotw``: SotW streams from this file's
  own client process, Envoy's request order); the server's RSS peak meanwhile (sampled every
  20 ms) against its RSS before the fleet connected.
* ``slow``: S stuck proxies (SotW streams in a child process that subscribe to CDS and never
  read) beside W healthy ones; a DestinationRule change (CDS, to every stream) every
  ``--every`` seconds; with enough services, the stuck streams' flow-control windows fill. Reported:
  server RSS before the stuck clients, once they are connected, and after every change
  (growth must flatten: each stuck stream holds one pending view, not a response per
  change), and the healthy streams' latency.
* ``soak``: N streams, a change every second for ``--minutes``; every change must reach
  every stream (the run fails otherwise). Server RSS sampled at each change; reported:
  growth after warm-up (the first fifth of the run), which should stay within 10%, and the
  RSS slope over the second half (a leak keeps a slope, a plateau does not), beside what
  malloc has handed out (glibc's mallinfo2) and Python's allocated blocks. ``--every 0.2``
  compresses time (five times the changes per minute); ``--tracemalloc`` prints where the
  heap grew after the warm-up (allocation sites, object counts per type). The run's own
  bookkeeping is bounded (latencies are counted per 0.1 ms, not kept one float per stream
  per change), since it lives in the process whose RSS is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import bench_report as report
import grpc
from bench_clients import emit, istio_node, route_names, vm_status
from bench_sds import change
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from run import Bench, ClientProcess, free_port, note

from translators.api import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.app.serve import configure_logging
from xds_server.xds.server import XdsServer, start_grpc

SYNC_TIMEOUT = 600.0
KIB_PER_MIB = 1024


def rss_kib() -> int:
    return vm_status()["VmRSS"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        return libc
    except (OSError, AttributeError):  # not glibc >= 2.33
        return None


LIBC = _libc()


def malloc_in_use_kib() -> int | None:
    """Bytes malloc has handed out and not got back (glibc's mallinfo2), KiB: what C code
    (gRPC, protobuf's arenas) holds. RSS minus this (and Python's own arenas) is free memory
    the allocator keeps: if RSS grows while this stays flat, the growth is not a leak."""
    if LIBC is None:
        return None
    info = LIBC.mallinfo2()
    return int(info.uordblks + info.hblkhd) // 1024


class Sampler:
    """The server's RSS every ``every`` seconds, in the background: the peak of a phase."""

    def __init__(self, every: float = 0.02) -> None:
        self.every = every
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kib())
            await asyncio.sleep(self.every)

    def __enter__(self) -> Sampler:
        self.peak = rss_kib()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss_kib())


def make_bench(args: argparse.Namespace) -> Bench:
    bench = Bench(argparse.Namespace(services=args.services, clients=args.streams, changes=0,
                                     per_channel=args.per_channel, ramp=0, scoped_proxies=0))
    bench.load()
    bench.cold()
    return bench


@contextlib.asynccontextmanager
async def serving(bench: Bench, address: str) -> AsyncIterator[XdsServer]:
    xds = XdsServer(bench.cache)
    server = await start_grpc(xds, address)
    try:
        yield xds
    finally:
        await server.stop(grace=None)


@contextlib.asynccontextmanager
async def fleet(address: str, streams: int, per_channel: int, ramp: int = 0,
                protocol: str = "delta") -> AsyncIterator[ClientProcess]:
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    clients = ClientProcess(stderr) if protocol == "delta" else SotwProcess(stderr)
    try:
        await clients.start(address, streams, per_channel, ramp)
        yield clients
    finally:
        await clients.stop()
        stderr.close()


# ---------------------------------------------------------------- SotW streams


def _eds_names(resp: DiscoveryResponse) -> list[str]:
    names = []
    for any_ in resp.resources:
        c = Cluster()
        any_.Unpack(c)
        if c.type == Cluster.EDS:
            names.append(c.eds_cluster_config.service_name or c.name)
    return sorted(names)


async def sotw_stream(i: int, channel: grpc.aio.Channel, synced: list[int]) -> None:
    """One Envoy-like SotW ADS stream: CDS, then EDS for its clusters, LDS, then RDS for its
    listeners' routes; every response ACKed. Counts itself in ``synced`` once all four were."""
    call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    await call.write(DiscoveryRequest(node=istio_node(i), type_url=CLUSTER))
    names: dict[str, list[str]] = {}
    acked: set[str] = set()
    while True:
        resp = await call.read()
        if resp is grpc.aio.EOF:
            return
        t = resp.type_url
        if t == CLUSTER:
            names[ENDPOINT] = _eds_names(resp)
        elif t == LISTENER:
            names[ROUTE] = sorted(route_names(SimpleNamespace(resources=[SimpleNamespace(resource=r)
                                                                         for r in resp.resources])))
        await call.write(DiscoveryRequest(type_url=t, version_info=resp.version_info, response_nonce=resp.nonce,
                                          resource_names=names.get(t, [])))
        first = t not in acked
        acked.add(t)
        if first and t == CLUSTER:
            await call.write(DiscoveryRequest(type_url=ENDPOINT, resource_names=names[ENDPOINT]))
            await call.write(DiscoveryRequest(type_url=LISTENER))
        elif first and t == LISTENER:
            await call.write(DiscoveryRequest(type_url=ROUTE, resource_names=names[ROUTE]))
        if first and len(acked) == 4:
            synced[0] += 1


async def sotw_child(args: argparse.Namespace) -> None:
    """N SotW streams opened at once; "synced" once every one has ACKed all four types."""
    channels = [grpc.aio.insecure_channel(args.address, options=[("grpc.use_local_subchannel_pool", 1),
                                                                   ("grpc.max_receive_message_length", 512 << 20),
                                                                   ("bench.channel", c)])
                for c in range((args.streams + args.per_channel - 1) // args.per_channel)]
    synced = [0]
    started = time.monotonic()
    tasks = [asyncio.create_task(sotw_stream(i, channels[i // args.per_channel], synced)) for i in range(args.streams)]
    while synced[0] < args.streams:
        failed = [t for t in tasks if t.done()]
        if failed:
            emit(event="error", message=f"a stream ended before syncing: {failed[0].exception()!r}")
            return
        await asyncio.sleep(0.01)
    emit(event="synced", seconds=time.monotonic() - started, **vm_status())
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close(grace=None)


class SotwProcess(ClientProcess):
    async def start(self, address: str, clients: int, per_channel: int, ramp: int) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "sotw-child", "--address", address, "--streams", str(clients),
            "--per-channel", str(per_channel),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self.stderr,
            limit=64 * 1024 * 1024,
        )

    async def stop(self) -> None:
        if self.proc is not None and self.proc.stdin is not None and self.proc.returncode is None:
            self.proc.stdin.close()  # the child reads stdin to its end, then closes its streams
        await super().stop()


# ---------------------------------------------------------------- storm


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    address = f"127.0.0.1:{free_port()}"
    first = make_bench(args)
    async with serving(first, address), fleet(address, args.streams, args.per_channel, ramp=200,
                                              protocol=args.protocol) as clients:
        await clients.event("synced", SYNC_TIMEOUT)
        note(f"{args.streams} streams synced to the first control plane")
    # The fleet and the first server are gone: what a restart leaves. A fresh control plane
    # translates the config cold, listens, and every stream connects at once.
    del first
    restarted = time.monotonic()
    bench = make_bench(args)
    before = rss_kib()
    async with serving(bench, address) as xds:
        listening = time.monotonic()
        with Sampler() as sampler:
            async with fleet(address, args.streams, args.per_channel, ramp=0, protocol=args.protocol) as clients:
                await clients.event("synced", SYNC_TIMEOUT)
                all_acked = time.monotonic() - listening
                streams = len(xds.streams)
    r = {"streams": args.streams, "protocol": args.protocol, "services": args.services, "cold_start_s": listening - restarted,
         "all_acked_s": all_acked, "rss_before_kb": before, "rss_peak_kb": sampler.peak, "open_streams": streams}
    note(f"storm: {streams} streams all ACKed {all_acked:.2f} s after the new server listened "
         f"(cold start {r['cold_start_s']:.2f} s); RSS {before // KIB_PER_MIB} -> peak "
         f"{sampler.peak // KIB_PER_MIB} MiB")
    return r


# ---------------------------------------------------------------- slow


async def stuck_child(args: argparse.Namespace) -> None:
    """S SotW streams that subscribe to CDS and then never read; until stdin closes."""
    channels = [grpc.aio.insecure_channel(args.address, options=[("grpc.use_local_subchannel_pool", 1),
                                                                   ("bench.channel", i)])
                for i in range(args.stuck)]  # one connection each, like real proxies
    calls = []
    for i, channel in enumerate(channels):
        call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(DiscoveryRequest(node=istio_node(100_000 + i), type_url=CLUSTER))
        calls.append(call)
    emit(event="stuck", streams=len(calls))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for call in calls:
        call.cancel()
    for channel in channels:
        await channel.close(grace=None)


async def cluster_change(bench: Bench, watchers: ClientProcess, rep: int, k: int) -> list[float]:
    """A DestinationRule change (every cluster of one service changes, so CDS goes to every
    stream, the stuck ones included); the latency until each of the ``k`` watchers got it."""
    await watchers.send(cmd="mark", rep=rep, type=CLUSTER)
    await watchers.event("marked", 10)
    resources = bench.change_dr()
    started = time.monotonic()
    bench.apply(resources)
    done = await watchers.event("done", 60)
    return [t - started for t in done["recv"]]


async def slow(args: argparse.Namespace) -> dict[str, Any]:
    bench = make_bench(args)
    address = f"127.0.0.1:{free_port()}"
    async with serving(bench, address) as xds, fleet(address, args.streams, args.per_channel, ramp=200) as watchers:
        await watchers.event("synced", SYNC_TIMEOUT)
        before = rss_kib()
        stuck = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "stuck-child", "--address", address, "--stuck", str(args.stuck),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            assert stuck.stdout is not None and stuck.stdin is not None
            line = await asyncio.wait_for(stuck.stdout.readline(), 120)
            assert json.loads(line)["event"] == "stuck", line
            while len(xds.streams) < args.streams + args.stuck:
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            connected = rss_kib()
            rss: list[int] = []
            latency: list[float] = []
            pending = queued = 0
            for rep in range(args.changes):
                t0 = time.monotonic()
                latency += await cluster_change(bench, watchers, rep, args.streams)
                rss.append(rss_kib())
                pending = max(pending, *(i.pending_views for i in xds.inboxes.values()))
                queued = max(queued, *(len(i.requests) for i in xds.inboxes.values()))
                await asyncio.sleep(max(0.0, args.every - (time.monotonic() - t0)))
        finally:
            if stuck.stdin is not None:
                stuck.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stuck.wait(), 10)
            if stuck.returncode is None:
                stuck.kill()
                await stuck.wait()
    half = rss[len(rss) // 2]
    r = {"stuck": args.stuck, "streams": args.streams, "changes": args.changes, "rss_before_stuck_kb": before,
         "rss_stuck_connected_kb": connected, "rss_halfway_kb": half, "rss_end_kb": rss[-1],
         "latency_s": report.summary(latency), "max_pending_views": pending, "max_queued_requests": queued}
    note(f"slow: {args.stuck} stuck + {args.streams} healthy streams, {args.changes} changes: RSS "
         f"{before // KIB_PER_MIB} MiB, {connected // KIB_PER_MIB} with the stuck connected, "
         f"{half // KIB_PER_MIB} halfway, {rss[-1] // KIB_PER_MIB} at the end; healthy p99 "
         f"{report.percentile(latency, 99) * 1000:.0f} ms")
    return r


# ---------------------------------------------------------------- soak


class HeapProbe:
    """``--tracemalloc``: where the heap grows between the end of the warm-up and the end of
    the run (allocation sites and object counts per type), printed to stderr. Costs time and
    memory of its own: use it to find a leak, not for the RSS numbers."""

    FRAMES = 8

    def __init__(self) -> None:
        tracemalloc.start(self.FRAMES)
        self.base: tracemalloc.Snapshot | None = None
        self.types: collections.Counter[str] = collections.Counter()

    @staticmethod
    def _types() -> collections.Counter[str]:
        gc.collect()
        return collections.Counter(type(o).__qualname__ for o in gc.get_objects())

    def mark(self) -> None:
        self.base, self.types = self._snapshot(), self._types()

    def _snapshot(self) -> tracemalloc.Snapshot:
        gc.collect()
        return tracemalloc.take_snapshot().filter_traces(  # not the probe's own (formatting reads sources)
            [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "*/linecache.py")])

    def report(self, label: str, top: int = 15) -> None:
        assert self.base is not None
        now, types = self._snapshot(), self._types()
        out = [f"--- heap growth since warm-up ({label}): traced {tracemalloc.get_traced_memory()[0] // 1024} KiB"]
        for stat in now.compare_to(self.base, "traceback")[:top]:
            out.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  (now {stat.size / 1024:.0f} KiB)")
            out += [f"      {line}" for line in stat.traceback.format(limit=self.FRAMES, most_recent_first=True)]
        grown = [(t, n - self.types.get(t, 0)) for t, n in types.items()]
        out.append("object counts, growth since warm-up: " + ", ".join(
            f"{t} {d:+d} ({types[t]})" for t, d in sorted(grown, key=lambda x: -x[1])[:top] if d))
        print("\n".join(out), file=sys.stderr, flush=True)


def slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time, MiB per minute: a plateau is ~0, a leak is not."""
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in samples) / n
    mk = sum(kb for _, kb in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    return 0.0 if var == 0 else sum((t - mt) * (kb - mk) for t, kb in samples) / var * 60 / KIB_PER_MIB


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    bench = make_bench(args)
    address = f"127.0.0.1:{free_port()}"
    samples: list[tuple[float, int]] = []
    heap: list[tuple[float, int, int]] = []  # (seconds, malloc in use KiB, Python blocks)
    latency = report.Latencies()  # bounded: this process's RSS is what is measured
    probe = HeapProbe() if args.tracemalloc else None
    async with serving(bench, address), fleet(address, args.streams, args.per_channel, ramp=200) as clients:
        await clients.event("synced", SYNC_TIMEOUT)
        note(f"soak: {args.streams} streams synced; a change every {args.every:g} s for {args.minutes:g} min")
        started = time.monotonic()
        end = started + args.minutes * 60
        warm_end = started + args.minutes * 60 / 5
        halfway: float | None = started + args.minutes * 60 / 2
        rep = 0
        while time.monotonic() < end:
            t0 = time.monotonic()
            latency.add(await change(bench, clients, rep, args.streams))  # every stream got it, or this raises
            rep += 1
            samples.append((t0 - started, rss_kib()))
            heap.append((t0 - started, malloc_in_use_kib() or 0, sys.getallocatedblocks()))
            if probe is not None and probe.base is None and t0 >= warm_end:
                probe.mark()
            elif probe is not None and halfway is not None and t0 >= halfway and probe.base is not None:
                probe.report(f"halfway, {rep} changes")
                halfway = None
            await asyncio.sleep(max(0.0, args.every - (time.monotonic() - t0)))
        if probe is not None:
            probe.report(f"end, {rep} changes")
    warm = max(1, len(samples) // 5)
    after_warmup = samples[warm - 1][1]
    peak_after = max(kb for _, kb in samples[warm - 1:])
    growth = peak_after / after_warmup - 1
    second_half = samples[len(samples) // 2:]
    heap_half = heap[len(heap) // 2:]
    r = {"streams": args.streams, "minutes": args.minutes, "every_s": args.every, "changes": rep, "converged": rep,
         "rss_after_warmup_kb": after_warmup, "rss_peak_after_warmup_kb": peak_after,
         "rss_end_kb": samples[-1][1], "growth_after_warmup": growth,
         "rss_slope_second_half_mib_per_min": slope_mib_per_min(second_half),
         "malloc_in_use_after_warmup_kb": heap[warm - 1][1], "malloc_in_use_end_kb": heap[-1][1],
         "malloc_slope_second_half_mib_per_min": slope_mib_per_min([(t, kb) for t, kb, _ in heap_half]),
         "python_blocks_after_warmup": heap[warm - 1][2], "python_blocks_end": heap[-1][2],
         "latency_s": latency.summary(), "samples": samples, "heap_samples": heap}
    note(f"soak: {rep} changes, each converged on all {args.streams} streams; RSS {after_warmup // KIB_PER_MIB} MiB "
         f"after warm-up, peak {peak_after // KIB_PER_MIB}, end {samples[-1][1] // KIB_PER_MIB}: growth "
         f"{growth * 100:+.1f}%, slope over the second half {r['rss_slope_second_half_mib_per_min']:+.2f} MiB/min; "
         f"malloc in use {heap[warm - 1][1] // KIB_PER_MIB} -> {heap[-1][1] // KIB_PER_MIB} MiB "
         f"({r['malloc_slope_second_half_mib_per_min']:+.2f} MiB/min), Python blocks {heap[warm - 1][2]} -> "
         f"{heap[-1][2]}; latency p99 {latency.percentile(99) * 1000:.0f} ms")
    return r


def table(mode: str, r: dict[str, Any]) -> str:
    mib = lambda kb: f"{kb / KIB_PER_MIB:.0f} MiB"  # noqa: E731
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    if mode == "storm":
        rows = [(f"reconnect storm: {r['streams']} {r['protocol']} streams at once, time until all ACKed",
                 f"{r['all_acked_s']:.2f} s (cold start before it {r['cold_start_s']:.2f} s)"),
                ("server RSS before / peak during the storm", f"{mib(r['rss_before_kb'])} / {mib(r['rss_peak_kb'])}")]
    elif mode == "slow":
        lat = r["latency_s"]
        rows = [(f"{r['stuck']} stuck clients beside {r['streams']} healthy, {r['changes']} changes: server RSS "
                 "before / stuck connected / halfway / end",
                 " / ".join(mib(r[k]) for k in ("rss_before_stuck_kb", "rss_stuck_connected_kb", "rss_halfway_kb",
                                                "rss_end_kb"))),
                ("healthy streams' latency p50 / p99 / max", f"{ms(lat['p50'])} / {ms(lat['p99'])} / {ms(lat['max'])}"),
                ("per stuck stream: pending views / queued requests (max)",
                 f"{r['max_pending_views']} / {r['max_queued_requests']}")]
    else:
        lat = r["latency_s"]
        rows = [(f"soak: {r['streams']} streams, {r['minutes']:g} min, a change every {r['every_s']:g} s: "
                 "changes converged", f"{r['converged']} of {r['changes']}"),
                ("server RSS after warm-up / peak after / end",
                 f"{mib(r['rss_after_warmup_kb'])} / {mib(r['rss_peak_after_warmup_kb'])} / {mib(r['rss_end_kb'])} "
                 f"({r['growth_after_warmup'] * 100:+.1f}%)"),
                ("server RSS slope over the second half; malloc in use after warm-up / end",
                 f"{r['rss_slope_second_half_mib_per_min']:+.2f} MiB/min; {mib(r['malloc_in_use_after_warmup_kb'])} / "
                 f"{mib(r['malloc_in_use_end_kb'])}"),
                ("latency p50 / p99 / max", f"{ms(lat['p50'])} / {ms(lat['p99'])} / {ms(lat['max'])}")]
    return "\n".join(["| measurement | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["storm", "slow", "soak", "stuck-child", "sotw-child"])
    p.add_argument("--protocol", choices=["delta", "sotw"], default="delta", help="storm: the streams' protocol")
    p.add_argument("--services", type=int, default=200, help="services in the mesh (default 200)")
    p.add_argument("--streams", type=int, default=None,
                   help="healthy delta streams (default 2000; slow: 200)")
    p.add_argument("--stuck", type=int, default=200, help="slow: stuck SotW streams (default 200)")
    p.add_argument("--changes", type=int, default=60, help="slow: changes made (default 60)")
    p.add_argument("--every", type=float, default=1.0, help="slow, soak: seconds between changes (default 1)")
    p.add_argument("--minutes", type=float, default=10.0, help="soak: duration (default 10)")
    p.add_argument("--per-channel", type=int, default=100, help="streams per gRPC channel (default 100)")
    p.add_argument("--address", help=argparse.SUPPRESS)
    p.add_argument("--tracemalloc", action="store_true",
                   help="soak: print where the heap grew after the warm-up (slow; RSS numbers then meaningless)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.mode in ("stuck-child", "sotw-child"):
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(stuck_child(args) if args.mode == "stuck-child" else sotw_child(args))
        return 0
    if args.streams is None:
        args.streams = 200 if args.mode == "slow" else 2000
    configure_logging("json", "warning")
    measure = {"storm": storm, "slow": slow, "soak": soak}[args.mode]
    try:
        result = asyncio.run(measure(args))
    except KeyboardInterrupt:
        return 130
    print(table(args.mode, result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
