"""``meshpilot demo``: the example mesh, live on this machine.

It reads the manifests (``examples/mesh`` by default) only to know what to start: the
control plane (``meshpilot serve`` on the same directory), one demo app per workload
(``examples/apps/echo.py`` on the pod's app address and target ports) and one real Envoy
sidecar per workload, each on its own loopback IP. Routing itself is entirely meshpilot's
doing: edit the manifests and the sidecars change behaviour.

Every child runs in its own process group and is stopped on Ctrl-C, SIGTERM or any
error; the kernel kills them if this process dies without cleaning up.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import shlex
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from xds_server.local.bootstrap import DEFAULT_STATS_PORT, STATS_PATH, build_bootstrap, node_id
from xds_server.local.envoy_binary import EnvoyNotFound, find_envoy
from xds_server.local.processes import (
    ChildProcess,
    can_bind,
    envoy_argv,
    free_port,
    http_request,
    wait_for,
)

APP_ADDRESS_ANNOTATION = "sidecar.meshpilot.io/app-address"
INJECT_ANNOTATION = "sidecar.meshpilot.io/inject"
#: The app to run instead of the echo app: a command line with {python}, {pod}, {pod_ip},
#: {app_address} and {port} filled in, run from the repository (examples/bookinfo/local).
APP_ANNOTATION = "demo.meshpilot.io/app"
REPO_ROOT = Path(__file__).resolve().parents[2]
ECHO_APP = REPO_ROOT / "examples" / "apps" / "echo.py"
DEFAULT_CONFIG_DIR = "examples/mesh"
ADMIN_PORT = 15000


class DemoError(Exception):
    """Something the user has to fix; the message says what."""


# ---------------------------------------------------------------- what the manifests describe


@dataclass(frozen=True)
class DemoService:
    name: str
    namespace: str
    selector: Mapping[str, str]
    ports: tuple[tuple[int, int | str | None, str], ...]  # (port, targetPort, name)

    @property
    def hosts(self) -> list[str]:
        return [self.name, f"{self.name}.{self.namespace}", f"{self.name}.{self.namespace}.svc.cluster.local"]


@dataclass
class DemoWorkload:
    """A Pod or WorkloadEntry: where its sidecar listens and where its app does."""

    kind: str
    name: str
    namespace: str
    ip: str
    app_address: str
    labels: dict[str, str]
    service_account: str
    sidecar: bool
    named_ports: dict[str, int] = field(default_factory=dict)
    services: list[DemoService] = field(default_factory=list)
    app_ports: list[int] = field(default_factory=list)
    app_command: str | None = None


def _documents(config_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    files = sorted(p for p in config_dir.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    for path in files:
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError:
            continue  # `meshpilot serve` reports it; the demo only skips it
        for doc in docs:
            if isinstance(doc, dict) and isinstance(doc.get("metadata"), dict):
                yield path, doc


def read_mesh(config_dir: Path) -> tuple[list[DemoWorkload], list[DemoService]]:
    """The workloads and services of a manifest directory, leniently (serve validates)."""
    services: list[DemoService] = []
    workloads: list[DemoWorkload] = []
    for _, doc in _documents(config_dir):
        meta = doc["metadata"]
        ns = str(meta.get("namespace") or "default")
        annotations = meta.get("annotations") or {}
        spec = doc.get("spec") or {}
        kind = doc.get("kind")
        if kind == "Service" and spec.get("selector"):
            ports = tuple((int(p["port"]), p.get("targetPort"), str(p.get("name", ""))) for p in spec.get("ports") or [])
            services.append(DemoService(str(meta["name"]), ns, dict(spec["selector"]), ports))
        elif kind == "Pod":
            ip = (doc.get("status") or {}).get("podIP")
            if not ip:
                continue
            named = {
                str(p["name"]): int(p["containerPort"])
                for c in spec.get("containers") or []
                for p in c.get("ports") or []
                if p.get("name")
            }
            workloads.append(DemoWorkload(
                "Pod", str(meta["name"]), ns, str(ip), str(annotations.get(APP_ADDRESS_ANNOTATION, "127.0.0.1")),
                dict(meta.get("labels") or {}), str(spec.get("serviceAccountName") or "default"),
                str(annotations.get(INJECT_ANNOTATION, "true")).lower() != "false", named,
                app_command=str(annotations[APP_ANNOTATION]) if annotations.get(APP_ANNOTATION) else None,
            ))
        elif kind == "WorkloadEntry" and spec.get("address"):
            workloads.append(DemoWorkload(
                "WorkloadEntry", str(meta["name"]), ns, str(spec["address"]),
                str(annotations.get(APP_ADDRESS_ANNOTATION, "127.0.0.1")),
                dict(spec.get("labels") or meta.get("labels") or {}), str(spec.get("serviceAccount") or "default"),
                str(annotations.get(INJECT_ANNOTATION, "true")).lower() != "false",
                {str(k): int(v) for k, v in (spec.get("ports") or {}).items()},
            ))
    for w in workloads:
        for svc in services:
            if svc.namespace == w.namespace and all(w.labels.get(k) == v for k, v in svc.selector.items()):
                w.services.append(svc)
                for port, target, name in svc.ports:
                    resolved = _target_port(port, target, name, w)
                    if resolved is not None and resolved not in w.app_ports:
                        w.app_ports.append(resolved)
    return workloads, services


def _target_port(port: int, target: int | str | None, name: str, w: DemoWorkload) -> int | None:
    if w.kind == "WorkloadEntry" and name in w.named_ports:
        return w.named_ports[name]  # a WorkloadEntry maps the service port's name to its own port
    if target is None or target == "":
        return port
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    return w.named_ports.get(str(target))


# ---------------------------------------------------------------- running it


class DemoMesh:
    """Starts and stops everything; use as a context manager."""

    def __init__(
        self,
        config_dir: Path,
        *,
        xds_port: int = 0,
        http_port: int = 0,
        delta: bool = False,
        log_dir: Path | None = None,
        envoy: str | None = None,
        client: str | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.config_dir = config_dir
        self.workloads, self.services = read_mesh(config_dir)
        self.xds_port = xds_port or free_port("127.0.0.1")
        self.http_port = http_port or free_port("127.0.0.1")
        self.delta = delta
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="meshpilot-demo-"))
        self.envoy = envoy
        self.startup_timeout = startup_timeout
        self.children: list[ChildProcess] = []
        self.server: ChildProcess | None = None
        self.sidecars: dict[str, ChildProcess] = {}
        self.client = self._pick_client(client)

    def _pick_client(self, name: str | None) -> DemoWorkload:
        candidates = [w for w in self.workloads if w.sidecar]
        if not candidates:
            raise DemoError(f"{self.config_dir}: no Pod or WorkloadEntry with an IP, so no sidecar to send traffic from")
        if name:
            for w in candidates:
                if w.name == name:
                    return w
            raise DemoError(f"--client {name}: no such workload with a sidecar in {self.config_dir}")
        # A workload that serves nothing is a client (bookinfo's `sleep`); else the first.
        return next((w for w in candidates if not w.app_ports), candidates[0])

    def __enter__(self) -> DemoMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop(timeout=5)  # idempotent; the list stays for the logs

    def _spawn(self, name: str, argv: list[str], log: str) -> ChildProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        child = ChildProcess(name, argv, log_path=self.log_dir / log, env=env, cwd=REPO_ROOT)
        self.children.append(child)
        return child.start()

    def _check_children(self) -> None:
        for child in self.children:
            if not child.alive:
                raise DemoError(f"{child.name} exited with status {child.returncode}; "
                                f"the end of {child.log_path}:\n{child.log_tail(30)}")

    # -- preflight

    def preflight(self) -> None:
        if not ECHO_APP.is_file():
            raise DemoError(f"the demo app {ECHO_APP} is missing: run the demo from a meshpilot checkout")
        try:
            self.envoy = self.envoy or find_envoy()
        except EnvoyNotFound as e:
            raise DemoError(str(e)) from None
        wanted: list[tuple[str, int, str]] = []
        for w in self.workloads:
            wanted += [(w.app_address, p, f"the app of {w.name}") for p in w.app_ports]
            if w.sidecar:
                wanted.append((w.ip, ADMIN_PORT, f"the admin of {w.name}'s sidecar"))
                if w is self.client:
                    wanted += [(w.ip, p, f"{w.name}'s outbound listener for {s.name}")
                               for s in self.services for p, _, _ in s.ports]
        for host, port, what in wanted:
            ok = can_bind(host, port)
            if ok is None:
                raise DemoError(
                    f"not allowed to listen on {host}:{port} ({what}): ports below 1024 need root or, on "
                    f"Linux, `sudo sysctl net.ipv4.ip_unprivileged_port_start=0`"
                )
            if not ok:
                raise DemoError(f"{host}:{port} ({what}) is already in use: is another demo running?")

    # -- start

    def start(self) -> None:
        self.preflight()
        for w in self.workloads:
            if w.app_ports:
                self._spawn(f"app {w.name}", self._app_argv(w), f"app-{w.name}.log")

        self.server = self._spawn("meshpilot serve", [
            sys.executable, "-m", "xds_server.app.cli", "serve",
            "--config-dir", str(self.config_dir),
            "--xds-address", f"127.0.0.1:{self.xds_port}",
            "--http-address", f"127.0.0.1:{self.http_port}",
            "--xds-tls-address", f"127.0.0.1:{free_port('127.0.0.1')}",  # not 15012: another serve may hold it
        ], "meshpilot.log")
        wait_for(functools.partial(self._answers, "127.0.0.1", self.http_port, "/healthz", None),
                 timeout=self.startup_timeout, what="meshpilot serve to answer /healthz", check=self._check_children)

        assert self.envoy is not None
        for w in self.workloads:
            if not w.sidecar:
                continue
            config = build_bootstrap(
                xds_address=f"127.0.0.1:{self.xds_port}", proxy_ip=w.ip, namespace=w.namespace, pod=w.name,
                service_account=w.service_account, labels=w.labels, delta=self.delta, admin_port=ADMIN_PORT,
                stats_port=DEFAULT_STATS_PORT,
            )
            path = self.log_dir / f"envoy-{w.name}.json"
            path.write_text(json.dumps(config, indent=2), encoding="utf-8")
            self.sidecars[w.name] = self._spawn(f"sidecar {w.name}", envoy_argv(self.envoy, path),
                                                f"envoy-{w.name}.log")

        for w in self.workloads:
            if w.sidecar:
                wait_for(functools.partial(self._answers, w.ip, ADMIN_PORT, "/ready", None),
                         timeout=self.startup_timeout, what=f"{w.name}'s sidecar to be LIVE",
                         check=self._check_children)
        # Every app, not just one per service: a reviews-v1 still starting would only have its
        # requests retried on v2 and v3 (the default retry policy), and look absent.
        for w in self.workloads:
            for port in w.app_ports:
                wait_for(functools.partial(self._listening, w.app_address, port), timeout=self.startup_timeout,
                         what=f"the app of {w.name} to listen on {w.app_address}:{port}", check=self._check_children)
        for svc in self.services:
            for port, _, _ in svc.ports:
                wait_for(functools.partial(self._answers, self.client.ip, port, "/", svc.name),
                         timeout=self.startup_timeout,
                         what=f"{svc.name}:{port} to answer through {self.client.name}'s sidecar",
                         check=self._check_children)

    @staticmethod
    def _app_argv(w: DemoWorkload) -> list[str]:
        if w.app_command:
            return shlex.split(w.app_command.format(python=sys.executable, pod=w.name, pod_ip=w.ip,
                                                    app_address=w.app_address, port=w.app_ports[0]))
        argv = [sys.executable, str(ECHO_APP), "--service", w.services[0].name, "--version", w.labels.get("version", ""),
                "--pod", w.name]
        for port in w.app_ports:
            argv += ["--listen", f"{w.app_address}:{port}"]
        return argv

    @staticmethod
    def _listening(ip: str, port: int) -> bool:
        try:
            socket.create_connection((ip, port), timeout=0.5).close()
        except OSError:
            return False
        return True

    @staticmethod
    def _answers(ip: str, port: int, path: str, host: str | None) -> bool:
        headers = {"Host": host} if host else {}
        return http_request(ip, port, path, headers=headers, timeout=1)[0] == 200

    def service_port(self, name: str) -> int:
        for svc in self.services:
            if svc.name == name and svc.ports:
                return int(svc.ports[0][0])
        raise KeyError(f"no service {name!r} with a port in {self.config_dir}")

    def call(self, host: str, port: int | None = None, path: str = "/") -> tuple[int, dict[str, Any]]:
        """One request from the client pod, through its sidecar's outbound listener."""
        if port is None:
            port = self.service_port(host.split(".")[0].split(":")[0])
        status, body, _ = http_request(self.client.ip, port, path, headers={"Host": host}, timeout=2)
        try:
            data = json.loads(body)
        except ValueError:
            data = {"raw": body.decode("utf-8", "replace")[:200]}
        return status, data if isinstance(data, dict) else {"raw": data}

    # -- talk about it

    def describe(self) -> str:
        c = self.client
        ctl = f"http://127.0.0.1:{self.http_port}"
        lines = [
            "",
            f"meshpilot demo: {len(self.sidecars)} sidecars, config from {self.config_dir} "
            f"({'Delta' if self.delta else 'SotW'} xDS on 127.0.0.1:{self.xds_port})",
            "",
        ]
        for w in self.workloads:
            app = ", ".join(f"{w.app_address}:{p}" for p in w.app_ports) or "-"
            side = f"sidecar {w.ip} (admin http://{w.ip}:{ADMIN_PORT}/)" if w.sidecar else "no sidecar"
            lines.append(f"  {w.name:<18} {side:<48} app {app}")
        lines += ["", f"Send requests from {c.name} through its sidecar:"]
        for svc in self.services:
            for port, _, _ in svc.ports:
                lines.append(f"  curl -s http://{c.ip}:{port}/ -H 'Host: {svc.name}'")
        if any(s.name == "productpage" for s in self.services):
            lines.append(f"  curl -s http://{c.ip}:{self.service_port('productpage')}/productpage -H 'Host: productpage'")
        if any(s.name == "reviews" for s in self.services):
            rp = self.service_port("reviews")
            lines += [
                f"  curl -s http://{c.ip}:{rp}/v2/ratings -H 'Host: reviews.default.svc.cluster.local'",
                f"  for i in $(seq 50); do curl -s http://{c.ip}:{rp}/ -H 'Host: reviews'; done "
                "| grep -o '\"version\": \"v[0-9]\"' | sort | uniq -c",
            ]
        lines += [
            "",
            "Look inside meshpilot:",
            *(f"  {ctl}{path}" for path in self._server_pages()),
            f"or with the CLI: meshpilot proxy-status --http-address 127.0.0.1:{self.http_port}",
            *(f"    {line}" for line in self._proxy_status().splitlines()),
            f"  meshpilot proxy-config route {c.name} --http-address 127.0.0.1:{self.http_port}",
            f"and {c.name}'s Envoy:",
            f"  http://{c.ip}:{ADMIN_PORT}/config_dump   http://{c.ip}:{ADMIN_PORT}/clusters",
            f"  http://{c.ip}:{DEFAULT_STATS_PORT}{STATS_PATH}   (what Prometheus scrapes, on every sidecar)",
            f"  logs and bootstraps (access logs too, with a Telemetry: docs/operate.md): {self.log_dir}",
            "",
            f"Edit {self.config_dir}/*.yaml (e.g. the weights in reviews-routing.yaml) and routing changes live.",
            "Ctrl-C stops everything.",
        ]
        return "\n".join(lines)

    def _proxy_status(self) -> str:
        """What ``meshpilot proxy-status`` prints now (every sidecar, per xDS type)."""
        from xds_server.app.verbs import proxy_status  # the CLI verb's own rendering
        from xds_server.app.verbs.common import ServerError

        try:
            return proxy_status.report(f"127.0.0.1:{self.http_port}")
        except (ServerError, OSError) as e:  # the demo's description must not fail for it
            return f"(proxy-status unavailable: {e})"

    def _server_pages(self) -> list[str]:
        """What meshpilot's HTTP index lists (one path per line), else the pages it is known to have."""
        try:
            status, body, _ = http_request("127.0.0.1", self.http_port, "/", timeout=1)
            pages = [line.strip() for line in body.decode().splitlines() if line.startswith("/")]
            if status == 200 and pages:
                # /debug/config and /debug/describe answer for one proxy or pod: link the client's.
                client = quote(node_id("sidecar", self.client.ip, self.client.name, self.client.namespace), safe="")
                query = {"/debug/config": f"?proxy={client}",
                         "/debug/describe": f"?kind=pod&name={quote(self.client.name)}&namespace={self.client.namespace}"}
                return [p + query.get(p, "") for p in pages]
        except (OSError, UnicodeDecodeError):
            pass
        return ["/healthz", "/debug/syncz"]

    def check(self, requests: int = 200) -> bool:
        """Traffic through the client's sidecar: every request answered, reviews split as configured."""
        ok = True
        for svc in self.services:
            port = svc.ports[0][0] if svc.ports else 80
            for host in [*svc.hosts, f"{svc.name}:{port}", f"{svc.name}.{svc.namespace}.svc.cluster.local:{port}"]:
                status, body = self.call(host, port)
                good = status == 200 and body.get("service") == svc.name
                ok &= good
                print(f"  {'ok ' if good else 'BAD'} Host: {host:<45} -> {status} {body.get('pod', body)}")
        if not any(s.name == "reviews" for s in self.services):
            return ok

        counts: collections.Counter[str] = collections.Counter()
        for _ in range(requests):
            status, body = self.call("reviews")
            counts[str(body.get("version")) if status == 200 else f"HTTP {status}"] += 1
        shares = ", ".join(f"{k}: {v} ({100 * v / requests:.0f}%)" for k, v in sorted(counts.items()))
        v1 = counts["v1"] / requests
        split_ok = counts["v1"] + counts["v2"] == requests and 0.65 <= v1 <= 0.93
        ok &= split_ok
        print(f"  {'ok ' if split_ok else 'BAD'} {requests} requests to reviews: {shares} (configured 80/20)")

        v2 = collections.Counter(str(self.call("reviews", path="/v2/x")[1].get("version")) for _ in range(20))
        path_ok = v2 == collections.Counter({"v2": 20})
        ok &= path_ok
        print(f"  {'ok ' if path_ok else 'BAD'} 20 requests to reviews/v2/x: {dict(v2)} (configured: all v2)")
        return ok


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR, metavar="DIR",
                        help=f"the mesh manifests (default: {DEFAULT_CONFIG_DIR})")
    parser.add_argument("--xds-port", type=int, default=0, metavar="PORT", help="xDS port (default: a free one)")
    parser.add_argument("--http-port", type=int, default=0, metavar="PORT",
                        help="meshpilot's health and debug port (default: a free one)")
    parser.add_argument("--delta", action="store_true", help="sidecars use Delta xDS instead of SotW")
    parser.add_argument("--client", metavar="POD", help="the workload to send requests from (default: sleep)")
    parser.add_argument("--log-dir", type=Path, metavar="DIR", help="where logs and bootstraps go (default: a temp dir)")
    parser.add_argument("--check", action="store_true",
                        help="start everything, send traffic, print what answered, exit 0 if as configured")
    parser.add_argument("--requests", type=int, default=200, help="requests to reviews with --check (default: 200)")
    parser.add_argument("--startup-timeout", type=float, default=60.0, metavar="SECONDS")


def _config_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir() and not path.is_absolute() and (REPO_ROOT / path).is_dir():
        path = REPO_ROOT / path  # `meshpilot demo` from outside the checkout
    if not path.is_dir():
        raise DemoError(f"--config-dir {value}: no such directory")
    return path.resolve()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    # Also SIGINT: a shell without job control starts background commands with it ignored.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    mesh: DemoMesh | None = None
    try:
        mesh = DemoMesh(
            _config_dir(args.config_dir), xds_port=args.xds_port, http_port=args.http_port, delta=args.delta,
            log_dir=args.log_dir, client=args.client, startup_timeout=args.startup_timeout,
        )
        with mesh:
            print(f"starting the demo mesh from {mesh.config_dir} (logs in {mesh.log_dir}) ...", flush=True)
            started = time.monotonic()
            mesh.start()
            print(f"ready in {time.monotonic() - started:.1f}s", flush=True)
            if args.check:
                ok = mesh.check(args.requests)
                print("demo check: " + ("PASS" if ok else "FAIL"), flush=True)
                return 0 if ok else 1
            print(mesh.describe(), flush=True)
            while True:
                time.sleep(0.5)
                mesh._check_children()
    except KeyboardInterrupt:
        print("\nstopping the demo mesh ...", file=sys.stderr, flush=True)
        return 130 if args.check else 0
    except (DemoError, TimeoutError) as e:
        print(f"meshpilot demo: {e}", file=sys.stderr)
        if mesh is not None and isinstance(e, TimeoutError):
            for child in mesh.children:
                print(f"--- {child!r}, the end of {child.log_path}:\n{child.log_tail(15)}", file=sys.stderr)
        return 1
    finally:
        if mesh is not None:
            mesh.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
