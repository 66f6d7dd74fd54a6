"""The Kubernetes source benchmark: N Services and their EndpointSlices applied to a real API
server, to every delta ADS client having ACKed them.

    ./dev run python benchmarks/bench_kube.py [--services 1000] [--clients 100] [--json]

1. The test cluster of tests/kube (etcd, kube-apiserver, kube-controller-manager, built once
   into ~/.cache/meshpilot/kube by scripts/kube-test-cluster.sh) in its network namespace.
2. ``meshpilot serve --kubeconfig`` as a process in that namespace, ready (/healthz).
3. K delta ADS clients (``bench_clients.py``, Envoy's subscription behaviour, every response
   ACKed) connect and sync the empty mesh.
4. One ``kubectl apply`` of a List of N selector-less Services, each with an EndpointSlice
   of two ready endpoints. The clock runs from just before kubectl starts until the last
   client has ACKed a CDS response with all N clusters and an EDS response with endpoints
   for each: what a user waits for, API server, watch, debounce, translation and push.
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


def table(r: dict[str, Any]) -> str:
    return "\n".join([
        "| Kubernetes source | services | clients | kubectl apply | apply → all ACKed | of which after kubectl "
        "returned | meshpilot RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| 1 List of Services + EndpointSlices | {r['services']} | {r['clients']} | {r['kubectl_apply_s']:.1f} s "
        f"| **{r['apply_to_all_acked_s']:.1f} s** | {r['apply_to_all_acked_s'] - r['kubectl_apply_s']:.2f} s "
        f"| {r['meshpilot_rss_mib']:.0f} MiB |",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=1000, help="Services, each with one EndpointSlice (default 1000)")
    p.add_argument("--clients", type=int, default=100, help="delta ADS clients (default 100)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meshpilot-bench-kube-") as tmp:
        result = run(args, Path(tmp))
    print(table(result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
