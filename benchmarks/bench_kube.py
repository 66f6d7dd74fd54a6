"""The Kubernetes source benchmark: N Services and their EndpointSlices applied to a real API
server, to every delta ADS client having ACKed them.

    ./dev run python benchmarks/bench_kube.py [--services 1000] [--clients 100] [--inject-pods 1000] [--json]

1. The test cluster of tests/kube (etcd, kube-apiserver, kube-controller-manager, built once
   into ~/.cache/meshpilot/kube by scripts/kube-test-cluster.sh) in its network namespace.
2. ``meshpilot serve --kubeconfig`` as a process in that namespace, ready (/healthz).
3. K delta ADS clients (``bench_clients.py``, Envoy's subscription behaviour, every response
   ACKed) connect and sync the empty mesh.
4. One ``kubectl apply`` of a List of N selector-less Services, each with an EndpointSlice
   of two ready endpoints. The clock runs from just before kubectl starts until the last
   client has ACKed a CDS response with all N clusters and an EDS response with endpoints
   for each: what a user waits for, API server, watch, debounce, translation and push.

``--inject-pods N`` (0 skips it) adds the sidecar injection row, on a cluster of its own:
meshpilot serves /inject, registered by the chart's own MutatingWebhookConfiguration (its
Service's EndpointSlice pointing at meshpilot's address), and N Pods are created through the
real API server by 8 concurrent clients in a namespace labelled ``istio-injection=enabled``,
then N in an unlabelled one (the baseline: the same Pods, no webhook call). Per-create
latency is timed client side. The webhook's latency two ways, each as Prometheus's
``histogram_quantile`` (linear within a bucket) over the scrapes before and after: meshpilot's
own ``meshpilot_webhook_seconds{path="/inject"}`` (reading the AdmissionReview to the answer
sent) and the API server's ``apiserver_admission_webhook_admission_duration_seconds`` for
meshpilot's webhooks (what the API server waited, connection and TLS handshake included; its
buckets are coarse: 5, 25, 100, 500 ms...), with its mean from the histogram's sum and count.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

from ca import CertificateAuthority  # before tests/ is on the path: it has a `ca` package too

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from harness.kube import KubeCluster, ensure_binaries  # noqa: E402

from xds_server.local.processes import ChildProcess  # noqa: E402

NAMESPACE = "bench"
XDS_PORT, HTTP_PORT = 15010, 15014  # inside the cluster's namespace: nothing else there
TIMEOUT = 600.0


def note(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def manifests(n: int) -> dict[str, Any]:
    """A List of n Services (no selector: their slices are ours, not the controller's) and slices."""
    items: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    for i in range(n):
        name = f"svc-{i}"
        items.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NAMESPACE},
                      "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        items.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "namespace": NAMESPACE,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            # Not loopback (the API server refuses it); nothing needs to answer there.
            "endpoints": [{"addresses": [f"10.{100 + k}.{i // 250}.{i % 250 + 1}"], "conditions": {"ready": True}}
                          for k in range(2)],
        })
    return {"apiVersion": "v1", "kind": "List", "items": items}


def cluster_names(n: int) -> list[str]:
    return [f"outbound|80||svc-{i}.{NAMESPACE}.svc.cluster.local" for i in range(n)]


class Clients:
    """bench_clients.py in the cluster's namespace; JSON lines over its stdin/stdout."""

    def __init__(self, cluster: KubeCluster, address: str, clients: int, stderr: IO[bytes]) -> None:
        self.stderr = stderr
        self.proc = subprocess.Popen(
            [*cluster.netns.exec_prefix(), sys.executable, str(HERE / "bench_clients.py"),
             "--address", address, "--clients", str(clients)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def event(self, want: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # ends when the watchdog kills the process
            ev = json.loads(line)
            if ev["event"] == "error":
                raise RuntimeError(f"client process: {ev['message']}")
            if ev["event"] == want:
                return dict(ev)
        self.stderr.seek(0)
        raise RuntimeError(f"the client process exited waiting for {want!r}: {self.stderr.read()[-2000:]!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def _wait_healthy(cluster: KubeCluster, server: ChildProcess, timeout: float = 120.0) -> None:
    def get() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/healthz", timeout=2) as r:
            return int(r.status)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive:
            raise RuntimeError(f"meshpilot exited: {server.log_tail(40)}")
        try:
            if cluster.in_netns(get) == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"meshpilot not healthy after {timeout} s: {server.log_tail(40)}")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"services": args.services, "clients": args.clients}
    cluster = KubeCluster(workdir / "kube", binaries=ensure_binaries(note))
    try:
        cluster.start()
        note(f"cluster ready in {cluster.started_in['ready']:.1f} s")
        server = ChildProcess("meshpilot", [
            *cluster.netns.exec_prefix(), sys.executable, "-m", "xds_server.app.cli", "serve",
            "--kubeconfig", str(cluster.kubeconfig), "--xds-address", f"127.0.0.1:{XDS_PORT}",
            "--xds-tls-address", "127.0.0.1:0", "--http-address", f"127.0.0.1:{HTTP_PORT}",
            "--ca-state", str(workdir / "ca"), "--log-format", "json", "--log-level", "warning",
        ], log_path=workdir / "meshpilot.log", cwd=HERE.parent)
        cluster.in_netns(server.start)  # forked from a thread that lives as long as the cluster
        clients: Clients | None = None
        try:
            _wait_healthy(cluster, server)
            with open(workdir / "clients.log", "w+b") as stderr:
                clients = Clients(cluster, f"127.0.0.1:{XDS_PORT}", args.clients, stderr)
                watchdog = threading.Timer(TIMEOUT, clients.proc.kill)  # ends a wait for an event
                watchdog.start()
                clients.event("synced")
                clients.send(cmd="expect", clusters=cluster_names(args.services))
                clients.event("expecting")
                body = json.dumps(manifests(args.services))
                note(f"kubectl apply of {args.services} Services and EndpointSlices ({len(body) / 1e6:.1f} MB)")
                started = time.monotonic()
                cluster.kubectl("apply", "-f", "-", input=body, timeout=TIMEOUT)
                result["kubectl_apply_s"] = time.monotonic() - started
                done = clients.event("expected")
                result["apply_to_all_acked_s"] = done["t"] - started
                result["meshpilot_rss_mib"] = rss_kib(server.proc.pid) / 1024 if server.proc else None
        finally:
            if clients is not None:
                watchdog.cancel()
                clients.stop()
            server.stop(10)
    finally:
        cluster.stop()
    return result


# ---------------------------------------------------------------- sidecar injection

INJECT_NS, PLAIN_NS, CONTROL_NS = "inject-bench", "plain-bench", "istio-system"
WEBHOOK_PORT, CREATORS = 15017, 8
WEBHOOK_METRIC = "apiserver_admission_webhook_admission_duration_seconds"


def apiserver_histogram(cluster: KubeCluster) -> dict[str, float]:
    """The API server's admission-duration histogram for meshpilot's injection webhooks, summed
    over them (what the API server waited, TLS connection included)."""
    return parse_histogram(cluster._api_text("/metrics"), WEBHOOK_METRIC, "sidecar-injector.meshpilot.io")


def meshpilot_histogram(cluster: KubeCluster, path: str) -> dict[str, float]:
    """meshpilot's own ``meshpilot_webhook_seconds`` for ``path``, in the same shape."""
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/metrics", timeout=5) as r:
            return str(r.read().decode())

    return parse_histogram(cluster.in_netns(get), "meshpilot_webhook_seconds", f'path="{path}"')


def parse_histogram(text: str, metric: str, selector: str) -> dict[str, float]:
    """``{"<le>": cumulative count, ..., "sum": s, "count": n}`` over the series matching ``selector``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(metric) or selector not in line:
            continue
        series, value = line.rsplit(" ", 1)
        if series.startswith(metric + "_bucket"):
            le = series.split('le="', 1)[1].split('"', 1)[0]
            out[le] = out.get(le, 0.0) + float(value)
        elif series.startswith(metric + "_sum"):
            out["sum"] = out.get("sum", 0.0) + float(value)
        elif series.startswith(metric + "_count"):
            out["count"] = out.get("count", 0.0) + float(value)
    return out


def histogram_quantile(before: dict[str, float], after: dict[str, float], q: float) -> float | None:
    """Prometheus's ``histogram_quantile`` over what was observed between two scrapes: linear
    within the bucket holding quantile ``q``."""
    count = after.get("count", 0.0) - before.get("count", 0.0)
    if count <= 0:
        return None
    buckets = sorted((float(le), after[le] - before.get(le, 0.0)) for le in after if le not in ("sum", "count"))
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= q * count:
            if bound == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((q * count - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def create_pods(cluster: KubeCluster, namespace: str, n: int, prefix: str) -> tuple[list[float], float, list[str]]:
    """Create n Pods with CREATORS concurrent clients: (per-create seconds, wall seconds, pods not injected)."""
    from concurrent.futures import ThreadPoolExecutor

    from harness.kube import pod_manifest
    from kubernetes import client

    from xds_server.sources.kubernetes import _api_client

    api = client.CoreV1Api(_api_client(cluster.kubeconfig, None))

    def one(i: int) -> tuple[float, bool]:
        body = pod_manifest(f"{prefix}-{i}", namespace, {"app": "bench"})
        started = time.monotonic()
        made = api.create_namespaced_pod(namespace, body, _request_timeout=30)
        took = time.monotonic() - started
        return took, any(c.name == "istio-proxy" for c in made.spec.containers)

    began = time.monotonic()
    with cluster.entered(), ThreadPoolExecutor(CREATORS) as pool:  # its threads start in the namespace
        results = list(pool.map(one, range(n)))
    wall = time.monotonic() - began
    return [t for t, _ in results], wall, [f"{prefix}-{i}" for i, (_, injected) in enumerate(results) if injected]


def run_inject(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import base64

    import yaml
    from harness.kube import webhook_service

    n = args.inject_pods
    result: dict[str, Any] = {"pods": n, "concurrency": CREATORS}
    cluster = KubeCluster(workdir / "kube-inject", binaries=ensure_binaries(note))
    try:
        cluster.start()
        for ns in (CONTROL_NS, INJECT_NS, PLAIN_NS):
            cluster.create_namespace(ns)
        cluster.kubectl("label", "namespace", INJECT_NS, "istio-injection=enabled")
        ip = cluster.pod_ip()
        state = workdir / "ca-inject"
        server = ChildProcess("meshpilot-inject", [
            *cluster.netns.exec_prefix(), sys.executable, "-m", "xds_server.app.cli", "serve",
            "--kubeconfig", str(cluster.kubeconfig), "--xds-address", f"127.0.0.1:{XDS_PORT}",
            "--xds-tls-address", "127.0.0.1:0", "--http-address", f"127.0.0.1:{HTTP_PORT}",
            "--namespace", CONTROL_NS, "--webhook-address", f"{ip}:{WEBHOOK_PORT}",
            "--inject-xds-address", f"meshpilot.{CONTROL_NS}.svc:15012",
            "--ca-state", str(state), "--log-format", "json", "--log-level", "warning",
        ], log_path=workdir / "meshpilot-inject.log", cwd=HERE.parent)
        cluster.in_netns(server.start)
        try:
            _wait_healthy(cluster, server)
            webhook_service(cluster, CONTROL_NS, ip, WEBHOOK_PORT, service_port=WEBHOOK_PORT)
            bundle = CertificateAuthority.load_or_create(state).trust_bundle()
            rendered = cluster.helm("template", "meshpilot", str(HERE.parent / "charts" / "meshpilot"),
                                    "--namespace", CONTROL_NS,
                                    "--set", f"webhook.caBundle={base64.b64encode(bundle).decode()}").stdout
            (config,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "MutatingWebhookConfiguration"]
            cluster.apply(config)
            # The API server picks a new webhook configuration up within a second or so.
            deadline = time.monotonic() + 60
            while not create_pods(cluster, INJECT_NS, 1, f"probe{int(time.monotonic() * 1000)}")[2]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no pod injected after 60 s: {server.log_tail(40)}")
                time.sleep(0.5)
            note(f"creating {n} Pods in {PLAIN_NS} (no webhook), then {n} in {INJECT_NS}")
            plain, plain_wall, _ = create_pods(cluster, PLAIN_NS, n, "pod")
            before, ours_before = apiserver_histogram(cluster), meshpilot_histogram(cluster, "/inject")
            injected, injected_wall, names = create_pods(cluster, INJECT_NS, n, "pod")
            after, ours_after = apiserver_histogram(cluster), meshpilot_histogram(cluster, "/inject")

            def ms(v: float | None) -> float | None:
                return None if v is None else v * 1000

            result.update({
                "injected": len(names),
                "plain_p50_ms": percentile(plain, 0.5) * 1000, "plain_p99_ms": percentile(plain, 0.99) * 1000,
                "plain_wall_s": plain_wall,
                "inject_p50_ms": percentile(injected, 0.5) * 1000,
                "inject_p99_ms": percentile(injected, 0.99) * 1000, "inject_wall_s": injected_wall,
                "webhook_calls": after.get("count", 0.0) - before.get("count", 0.0),
                "apiserver_webhook_mean_ms": 1000 * (after.get("sum", 0.0) - before.get("sum", 0.0))
                / max(1.0, after.get("count", 0.0) - before.get("count", 0.0)),
                "apiserver_webhook_p99_ms": ms(histogram_quantile(before, after, 0.99)),
                "apiserver_webhook_p50_ms": ms(histogram_quantile(before, after, 0.5)),
                "meshpilot_inject_requests": ours_after.get("count", 0.0) - ours_before.get("count", 0.0),
                "meshpilot_inject_p50_ms": ms(histogram_quantile(ours_before, ours_after, 0.5)),
                "meshpilot_inject_p99_ms": ms(histogram_quantile(ours_before, ours_after, 0.99)),
                "meshpilot_rss_mib": rss_kib(server.proc.pid) / 1024 if server.proc else None,
            })
        finally:
            server.stop(10)
    finally:
        cluster.stop()
    return result


def table(r: dict[str, Any]) -> str:
    rows = []
    if "services" in r:
        rows += [
            "| Kubernetes source | services | clients | kubectl apply | apply → all ACKed | of which after kubectl "
            "returned | meshpilot RSS |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| 1 List of Services + EndpointSlices | {r['services']} | {r['clients']} | {r['kubectl_apply_s']:.1f} s "
            f"| **{r['apply_to_all_acked_s']:.1f} s** | {r['apply_to_all_acked_s'] - r['kubectl_apply_s']:.2f} s "
            f"| {r['meshpilot_rss_mib']:.0f} MiB |",
        ]
    if "inject" in r:
        i = r["inject"]
        if rows:
            rows.append("")
        def ms(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.1f}"

        rows += [
            "| Sidecar injection | pods (injected) | webhook p50 / p99, meshpilot | webhook p50 / p99 / mean, API "
            "server | Pod create p50 / p99, injected | same, no webhook | wall, injected / not | meshpilot RSS |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| {i['concurrency']} concurrent creators | {i['pods']} ({i['injected']}) "
            f"| {ms(i['meshpilot_inject_p50_ms'])} / **{ms(i['meshpilot_inject_p99_ms'])} ms** "
            f"| {ms(i['apiserver_webhook_p50_ms'])} / **{ms(i['apiserver_webhook_p99_ms'])}** / "
            f"{i['apiserver_webhook_mean_ms']:.1f} ms | {i['inject_p50_ms']:.1f} / {i['inject_p99_ms']:.1f} ms "
            f"| {i['plain_p50_ms']:.1f} / {i['plain_p99_ms']:.1f} ms | {i['inject_wall_s']:.1f} s / "
            f"{i['plain_wall_s']:.1f} s | {i['meshpilot_rss_mib']:.0f} MiB |",
        ]
    return "\n".join(rows)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The rows asked for (``--services 0`` or ``--inject-pods 0`` skips one), each on a fresh cluster."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="meshpilot-bench-kube-") as tmp:
        if args.services:
            result.update(run(args, Path(tmp)))
        if args.inject_pods:
            result["inject"] = run_inject(args, Path(tmp))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=1000, help="Services, each with one EndpointSlice (default 1000)")
    p.add_argument("--clients", type=int, default=100, help="delta ADS clients (default 100)")
    p.add_argument("--inject-pods", type=int, default=1000,
                   help="Pods created through the injection webhook, and as many without it (default 1000; 0 skips)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = p.parse_args(argv)
    result = measure(args)
    print(table(result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
