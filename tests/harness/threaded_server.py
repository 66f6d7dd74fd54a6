"""A test HTTP server on its own thread: the lifecycle shared by the harness's servers."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Any


class ThreadedServer:
    """Owns a ``ThreadingHTTPServer`` on ``ip:port`` (0: any free port) served from a daemon
    thread. Subclasses say how to make the server (``_make_server``) and what it is called."""

    name = "server"

    def __init__(self, ip: str, port: int) -> None:
        self._address = (ip, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _make_server(self) -> ThreadingHTTPServer:
        raise NotImplementedError

    def start(self) -> Any:
        server = self._make_server()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    @property
    def ip(self) -> str:
        return self._address[0]

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else self._address[1]
