"""A small mesh for VirtualService route tests, shared by the tests of one module.

A ``web`` service (pods v1, v2, v3; DestinationRule subsets of the same names), two
mirror targets (``shadow``, ``shadow2``), a real ``meshpilot serve`` and one client
sidecar. ``apply(http)`` rewrites web's VirtualService and waits until the client's Envoy
routes by it: every version starts with a marker route that answers its generation, so a
test never sees the previous test's routes.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config_dir import ConfigDir
from harness.envoy import EnvoyProcess
from harness.meshpilot import MeshpilotServer
from harness.net import LoopbackAllocator
from harness.traffic import eventually
from harness.upstream import UpstreamServer

from xds_server.local.bootstrap import build_bootstrap

PORT = 9080  # the services' port, where clients call
TARGET = 8080  # where the pods answer
NS = "default"
WEB = f"web.{NS}.svc.cluster.local"
GENERATION_HEADER = "x-test-generation"


@dataclass
class Response:
    status: int
    body: Any  # parsed JSON when it is JSON (the echo app's answers), else text
    header_list: list[tuple[str, str]]  # every response header line, names lower-cased
    elapsed: float

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.header_list if k == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.values(name)
        return ", ".join(values) if values else None

    @property
    def header_names(self) -> set[str]:
        return {k for k, _ in self.header_list}

    @property
    def seen(self) -> dict[str, Any]:
        """The echo app's JSON: what the upstream saw."""
        assert isinstance(self.body, dict), f"not an echo answer: HTTP {self.status} {self.body!r}"
        return self.body


def _service(name: str, pods: Mapping[str, str]) -> list[dict[str, Any]]:
    """A Service on PORT and its pods (version -> IP)."""
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
         "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": PORT, "targetPort": TARGET}]}},
    ]
    for version, ip in pods.items():
        docs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"{name}-{version}", "namespace": NS,
                                  "labels": {"app": name, "version": version}},
                     "status": {"phase": "Running", "podIP": ip}})
    return docs


@dataclass
class HttpMesh:
    config: ConfigDir
    server: MeshpilotServer
    client: EnvoyProcess
    client_ip: str
    pods: dict[str, UpstreamServer]  # v1, v2, v3 of web; shadow, shadow2
    generation: int = 0
    processes: list[Any] = field(default_factory=list)

    @property
    def v1(self) -> UpstreamServer:
        return self.pods["v1"]

    def request(self, path: str = "/", *, host: str = "web", method: str = "GET",
                headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> Response:
        """One request through the client sidecar's outbound listener, on a new connection."""
        conn = http.client.HTTPConnection(self.client_ip, PORT, timeout=timeout)
        started = time.monotonic()
        try:
            conn.request(method, path, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            data = resp.read()
            elapsed = time.monotonic() - started
            header_list = [(k.lower(), v) for k, v in resp.getheaders()]
        finally:
            conn.close()
        text = data.decode("utf-8", "replace")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return Response(resp.status, body, header_list, elapsed)

    def apply(self, http: list[dict[str, Any]], *, timeout: float = 20.0) -> None:
        """Replace web's VirtualService with one of these ``http`` entries; return once the
        client's Envoy has it."""
        self.generation += 1
        gen = str(self.generation)
        marker = {"name": "generation", "match": [{"headers": {GENERATION_HEADER: {"exact": gen}}}],
                  "directResponse": {"status": 200, "body": {"string": f"generation {gen}"}}}
        self.config.write("web-routing.yaml", {
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"hosts": ["web"], "http": [marker, *http]},
        })

        def applied() -> bool:
            r = self.request("/", headers={GENERATION_HEADER: gen}, timeout=2)
            return r.status == 200 and r.body == f"generation {gen}"

        eventually(applied, timeout=timeout, interval=0.1, message=f"the client routes by VirtualService #{gen}")
        for pod in self.pods.values():
            pod.reset()

    def config_errors(self) -> list[dict[str, Any]]:
        return list(self.server.get("/debug/errors")[1])


@contextlib.contextmanager
def http_mesh(envoy_binary: str, loopback: LoopbackAllocator, workdir: Path) -> Iterator[HttpMesh]:
    """Start everything; stop everything on the way out, whatever happened."""
    with contextlib.ExitStack() as stack:
        pods: dict[str, UpstreamServer] = {}
        for name, service, version in (("v1", "web", "v1"), ("v2", "web", "v2"), ("v3", "web", "v3"),
                                       ("shadow", "shadow", "v1"), ("shadow2", "shadow2", "v1")):
            up = UpstreamServer(loopback.allocate(), TARGET, service=service, version=version,
                                pod=f"{service}-{version}").start()
            stack.callback(up.stop)
            pods[name] = up
        config = ConfigDir(workdir / "mesh")
        config.write("services.yaml", [
            *_service("web", {v: pods[v].ip for v in ("v1", "v2", "v3")}),
            *_service("shadow", {"v1": pods["shadow"].ip}),
            *_service("shadow2", {"v1": pods["shadow2"].ip}),
            {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
             "metadata": {"name": "web", "namespace": NS},
             "spec": {"host": "web", "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2", "v3")]}},
        ])
        server = MeshpilotServer(config.path, workdir=workdir / "meshpilot")
        stack.callback(server.stop)
        server.start()
        client_ip = loopback.allocate()
        bootstrap = build_bootstrap(xds_address=server.xds_address, proxy_ip=client_ip, namespace=NS,
                                    pod="client", labels={"app": "client"})
        client = EnvoyProcess(bootstrap, binary=envoy_binary, workdir=workdir / "envoy", name="client")
        stack.callback(client.stop)
        client.start(wait="live", timeout=30)
        yield HttpMesh(config, server, client, client_ip, pods, processes=[server, client])


def track_logs(request: Any, processes: list[Any]) -> None:
    """Have a failing test's report carry these processes' logs, like the function-scoped
    fixtures of ``tests/conftest.py`` do (its hook reads a list from the test's stash)."""
    for plugin in request.config.pluginmanager.get_plugins():
        key = getattr(plugin, "_PROCESSES", None)
        if key is not None and type(key).__name__ == "StashKey":
            request.node.stash.setdefault(key, []).extend(processes)
            return
