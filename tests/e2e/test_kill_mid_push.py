"""SIGKILL of ``meshpilot serve`` in the middle of a push, while traffic flows through a SotW and
a delta Envoy: no request fails (Envoy keeps its last config, a half-received push included,
whatever the control plane does), and once the control plane is back both Envoys hold the
full new config within 2 s."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from harness import eventually, request

from tests.e2e.test_traffic import PORT, Mesh, mesh, routing  # noqa: F401  (mesh: the fixture)

#: Services added by the change the kill interrupts: a push of a few hundred clusters per proxy.
EXTRA = 300
RESYNC_SECONDS = 2.0


def extra_services(n: int, ip: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for i in range(n):
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"extra{i:03d}", "namespace": "default"},
                     "spec": {"selector": {"app": f"extra{i:03d}"}, "ports": [{"name": "http", "port": PORT}]}})
        docs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"extra{i:03d}-1", "namespace": "default", "labels": {"app": f"extra{i:03d}"}},
                     "status": {"phase": "Running", "podIP": ip}})
    return docs


class Load:
    """Requests through each sidecar without pause, on a thread; every answer counted."""

    def __init__(self, ips: list[str]) -> None:
        self.ips = ips
        self.results: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for ip in self.ips:
                try:
                    status, body = request(ip, PORT, "/", "reviews", timeout=5)
                    ok = status == 200 and isinstance(body, dict) and body.get("version") in ("v1", "v2")
                    outcome = str(body["version"]) if ok else f"HTTP {status} {str(body)[:80]}"
                except OSError as e:
                    ok, outcome = False, f"{type(e).__name__}: {e}"
                self.results[outcome if ok else "failed"] += 1
                if not ok:
                    self.failures.append(f"{time.monotonic():.2f} {ip}: {outcome}")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_sigkill_mid_push_fails_no_request_and_both_protocols_resync_within_two_seconds(mesh: Mesh) -> None:  # noqa: F811
    delta_ip = mesh.loopback.allocate()
    delta = mesh.sidecar(delta_ip, delta=True, name="delta-client")
    eventually(lambda: mesh.version("/v2/x", via=delta_ip) == "v2", timeout=15)
    envoys = {mesh.client_ip: mesh.client, delta_ip: delta}
    log = mesh.server.log_path

    with Load(list(envoys)) as load:
        time.sleep(0.5)
        applied_before = log.read_text().count('"config applied"')
        # The change: EXTRA services and the whole split moved to v2.
        mesh.config.write("extra.yaml", extra_services(EXTRA, mesh.v1.ip))
        mesh.config.write("reviews-routing.yaml", routing(0, 100))
        # Kill once the change is applied and its push has begun, before every proxy has it all.
        eventually(lambda: log.read_text().count('"config applied"') > applied_before, timeout=10, interval=0.005,
                   message="the change is applied")
        mesh.server.kill()
        killed_at = time.monotonic()
        got_all = [ip for ip, e in envoys.items() if f"outbound|{PORT}||extra{EXTRA - 1:03d}.default.svc.cluster.local"
                   in e.clusters() and mesh.split(5, via=ip) == collections.Counter({"v2": 5})]
        for envoy in envoys.values():
            eventually(lambda e=envoy: e.stat("control_plane.connected_state") == 0, timeout=10)
        time.sleep(1.0)  # traffic keeps flowing with the control plane down

        mesh.server.start()  # returns once /healthz answers: the config is loaded
        restarted = time.monotonic()

        def resynced(ip: str) -> bool:
            clusters = envoys[ip].clusters()
            return (all(f"outbound|{PORT}||extra{i:03d}.default.svc.cluster.local" in clusters for i in range(EXTRA))
                    and mesh.split(5, via=ip) == collections.Counter({"v2": 5}))

        for ip in envoys:
            eventually(lambda ip=ip: resynced(ip), timeout=10, interval=0.05, message=f"{ip} resyncs")
        took = time.monotonic() - restarted
        time.sleep(0.5)
    print(f"killed {restarted - killed_at:.2f}s before the restart; Envoys with the whole change at the kill: "
          f"{got_all}; resync {took:.2f}s after restart; requests {dict(load.results)}")
    assert load.failures == [], load.failures[:10]
    assert sum(load.results.values()) > 50  # the load really ran throughout
    assert took < RESYNC_SECONDS, f"full resync took {took:.2f}s"
