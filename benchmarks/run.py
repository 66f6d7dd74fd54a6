"""meshpilot benchmark: cold translation, config size, one-resource changes, push latency.

    python benchmarks/run.py [--services 1000] [--clients 1000] [--changes 5] [--scoped-proxies 1000]
                             [--kube-inject-pods 1000] [--json]
    python benchmarks/run.py peers [--services 1000 5000] [--changes 5] [--systems ...] [--json]   (bench_peers.py)
    python benchmarks/run.py edits [--services 1000 5000] [--changes 7] [--profile KIND]   (bench_edits.py)

1. N services written as a user would (Service, 2 Pods, VirtualService, DestinationRule),
   parsed by ``xds_server.sources.parse.parse_text`` into a World.
2. Cold: ``Translator().update(world)``, then one sidecar's view (``XdsCache.view``).
3. The serialized config of that sidecar, per xDS type.
4. One-resource changes through ``cache.update(world)`` in-process: VirtualService
   weights, DestinationRule load balancing, one Pod's IP.
5. Push latency over real gRPC: the control plane runs here (XdsCache + XdsServer +
   start_grpc on 127.0.0.1), K Envoy-like delta ADS clients run in a separate process
   (``bench_clients.py``); one VirtualService change is applied at a recorded
   ``time.monotonic()`` and every client reports when it received and ACKed it.
6. Sidecar scoping: K proxies whose Sidecars import 20 services each (one Sidecar per
   window of 20 services, proxies spread over the windows): config bytes per proxy, and
   push fan-out (how many of the K proxies a change reaches) for a VirtualService and a
   Pod IP change; in-process, through ``Pipeline.apply`` with K watches, after the rest.
7. With ``--kube-inject-pods N``: sidecar injection of N Pods through the real API server
   and meshpilot's webhook (``bench_kube.py``), webhook p50/p99.
8. A markdown table (and ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import bench_manifests as mesh
import bench_report as report
import structlog
from bench_clients import client_ip, vm_status

import xds_server.xds.server
from translators.api import CLUSTER, ENDPOINT, LISTENER, ROUTE, SHORT_NAMES, VIRTUAL_HOST
from translators.model import ResourceKey
from translators.model.world import Proxy, World
from xds_server.app.pipeline import Pipeline
from xds_server.app.serve import configure_logging
from xds_server.heap import collector_paused, release_free_memory, settle_heap, tune_collector
from xds_server.xds.cache import ProxyView
from xds_server.xds.server import XdsServer, start_grpc
from xds_server.xds.status import StreamStatus

HERE = Path(__file__).resolve().parent
SYNC_TIMEOUT = 240.0
PUSH_TIMEOUT = 60.0
#: Services each benchmark Sidecar imports.
SCOPE_SIZE = 20
#: A change kind whose reps take longer than this in total stops early (and says so).
INCREMENTAL_BUDGET = 20.0

log = structlog.get_logger("bench")


def note(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def probe_proxy(i: int = 10_000) -> Proxy:
    """A sidecar in ``default`` that no service selects: outbound config only, like the clients."""
    ip = client_ip(i)
    return Proxy(
        id=f"sidecar~{ip}~probe.default~default.svc.cluster.local",
        ip=ip,
        namespace=mesh.NAMESPACE,
        labels={"app": "bench-client", "instance": "probe"},
        service_account="bench-client",
        pod_name="probe",
    )


def scoped_proxy(i: int, window: int) -> Proxy:
    """A sidecar that the Sidecar ``scope-<window>`` selects."""
    ip = client_ip(20_000 + i)
    return Proxy(id=f"sidecar~{ip}~scoped-{i}.default~default.svc.cluster.local", ip=ip, namespace=mesh.NAMESPACE,
                 labels={"app": "bench-client", "scope": f"w{window}"}, service_account="bench-client",
                 pod_name=f"scoped-{i}")


def view_size(view: ProxyView) -> dict[str, Any]:
    types = {}
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        resources = list(view.of(type_url).resources())
        types[SHORT_NAMES[type_url]] = {
            "count": len(resources),
            "bytes": sum(len(r.data) for r in resources),
            "wire_bytes": sum(len(r.delta_entry) for r in resources),
        }
    return {
        "types": types,
        "count": sum(t["count"] for t in types.values()),
        "bytes": sum(t["bytes"] for t in types.values()),
        "wire_bytes": sum(t["wire_bytes"] for t in types.values()),
    }


# ------------------------------------------------------------------ 1-3: load, cold, size


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.r: dict[str, Any] = {
            "args": {"services": args.services, "clients": args.clients, "changes": args.changes,
                     "scoped_proxies": getattr(args, "scoped_proxies", 0),
                     "per_channel": args.per_channel, "ramp": args.ramp, "vhds": getattr(args, "vhds", "on")},
            "machine": report.machine(),
            "rss": {"baseline_kb": vm_status()["VmRSS"]},
            "incremental": {},
        }
        # The same path serve.py applies config through (translate, cache, heap settling).
        self.pipeline = Pipeline()
        tune_collector()  # as serve does
        self.translator = self.pipeline.translator
        self.cache = self.pipeline.cache
        self.world = World()
        self.resources: dict[ResourceKey, Any] = {}
        self.vs_weight = 80  # svc-0's current v1 weight
        self.dr_lb = "LEAST_REQUEST"  # svc-1's
        self.pod_prefix = 1  # svc-2-v1's address is 127.<prefix>.x.y

    def load(self) -> None:
        n = self.args.services
        t0 = time.perf_counter()
        with collector_paused():  # as DirectorySource.load parses
            self.resources = mesh.generate(n)
        self.r["mesh"] = {"resources": len(self.resources), "parse_s": time.perf_counter() - t0}
        note(f"{n} services parsed: {len(self.resources)} resources in {self.r['mesh']['parse_s']:.2f} s")

    def cold(self) -> ProxyView:
        self.world = self.world.evolve(self.resources)
        with collector_paused():  # as Pipeline.apply translates
            t0 = time.perf_counter()
            self.translator.update(self.world)
            t1 = time.perf_counter()
            self.cache.update(self.world)  # the translator has this world already: only bookkeeping
            view = self.cache.view(probe_proxy())
            t2 = time.perf_counter()
        self.pipeline.world = self.world
        settle_heap()
        self.r["cold"] = {"translate_s": t1 - t0, "view_s": t2 - t1, "total_s": t2 - t0}
        self.r["translation_errors"] = [str(e) for e in self.translator.errors][:20]
        self.r["rss"]["cold_kb"] = vm_status()["VmRSS"]
        note(f"cold: translate {t1 - t0:.2f} s, view {t2 - t1:.2f} s")
        return view

    def size(self, view: ProxyView) -> None:
        self.r["size"] = view_size(view)

    # -------------------------------------------------------------- 4: one-resource changes

    def change_vs(self) -> dict[ResourceKey, Any]:
        self.vs_weight = 50 if self.vs_weight == 80 else 80
        return mesh.replaced(self.resources, mesh.virtual_service_yaml(0, self.vs_weight), "mesh/svc-0.yaml")

    def change_dr(self) -> dict[ResourceKey, Any]:
        self.dr_lb = "ROUND_ROBIN" if self.dr_lb == "LEAST_REQUEST" else "LEAST_REQUEST"
        i = min(1, self.args.services - 1)
        return mesh.replaced(self.resources, mesh.destination_rule_yaml(i, self.dr_lb), f"mesh/svc-{i}.yaml")

    def change_pod(self) -> dict[ResourceKey, Any]:
        self.pod_prefix = 4 if self.pod_prefix == 1 else 1
        i = min(2, self.args.services - 1)
        return mesh.replaced(self.resources, mesh.pod_yaml(i, "v1", mesh.addr(self.pod_prefix, i)), f"mesh/svc-{i}.yaml")

    def apply(self, resources: dict[ResourceKey, Any]) -> tuple[float, int]:
        """Pipeline.apply, as serve.py does; returns (seconds, streams notified)."""
        applied = self.pipeline.apply(resources)
        self.world, self.resources = self.pipeline.world, resources
        return applied.seconds, applied.streams_notified

    def incremental(self) -> None:
        proxy = probe_proxy()
        views: list[ProxyView] = []
        unwatch = self.cache.watch(proxy, views.append)
        try:
            for kind, change in (("vs", self.change_vs), ("dr", self.change_dr), ("pod", self.change_pod)):
                update: list[float] = []
                changed: str | dict[str, Any] = {}
                spent = 0.0
                for _rep in range(self.args.changes):
                    before = self.cache.view(proxy)
                    u, notified = self.apply(change())
                    update.append(u)
                    spent += u
                    after = self.cache.view(proxy)
                    changed = _view_changes(before, after)
                    if notified != 1:
                        note(f"{kind}: expected the watched proxy to be notified, {notified} were")
                    if spent > INCREMENTAL_BUDGET:
                        note(f"{kind}: stopping after {len(update)} reps ({spent:.1f} s spent)")
                        break
                self.r["incremental"][kind] = {
                    "update_s": report.summary(update),
                    "changed": changed,
                }
                note(f"change {kind}: Pipeline.apply p50 {report.percentile(update, 50) * 1000:.1f} ms, changed {changed}")
        finally:
            unwatch()


    # -------------------------------------------------------------- 6: Sidecar scoping

    def scoped(self) -> None:
        """K proxies with Sidecars importing SCOPE_SIZE services each; their config size,
        and how many of them one change reaches."""
        n, k = self.args.services, self.args.scoped_proxies
        per = min(SCOPE_SIZE, n)
        windows = max(1, n // per)
        text = "---\n".join(mesh.sidecar_yaml(w, [(w * per + j) % n for j in range(per)]) for w in range(windows))
        resources = dict(self.resources)
        resources.update(mesh.parse(text, "mesh/sidecars.yaml"))
        proxies = [scoped_proxy(i, i % windows) for i in range(k)]
        unwatch = [self.cache.watch(p, lambda view: None) for p in proxies]
        try:
            seconds, notified = self.apply(resources)
            sizes = [view_size(self.cache.view(p))["bytes"] for p in proxies[:windows]]
            out: dict[str, Any] = {
                "proxies": k, "windows": windows, "imported": per, "apply_sidecars_s": seconds,
                "size": view_size(self.cache.view(proxies[0])),
                "bytes_max": max(sizes), "notified_by_sidecars": notified, "changes": {},
            }
            for kind, change in (("vs", self.change_vs), ("pod", self.change_pod)):
                seconds, notified = self.apply(change())
                out["changes"][kind] = {"notified": notified, "apply_s": seconds}
                note(f"scoped change {kind}: {notified} of {k} proxies notified, Pipeline.apply {seconds * 1000:.1f} ms")
            self.r["scoped"] = out
            note(f"scoped: {k} proxies in {windows} scopes of {per} services, {out['size']['bytes']:,} bytes per "
                 f"proxy (unscoped {self.r['size']['bytes']:,})")
        finally:
            for stop in unwatch:
                stop()


def _view_changes(before: ProxyView, after: ProxyView) -> str:
    out = []
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        diff = after.of(type_url).changes_since(before.of(type_url))
        n = len(diff) if diff is not None else "all"
        if n:
            out.append(f"{n} {SHORT_NAMES[type_url].upper()}")
    return ", ".join(out) or "nothing"


# ------------------------------------------------------------------ 5: push latency


class AckClock:
    """Server-side instrumentation: when each stream's proxy ACKed an RDS response and when
    the server encoded one. Installed as the StreamStatus the server creates (benchmark only)."""

    since = float("inf")
    acked: dict[int, float] = {}
    sent: dict[int, float] = {}

    @classmethod
    def reset(cls, since: float) -> None:
        cls.since, cls.acked, cls.sent = since, {}, {}


class TimedStreamStatus(StreamStatus):
    def sent(self, type_url: str, version: str, nonce: str, count: int, size: int) -> None:
        super().sent(type_url, version, nonce, count, size)
        now = time.monotonic()
        if type_url == ROUTE and now >= AckClock.since:
            AckClock.sent.setdefault(id(self), now)

    def acked(self, type_url: str, version: str, nonce: str) -> None:
        super().acked(type_url, version, nonce)
        now = time.monotonic()
        if type_url == ROUTE and now >= AckClock.since and id(self) in AckClock.sent:
            AckClock.acked.setdefault(id(self), now)


class Profiler:
    """``--profile DIR``: cProfile one phase into DIR/<phase>.pstats and print its top functions."""

    def __init__(self, directory: Path | None):
        self.directory = directory

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.directory is None:
            yield
            return
        prof = cProfile.Profile()
        prof.enable()
        try:
            yield
        finally:
            prof.disable()
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{name}.pstats"
            prof.dump_stats(path)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
            note(f"profile of {name} in {path}; top by own time:\n{out.getvalue()}")


class GcPauses:
    """Time the interpreter spent in the cyclic garbage collector (it stops the loop)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.collections = 0
        self._start = 0.0
        self.by_generation = [0.0, 0.0, 0.0]  # seconds paused in collections of each generation

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            paused = time.perf_counter() - self._start
            self.total += paused
            self.by_generation[info["generation"]] += paused
            self.collections += 1

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ClientProcess:
    """The K clients, in their own process; JSON lines over its stdin/stdout."""

    def __init__(self, stderr: IO[bytes]) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = stderr

    async def start(self, address: str, clients: int, per_channel: int, ramp: int) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "bench_clients.py"),
            "--address", address, "--clients", str(clients), "--per-channel", str(per_channel), "--ramp", str(ramp),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self.stderr,
            limit=64 * 1024 * 1024,
        )

    async def send(self, **cmd: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    async def event(self, want: str, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {want!r} from the client process within {timeout:.0f} s")
            line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not line:
                raise RuntimeError(f"the client process exited (waiting for {want!r}): {self.stderr_tail()}")
            ev = json.loads(line)
            if ev["event"] == "error":
                raise RuntimeError(f"client process: {ev['message']}")
            if ev["event"] == want:
                return ev

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-2000:]

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            await self.send(cmd="quit")
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()


def vs_change_mark(vhds: bool) -> tuple[str, str]:
    """The type and virtual host name svc-0's VirtualService change arrives as: with VHDS the
    one virtual host it changed, else the port's route table."""
    return (VIRTUAL_HOST, f"80/{mesh.host(0)}") if vhds else (ROUTE, f"{mesh.host(0)}:80")


async def push(bench: Bench, profiler: Profiler) -> None:
    args, r = bench.args, bench.r
    k = args.clients
    p: dict[str, Any] = {"reps": 0}
    r["push"] = p
    original_status = xds_server.xds.server.StreamStatus
    xds_server.xds.server.StreamStatus = TimedStreamStatus  # type: ignore[misc]
    xds = XdsServer(bench.cache, vhds=args.vhds == "on")
    address = f"127.0.0.1:{free_port()}"
    server = await start_grpc(xds, address)
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    clients = ClientProcess(stderr)
    try:
        t0, cpu0 = time.monotonic(), cpu_seconds()
        with profiler.phase("sync"), GcPauses() as gc_sync:
            await clients.start(address, k, args.per_channel, args.ramp)
            synced = await clients.event("synced", SYNC_TIMEOUT)
        p.update(sync_s=time.monotonic() - t0, sync_responses=synced["responses"], sync_bytes=synced["bytes"],
                 sync_server_cpu_s=cpu_seconds() - cpu0, sync_clients_cpu_s=synced["cpu"],
                 sync_gc_s=gc_sync.total)
        r["rss"]["clients_kb"], r["rss"]["clients_hwm_kb"] = synced["VmRSS"], synced["VmHWM"]
        note(f"{k} clients synced in {p['sync_s']:.1f} s; {len(xds.streams)} streams open")
        await asyncio.sleep(1.0)  # let the last ACKs in
        release_free_memory()  # what serve does every 30 s
        vm = vm_status()
        r["rss"]["connected_kb"], r["rss"]["connected_hwm_kb"] = vm["VmRSS"], vm["VmHWM"]
        p["streams"] = len(xds.streams)

        recv: list[float] = []
        ack: list[float] = []
        updates: list[float] = []
        all_acked: list[float] = []
        last_encoded: list[float] = []
        server_cpu: list[float] = []
        clients_cpu: list[float] = []
        gc_pauses: list[float] = []
        check_type, check_vhost = vs_change_mark(xds.vhds is not None)
        for rep in range(args.changes):
            await clients.send(cmd="mark", rep=rep, type=check_type, check=check_vhost)
            marked = await clients.event("marked", 10)
            resources = bench.change_vs()  # parsed before the clock starts
            with profiler.phase(f"push-{rep}"), GcPauses() as pauses:
                started, cpu0 = time.monotonic(), cpu_seconds()
                AckClock.reset(started)
                bench.apply(resources)
                updates.append(time.monotonic() - started)
                done = await clients.event("done", PUSH_TIMEOUT)
                # The server may still be reading the last ACKs.
                for _ in range(200):
                    if len(AckClock.acked) >= k:
                        break
                    await asyncio.sleep(0.01)
                server_cpu.append(cpu_seconds() - cpu0)
            clients_cpu.append(done["cpu"] - marked["cpu"])
            gc_pauses.append(pauses.total)
            recv += [t - started for t in done["recv"]]
            ack += [t - started for t in done["ack"]]
            if len(AckClock.acked) >= k:
                all_acked.append(max(AckClock.acked.values()) - started)
            if AckClock.sent:
                last_encoded.append(max(AckClock.sent.values()) - started)
            want = {"outbound|80|v1|" + mesh.host(0): bench.vs_weight,
                    "outbound|80|v2|" + mesh.host(0): 100 - bench.vs_weight}
            if done["weights"] != want:
                raise RuntimeError(f"client 0 got weights {done['weights']}, expected {want}")
            if done["extra"]:
                note(f"rep {rep}: {done['extra']} responses of other types arrived too")
            p["reps"] = rep + 1
            p.setdefault("ack_max_per_rep_s", []).append(max(ack[-k:]))
            p["push_bytes"] = done["bytes"]
            r["rss"]["clients_kb"], r["rss"]["clients_hwm_kb"] = done["VmRSS"], done["VmHWM"]
            note(f"push {rep + 1}/{args.changes}: update {updates[-1] * 1000:.0f} ms, ACKed p50 "
                 f"{report.percentile(ack[-k:], 50) * 1000:.0f} ms, max {max(ack[-k:]) * 1000:.0f} ms; "
                 f"server CPU {server_cpu[-1] * 1000:.0f} ms, GC {pauses.total * 1000:.0f} ms "
                 f"({pauses.collections} collections; by generation "
                 f"{'/'.join(f'{g * 1000:.0f}' for g in pauses.by_generation)} ms)")
            await asyncio.sleep(0.5)
        p.update(
            recv_s=report.summary(recv),
            ack_s=report.summary(ack),
            update_s=report.summary(updates),
            server_all_acked_s=report.summary(all_acked),
            server_last_encoded_s=report.summary(last_encoded),
            server_cpu_s=report.summary(server_cpu),
            clients_cpu_s=report.summary(clients_cpu),
            server_gc_s=report.summary(gc_pauses),
        )
        vm = vm_status()
        r["rss"]["connected_hwm_kb"] = vm["VmHWM"]
    except Exception as e:
        p["error"] = f"{type(e).__name__}: {e}"
        note(f"push measurement failed: {p['error']}")
    finally:
        await clients.stop()
        stderr.close()
        await server.stop(grace=None)
        xds_server.xds.server.StreamStatus = original_status  # type: ignore[misc]


# ------------------------------------------------------------------ main


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    profiler = Profiler(args.profile)
    bench = Bench(args)
    bench.load()
    with profiler.phase("cold"):
        view = bench.cold()
    bench.size(view)
    if args.changes > 0:
        with profiler.phase("incremental"):
            bench.incremental()
    if args.clients > 0:
        await push(bench, profiler)
    if args.scoped_proxies > 0:  # last: its Sidecars and proxies do not weigh on the rows above
        with profiler.phase("scoped"):
            bench.scoped()
    if args.kube_inject_pods > 0:  # a cluster and a meshpilot process of its own
        import bench_kube

        kube_args = argparse.Namespace(services=0, clients=0, inject_pods=args.kube_inject_pods)
        bench.r["kube_inject"] = (await asyncio.to_thread(bench_kube.measure, kube_args))["inject"]
    bench.r["elapsed_s"] = time.monotonic() - started
    return bench.r


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["peers"]:  # ./dev bench peers ...: the side-by-side run with real Envoy
        import bench_peers
        return bench_peers.main(argv[1:])
    if argv[:1] == ["edits"]:  # ./dev bench edits ...: one edit's stages inside meshpilot
        import bench_edits
        return bench_edits.main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=1000, help="services in the mesh (default 1000)")
    p.add_argument("--clients", type=int, default=1000, help="delta ADS clients for the push test; 0 skips it")
    p.add_argument("--changes", type=int, default=5, help="repetitions of each change measurement (default 5)")
    p.add_argument("--scoped-proxies", type=int, default=1000,
                   help="proxies with a Sidecar importing 20 services, for the scoping row; 0 skips it (default 1000)")
    p.add_argument("--per-channel", type=int, default=100, help="client streams per gRPC channel (default 100)")
    p.add_argument("--ramp", type=int, default=200, metavar="N",
                   help="at most N clients connecting (not yet synced) at once; 0: all at once (default 200)")
    p.add_argument("--kube-inject-pods", type=int, default=0, metavar="N",
                   help="also create N Pods through the real API server with meshpilot's injection webhook "
                   "(bench_kube.py --inject-pods; as root, starts the test cluster of tests/kube); default 0: skip")
    p.add_argument("--vhds", choices=("on", "off"), default="on",
                   help="serve the push test's delta clients virtual hosts over VHDS, as `serve --vhds` (default on)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON (after the table)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="cProfile each phase of the control plane into DIR/<phase>.pstats (slows it down)")
    args = p.parse_args(argv)
    if args.services < 3:
        p.error("--services must be at least 3")
    configure_logging("json", "warning")  # no line per stream
    try:
        result = asyncio.run(run(args))
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    print(report.table(result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 1 if result.get("push", {}).get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
