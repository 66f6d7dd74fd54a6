"""``meshpilot serve`` as a test's control plane: a real subprocess on free ports."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from xds_server.local.processes import ChildProcess, free_port, http_request

REPO_ROOT = Path(__file__).resolve().parents[2]


class MeshpilotError(AssertionError):
    """The server did not come up, or died; carries its log's tail."""


class MeshpilotServer:
    """``python -m xds_server.app.cli serve --config-dir DIR --xds-address ... --http-address ...``.

    Ports are chosen once, so ``restart()`` comes back on the same addresses (what a
    proxy reconnecting to its control plane expects).
    """

    def __init__(
        self,
        config_dir: Path,
        *,
        workdir: Path,
        host: str = "127.0.0.1",
        xds_port: int | None = None,
        http_port: int | None = None,
        tls_port: int | None = None,
        ca_state: Path | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        name: str = "meshpilot",
    ) -> None:
        self.config_dir = config_dir
        self.host = host
        self.xds_port = xds_port or free_port(host)
        self.http_port = http_port or free_port(host)
        self.tls_port = tls_port or free_port(host)
        # The CA's state (root, token key) stays in the test's directory, never the user's.
        self.ca_state = ca_state or workdir / "ca-state"
        self.name = name
        self.log_path = workdir / f"{name}.log"
        argv = [
            sys.executable, "-m", "xds_server.app.cli", "serve",
            "--config-dir", str(config_dir),
            "--xds-address", self.xds_address,
            "--http-address", self.http_address,
            "--xds-tls-address", self.xds_tls_address,
            "--ca-state", str(self.ca_state),
            *extra_args,
        ]
        self._child = ChildProcess(name, argv, log_path=self.log_path,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, cwd=REPO_ROOT)

    @property
    def xds_address(self) -> str:
        """``HOST:PORT``, what ``build_bootstrap(xds_address=...)`` takes."""
        return f"{self.host}:{self.xds_port}"

    @property
    def xds_tls_address(self) -> str:
        """The TLS xDS port, where proxies with a token get their certificates."""
        return f"{self.host}:{self.tls_port}"

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    # -- lifecycle

    def start(self, wait: bool = True, timeout: float = 30.0) -> MeshpilotServer:
        self._child.start()
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until ``GET /healthz`` answers 200 (the configuration is loaded)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.alive:
                raise MeshpilotError(f"{self.name} exited with {self.returncode} before /healthz answered\n"
                                     f"{self.log_tail()}")
            try:
                status, body, _ = http_request(self.host, self.http_port, "/healthz", timeout=1)
                if status == 200:
                    return
                last = f"HTTP {status}: {body[:200]!r}"
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise MeshpilotError(f"{self.name}: /healthz not 200 after {timeout}s (last: {last!r})\n{self.log_tail()}")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM (a graceful shutdown), SIGKILL after ``timeout``."""
        return self._child.stop(timeout)

    def kill(self) -> int | None:
        """SIGKILL: a crash, as far as the proxies can tell."""
        return self._child.kill()

    def restart(self, wait: bool = True, timeout: float = 30.0, *, graceful: bool = True) -> MeshpilotServer:
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start(wait=wait, timeout=timeout)

    @property
    def alive(self) -> bool:
        return self._child.alive

    @property
    def returncode(self) -> int | None:
        return self._child.returncode

    def log_tail(self, lines: int = 60) -> str:
        return f"--- the end of {self.log_path}:\n{self._child.log_tail(lines)}"

    def __enter__(self) -> MeshpilotServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- its HTTP side

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        """GET on the http address (``/healthz``, ``/debug/...``): ``(status, JSON or text)``."""
        status, body, _ = http_request(self.host, self.http_port, path, timeout=timeout)
        text = body.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def __repr__(self) -> str:
        return f"<MeshpilotServer xds={self.xds_address} http={self.http_address} alive={self.alive}>"
