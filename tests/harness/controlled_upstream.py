"""A test pod whose behaviour the test switches while traffic flows: fail, recover, slow down.

    pod = ControlledUpstream("127.64.1.9", 8080, pod="flaky-a").start()
    pod.status = 503     # every request from now on fails
    pod.delay = 0.5      # ...and answers half a second late
    pod.requests, pod.max_in_flight

Unlike ``UpstreamServer`` (the echo app, misbehaving per request through its query
string), this one misbehaves per pod, which is what outlier detection and load-aware
balancing need: one endpoint of several is the bad one, whatever the request says.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness.threaded_server import ThreadedServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        pod = self.server.pod
        status, delay = pod.enter(self.path)
        try:
            if delay:
                time.sleep(delay)
            data = (json.dumps({"pod": pod.name, "path": self.path, "status": status,
                                "headers": {k.lower(): v for k, v in self.headers.items()}}) + "\n").encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-echo-pod", pod.name)
            self.end_headers()
            self.wfile.write(data)
        finally:
            pod.leave()

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    pod: ControlledUpstream


class ControlledUpstream(ThreadedServer):
    """HTTP/1.1 on ``ip:port``; every answer is ``status`` after ``delay`` seconds (both settable)."""

    def __init__(self, ip: str, port: int = 0, *, pod: str = "pod", status: int = 200, delay: float = 0.0) -> None:
        self.name = pod
        self.status = status
        self.delay = delay
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.paths: list[str] = []
        super().__init__(ip, port)
        self._lock = threading.Lock()

    def enter(self, path: str) -> tuple[int, float]:
        with self._lock:
            self.requests += 1
            self.paths.append(path)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.status, self.delay

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.max_in_flight = self.in_flight
            self.paths.clear()

    def _make_server(self) -> _Server:
        server = _Server(self._address, _Handler)
        server.pod = self
        return server

    def __repr__(self) -> str:
        return (f"<ControlledUpstream {self.name} {self.ip}:{self.port} status={self.status} delay={self.delay} "
                f"requests={self.requests}>")
