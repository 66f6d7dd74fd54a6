"""The config watcher under a real `meshpilot serve`: symlink loops, watcher failures, rescans.

Traffic goes through a real Envoy sidecar to real upstreams (reviews v1 and v2); the
routing file sends everything to one version, so which version answers shows which
config Envoy has. The server's own pages (/healthz, /debug/errors, /metrics) show what
it reports.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import (
    ConfigDir,
    EnvoyProcess,
    LoopbackAllocator,
    MeshpilotServer,
    UpstreamServer,
    eventually,
    request,
)
from source_manifests import svc, vs

from translators.model import ResourceKey
from xds_server.local.bootstrap import build_bootstrap
from xds_server.sources import files
from xds_server.sources.files import DirectorySource, LoadResult

PORT = 9080
TARGET = 8080


def reviews(v1_ip: str, v2_ip: str) -> list[dict[str, Any]]:
    def pod(version: str, ip: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"reviews-{version}", "labels": {"app": "reviews", "version": version}},
            "status": {"phase": "Running", "podIP": ip},
        }

    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "reviews"},
            "spec": {
                "selector": {"app": "reviews"},
                "ports": [{"name": "http", "port": PORT, "targetPort": TARGET}],
            },
        },
        pod("v1", v1_ip),
        pod("v2", v2_ip),
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "reviews"},
            "spec": {
                "host": "reviews",
                "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")],
            },
        },
    ]


def routing(version: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: {version}}}
"""


@dataclass
class Mesh:
    config: ConfigDir
    server: MeshpilotServer
    client_ip: str

    def versions(self, n: int = 10) -> set[str]:
        out = set()
        for _ in range(n):
            status, body = request(self.client_ip, PORT, "/", "reviews")
            out.add(
                str(body.get("version")) if status == 200 and isinstance(body, dict) else f"HTTP {status}"
            )
        return out

    def routed_to(self, version: str, timeout: float = 20) -> None:
        eventually(
            lambda: self.versions() == {version}, timeout=timeout, message=f"all traffic goes to {version}"
        )

    def errors(self) -> list[dict[str, str]]:
        status, errors = self.server.get("/debug/errors")
        assert status == 200
        return [e for e in errors if not e["message"].startswith("host ")]  # not the translator's notes

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample on /metrics (0 when it is not there yet)."""
        _, text = self.server.get("/metrics")
        pattern = (
            rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
            if labels
            else rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$"
        )
        return sum(float(v) for v in re.findall(pattern, text, re.M))


@pytest.fixture
def start_mesh(
    config_dir: ConfigDir,
    start_meshpilot: Callable[..., MeshpilotServer],
    start_envoy: Callable[..., EnvoyProcess],
    start_upstream: Callable[..., UpstreamServer],
    loopback: LoopbackAllocator,
) -> Callable[..., Mesh]:
    """``start_mesh(*serve_args, sub="")``: the reviews service and its routing file in
    ``<config>/<sub>``, `meshpilot serve`, and a client sidecar whose traffic reaches v1."""

    def start(*serve_args: str, sub: str = "", prepare: Callable[[ConfigDir], None] | None = None) -> Mesh:
        v1 = start_upstream(loopback.allocate(), TARGET, service="reviews", version="v1", pod="reviews-v1")
        v2 = start_upstream(loopback.allocate(), TARGET, service="reviews", version="v2", pod="reviews-v2")
        prefix = f"{sub}/" if sub else ""
        config_dir.write(f"{prefix}reviews.yaml", reviews(v1.ip, v2.ip))
        config_dir.write(f"{prefix}routing.yaml", routing("v1"))
        if prepare:
            prepare(config_dir)
        server = start_meshpilot(config_dir, extra_args=serve_args)
        client_ip = loopback.allocate()
        start_envoy(
            build_bootstrap(
                xds_address=server.xds_address, proxy_ip=client_ip, pod="client", labels={"app": "client"}
            ),
            wait="live",
            name="client",
        )
        mesh = Mesh(config_dir, server, client_ip)
        mesh.routed_to("v1")
        return mesh

    return start


def replace(path: Path, text: str) -> None:
    """Write a file the way editors and config tools do: a new file renamed over the old."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- symlink loops


def test_scan_reads_each_real_file_once_and_names_the_loops(tmp_path: Path) -> None:
    root, outside = tmp_path / "cfg", tmp_path / "elsewhere"
    (root / "team").mkdir(parents=True)
    outside.mkdir()
    (root / "team" / "r.yaml").write_text(vs("reviews"))
    (outside / "s.yaml").write_text(svc("ratings"))
    (root / "..2024_01").mkdir()  # a Kubernetes ConfigMap volume: files linked from a hidden directory
    (root / "..2024_01" / "cm.yaml").write_text(svc("details"))
    os.symlink("..2024_01", root / "..data")
    os.symlink("..data/cm.yaml", root / "cm.yaml")
    os.symlink("team", root / "mirror")  # a second path to team/r.yaml
    os.symlink("team/r.yaml", root / "alias.yaml")  # and a third
    os.symlink("..", root / "team" / "loop")
    os.symlink(tmp_path, root / "up")  # leads back to the config directory from outside
    os.symlink(outside, root / "shared")  # the only path to s.yaml

    result = DirectorySource(root).load()
    assert result.changed_files == {"team/r.yaml", "shared/s.yaml", "cm.yaml"}
    assert set(result.resources) == {
        ResourceKey("VirtualService", "default", "reviews"),
        ResourceKey("Service", "default", "ratings"),
        ResourceKey("Service", "default", "details"),
    }
    assert [(e.file, e.message, e.severity) for e in result.errors] == [
        ("team/loop", "symbolic link loop: leads back to the config directory; not followed", "warning"),
        ("up", f"symbolic link loop: leads back to {os.path.realpath(tmp_path)}; not followed", "warning"),
    ]


async def test_any_watcher_failure_is_reported_scanned_through_and_recovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_awatch = files.awatch
    broken = 2  # the first two watchers fail, each in its own way

    def awatch(*args: Any, **kwargs: Any) -> AsyncIterator[set[tuple[Any, str]]]:
        nonlocal broken
        if broken == 0:
            return real_awatch(*args, **kwargs)
        broken -= 1
        error = ValueError("boom") if broken else ExceptionGroup("watch", [RuntimeError("limit")])

        async def failing() -> AsyncIterator[set[tuple[Any, str]]]:
            raise error
            yield set()  # an async generator

        return failing()

    monkeypatch.setattr(files, "awatch", awatch)
    monkeypatch.setattr(files, "BACKOFF_FIRST", 0.3)
    f = tmp_path / "mesh.yaml"
    f.write_text(vs("reviews"))
    failures: list[tuple[str, float]] = []
    recovered = asyncio.Event()
    states = DirectorySource(tmp_path).changes(
        check_ms=100,
        rescan_every=0,
        on_failure=lambda why, retry: failures.append((why, retry)),
        on_recovery=recovered.set,
    )

    def weights(state: LoadResult) -> list[int | None]:
        (vs_,) = state.resources.values()
        return [d.weight for d in vs_.spec.http[0].route]  # type: ignore[attr-defined]

    queue: asyncio.Queue[LoadResult] = asyncio.Queue()

    async def pump() -> None:  # a consumer, like serve's: always pulling
        async with aclosing(states):
            async for state in states:
                queue.put_nowait(state)

    task = asyncio.create_task(pump())
    try:
        assert weights(await asyncio.wait_for(queue.get(), 5)) == [50, 50]
        replace(f, vs("reviews", weights=(10, 90)))  # while the watcher is down: the scan sees it
        assert weights(await asyncio.wait_for(queue.get(), 5)) == [10, 90]
        await asyncio.wait_for(recovered.wait(), 10)
        assert failures == [("ValueError: boom", 0.3), ("RuntimeError: limit", 0.6)]
        replace(f, vs("reviews", weights=(20, 80)))  # the watcher's own work again
        assert weights(await asyncio.wait_for(queue.get(), 5)) == [20, 80]
        assert queue.empty() and not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_symlink_loop_is_reported_files_are_read_once_and_edits_apply_after_it_is_removed(
    start_mesh: Callable[..., Mesh],
) -> None:
    def links(config: ConfigDir) -> None:
        os.symlink("..", config.path / "team" / "loop")  # team/loop -> the config directory
        os.symlink("team", config.path / "mirror")  # a second path to the same files

    mesh = start_mesh(sub="team", prepare=links)
    # The loop is named; every file was read once: no resource is "already defined".
    assert mesh.errors() == [
        {
            "file": "team/loop",
            "resource": "",
            "field": "",
            "message": "symbolic link loop: leads back to the config directory; not followed",
            "severity": "warning",
        }
    ]
    _, world = mesh.server.get("/debug/world")
    assert sorted(world["resources"]) == [
        "DestinationRule default/reviews",
        "Pod default/reviews-v1",
        "Pod default/reviews-v2",
        "Service default/reviews",
        "VirtualService default/reviews",
    ]

    # Edits apply while the links are there, by either path.
    mesh.config.write("team/routing.yaml", routing("v2"))
    mesh.routed_to("v2")
    mesh.config.write("mirror/routing.yaml", routing("v1"))
    mesh.routed_to("v1")
    assert mesh.errors()[0]["file"] == "team/loop" and len(mesh.errors()) == 1

    # Without the links: no warning, and the watcher keeps applying edits.
    (mesh.config.path / "team" / "loop").unlink()
    (mesh.config.path / "mirror").unlink()
    eventually(lambda: mesh.errors() == [], timeout=20, message="the loop warning goes away")
    for version in ("v2", "v1", "v2"):
        mesh.config.write("team/routing.yaml", routing(version))
        mesh.routed_to(version)
    assert mesh.server.get("/healthz") == (200, "ok\n")


# ---------------------------------------------------------------- watcher failure


def test_a_failed_watcher_is_reported_keeps_config_following_and_recovers(
    start_mesh: Callable[..., Mesh],
) -> None:
    # The polling watcher cannot walk a tree with a symlink loop in it: a real failure.
    mesh = start_mesh("--poll", sub="team")
    assert mesh.server.get("/healthz") == (200, "ok\n")
    assert mesh.metric("meshpilot_source_watching") == 1.0
    os.symlink("..", mesh.config.path / "team" / "loop")

    def degraded() -> str:
        status, text = mesh.server.get("/healthz")
        assert status == 503, (status, text)
        return str(text)

    health = eventually(degraded, timeout=20, message="/healthz reports the failed watcher")
    assert health.startswith("degraded: watching the config directory failed: ")
    assert "loop" in health and "retrying in" in health
    (failure,) = [e for e in mesh.errors() if e["severity"] == "error"]
    assert failure["file"] == str(mesh.config.path)
    assert failure["message"].startswith("watching the config directory failed: ")
    assert mesh.metric("meshpilot_source_watch_failures_total") >= 1
    assert mesh.metric("meshpilot_source_watching") == 0.0
    assert mesh.server.alive

    # Meanwhile config still follows the files.
    mesh.config.write("team/routing.yaml", routing("v2"))
    mesh.routed_to("v2")

    # Loop gone: the watcher comes back (after its backoff) and all is well again.
    (mesh.config.path / "team" / "loop").unlink()
    eventually(
        lambda: mesh.server.get("/healthz") == (200, "ok\n"), timeout=60, message="the watcher recovers"
    )
    assert mesh.errors() == []
    assert mesh.metric("meshpilot_source_watching") == 1.0
    mesh.config.write("team/routing.yaml", routing("v1"))
    mesh.routed_to("v1")


# ---------------------------------------------------------------- periodic rescan


def test_rescan_applies_a_change_the_watcher_cannot_see(
    tmp_path: Path, start_mesh: Callable[..., Mesh]
) -> None:
    # routing.yaml is a symlink to a file outside the directory: the OS watcher watches the
    # directory, not where the link points, so an edit there is never reported.
    outside = tmp_path / "shared" / "routing.yaml"
    outside.parent.mkdir()
    outside.write_text(routing("v1"))

    def link(config: ConfigDir) -> None:
        config.remove("routing.yaml")
        os.symlink(outside, config.path / "routing.yaml")

    mesh = start_mesh("--rescan-interval", "1", prepare=link)
    assert mesh.metric("meshpilot_source_rescans_total", '{result="changed"}') == 0
    replace(outside, routing("v2"))
    mesh.routed_to("v2")
    # Found by a rescan, not by the watcher: a watcher event would have left the rescan nothing to find.
    assert mesh.metric("meshpilot_source_rescans_total", '{result="changed"}') == 1


def test_unchanged_rescans_push_nothing(start_mesh: Callable[..., Mesh]) -> None:
    mesh = start_mesh("--rescan-interval", "0.3")

    def synced() -> float:
        pushes = mesh.metric("meshpilot_xds_pushes_total")
        assert pushes > 0
        (stream,) = mesh.server.get("/debug/syncz")[1]
        assert all(t.get("acked_nonce") == t["sent_nonce"] for t in stream["types"].values()), stream
        return pushes

    pushes = eventually(synced, timeout=10)
    _, world = mesh.server.get("/debug/world")
    rescans = mesh.metric("meshpilot_source_rescans_total", '{result="unchanged"}')
    eventually(
        lambda: mesh.metric("meshpilot_source_rescans_total", '{result="unchanged"}') >= rescans + 5,
        timeout=20,
        message="five more rescans ran",
    )
    assert mesh.metric("meshpilot_xds_pushes_total") == pushes
    assert mesh.server.get("/debug/world")[1]["version"] == world["version"]  # nothing was even applied
    assert mesh.metric("meshpilot_source_rescans_total", '{result="changed"}') == 0
    assert mesh.versions() == {"v1"}
