"""meshpilot side by side with its peers: one real Envoy against each control plane in turn.

    ./dev bench peers [--services 1000 5000] [--changes 5] [--systems ... meshpilot-kube] [--json]

For each N, three control planes serve the same shapes to one Envoy (SotW ADS, and for
meshpilot also delta ADS with VHDS: ``meshpilot-delta``): N EDS
clusters ``svc-<i>`` and one virtual host each.

- ``python-minimal``: benchmarks/peers/py_ads.py, prebuilt serialized resources served
  by grpc.aio (the bound for Python).
- ``go-control-plane``: benchmarks/peers/gcp (v0.14, snapshot cache), built with the
  machine's Go from the module proxy into ~/.cache/meshpilot/peers on first use.
- ``meshpilot``: ``meshpilot serve --config-dir`` over N files (a Service and its Pod),
  plus a VirtualService for svc-0.

Measured per system: cold delivery (Envoy started -> ``active_clusters`` >= N, nothing
warming, and svc-<N-1>'s route answering through the listener), one change accepted
(trigger -> a request through Envoy shows the new config; median of ``--changes``),
and the control plane's peak RSS (VmHWM). The peers' changes (POST /change) move svc-0's
endpoint (EDS) or set its virtual host's ``x-peer-version`` header (RDS); meshpilot's are
file edits: svc-0's Pod IP (endpoint), its VirtualService's response header (route), and
its Service port 80 <-> 81 (cluster, listener and route; set against the peers' route
change). For meshpilot also parse + translate of the directory before serving, timed in
this process. The machine's load average is printed: other work on it skews every figure.

``meshpilot-kube`` and ``meshpilot-kube-delta`` (its Envoy on delta ADS, as injected sidecars
are by default; not run by default: they need root and the test cluster of tests/kube,
built once into ~/.cache/meshpilot/kube): ``meshpilot serve --kubeconfig`` against a real
etcd + kube-apiserver + kube-controller-manager in a network namespace of its own
(tests/harness/kube.py). The same N Services, each selector-less with an EndpointSlice of
one endpoint (svc-0's on an upstream, the others on 10.245.x.y where nothing is), and
svc-0's VirtualService are created through the API server (one ``kubectl create`` of a
List) before meshpilot starts; Envoy starts once meshpilot's world holds them all. Envoy,
meshpilot and svc-0's two upstreams (on 10.244.x.y addresses of that namespace's ``lo``:
the API server refuses loopback endpoints) run in the namespace, and so does this process's
thread while it measures. The changes are the same three, each one PATCH (JSON patch) through
the Python client on a warm connection: svc-0's EndpointSlice address, its VirtualService's
header, its Service port. Their clock runs from just before the PATCH to a request through
Envoy showing it: the API server's write, the watch event, meshpilot, Envoy.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
from xds_server.app.pipeline import Pipeline  # noqa: E402
from xds_server.local.bootstrap import build_bootstrap  # noqa: E402
from xds_server.local.envoy_binary import find_envoy  # noqa: E402
from xds_server.local.processes import ChildProcess, http_request  # noqa: E402
from xds_server.sources.files import DirectorySource  # noqa: E402

# After the project's own packages are imported: tests/ca must not shadow ca.
sys.path.insert(0, str(HERE.parent / "tests"))
from harness.envoy import EnvoyProcess  # noqa: E402
from harness.meshpilot import MeshpilotServer  # noqa: E402
from harness.upstream import UpstreamServer  # noqa: E402

GCP_DIR = HERE / "peers" / "gcp"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "meshpilot" / "peers"
SYSTEMS = ("python-minimal", "go-control-plane", "meshpilot", "meshpilot-delta", "meshpilot-kube",
           "meshpilot-kube-delta")
#: meshpilot-delta: the same meshpilot, its Envoy on delta ADS (routes over VHDS, the default
#: for delta Envoys); the peers and plain ``meshpilot`` speak SotW. meshpilot-kube: meshpilot
#: watching a real API server (SotW), and meshpilot-kube-delta the same with its Envoy on
#: delta ADS (as injected sidecars are by default), only when asked for (``--systems``).
KUBE_SYSTEMS = {"meshpilot-kube": "meshpilot, Kubernetes", "meshpilot-kube-delta": "meshpilot, Kubernetes, delta + VHDS"}
DELTA_SYSTEMS = ("meshpilot-delta", "meshpilot-kube-delta")
DEFAULT_SYSTEMS = SYSTEMS[:4]
# One /24 of loopback for this benchmark: the proxy, and two upstreams "a" and "b".
PROXY_IP, UPSTREAM_A, UPSTREAM_B = "127.0.77.1", "127.0.77.2", "127.0.77.3"
UPSTREAM_PORT = 8080
#: The peers alternate svc-0's endpoint between UPSTREAM_A:UPSTREAM_PORT ("a") and this port,
#: where an upstream answering "b" listens too.
UPSTREAM_PORT_B = 8081
TIMEOUT = 300.0


def note(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (held together while chosen, so no two are the same)."""
    held = [socket.socket() for _ in range(n)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def wait_for(what: str, check: Callable[[], bool], timeout: float = TIMEOUT, every: float = 0.002) -> float:
    """Poll ``check`` until true; the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return time.monotonic()
        except OSError:
            pass
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def peak_rss_mb(pid: int | None) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gcp_binary() -> Path:
    """The go-control-plane peer, rebuilt when its sources change (GOFLAGS=-mod=mod: go.sum pins it)."""
    digest = hashlib.sha256(b"".join((GCP_DIR / f).read_bytes() for f in ("go.mod", "go.sum", "main.go"))).hexdigest()
    binary = CACHE / f"gcp-ads-{digest[:12]}"
    if not binary.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        note("building the go-control-plane peer (first run)")
        env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
        subprocess.run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary) + ".tmp", "."],
                       cwd=GCP_DIR, env=env, check=True)
        os.replace(str(binary) + ".tmp", binary)
        for old in CACHE.glob("gcp-ads-*"):  # builds of earlier sources
            if old != binary:
                old.unlink()
    return binary


def through_envoy(host: str, port: int = 80) -> tuple[int, dict[str, Any], dict[str, str]]:
    status, body, headers = http_request(PROXY_IP, port, "/", headers={"Host": host}, timeout=2)
    try:
        parsed = json.loads(body) if status == 200 else {}
    except ValueError:
        parsed = {}
    return status, parsed, headers


def serves(host: str, upstream: str | None = None, header: str | None = None, port: int = 80) -> Callable[[], bool]:
    """True once a request for ``host`` reaches ``upstream`` (its version) with ``x-peer-version: header``."""
    def check() -> bool:
        status, body, headers = through_envoy(host, port)
        return (status == 200 and (upstream is None or body.get("version") == upstream)
                and (header is None or headers.get("x-peer-version") == header))
    return check


@dataclass
class Result:
    system: str
    services: int
    cold_s: float = 0.0
    changes_ms: dict[str, list[float]] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    parse_s: float | None = None
    translate_s: float | None = None

    def change_ms(self, kind: str) -> float | None:
        times = self.changes_ms.get(kind)
        return statistics.median(times) if times else None


class Peer:
    """A peer control plane (Python or Go): POST /change bumps svc-0."""

    def __init__(self, system: str, n: int, workdir: Path) -> None:
        self.xds, self.http = free_ports(2)
        flags = [f"--services={n}", f"--xds=127.0.0.1:{self.xds}", f"--http=127.0.0.1:{self.http}",
                 f"--listener-address={PROXY_IP}", "--listener-port=80", f"--upstream={UPSTREAM_A}",
                 f"--upstream-port={UPSTREAM_PORT}", f"--upstream-port2={UPSTREAM_PORT_B}"]
        if system == "go-control-plane":
            argv = [str(gcp_binary()), *flags, f"-node={node_id()}"]
        else:
            argv = [sys.executable, str(HERE / "peers" / "py_ads.py"), *flags]
        self.child = ChildProcess(system, argv, log_path=workdir / f"{system}.log")
        self.second = False

    def start(self) -> None:
        self.child.start()
        wait_for("peer xDS port", lambda: socket.create_connection(("127.0.0.1", self.xds), 0.5).close() is None)

    def change(self, kind: str) -> Callable[[], bool]:
        """``endpoint``: svc-0's endpoint moves (EDS); ``route``: its virtual host's header (RDS)."""
        status, body, _ = http_request("127.0.0.1", self.http, f"/change?what={kind}", method="POST", timeout=5)
        assert status == 200, (status, body)
        if kind == "endpoint":
            self.second = not self.second
            return serves("svc-0", "b" if self.second else "a")
        return serves("svc-0", header=body.decode().strip())


def node_id() -> str:
    return str(build_bootstrap(xds_address="127.0.0.1:1", proxy_ip=PROXY_IP, pod="bench")["node"]["id"])


def service_file(i: int, ip: str, port: int = 80) -> str:
    name = f"svc-{i}"
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: {port}, targetPort: {UPSTREAM_PORT}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {name}}}}}
spec:
  containers: [{{name: app, ports: [{{name: http, containerPort: {UPSTREAM_PORT}}}]}}]
status: {{phase: Running, podIP: {ip}}}
"""


def virtual_service(version: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-0, namespace: default}}
spec:
  hosts: [svc-0]
  http:
    - headers: {{response: {{set: {{x-peer-version: "{version}"}}}}}}
      route: [{{destination: {{host: svc-0}}}}]
"""


def pod_ip(i: int) -> str:
    """Addresses nothing listens on, except svc-0's, which is an upstream."""
    return UPSTREAM_A if i == 0 else f"127.1.{(i + 1) // 256}.{(i + 1) % 256}"


def write(path: Path, text: str) -> None:
    """Atomically, as an editor or a ConfigMap update would: the watcher never sees half a file."""
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


class Meshpilot:
    def __init__(self, n: int, workdir: Path) -> None:
        self.dir = workdir / "mesh"
        self.dir.mkdir()
        for i in range(n):
            (self.dir / f"svc-{i}.yaml").write_text(service_file(i, pod_ip(i)))
        (self.dir / "svc-0-vs.yaml").write_text(virtual_service(1))
        self.server = MeshpilotServer(self.dir, workdir=workdir, extra_args=("--log-level", "warning"))
        self.child = self.server._child
        self.xds = self.server.xds_port
        self.ip, self.port, self.vs = UPSTREAM_A, 80, 1

    def parse_translate(self) -> tuple[float, float]:
        """The cold path of ``serve`` before it opens its ports, timed here: load, then apply."""
        t0 = time.perf_counter()
        loaded = DirectorySource(self.dir).load()
        t1 = time.perf_counter()
        pipeline = Pipeline()
        pipeline.apply(loaded.resources, loaded.errors)
        t2 = time.perf_counter()
        assert not pipeline.errors, pipeline.errors[:3]
        del pipeline, loaded
        gc.unfreeze()
        gc.collect()
        return t1 - t0, t2 - t1

    def start(self) -> None:
        self.server.start(timeout=TIMEOUT)

    def change(self, kind: str) -> Callable[[], bool]:
        if kind == "endpoint":
            self.ip = UPSTREAM_B if self.ip == UPSTREAM_A else UPSTREAM_A
            write(self.dir / "svc-0.yaml", service_file(0, self.ip, self.port))
            return serves("svc-0", "b" if self.ip == UPSTREAM_B else "a", port=self.port)
        if kind == "route":
            self.vs += 1
            write(self.dir / "svc-0-vs.yaml", virtual_service(self.vs))
            return serves("svc-0", header=str(self.vs), port=self.port)
        assert kind == "port"
        self.port = 81 if self.port == 80 else 80
        write(self.dir / "svc-0.yaml", service_file(0, self.ip, self.port))
        return serves("svc-0", port=self.port)


KUBE_NAMESPACE = "default"  # the bench proxy's namespace, as in file mode
#: Where the other services' endpoints are: not loopback (refused), nowhere in the namespace.
KUBE_NOWHERE = "10.245"


class KubeMeshpilot:
    """``meshpilot serve --kubeconfig`` against the test cluster of tests/kube, with this thread
    (so Envoy, meshpilot, the upstreams and the requests) inside the cluster's namespace until
    ``stack`` closes."""

    def __init__(self, n: int, workdir: Path, stack: contextlib.ExitStack) -> None:
        from harness.kube import REPO_ROOT, KubeCluster, ensure_binaries, kube_meshpilot

        from xds_server.sources.kubernetes import _api_client

        self.n = n
        self.cluster = KubeCluster(workdir / "kube", binaries=ensure_binaries(note))
        stack.callback(self.cluster.stop)  # before start: a half-started cluster is cleaned up too
        self.cluster.start()
        note(f"meshpilot-kube N={n}: cluster ready in {self.cluster.started_in['ready']:.1f} s")
        crds = str(REPO_ROOT / "charts" / "meshpilot" / "crds")
        self.cluster.kubectl("apply", "-f", crds)
        self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", crds)
        stack.enter_context(self.cluster.entered())
        self.a, self.b = self.cluster.pod_ip(), self.cluster.pod_ip()
        for ip, version in ((self.a, "a"), (self.b, "b")):
            stack.callback(UpstreamServer(ip, UPSTREAM_PORT, service="svc-0", version=version).start().stop)
        started = time.monotonic()
        # create, not apply: no read of each object first and no last-applied annotation.
        self.cluster.kubectl("create", "-f", "-", input=json.dumps(self.manifests()), timeout=TIMEOUT)
        note(f"meshpilot-kube N={n}: kubectl create of the List took {time.monotonic() - started:.1f} s")
        self.server = kube_meshpilot(self.cluster.kubeconfig, workdir=workdir,
                                     extra_args=("--log-level", "warning"))
        self.child = self.server._child
        self.xds = self.server.xds_port
        self.api = _api_client(self.cluster.kubeconfig, None)
        self.ip, self.port, self.vs = self.a, 80, 1

    def manifests(self) -> dict[str, Any]:
        """The file mode's mesh as API objects: selector-less Services with one EndpointSlice each."""
        items: list[dict[str, Any]] = []
        for i in range(self.n):
            name = f"svc-{i}"
            ip = self.a if i == 0 else f"{KUBE_NOWHERE}.{i // 250}.{i % 250 + 1}"
            items.append({"apiVersion": "v1", "kind": "Service",
                          "metadata": {"name": name, "namespace": KUBE_NAMESPACE},
                          "spec": {"ports": [{"name": "http", "port": 80, "targetPort": UPSTREAM_PORT}]}})
            items.append({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-1", "namespace": KUBE_NAMESPACE,
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": UPSTREAM_PORT, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
            })
        vs = yaml.safe_load(virtual_service(1))
        return {"apiVersion": "v1", "kind": "List", "items": [*items, vs]}

    def start(self) -> None:
        began = time.monotonic()
        self.server.start(timeout=TIMEOUT)
        want = {f"Service {KUBE_NAMESPACE}/svc-{self.n - 1}", f"EndpointSlice {KUBE_NAMESPACE}/svc-{self.n - 1}-1",
                f"VirtualService {KUBE_NAMESPACE}/svc-0"}
        wait_for("meshpilot-kube: the world holds every object",
                 lambda: want <= set(self.server.get("/debug/world", timeout=30)[1]["resources"]), every=0.1)
        note(f"meshpilot-kube N={self.n}: meshpilot start -> all listed and translated: "
             f"{time.monotonic() - began:.2f} s")
        # Each PATCH once as a dry run (nothing changes): otherwise the first change of each kind
        # pays for the client's TLS handshake and first-use imports (it measured 60-100 ms more).
        for kind, path, value in (("endpoint", "/endpoints/0/addresses/0", self.ip),
                                  ("route", "/spec/http/0/headers/response/set/x-peer-version", str(self.vs)),
                                  ("port", "/spec/ports/0/port", self.port)):
            self._patch(kind, path, value, dry_run=True)

    def _patch(self, kind: str, path: str, value: object, dry_run: bool = False) -> None:
        from kubernetes import client

        body = [{"op": "replace", "path": path, "value": value}]
        kw: dict[str, Any] = {"_content_type": "application/json-patch+json", "_request_timeout": 10,
                              "dry_run": "All" if dry_run else None}
        if kind == "endpoint":
            client.DiscoveryV1Api(self.api).patch_namespaced_endpoint_slice("svc-0-1", KUBE_NAMESPACE, body, **kw)
        elif kind == "route":
            client.CustomObjectsApi(self.api).patch_namespaced_custom_object(
                "networking.istio.io", "v1", KUBE_NAMESPACE, "virtualservices", "svc-0", body, **kw)
        else:
            client.CoreV1Api(self.api).patch_namespaced_service("svc-0", KUBE_NAMESPACE, body, **kw)

    def change(self, kind: str) -> Callable[[], bool]:
        if kind == "endpoint":
            self.ip = self.b if self.ip == self.a else self.a
            self._patch(kind, "/endpoints/0/addresses/0", self.ip)
            return serves("svc-0", "b" if self.ip == self.b else "a", port=self.port)
        if kind == "route":
            self.vs += 1
            self._patch(kind, "/spec/http/0/headers/response/set/x-peer-version", str(self.vs))
            return serves("svc-0", header=str(self.vs), port=self.port)
        assert kind == "port"
        self.port = 81 if self.port == 80 else 80
        self._patch(kind, "/spec/ports/0/port", self.port)
        return serves("svc-0", port=self.port)


def run_one(system: str, n: int, changes: int, envoy_binary: str, root: Path) -> Result:
    with contextlib.ExitStack() as stack:
        return _run_one(system, n, changes, envoy_binary, root, stack)


def _run_one(system: str, n: int, changes: int, envoy_binary: str, root: Path, stack: contextlib.ExitStack
             ) -> Result:
    workdir = root / f"{system}-{n}"
    workdir.mkdir()
    result = Result(system, n)
    cp: Peer | Meshpilot | KubeMeshpilot
    if system in KUBE_SYSTEMS:
        cp = KubeMeshpilot(n, workdir, stack)
    elif system.startswith("meshpilot"):
        cp = Meshpilot(n, workdir)
        result.parse_s, result.translate_s = cp.parse_translate()
        note(f"{system} N={n}: parse {result.parse_s:.2f} s, translate {result.translate_s:.2f} s")
    else:
        cp = Peer(system, n, workdir)
    cp.start()
    envoy = EnvoyProcess(build_bootstrap(xds_address=f"127.0.0.1:{cp.xds}", proxy_ip=PROXY_IP, pod="bench",
                                         delta=system in DELTA_SYSTEMS),
                         binary=envoy_binary, workdir=workdir, name="envoy", log_level="warning")
    try:
        def cold_ready() -> bool:
            if not envoy.alive:
                raise RuntimeError(f"{system}: Envoy exited\n{envoy.log_tail()}")
            if not cp.child.alive:
                raise RuntimeError(f"{system}: the control plane exited (log in {workdir})")
            stats = dict(line.split(": ", 1) for line in envoy.admin_get(
                "/stats?filter=^cluster_manager\\.(active|warming)_clusters$").splitlines())
            return (int(stats.get("cluster_manager.active_clusters", 0)) >= n
                    and int(stats.get("cluster_manager.warming_clusters", 1)) == 0
                    and through_envoy(f"svc-{n - 1}")[0] != 404)

        t0 = time.monotonic()
        envoy.start(wait="none")
        result.cold_s = wait_for(f"{system}: Envoy cold", cold_ready, every=0.01) - t0
        wait_for(f"{system}: svc-0 serves", serves("svc-0"))
        kinds = ("endpoint", "route", "port") if system.startswith("meshpilot") else ("endpoint", "route")
        for kind in kinds:
            for _ in range(changes):
                time.sleep(0.3)  # apart: each change is a lone edit, not a burst
                t0 = time.monotonic()
                check = cp.change(kind)
                result.changes_ms.setdefault(kind, []).append((wait_for(f"{system}: {kind}", check) - t0) * 1000)
        result.peak_rss_mb = peak_rss_mb(cp.child.pid)
    finally:
        envoy.stop()
        cp.child.stop(5)
    note(f"{system} N={n}: cold {result.cold_s:.2f} s, changes (ms) "
         + ", ".join(f"{k} {result.change_ms(k):.0f}" for k in result.changes_ms)
         + f", peak RSS {result.peak_rss_mb:.0f} MB")
    return result


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


#: What the peers' change is compared with: meshpilot's Service port edit changes clusters,
#: listeners and routes; the peers' route change is their nearest (and cheapest) kin.
PEER_CHANGE = {"endpoint": "endpoint", "route": "route", "port": "route"}

MEASURES: list[tuple[str, Callable[[Result], float | None], str]] = [
    ("cold delivery to Envoy", lambda r: r.cold_s, "{:.2f} s"),
    *((f"one change accepted: {what}",
       (lambda r, k=kind: r.change_ms(k if r.system.startswith("meshpilot") else PEER_CHANGE[k])), "{:.0f} ms")
      for kind, what in (("endpoint", "endpoint (Pod IP) edit"), ("route", "VirtualService edit"),
                         ("port", "Service port edit"))),
    ("control-plane peak RSS", lambda r: r.peak_rss_mb, "{:.0f} MB"),
    ("parse + translate before serving",
     lambda r: r.parse_s + (r.translate_s or 0) if r.parse_s is not None else None, "{:.2f} s"),
]


def table(results: list[Result]) -> str:
    """The peers' endpoint change faces meshpilot's Pod IP edit, their route change its
    VirtualService and Service port edits."""
    kube = [s for s in KUBE_SYSTEMS if any(r.system == s for r in results)]  # their columns only when they ran
    out = ["| N | measure | minimal Python ADS | go-control-plane | meshpilot | meshpilot / go-control-plane "
           "| meshpilot, delta + VHDS | that / go-control-plane |"
           + "".join(f" {KUBE_SYSTEMS[s]} | that / go-control-plane |" for s in kube),
           "|---|---|---|---|---|---|---|---|" + "---|---|" * len(kube)]
    for n in sorted({r.services for r in results}):
        by = {r.system: r for r in results if r.services == n}
        for measure, get, fmt in MEASURES:
            vals = [get(by[s]) if s in by else None for s in SYSTEMS]
            cells = [fmt.format(v) if v is not None else "-" for v in vals]
            out.append(f"| {n} | {measure} | {' | '.join(cells[:3])} | {ratio(vals[2], vals[1])} "
                       f"| {cells[3]} | {ratio(vals[3], vals[1])} |"
                       + "".join(f" {cells[SYSTEMS.index(s)]} | {ratio(vals[SYSTEMS.index(s)], vals[1])} |"
                                 for s in kube))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, nargs="+", default=[1000, 5000], help="mesh sizes (default 1000 5000)")
    p.add_argument("--changes", type=int, default=5, help="repetitions of each change (default 5)")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(DEFAULT_SYSTEMS),
                   help=f"control planes to run, in this order (default: {' '.join(DEFAULT_SYSTEMS)}; "
                   "meshpilot-kube and meshpilot-kube-delta need root and start a test cluster per N)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = p.parse_args(argv)
    envoy_binary = os.environ.get("MESHPILOT_ENVOY") or find_envoy()
    load = os.getloadavg()
    note(f"load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="meshpilot-peers-") as tmp:
        upstreams = [UpstreamServer(ip, port, service="svc-0", version=v).start()
                     for ip, port, v in ((UPSTREAM_A, UPSTREAM_PORT, "a"), (UPSTREAM_B, UPSTREAM_PORT, "b"),
                                         (UPSTREAM_A, UPSTREAM_PORT_B, "b"))]
        try:
            for n in args.services:
                for system in args.systems:
                    results.append(run_one(system, n, args.changes, envoy_binary, Path(tmp)))
        finally:
            for u in upstreams:
                u.stop()
    load = os.getloadavg()
    print(table(results))
    print(f"\nload average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
