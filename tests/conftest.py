"""Fixtures shared by all tests; the end-to-end ones run real processes from ``tests/harness``.

Every process a fixture starts is stopped at teardown, and when a test fails the tail of
each process's log is attached to its report ("log of <EnvoyProcess ...>").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.append(_TESTS)  # `import harness`; appended, so tests/ca or tests/xds_server never shadow the packages

from harness import (  # noqa: E402
    ConfigDir,
    EnvoyProcess,
    LoopbackAllocator,
    MeshpilotServer,
    UpstreamServer,
)
from harness.envoy import Wait  # noqa: E402

from xds_server.local.envoy_binary import EnvoyNotFound, find_envoy  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_MESH = REPO_ROOT / "examples" / "mesh"


class _HasLog(Protocol):
    def log_tail(self, lines: int = ...) -> str: ...


_PROCESSES = pytest.StashKey[list[_HasLog]]()


def _track(request: pytest.FixtureRequest, process: _HasLog) -> None:
    request.node.stash.setdefault(_PROCESSES, []).append(process)


def assert_no_private_keys(log_paths: list[Path]) -> None:
    """Private keys live in memory only: no log of any process the suite starts may show one
    (checked at the teardown of every test that started meshpilot or Envoy)."""
    leaked = [str(p) for p in log_paths if p.exists() and b"PRIVATE KEY" in p.read_bytes()]
    assert not leaked, f"private key material in the logs of {leaked}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for process in item.stash.get(_PROCESSES, []):
            report.sections.append((f"log of {process!r}", process.log_tail(60)))
    return report


# ---------------------------------------------------------------- binaries and addresses


@pytest.fixture(scope="session")
def envoy_binary() -> str:
    """The Envoy to run. Skips when there is none, except where one is required.

    Under ``./dev`` MESHPILOT_ENVOY is always set, and CI sets MESHPILOT_REQUIRE_ENVOY, so
    a missing or broken Envoy fails there instead of silently skipping the e2e tests.
    """
    try:
        return find_envoy()
    except EnvoyNotFound as e:
        if os.environ.get("MESHPILOT_ENVOY") or os.environ.get("MESHPILOT_REQUIRE_ENVOY") or os.environ.get("CI"):
            pytest.fail(str(e), pytrace=False)
        pytest.skip(f"no Envoy binary (run the tests with ./dev test): {e}")


@pytest.fixture(scope="session")
def loopback() -> LoopbackAllocator:
    """Hands out loopback IPs unique to this session: 127.<session>.<a>.<b>."""
    return LoopbackAllocator()


@pytest.fixture
def proxy_ip(loopback: LoopbackAllocator) -> str:
    """A fresh loopback IP for one proxy (or upstream); ask ``loopback.allocate()`` for more."""
    return loopback.allocate()


@pytest.fixture
def config_dir(tmp_path: Path) -> ConfigDir:
    """An empty manifest directory; ``config_dir.copy_from(EXAMPLE_MESH)`` for the example mesh."""
    return ConfigDir(tmp_path / "mesh")


# ---------------------------------------------------------------- processes


@pytest.fixture
def start_envoy(request: pytest.FixtureRequest, envoy_binary: str, tmp_path: Path) -> Iterator[Callable[..., EnvoyProcess]]:
    """``start_envoy(bootstrap, wait="admin"|"live"|"none", name=..., log_level="info") -> EnvoyProcess``."""
    started: list[EnvoyProcess] = []

    def start(
        bootstrap: dict[str, Any],
        *,
        wait: Wait = "admin",
        name: str | None = None,
        log_level: str = "info",
        timeout: float = 30.0,
        extra_args: tuple[str, ...] = (),
    ) -> EnvoyProcess:
        name = name or f"envoy{len(started)}"
        envoy = EnvoyProcess(bootstrap, binary=envoy_binary, workdir=tmp_path / "envoy", name=name,
                             log_level=log_level, extra_args=extra_args)
        started.append(envoy)
        _track(request, envoy)
        return envoy.start(wait=wait, timeout=timeout)

    yield start
    for envoy in reversed(started):
        envoy.stop()
    assert_no_private_keys([e.log_path for e in started])


@pytest.fixture
def start_upstream(loopback: LoopbackAllocator) -> Iterator[Callable[..., UpstreamServer]]:
    """``start_upstream(ip=None, port=0, service="echo", version="", pod="") -> UpstreamServer`` (a new IP per call)."""
    started: list[UpstreamServer] = []

    def start(ip: str | None = None, port: int = 0, *, service: str = "echo", version: str = "",
              pod: str = "") -> UpstreamServer:
        server = UpstreamServer(ip or loopback.allocate(), port, service=service, version=version, pod=pod)
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def start_meshpilot(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., MeshpilotServer]]:
    """``start_meshpilot(config_dir, wait=True, extra_args=()) -> MeshpilotServer`` on free ports."""
    started: list[MeshpilotServer] = []

    def start(config_dir: Path | ConfigDir, *, wait: bool = True, timeout: float = 30.0,
              extra_args: tuple[str, ...] = ()) -> MeshpilotServer:
        path = config_dir.path if isinstance(config_dir, ConfigDir) else config_dir
        server = MeshpilotServer(path, workdir=tmp_path / "meshpilot", extra_args=extra_args,
                                 name=f"meshpilot{len(started) or ''}")
        started.append(server)
        _track(request, server)
        return server.start(wait=wait, timeout=timeout)

    yield start
    for server in reversed(started):
        server.stop()
    assert_no_private_keys([s.log_path for s in started])
