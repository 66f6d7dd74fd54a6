"""Where one file edit's time goes inside meshpilot, stage by stage (no Envoy, no gRPC).

    ./dev bench edits [--services 1000 5000] [--changes 7] [--profile KIND]

The mesh of ``bench peers`` (N files, a Service and its Pod each, plus svc-0's VirtualService),
loaded by the directory source and applied once; one proxy watches. Then each kind of edit
of ``bench peers`` is made to svc-0's files, alternating, and each stage is timed as ``serve``
runs it: the source re-reads the file and merges (reload), World.evolve diffs what the
source says may have changed (evolve), the translator rebuilds what the change touches
(translate), the cache re-views the watching proxy and serializes what changed (cache).
Medians in ms. ``--profile KIND`` prints cProfile's top lines for that kind at the last N.
``--with-warning`` adds a ServiceEntry that defines svc-1's host again (a registry warning
elsewhere in the mesh, as real meshes often carry).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_peers as peers

from translators.model.world import Proxy
from xds_server.app.pipeline import Pipeline
from xds_server.heap import settle_heap, tune_collector
from xds_server.sources.files import DirectorySource, LoadResult

KINDS = ("endpoint", "route", "port")
STAGES = ("reload", "evolve", "translate", "cache")


#: svc-1's host defined a second time: the registry warns and ignores this one.
TWIN = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc-1-twin, namespace: default}
spec:
  hosts: [svc-1.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 10.9.9.9}]
"""


class Mesh:
    def __init__(self, n: int, root: Path, with_warning: bool = False) -> None:
        self.dir = root / f"mesh-{n}"
        self.dir.mkdir()
        for i in range(n):
            (self.dir / f"svc-{i}.yaml").write_text(peers.service_file(i, peers.pod_ip(i)))
        (self.dir / "svc-0-vs.yaml").write_text(peers.virtual_service(1))
        if with_warning:
            (self.dir / "svc-1-twin.yaml").write_text(TWIN)
        self.source = DirectorySource(self.dir)
        started = time.perf_counter()
        self.last: LoadResult = self.source.load()
        self.pipeline = Pipeline()
        self.pipeline.apply(self.last.resources, self.last.errors)
        self.cold_s = time.perf_counter() - started
        assert not [e for e in self.pipeline.errors if e.severity == "error"], self.pipeline.errors[:3]
        assert with_warning == any("already defined" in e.message for e in self.pipeline.errors)
        self.proxy = Proxy(id="sidecar~127.0.0.2~app.default~default.svc.cluster.local", ip="127.0.0.2")
        self.pipeline.cache.watch(self.proxy, lambda _view: None)
        self.pipeline.cache.view(self.proxy)
        self.edits = 0
        self.port = 80

    def edit(self, kind: str) -> list[float]:
        """One edit of ``kind`` to svc-0, through every stage; seconds per stage."""
        self.edits += 1
        if kind == "route":
            path = self.dir / "svc-0-vs.yaml"
            path.write_text(peers.virtual_service(self.edits))
        else:
            if kind == "port":
                self.port = 81 if self.port == 80 else 80
            ip = peers.UPSTREAM_B if kind == "endpoint" and self.edits % 2 else peers.pod_ip(0)
            path = self.dir / "svc-0.yaml"
            path.write_text(peers.service_file(0, ip, self.port))
        p = self.pipeline
        t0 = time.perf_counter()
        result = self.source.reload([path])
        t1 = time.perf_counter()
        world = p.world.evolve(result.resources, result.changes_since(self.last))
        t2 = time.perf_counter()
        p.translator.update(world)
        t3 = time.perf_counter()
        p.cache.update(world)  # (the translator has this world: the views and serialization)
        t4 = time.perf_counter()
        p.world, self.last = world, result
        settle_heap()
        return [t1 - t0, t2 - t1, t3 - t2, t4 - t3]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--changes", type=int, default=7, help="edits of each kind (default 7; two more warm up)")
    p.add_argument("--profile", choices=KINDS, help="cProfile this kind of edit at the last size")
    p.add_argument("--with-warning", action="store_true", help="a host defined twice elsewhere in the mesh")
    args = p.parse_args(argv)
    tune_collector()  # as serve does
    print("| N | edit | " + " | ".join(STAGES) + " | total |")
    print("|---|---|" + "---|" * (len(STAGES) + 1))
    with tempfile.TemporaryDirectory(prefix="meshpilot-edits-") as tmp:
        for n in args.services:
            mesh = Mesh(n, Path(tmp), args.with_warning)
            print(f"# N={n}: cold load and apply {mesh.cold_s:.2f} s", file=sys.stderr)
            for kind in KINDS:
                for _ in range(2):
                    mesh.edit(kind)
                runs = [mesh.edit(kind) for _ in range(args.changes)]
                medians = [statistics.median(stage) * 1000 for stage in zip(*runs, strict=True)]
                print(f"| {n} | {kind} | " + " | ".join(f"{m:.1f}" for m in medians) + f" | {sum(medians):.1f} |")
            if args.profile and n == args.services[-1]:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(args.changes):
                    mesh.edit(args.profile)
                prof.disable()
                pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
            del mesh
            gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
