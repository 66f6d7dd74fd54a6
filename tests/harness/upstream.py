"""The demo echo app as a test upstream: real HTTP on an ip:port, in this process, counting requests."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

ECHO_APP = Path(__file__).resolve().parents[2] / "examples" / "apps" / "echo.py"


@cache
def _echo_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("meshpilot_echo_app", ECHO_APP)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the echo app from {ECHO_APP}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class UpstreamServer:
    """Answers like a demo app pod: JSON with service, version, pod, path, method, host, headers.

    ``?status=503`` and ``?delay_ms=200`` in a request make it fail or be slow on purpose,
    ``?header=x-name:value`` adds a response header; ``fail_next(n)`` and ``script(...)``
    decide the next answers from the test's side (to count a proxy's attempts).
    """

    def __init__(self, ip: str, port: int = 0, *, service: str = "echo", version: str = "", pod: str = "") -> None:
        self._echo: Any = _echo_module().EchoServer([(ip, port)], service=service, version=version, pod=pod)

    def start(self) -> UpstreamServer:
        self._echo.start()
        return self

    def stop(self) -> None:
        self._echo.stop()

    @property
    def ip(self) -> str:
        return str(self._echo.addresses[0][0] if self._echo.addresses else self._echo.listen[0][0])

    @property
    def port(self) -> int:
        return int(self._echo.addresses[0][1] if self._echo.addresses else self._echo.listen[0][1])

    @property
    def identity(self) -> dict[str, str]:
        return dict(self._echo.identity)

    @property
    def requests(self) -> int:
        """Requests answered since start (or the last ``reset()``)."""
        return int(self._echo.requests)

    @property
    def paths(self) -> list[str]:
        return list(self._echo.paths)

    @property
    def seen(self) -> list[dict[str, Any]]:
        """Each request as it arrived: ``{"method", "path", "host", "headers"}``."""
        return list(self._echo.seen)

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """The next ``n`` requests are answered with ``status``, whatever they ask for."""
        self._echo.fail_next(n, status)

    def script(self, *steps: dict[str, int]) -> None:
        """The next requests' answers, one step each: ``{"status": 503}``, ``{"delay_ms": 2000}``."""
        self._echo.script(*steps)

    def reset(self) -> None:
        """Counters, recorded requests and the script back to empty."""
        self._echo.reset()

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<UpstreamServer {self.identity['pod']} {self.ip}:{self.port} requests={self.requests}>"
