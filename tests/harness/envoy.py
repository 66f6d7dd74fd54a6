"""A real Envoy for a test: started from a bootstrap dict, inspected through its admin API."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from xds_server.local.processes import ChildProcess, envoy_argv, http_request

Wait = Literal["admin", "live", "none"]


class EnvoyError(AssertionError):
    """Envoy did not start or its admin answered unexpectedly; carries its log's tail."""


class EnvoyProcess:
    """One Envoy: its bootstrap, log and admin files live in ``workdir``.

    The admin address is read from the bootstrap (``admin.address.socket_address``), so
    build the bootstrap with a proxy IP from the session's allocator and the admin port
    stays 15000 without clashing.
    """

    def __init__(
        self,
        bootstrap: dict[str, Any],
        *,
        binary: str,
        workdir: Path,
        name: str = "envoy",
        log_level: str = "info",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.bootstrap = bootstrap
        self.binary = binary
        self.name = name
        self.workdir = workdir
        self.config_path = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        sa = bootstrap["admin"]["address"]["socket_address"]
        self.admin_ip: str = sa["address"]
        self.admin_port: int = int(sa["port_value"])
        self.node_id: str = bootstrap.get("node", {}).get("id", "")
        self._child = ChildProcess(
            f"envoy {name}",
            envoy_argv(binary, self.config_path, log_level=log_level, extra=extra_args),
            log_path=self.log_path,
        )

    # -- lifecycle

    def start(self, wait: Wait = "admin", timeout: float = 30.0) -> EnvoyProcess:
        """Start Envoy; ``wait`` for its admin to answer, for it to be LIVE (``/ready``), or not at all."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.bootstrap, indent=2), encoding="utf-8")
        self._child.start()
        if wait == "admin":
            self.wait_admin(timeout)
        elif wait == "live":
            self.wait_live(timeout)
        return self

    def _poll(self, what: str, timeout: float, ok: Any) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.alive:
                raise EnvoyError(f"{self.name} exited with {self.returncode} while waiting for {what}\n{self.log_tail()}")
            try:
                status, body = self._get(what)
                if ok(status, body):
                    return
                last = f"HTTP {status}: {body[:200]}"
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise EnvoyError(f"{self.name}: timed out after {timeout}s waiting for {what} on "
                         f"{self.admin_ip}:{self.admin_port} (last: {last!r})\n{self.log_tail()}")

    def wait_admin(self, timeout: float = 30.0) -> None:
        self._poll("/server_info", timeout, lambda status, _: status == 200)

    def wait_live(self, timeout: float = 30.0) -> None:
        """Until ``/ready`` says LIVE: the initial clusters and listeners arrived (or timed out)."""
        self._poll("/ready", timeout, lambda status, _: status == 200)

    @property
    def alive(self) -> bool:
        return self._child.alive

    @property
    def returncode(self) -> int | None:
        return self._child.returncode

    @property
    def pid(self) -> int | None:
        return self._child.pid

    def stop(self, timeout: float = 5.0) -> int | None:
        return self._child.stop(timeout)

    def kill(self) -> int | None:
        return self._child.kill()

    def log_tail(self, lines: int = 60) -> str:
        return f"--- the end of {self.log_path}:\n{self._child.log_tail(lines)}"

    def __enter__(self) -> EnvoyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- admin API

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin_ip}:{self.admin_port}"

    def _get(self, path: str, method: str = "GET", timeout: float = 2.0) -> tuple[int, str]:
        status, body, _ = http_request(self.admin_ip, self.admin_port, path, method=method, timeout=timeout)
        return status, body.decode("utf-8", "replace")

    def admin_get(self, path: str, *, expect: int | None = 200, timeout: float = 2.0) -> str:
        """GET an admin path (``/clusters``, ``/ready``...) and return the body; checks the status unless ``expect=None``."""
        status, body = self._get(path, timeout=timeout)
        if expect is not None and status != expect:
            raise EnvoyError(f"{self.name}: GET {path} -> {status}, expected {expect}: {body[:500]}")
        return body

    def admin_post(self, path: str, *, expect: int | None = 200) -> str:
        status, body = self._get(path, method="POST")
        if expect is not None and status != expect:
            raise EnvoyError(f"{self.name}: POST {path} -> {status}, expected {expect}: {body[:500]}")
        return body

    def server_info(self) -> dict[str, Any]:
        return dict(json.loads(self.admin_get("/server_info")))

    def state(self) -> str:
        """PRE_INITIALIZING, INITIALIZING, LIVE, DRAINING."""
        return str(self.server_info()["state"])

    def config_dump(self, resource: str | None = None, *, mask: str | None = None,
                    include_eds: bool = False) -> dict[str, Any]:
        """``/config_dump`` as JSON; ``resource`` picks a repeated field (``dynamic_active_clusters``),
        ``mask`` a plain one (``bootstrap``)."""
        query = []
        if resource:
            query.append(f"resource={resource}")
        if mask:
            query.append(f"mask={mask}")
        if include_eds:
            query.append("include_eds")
        path = "/config_dump" + ("?" + "&".join(query) if query else "")
        return dict(json.loads(self.admin_get(path)))

    def bootstrap_dump(self) -> dict[str, Any]:
        """The bootstrap Envoy is running, as it understood it."""
        return dict(self.config_dump(mask="bootstrap")["configs"][0]["bootstrap"])

    def _dynamic(self, resource: str, inner: str, name_key: str = "name") -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for cfg in self.config_dump(resource)["configs"]:
            item = cfg.get(inner) or {}
            if name_key in item:
                out[item[name_key]] = item
        return out

    def listeners(self) -> dict[str, dict[str, Any]]:
        """Active dynamic listeners by name (``<ip>_<port>``...)."""
        out: dict[str, dict[str, Any]] = {}
        for cfg in self.config_dump("dynamic_listeners")["configs"]:
            active = (cfg.get("active_state") or {}).get("listener")
            if active:
                out[active["name"]] = active
        return out

    def clusters(self) -> dict[str, dict[str, Any]]:
        """Active dynamic clusters by name (``outbound|80||reviews.default.svc.cluster.local``...)."""
        return self._dynamic("dynamic_active_clusters", "cluster")

    def route_configs(self) -> dict[str, dict[str, Any]]:
        """Dynamic route configurations by name (``"80"``...)."""
        return self._dynamic("dynamic_route_configs", "route_config")

    def endpoints(self, cluster: str) -> list[tuple[str, int, str]]:
        """``(address, port, health)`` of a cluster's hosts, as ``/clusters`` shows them."""
        out = []
        data = json.loads(self.admin_get("/clusters?format=json"))
        for status in data.get("cluster_statuses", []):
            if status["name"] != cluster:
                continue
            for host in status.get("host_statuses", []):
                sa = host["address"]["socket_address"]
                health = host.get("health_status", {})
                failed = [k for k, v in health.items() if k != "eds_health_status" and v]
                out.append((sa["address"], int(sa["port_value"]),
                            health.get("eds_health_status", "HEALTHY") if not failed else ",".join(failed)))
        return out

    def stats(self, pattern: str | None = None) -> dict[str, int]:
        """Counters and gauges (``/stats``), ``name -> value``; ``pattern`` is Envoy's regex ``filter``."""
        path = "/stats" + (f"?filter={quote(pattern)}" if pattern else "")
        out: dict[str, int] = {}
        for line in self.admin_get(path).splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def stat(self, name: str, default: int = 0) -> int:
        return self.stats(f"^{_regex_escape(name)}$").get(name, default)

    def validate(self) -> subprocess.CompletedProcess[str]:
        """``envoy --mode validate`` on this bootstrap (does not need start())."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.bootstrap, indent=2), encoding="utf-8")
        return validate_bootstrap(self.binary, self.config_path)

    def __repr__(self) -> str:
        return f"<EnvoyProcess {self.name} admin={self.admin_url} pid={self.pid}>"


def _regex_escape(name: str) -> str:
    # Envoy's filter is RE2; these are the characters stat names contain that RE2 treats specially.
    return "".join("\\" + c if c in r".|[](){}*+?^$\\" else c for c in name)


def validate_bootstrap(binary: str, config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, "--mode", "validate", "-c", str(config_path), "--log-level", "warn"],
        capture_output=True, text=True, timeout=60, check=False,
    )
