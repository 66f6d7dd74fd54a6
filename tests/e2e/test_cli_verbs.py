"""The istioctl-style verbs, run as the `meshpilot` command against a real `meshpilot serve` and a
real Envoy sidecar (version, proxy-status, proxy-config), or offline on files (analyze, compared
with what the running server reports for the same directory)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import (
    ConfigDir,
    EnvoyProcess,
    LoopbackAllocator,
    MeshpilotServer,
    UpstreamServer,
    eventually,
    request,
)

from xds_server.app import cli
from xds_server.local.bootstrap import build_bootstrap, xds_tls_for

from .test_traffic import HOST, PORT, TARGET, reviews_service, routing

REPO = Path(__file__).resolve().parents[2]


class Done:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def meshpilot(*args: str, check: int | None = 0, process: bool = False) -> Done:
    """The `meshpilot` command: in this process (its entry point, ``cli.main``) unless ``process``,
    which runs it as a child (a few calls do, to prove the executable works; children are slow here)."""
    if process:
        child = subprocess.run([sys.executable, "-m", "xds_server.app.cli", *args], cwd=REPO, capture_output=True,
                               text=True, timeout=60)
        done = Done(child.returncode, child.stdout, child.stderr)
    else:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as e:  # --help, --version, usage errors
                code = int(e.code or 0)
        done = Done(code, out.getvalue(), err.getvalue())
    if check is not None:
        assert done.returncode == check, (done.returncode, done.stdout, done.stderr)
    return done


class Mesh:
    def __init__(self, server: MeshpilotServer, client: EnvoyProcess, client_ip: str, v1: UpstreamServer,
                 config: ConfigDir):
        self.server, self.client, self.client_ip, self.v1, self.config = server, client, client_ip, v1, config
        self.proxy_id = f"sidecar~{client_ip}~client.default~default.svc.cluster.local"

    def cli(self, *args: str, check: int | None = 0, process: bool = False) -> Done:
        return meshpilot(*args, "--http-address", self.server.http_address, check=check, process=process)

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "-o", "json").stdout)


@pytest.fixture
def mesh(config_dir: ConfigDir, start_meshpilot: Callable[..., MeshpilotServer],
         start_envoy: Callable[..., EnvoyProcess], start_upstream: Callable[..., UpstreamServer],
         loopback: LoopbackAllocator) -> Mesh:
    client_ip = loopback.allocate()
    v1 = start_upstream(loopback.allocate(), TARGET, service="reviews", version="v1", pod="reviews-v1")
    v2 = start_upstream(loopback.allocate(), TARGET, service="reviews", version="v2", pod="reviews-v2")
    config_dir.write("reviews.yaml", reviews_service(v1.ip, v2.ip))
    config_dir.write("reviews-routing.yaml", routing(80, 20))
    server = start_meshpilot(config_dir)
    # On the TLS port with a token: the sidecar proves its identity, so it has secrets to show (redacted).
    client = start_envoy(build_bootstrap(
        xds_address=server.xds_tls_address, proxy_ip=client_ip, namespace="default", pod="client",
        service_account="client", labels={"app": "client"}, xds_tls=xds_tls_for(server.ca_state, "default", "client")),
        wait="live", name="client")

    def routed() -> bool:
        status, body = request(client_ip, PORT, "/v2/x", "reviews")
        return status == 200 and body.get("version") == "v2"

    eventually(routed, timeout=15, message="the client sidecar routes to reviews")
    return Mesh(server, client, client_ip, v1, config_dir)


def test_version_proxy_status_and_proxy_config_against_a_running_server(mesh: Mesh) -> None:
    installed = metadata.version("meshpilot")
    assert meshpilot("--version", process=True).stdout.strip() == f"meshpilot {installed}"
    out = mesh.cli("version").stdout
    assert out.splitlines() == [f"client version: {installed}",
                                f"control plane version: {installed} ({mesh.server.http_address})"]
    assert mesh.cli_json("version")["server"]["version"] == installed
    unreachable = meshpilot("version", "--http-address", "127.0.0.1:1").stdout
    assert "control plane version: unreachable at 127.0.0.1:1" in unreachable

    # proxy-status: everything the sidecar was sent, it accepted.
    def synced() -> dict[str, Any]:
        (row,) = [r for r in mesh.cli_json("proxy-status") if r["proxy"] == mesh.proxy_id]
        assert {t: row["types"][t]["status"] for t in ("cds", "eds", "lds", "rds", "sds")} == dict.fromkeys(
            ("cds", "eds", "lds", "rds", "sds"), "SYNCED"), row
        return row

    row = eventually(synced, timeout=10, message="proxy-status shows the sidecar SYNCED")
    assert row["control_plane"] == {"address": mesh.server.http_address, "version": installed}
    table = mesh.cli("proxy-status", process=True).stdout.splitlines()
    assert table[0].split() == ["NAME", "CDS", "LDS", "EDS", "RDS", "SDS", "XDS", "CONTROL", "PLANE"]
    (line,) = [ln for ln in table if ln.startswith(mesh.proxy_id)]
    assert line.split()[1:7] == ["SYNCED"] * 5 + ["sotw"]

    # proxy-config: the resources the server holds are the ones Envoy runs, field for field.
    clusters = {c["name"]: c for c in mesh.cli_json("proxy-config", "cluster", "client")}
    assert {f"outbound|{PORT}|v1|{HOST}", f"outbound|{PORT}|v2|{HOST}"} <= clusters.keys()
    in_envoy = {c["cluster"]["name"]: c["cluster"]
                for c in mesh.client.config_dump("dynamic_active_clusters")["configs"]}
    assert clusters == in_envoy
    (route,) = mesh.cli_json("proxy-config", "route", mesh.client_ip)
    (envoy_route,) = mesh.client.config_dump("dynamic_route_configs")["configs"]
    assert route == envoy_route["route_config"] and route["name"] == str(PORT)
    short = mesh.cli("proxy-config", "cluster", "client").stdout.splitlines()
    assert short[0].split() == ["NAME", "SERVICE", "FQDN", "PORT", "SUBSET", "TYPE", "VERSION"]
    assert any(ln.split()[:5] == [f"outbound|{PORT}|v1|{HOST}", HOST, str(PORT), "v1", "EDS"] for ln in short)
    endpoints = mesh.cli("proxy-config", "endpoint", "client").stdout
    (v1_line,) = [ln for ln in endpoints.splitlines() if ln.startswith(f"outbound|{PORT}|v1|{HOST}")]
    assert v1_line.split()[1] == f"{mesh.v1.ip}:{TARGET}"
    listeners = yaml.safe_load(mesh.cli("proxy-config", "listener", "client", "-o", "yaml").stdout)
    assert f"0.0.0.0_{PORT}" in {lis["name"] for lis in listeners} or any(
        lis["address"]["socket_address"]["port_value"] == PORT for lis in listeners)

    # Secrets: name, identity and dates, never the key (and the whole dump is checked for one).
    secrets = {s["name"]: s for s in mesh.cli_json("proxy-config", "secret", "client")}
    assert secrets.keys() == {"default", "ROOTCA"}
    assert secrets["default"]["identity"] == "spiffe://cluster.local/ns/default/sa/client"
    assert secrets["default"]["not_after"] > secrets["default"]["not_before"]
    (root,) = secrets["ROOTCA"]["roots"]
    assert root["not_after"] == secrets["ROOTCA"]["not_after"] > secrets["default"]["not_after"]
    everything = mesh.cli("proxy-config", "all", "client", "-o", "json").stdout
    assert json.loads(everything).keys() == {"cluster", "listener", "route", "endpoint", "secret"}
    raw = json.dumps(mesh.server.get(f"/debug/config?proxy={mesh.proxy_id}")[1])
    assert "PRIVATE KEY" not in everything and "PRIVATE KEY" not in raw and "BEGIN CERTIFICATE" not in raw
    no_such = mesh.cli("proxy-config", "cluster", "nobody", check=1)
    assert "no connected proxy matches 'nobody'" in no_such.stderr and mesh.proxy_id in no_such.stderr

    # A route config Envoy rejects: proxy-status says NACKED, with Envoy's own message.
    mesh.config.write("reviews-routing.yaml", routing(0, 100).replace(
        "    - uri: {exact: /pinned}\n",
        "    - uri: {exact: /pinned}\n    headers: {request: {set: {x-trace: '%NO_SUCH_COMMAND%'}}}\n"))

    def nacked() -> dict[str, Any]:
        (row,) = [r for r in mesh.cli_json("proxy-status") if r["proxy"] == mesh.proxy_id]
        assert row["types"]["rds"]["status"] == "NACKED", row
        return row

    row = eventually(nacked, timeout=10, message="proxy-status shows the rejected RDS")
    assert "NO_SUCH_COMMAND" in row["types"]["rds"]["message"]
    assert row["types"]["cds"]["status"] == "SYNCED"
    text = mesh.cli("proxy-status").stdout
    (line,) = [ln for ln in text.splitlines() if ln.startswith(mesh.proxy_id)]
    assert line.split()[1:6] == ["SYNCED", "SYNCED", "SYNCED", "NACKED", "SYNCED"]
    assert f"RDS NACKED by {mesh.proxy_id}: " in text and "NO_SUCH_COMMAND" in text


def test_help_shows_defaults() -> None:
    def help_of(verb: str) -> str:
        return " ".join(meshpilot(verb, "--help").stdout.split())

    assert "(default: 127.0.0.1:15014)" in help_of("proxy-status")
    assert "(default: short)" in help_of("proxy-config")
    assert "that name none (default: default)" in help_of("analyze")
    assert "(default: 127.0.0.1:15010)" in help_of("serve")


BAD_WEIGHTS = routing(0, 0)  # an error: every weight of the split is 0
UNKNOWN_HOST_DR = {  # a warning: parses, but names no service
    "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
    "metadata": {"name": "ratings", "namespace": "default"}, "spec": {"host": "ratings"}}


def test_analyze_reports_what_serve_reports_grouped_by_file(
        config_dir: ConfigDir, start_meshpilot: Callable[..., MeshpilotServer], loopback: LoopbackAllocator) -> None:
    config_dir.write("reviews.yaml", reviews_service(loopback.allocate(), loopback.allocate()))
    config_dir.write("routing.yaml", BAD_WEIGHTS)
    config_dir.write("ratings.yaml", UNKNOWN_HOST_DR)
    server = start_meshpilot(config_dir)
    served = eventually(lambda: server.get("/debug/errors")[1] or False, timeout=10)
    assert {e["severity"] for e in served} == {"error", "warning"}

    report = json.loads(meshpilot("analyze", str(config_dir.path), "-o", "json", check=1).stdout)
    assert (report["errors"], report["warnings"]) == (1, 1)
    assert report["files"].keys() == {"routing.yaml", "ratings.yaml"}
    offline = [e for problems in report["files"].values() for e in problems]
    assert sorted(offline, key=json.dumps) == sorted(served, key=json.dumps)  # the very same problems

    text = meshpilot("analyze", str(config_dir.path), check=1).stdout.splitlines()
    (error,) = [e for e in served if e["severity"] == "error"]
    (warning,) = [e for e in served if e["severity"] == "warning"]
    assert error["message"] == "total destination weight is 0: give at least one destination a weight"
    assert "ratings.default.svc.cluster.local is not in the registry" in warning["message"]
    assert text == [
        "ratings.yaml:",
        f"  Warning {' '.join(x for x in (warning['resource'], warning['field']) if x)}: {warning['message']}",
        "routing.yaml:",
        f"  Error   VirtualService default/reviews spec.http[2].route: {error['message']}",
        "1 error, 1 warning in 2 files (5 resources read)",
    ], text

    # Only warnings: exit code 0. Files named with -f are read the same way, named as given.
    config_dir.write("routing.yaml", routing(80, 20))
    assert "0 errors, 1 warning in 1 file" in meshpilot("analyze", str(config_dir.path)).stdout
    files = [str(config_dir.path / n) for n in ("reviews.yaml", "ratings.yaml")]
    picked = json.loads(meshpilot("analyze", "-f", *files, "-o", "json").stdout)
    assert list(picked["files"]) == [files[1]] and picked["files"][files[1]][0]["message"] == warning["message"]
    assert "no such file" in meshpilot("analyze", "-f", str(config_dir.path / "nope.yaml"), check=2).stderr
