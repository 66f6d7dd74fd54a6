#!/usr/bin/env python3
"""A tiny demo app: answers every request with JSON saying who answered and what it saw.

    python examples/apps/echo.py --listen 127.0.20.2:8080 --service reviews --version v1 --pod reviews-v1

    $ curl -s 127.0.20.2:8080/hello
    {"service": "reviews", "version": "v1", "pod": "reviews-v1", "path": "/hello", ...}

Query parameters make it misbehave on purpose: ``?status=503`` answers with that
status, ``?delay_ms=500`` answers late, ``?header=x-name:value`` (repeatable) adds a
response header. Standard library only; also importable (``EchoServer``) so tests can
run it in-process, count requests and script the next answers (``fail_next(1)``: the
next request gets a 503, the one after is normal again).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; do not wait 40ms between

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        echo = self.server.echo
        step = echo.record(self)  # a scripted answer wins over the query's
        delay_ms = step.get("delay_ms", int(query["delay_ms"][0]) if "delay_ms" in query else 0)
        if delay_ms:
            time.sleep(delay_ms / 1000)
        status = step.get("status", int(query["status"][0]) if "status" in query else 200)
        values: dict[str, list[str]] = {}
        for k, v in self.headers.items():
            values.setdefault(k.lower(), []).append(v)
        body: dict[str, Any] = {
            **echo.identity,
            "path": self.path,
            "method": self.command,
            "host": self.headers.get("host", ""),
            "listener": "{}:{}".format(*self.server.server_address[:2]),
            "client": self.client_address[0],
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "header_values": values,  # every value of a repeated header, in order
        }
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-echo-pod", echo.identity["pod"])
        for spec in query.get("header", []):
            name, _, value = spec.partition(":")
            self.send_header(name.strip(), value.strip())
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.echo.verbose:
            sys.stderr.write(f"{self.server.echo.identity['pod']}: {format % args}\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    echo: EchoServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A proxy that gave up on a slow answer (a timeout) closed the connection: not an error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class EchoServer:
    """The app on one or more ``(host, port)`` addresses, in background threads."""

    def __init__(
        self,
        listen: list[tuple[str, int]],
        *,
        service: str = "echo",
        version: str = "",
        pod: str = "",
        verbose: bool = False,
    ) -> None:
        self.listen = listen
        self.identity = {"service": service, "version": version, "pod": pod or service}
        self.verbose = verbose
        self.requests = 0
        self.paths: list[str] = []
        # method, path, host and headers of the latest requests (bounded: the demo runs for long)
        self.seen: deque[dict[str, Any]] = deque(maxlen=10_000)
        self._script: deque[dict[str, int]] = deque()
        self._lock = threading.Lock()
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []

    def record(self, handler: BaseHTTPRequestHandler) -> dict[str, int]:
        """Count a request; returns the scripted answer for it ({} when none is queued)."""
        with self._lock:
            self.requests += 1
            self.paths.append(handler.path)
            self.seen.append({"method": handler.command, "path": handler.path,
                              "host": handler.headers.get("host", ""),
                              "headers": {k.lower(): v for k, v in handler.headers.items()}})
            return self._script.popleft() if self._script else {}

    def script(self, *steps: dict[str, int]) -> None:
        """The next requests' answers, one step each: ``{"status": 503}``, ``{"delay_ms": 2000}``
        or both; after the last step, requests are answered normally again."""
        with self._lock:
            self._script.extend(dict(s) for s in steps)

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        self.script(*({"status": status} for _ in range(n)))

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.paths.clear()
            self.seen.clear()
            self._script.clear()

    def start(self) -> EchoServer:
        for host, port in self.listen:
            server = _Server((host, port), _Handler)
            server.echo = self
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=f"echo-{host}:{port}",
                                      daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where it listens (real ports, when port 0 was asked for)."""
        return [(s.server_address[0], s.server_address[1]) for s in self._servers]  # type: ignore[misc]

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(5)
        self._servers.clear()
        self._threads.clear()


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--listen", action="append", type=_address, required=True, metavar="HOST:PORT",
                        help="address to answer on (repeatable)")
    parser.add_argument("--service", default="echo")
    parser.add_argument("--version", default="")
    parser.add_argument("--pod", default="")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    app = EchoServer(args.listen, service=args.service, version=args.version, pod=args.pod,
                     verbose=args.verbose).start()
    where = ", ".join(f"{h}:{p}" for h, p in app.addresses)
    print(f"echo {app.identity['pod']} ({args.service} {args.version}) listening on {where}", flush=True)
    stop.wait()
    app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
