"""Sidecar telemetry with real back ends: Prometheus scraping the sidecars' :15090, a Zipkin
server receiving their spans, and the access-log lines Envoy writes to its stdout.

The layout, all on loopback: a ``client`` sidecar calls ``web`` (an echo app behind its own
``web`` sidecar) through its outbound listener, so every request crosses two Envoys.
Prometheus is Debian's package and Zipkin the zipkin-server exec jar from Maven Central, both
fetched into the cache by scripts/telemetry-tools.sh (``./dev setup``); each runs once per
module, bound to its own 127.x address, with its own config and a temporary storage dir.
Zipkin (a JVM) starts while the mesh does, and is waited for only by the tracing tests.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from harness.tcp_echo import TcpEcho, tcp_call
from harness.traffic import request_full

from xds_server.local.bootstrap import DEFAULT_STATS_PORT, build_bootstrap
from xds_server.local.processes import ChildProcess, http_request

PORT = 9080  # web's service port, where the client calls
TARGET = 8080  # web's sidecar inbound port
TCP_PORT = 9300  # web's TCP port (service and pod), for tcp_proxy access logs
NS = "default"
WEB = f"web.{NS}.svc.cluster.local"
ZIPKIN_HOST = "zipkin.telemetry.test"
ZIPKIN_PORT = 9411
CACHE = Path(os.environ.get("MESHPILOT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "meshpilot")
ZIPKIN_JAR = sorted(glob.glob(str(CACHE / "zipkin" / "zipkin-server-*-exec.jar")))
PROMETHEUS = sorted(glob.glob(str(CACHE / "prometheus-*" / "usr" / "bin" / "prometheus")))
JAVA = shutil.which("java")



def _require_back_ends() -> None:
    """Skip without them, except in CI (as the e2e tests without Envoy): there they must run."""
    if ZIPKIN_JAR and PROMETHEUS and JAVA:
        return
    why = "Prometheus, the Zipkin server or java missing: ./dev setup fetches them (scripts/telemetry-tools.sh)"
    if os.environ.get("MESHPILOT_REQUIRE_ENVOY") or os.environ.get("CI"):
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


def mesh_config(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "meshpilot.io/v1alpha1", "kind": "MeshConfig",
            "metadata": {"name": "mesh", "namespace": "istio-system"},
            "spec": {"extensionProviders": [
                {"name": "zipkin", "zipkin": {"service": ZIPKIN_HOST, "port": ZIPKIN_PORT}},
                {"name": "json", "envoyFileAccessLog": {"path": "/dev/stdout", "logFormat": {"labels": {
                    "kind": "json-log", "path": "%REQ(:PATH)%", "code": "%RESPONSE_CODE%"}}}},
            ], **spec}}


def telemetry(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@dataclass
class Mesh:
    config: ConfigDir
    server: MeshpilotServer
    client: EnvoyProcess
    client_ip: str
    web: EnvoyProcess
    web_ip: str
    app: UpstreamServer
    prometheus_url: str
    zipkin_url: str
    zipkin_ready: Callable[[], None]

    def call(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return request(self.client_ip, PORT, path, "web", headers=headers, timeout=5)

    def apply(self, *telemetries: dict[str, Any], mesh: dict[str, Any] | None = None) -> None:
        self.config.write("telemetry.yaml", [mesh or mesh_config(), *telemetries])

    def until_listeners(self, envoy: EnvoyProcess, ok: Callable[[str], bool], what: str, tcp: bool = False) -> None:
        """Until the listener that carries the calls in ``envoy`` (the client's outbound one,
        web's inbound one; of the TCP port with ``tcp``) passes ``ok`` (on its active config, as text)."""
        port, target = (TCP_PORT, TCP_PORT) if tcp else (PORT, TARGET)
        name = f"{self.client_ip}_{port}" if envoy is self.client else f"inbound|{self.web_ip}_{target}"

        def active() -> bool:
            return ok(json.dumps(envoy.listeners().get(name)))

        eventually(active, timeout=20, message=f"{envoy.name}'s listener {name} {what}")

    def prometheus(self, query: str) -> list[dict[str, Any]]:
        status, body, _ = http_request(*_host_port(self.prometheus_url), "/api/v1/query?" + urllib.parse.urlencode(
            {"query": query}), timeout=5)
        assert status == 200, body
        return list(json.loads(body)["data"]["result"])

    def zipkin(self, path: str) -> Any:
        status, body, _ = http_request(*_host_port(self.zipkin_url), path, timeout=5)
        assert status == 200, body
        return json.loads(body)


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.rpartition(":")
    return host, int(port)


def _sidecar(server: MeshpilotServer, ip: str, name: str, envoy_binary: str, workdir: Path) -> EnvoyProcess:
    bootstrap = build_bootstrap(xds_address=server.xds_address, proxy_ip=ip, namespace=NS, pod=f"{name}-1",
                                labels={"app": name}, stats_port=DEFAULT_STATS_PORT)
    # Spans go to the collector one by one (Envoy's default batches 5 or waits 5 s).
    bootstrap["layered_runtime"]["layers"][0]["static_layer"]["tracing.zipkin.min_flush_spans"] = 1
    # Access-log lines reach stdout within 0.2 s (Envoy's default flushes them every 10 s).
    return EnvoyProcess(bootstrap, binary=envoy_binary, workdir=workdir, name=name,
                        extra_args=("--file-flush-interval-msec", "200"))


@pytest.fixture(scope="module")
def mesh(envoy_binary: str, loopback: LoopbackAllocator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    _require_back_ends()
    workdir = tmp_path_factory.mktemp("telemetry")
    with contextlib.ExitStack() as stack:
        zipkin_ip = loopback.allocate()
        assert JAVA is not None
        zipkin = ChildProcess("zipkin", [
            JAVA, "-Xms64m", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-jar", ZIPKIN_JAR[-1],
            f"--armeria.ports[0].port={ZIPKIN_PORT}", f"--armeria.ports[0].ip={zipkin_ip}",
            "--armeria.ports[0].protocols=http"], log_path=workdir / "zipkin.log", env={**os.environ, "STORAGE_TYPE": "mem"})
        stack.callback(zipkin.stop)
        zipkin.start()  # a JVM: its start overlaps the mesh's

        app_ip, web_ip, client_ip = loopback.allocate(), loopback.allocate(), loopback.allocate()
        app = UpstreamServer(app_ip, TARGET, service="web", version="v1", pod="web-1").start()
        stack.callback(app.stop)
        tcp_app = TcpEcho(app_ip, TCP_PORT, "web-tcp").start()
        stack.callback(tcp_app.stop)
        config = ConfigDir(workdir / "mesh")
        config.write("services.yaml", [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
             "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": PORT, "targetPort": TARGET},
                                                            {"name": "tcp", "port": TCP_PORT}]}},
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "web-1", "namespace": NS, "labels": {"app": "web"},
                          "annotations": {"sidecar.meshpilot.io/app-address": app_ip}},
             "status": {"phase": "Running", "podIP": web_ip}},
            # A connection per request from the client to web: a request always meets the
            # listeners' current config (connections already open keep the config they began with).
            {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
             "metadata": {"name": "web", "namespace": NS},
             "spec": {"host": "web", "trafficPolicy": {"connectionPool": {"http": {"maxRequestsPerConnection": 1}}}}},
            {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
             "metadata": {"name": "zipkin", "namespace": "istio-system"},
             "spec": {"hosts": [ZIPKIN_HOST], "location": "MESH_EXTERNAL", "resolution": "STATIC",
                      "ports": [{"number": ZIPKIN_PORT, "name": "http", "protocol": "HTTP"}],
                      "endpoints": [{"address": zipkin_ip}]}},
        ])
        config.write("telemetry.yaml", [mesh_config()])
        server = MeshpilotServer(config.path, workdir=workdir / "meshpilot")
        stack.callback(server.stop)
        server.start()
        web = _sidecar(server, web_ip, "web", envoy_binary, workdir / "envoy")
        client = _sidecar(server, client_ip, "client", envoy_binary, workdir / "envoy")
        for envoy in (web, client):
            stack.callback(envoy.stop)
            envoy.start(wait="live", timeout=30)

        prom_ip = loopback.allocate()
        prom_config = workdir / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [{"job_name": "sidecars", "metrics_path": "/stats/prometheus", "static_configs": [
                {"targets": [f"{client_ip}:{DEFAULT_STATS_PORT}", f"{web_ip}:{DEFAULT_STATS_PORT}"]}]}],
        }))
        prometheus = ChildProcess("prometheus", [
            PROMETHEUS[-1], f"--config.file={prom_config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address={prom_ip}:9090"], log_path=workdir / "prometheus.log")
        stack.callback(prometheus.stop)
        prometheus.start()

        def zipkin_ready() -> None:
            eventually(lambda: http_request(zipkin_ip, ZIPKIN_PORT, "/health", timeout=2)[0] == 200, timeout=90,
                       interval=0.3, message=f"Zipkin answers on {zipkin_ip}:{ZIPKIN_PORT}\n{zipkin.log_tail()}")

        m = Mesh(config, server, client, client_ip, web, web_ip, app, f"{prom_ip}:9090", f"{zipkin_ip}:{ZIPKIN_PORT}",
                 zipkin_ready)
        eventually(lambda: m.call("/")[0] == 200, timeout=20, message="the client reaches web")
        eventually(lambda: http_request(prom_ip, 9090, "/-/ready", timeout=2)[0] == 200, timeout=30,
                   message=f"Prometheus is ready\n{prometheus.log_tail()}")
        yield m


# ---------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_the_sidecars_and_counts_the_requests_sent(mesh: Mesh) -> None:
    outbound = f"outbound|{PORT}||{WEB}"
    query = f'envoy_cluster_upstream_rq_total{{cluster_name="{outbound}"}}'

    def scraped() -> float:
        return sum(float(r["value"][1]) for r in mesh.prometheus(query))

    # Prometheus has caught up with what the client's Envoy counts right now...
    eventually(lambda: scraped() == mesh.client.stat(f"cluster.{outbound}.upstream_rq_total") > 0, timeout=20,
               message="Prometheus scrapes the client's :15090")
    before = scraped()
    for _ in range(7):
        assert mesh.call("/counted")[0] == 200
    # ...and then sees exactly the 7 requests sent through it.
    eventually(lambda: scraped() == before + 7, timeout=20, message="Prometheus counts the 7 requests")
    series = mesh.prometheus('envoy_cluster_upstream_rq_total{cluster_name=~"(out|in)bound.*"}')
    names = {(r["metric"]["instance"].split(":")[0], r["metric"]["cluster_name"]) for r in series}
    # Whole Istio cluster names as labels, on both sides of the call.
    assert (mesh.client_ip, outbound) in names and (mesh.web_ip, f"inbound|{TARGET}||") in names, names
    # The stats listener serves the stats, and nothing else of the admin.
    assert http_request(mesh.client_ip, DEFAULT_STATS_PORT, "/quitquitquit", method="POST")[0] == 404
    assert mesh.client.alive


# ---------------------------------------------------------------- access logs


def log_lines(envoy: EnvoyProcess, path: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The access-log lines for ``path`` in Envoy's output: text (Istio's format) and JSON."""
    text, js = [], []
    for line in envoy.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{path}"' in line:
            js.append(json.loads(line))
        elif line.startswith("[") and f'"GET {path} HTTP/1.1"' in line:
            text.append(line)
    return text, js


def wait_lines(envoy: EnvoyProcess, path: str, count: int, kind: int) -> list[Any]:
    """Until ``envoy`` has logged ``count`` lines for ``path`` (kind 0: text, 1: JSON); they."""
    def logged() -> list[Any]:
        lines = log_lines(envoy, path)[kind]
        assert len(lines) == count, f"{envoy.name}: {len(lines)} lines for {path}, not {count}"
        return lines
    return eventually(logged, timeout=10)


def test_access_logs_text_json_filter_and_overrides(mesh: Mesh) -> None:
    # Mesh-wide (root namespace): the built-in "envoy" provider, Istio's default text format.
    mesh.apply(telemetry("mesh-logs", "istio-system", {"accessLogging": [{"providers": [{"name": "envoy"}]}]}))
    for envoy in (mesh.client, mesh.web):
        mesh.until_listeners(envoy, lambda d: "envoy.access_loggers.file" in d, "log")
    for _ in range(3):
        assert mesh.call("/alog-text")[0] == 200
    for envoy in (mesh.client, mesh.web):
        lines = wait_lines(envoy, "/alog-text", 3, 0)
        assert all(" 200 - via_upstream - " in line for line in lines), lines  # code, flags, details
    client_line = log_lines(mesh.client, "/alog-text")[0][0]
    assert f"outbound|{PORT}||{WEB}" in client_line and '"web"' in client_line
    assert f"inbound|{TARGET}||" in log_lines(mesh.web, "/alog-text")[0][0]
    # TCP: one line per connection from each tcp_proxy, outbound and inbound.
    for envoy in (mesh.client, mesh.web):
        mesh.until_listeners(envoy, lambda d: "envoy.access_loggers.file" in d, "log", tcp=True)
    assert tcp_call(mesh.client_ip, TCP_PORT, "hello") == "web-tcp: hello"
    for envoy, cluster in ((mesh.client, f"outbound|{TCP_PORT}||{WEB}"), (mesh.web, f"inbound|{TCP_PORT}||")):
        def tcp_logged(e: EnvoyProcess = envoy, c: str = cluster) -> None:
            lines = [x for x in e.log_path.read_text(errors="replace").splitlines()
                     if x.startswith("[") and f" {c} " in x and '"- - -"' in x]
            assert len(lines) == 1, lines
        eventually(tcp_logged, timeout=10, message=f"{envoy.name} logs the TCP connection")

    # The namespace overrides the mesh: JSON lines, only for responses >= 400.
    ns_logs = telemetry("ns-logs", NS, {"accessLogging": [
        {"providers": [{"name": "json"}], "filter": {"expression": "response.code >= 400"}}]})
    mesh.apply(telemetry("mesh-logs", "istio-system", {"accessLogging": [{"providers": [{"name": "envoy"}]}]}), ns_logs)
    for envoy in (mesh.client, mesh.web):
        mesh.until_listeners(envoy, lambda d: "status_code_filter" in d and "json-log" in d, "filter")
    statuses = [mesh.call("/alog-json" + ("?status=500" if i % 2 else ""))[0] for i in range(5)]
    assert statuses == [200, 500, 200, 500, 200]
    for envoy in (mesh.client, mesh.web):
        found = wait_lines(envoy, "/alog-json?status=500", 2, 1)
        assert {(x["kind"], x["code"]) for x in found} == {("json-log", 500)}
    # Sent before the 503s' lines were written: the 2xx were filtered out, not late.
    for envoy in (mesh.client, mesh.web):
        assert log_lines(envoy, "/alog-json") == ([], []), "2xx logged despite response.code >= 400"

    # One workload turns its logs off: web is silent, the client still logs its failures.
    web_off = telemetry("web-off", NS, {"selector": {"matchLabels": {"app": "web"}},
                                        "accessLogging": [{"disabled": True}]})
    mesh.apply(telemetry("mesh-logs", "istio-system", {"accessLogging": [{"providers": [{"name": "envoy"}]}]}),
               ns_logs, web_off)
    mesh.until_listeners(mesh.web, lambda d: "access_log" not in d, "have no access log")
    assert mesh.call("/alog-off?status=500")[0] == 500
    assert mesh.call("/alog-marker?status=500")[0] == 500
    wait_lines(mesh.client, "/alog-marker?status=500", 1, 1)
    assert len(log_lines(mesh.client, "/alog-off?status=500")[1]) == 1
    assert log_lines(mesh.web, "/alog-off?status=500") == ([], [])


def test_istio_default_json_format_from_mesh_config(mesh: Mesh) -> None:
    mesh.apply(mesh=mesh_config(accessLogFile="/dev/stdout", accessLogEncoding="JSON"))
    mesh.until_listeners(mesh.client, lambda d: "upstream_transport_failure_reason" in d, "log JSON")
    assert mesh.call("/alog-default-json")[0] == 200
    (line,) = wait_lines(mesh.client, "/alog-default-json", 1, 1)
    assert line["response_code"] == 200 and line["upstream_cluster"] == f"outbound|{PORT}||{WEB}"
    assert line["method"] == "GET" and line["authority"] == "web" and line["response_flags"] == "-"


# ---------------------------------------------------------------- tracing


def spans_tagged(mesh: Mesh, tag: str, value: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"annotationQuery": f"{tag}={value}", "limit": 100, "lookback": 3_600_000})
    return [span for trace in mesh.zipkin(f"/api/v2/traces?{query}") for span in trace]


def test_spans_from_both_sidecars_reach_zipkin_with_custom_tags(mesh: Mesh) -> None:
    mesh.zipkin_ready()
    tracing = {"providers": [{"name": "zipkin"}], "randomSamplingPercentage": 100.0, "customTags": {
        "team": {"literal": {"value": "payments"}}, "run": {"header": {"name": "x-test-run", "defaultValue": "none"}}}}
    mesh.apply(telemetry("mesh-tracing", "istio-system", {"tracing": [tracing]}))
    for envoy in (mesh.client, mesh.web):
        mesh.until_listeners(envoy, lambda d: "envoy.tracers.zipkin" in d and "payments" in d, "trace")
    run = uuid.uuid4().hex
    status, seen, _ = request_full(mesh.client_ip, PORT, "/traced", "web", headers={"x-test-run": run}, timeout=5)
    assert status == 200
    # Both B3 and W3C trace context reach the app, naming one trace.
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["traceparent"].split("-")[1] == headers["x-b3-traceid"], headers

    def both() -> list[dict[str, Any]]:
        spans = spans_tagged(mesh, "run", run)
        assert len(spans) == 2, spans
        return spans

    spans = eventually(both, timeout=20, message="Zipkin has a span from each sidecar")
    by_service = {s["localEndpoint"]["serviceName"]: s for s in spans}
    assert set(by_service) == {"client.default", "web.default"}, spans
    client, web = by_service["client.default"], by_service["web.default"]
    assert client["traceId"] == web["traceId"] == headers["x-b3-traceid"]
    assert web["parentId"] == client["id"] and client["kind"] == "CLIENT" and web["kind"] == "SERVER"
    assert client["tags"]["team"] == web["tags"]["team"] == "payments"


def test_sampling_zero_sends_no_spans(mesh: Mesh) -> None:
    mesh.zipkin_ready()
    # (no "team" tag: how the test tells this config from the one before)
    tracing = {"providers": [{"name": "zipkin"}], "randomSamplingPercentage": 0.0,
               "customTags": {"run": {"header": {"name": "x-test-run"}}}}
    mesh.apply(telemetry("mesh-tracing", "istio-system", {"tracing": [tracing]}))
    for envoy in (mesh.client, mesh.web):
        mesh.until_listeners(envoy, lambda d: "envoy.tracers.zipkin" in d and '"team"' not in d, "sample 0")
    quiet = uuid.uuid4().hex
    for _ in range(5):
        assert mesh.call("/unsampled", {"x-test-run": quiet})[0] == 200
    # A forced trace (x-client-trace-id) sent after them: once it is in Zipkin, so would they be.
    forced = uuid.uuid4().hex
    assert mesh.call("/forced", {"x-test-run": forced, "x-client-trace-id": forced})[0] == 200
    eventually(lambda: len(spans_tagged(mesh, "run", forced)) == 2, timeout=20, message="the forced trace arrives")
    assert spans_tagged(mesh, "run", quiet) == []


