"""Child processes of local mode (``meshpilot demo``, the e2e harness): Envoys, demo apps, the server.

Every child gets its own process group (so stopping it stops whatever it forked) and,
on Linux, is killed by the kernel if its parent dies without cleaning up, so neither a
crash nor ``kill -9`` of the demo leaves Envoys holding ports.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ChildProcess:
    """One child in its own process group, its output in ``log_path`` (or discarded)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> ChildProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self.proc.pid})")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        out = self._log if self._log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # the group id is the child's pid (start_new_session)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the whole group, SIGKILL it after ``timeout``; idempotent."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(5)
        # Children that outlived their leader still hold the group: make sure they go too.
        self._signal_group(signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the group at once (a crash, as far as everyone else can tell)."""
        if self.proc is None:
            return None
        self._signal_group(signal.SIGKILL)
        self.proc.wait(5)
        return self.stop()

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.returncode}"
        return f"<{self.name} pid={self.pid} {state}>"


def envoy_argv(
    binary: str,
    config_path: Path | str,
    *,
    log_level: str = "warn",
    concurrency: int = 1,
    extra: Sequence[str] = (),
) -> list[str]:
    """How local mode runs Envoy: many per machine, so a dynamic base id and one worker each."""
    return [
        binary,
        "-c", str(config_path),
        "--use-dynamic-base-id",
        "--log-level", log_level,
        "--concurrency", str(concurrency),
        "--drain-time-s", "1",
        *extra,
    ]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    return can_bind(host, port) is True


def can_bind(host: str, port: int) -> bool | None:
    """True if free, False if taken, None if not allowed (a port below 1024 as a normal user)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except PermissionError:
            return None
        except OSError:
            return False
        return True


def http_request(
    host: str,
    port: int,
    path: str = "/",
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 2.0,
    method: str = "GET",
    body: bytes | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    """One HTTP/1.1 request on a fresh connection: (status, body, lower-cased headers)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def wait_for(
    fn: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
    check: Callable[[], None] | None = None,
) -> T:
    """Call ``fn`` until it returns something truthy (exceptions count as not yet).

    ``check`` runs before each try and may raise to give up early (a child died).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        if check is not None:
            check()
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # any failure means "not yet"
            last = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last!r})" if last else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)
