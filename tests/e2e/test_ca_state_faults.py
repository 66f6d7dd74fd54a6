"""A CA state directory (``--ca-state``) that cannot be written: a full disk, a read-only mount.

``meshpilot serve`` does not crash on it: it serves config (traffic flows through a real Envoy)
with an in-memory CA, and says so at /healthz (degraded), /debug/errors (counted in
``meshpilot_config_errors{severity="error"}``) and in the log. A read-only directory that
already holds the CA's state (a Kubernetes Secret volume) is simply used. The mounts need root; they are undone at teardown.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import ConfigDir, EnvoyProcess, MeshpilotServer, UpstreamServer, eventually, request

from ca import CertificateAuthority, TokenAuthority
from xds_server.local.bootstrap import build_bootstrap

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

PORT, TARGET = 9080, 8080


@contextlib.contextmanager
def mounted(path: Path, *options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *options, str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def full_disk(path: Path) -> Iterator[Path]:
    with mounted(path, "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"):
        with contextlib.suppress(OSError), open(path / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        yield path


@contextlib.contextmanager
def read_only_empty(path: Path) -> Iterator[Path]:
    with mounted(path, "-t", "tmpfs", "-o", "ro,size=64k,mode=0700", "tmpfs"):
        yield path


@contextlib.contextmanager
def read_only_with_state(path: Path) -> Iterator[Path]:
    source = path.with_name("ca-source")
    CertificateAuthority.load_or_create(source)
    TokenAuthority.load_or_create(source)
    with mounted(path, "--bind", str(source)):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield path


def serve_traffic(config_dir: ConfigDir, start_meshpilot: Callable[..., MeshpilotServer],
                  start_envoy: Callable[..., EnvoyProcess], start_upstream: Callable[..., UpstreamServer],
                  proxy_ip: str, state: Path) -> MeshpilotServer:
    """meshpilot on ``state``, a service and a client Envoy: requests through Envoy reach the service."""
    up = start_upstream(port=TARGET, service="reviews", version="v1", pod="reviews-v1")
    config_dir.write("reviews.yaml", [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "default"},
         "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": PORT, "targetPort": TARGET}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "reviews-v1", "namespace": "default", "labels": {"app": "reviews", "version": "v1"}},
         "status": {"phase": "Running", "podIP": up.ip}},
    ])
    server = start_meshpilot(config_dir, wait=False, extra_args=("--ca-state", str(state)))
    eventually(lambda: server.get("/healthz")[0] in (200, 503) and "loaded yet" not in str(server.get("/healthz")[1]),
               timeout=30, message="meshpilot answers /healthz with the config loaded")
    start_envoy(build_bootstrap(xds_address=server.xds_address, proxy_ip=proxy_ip, namespace="default",
                                pod="client", labels={"app": "client"}), wait="live", name="client")
    eventually(lambda: request(proxy_ip, PORT, "/", "reviews")[1]["version"] == "v1", timeout=15,
               message="requests through Envoy reach reviews")
    assert server.alive
    return server


@pytest.mark.parametrize("fault", [full_disk, read_only_empty], ids=["full-disk", "read-only"])
def test_an_unwritable_ca_state_directory_is_reported_and_serving_goes_on(
        fault, tmp_path, config_dir, start_meshpilot, start_envoy, start_upstream, proxy_ip) -> None:  # type: ignore[no-untyped-def]
    with fault(tmp_path / "ca-state") as state:
        before = sorted(os.listdir(state))
        server = serve_traffic(config_dir, start_meshpilot, start_envoy, start_upstream, proxy_ip, state)
        status, health = server.get("/healthz")
        assert status == 503 and f"degraded: the CA state directory {state} cannot be used" in health, health
        assert "in-memory CA" in health
        errors = [e["message"] for e in server.get("/debug/errors")[1]]
        assert any("CA state directory" in m and "in-memory CA" in m for m in errors), errors
        assert 'meshpilot_config_errors{severity="error"} 1.0' in server.get("/metrics")[1]
        assert "ca state directory unusable" in server.log_tail(400)
        # The CA serves from memory: it has a root, and it signs (the TLS port's certificate).
        ca = server.get("/debug/ca")[1]
        assert ca["ca"]["roots"] and ca["xds_serving_certificate"] is not None
        assert sorted(set(os.listdir(state)) - {".lock"}) == before  # no temp file left behind
        server.stop()


def test_a_read_only_directory_holding_the_state_is_used(
        tmp_path, config_dir, start_meshpilot, start_envoy, start_upstream, proxy_ip) -> None:  # type: ignore[no-untyped-def]
    with read_only_with_state(tmp_path / "ca-state") as state:
        expected = CertificateAuthority.load_or_create(state).describe()["roots"]
        server = serve_traffic(config_dir, start_meshpilot, start_envoy, start_upstream, proxy_ip, state)
        assert server.get("/healthz") == (200, "ok\n")
        assert server.get("/debug/ca")[1]["ca"]["roots"] == expected  # the root from the files
        assert 'meshpilot_config_errors{severity="error"} 0.0' in server.get("/metrics")[1]
        server.stop()
