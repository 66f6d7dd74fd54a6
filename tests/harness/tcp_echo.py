"""A raw TCP upstream for L4 tests, and the client calls that go with it.

``TcpEcho`` answers each line it reads with ``<name>: <line>``, so a test knows which
backend a connection reached. A first line that is an HTTP request line (``GET / HTTP/1.1``)
gets an HTTP answer instead (JSON: the name and the request headers it saw), so one
app serves both protocols on one port, as a sniffed (``auto``) port must carry both.
"""

from __future__ import annotations

import json
import re
import socket
import socketserver
import ssl
from typing import Any

from harness.threaded_server import ThreadedServer

_REQUEST_LINE = re.compile(rb"^[A-Z]+ \S+ HTTP/1\.[01]\r?\n$")


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        name = self.server.echo.name
        first = self.rfile.readline(65536)
        if not first:
            return
        self.server.echo.connections += 1
        if _REQUEST_LINE.match(first):
            headers = {}
            while (line := self.rfile.readline(65536).rstrip(b"\r\n")):
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            body = json.dumps({"pod": name, "protocol": "http", "headers": headers}).encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            return
        line = first
        while line:
            self.wfile.write(f"{name}: ".encode() + line)
            self.wfile.flush()
            line = self.rfile.readline(65536)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    echo: TcpEcho


class TcpEcho(ThreadedServer):
    """A line echo server on ``ip:port`` answering as ``name``."""

    def __init__(self, ip: str, port: int, name: str) -> None:
        super().__init__(ip, port)
        self.name = name
        self.connections = 0

    def _make_server(self) -> Any:
        server = _Server(self._address, _Handler)
        server.echo = self
        return server

    def __repr__(self) -> str:
        return f"<TcpEcho {self.name} {self.ip}:{self.port}>"


def tcp_call(ip: str, port: int, line: str = "ping", timeout: float = 3.0) -> str:
    """Send ``line`` on a new connection; the one line that comes back, without its newline.

    Lower-case by default: HTTP detection gives up on the first byte that no method has."""
    with socket.create_connection((ip, port), timeout=timeout) as sock:
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().rstrip("\n")


def tls_call(ip: str, port: int, sni: str, timeout: float = 3.0) -> dict[str, Any]:
    """An HTTPS GET (certificate not verified: the test is about where SNI leads) on a new
    connection sending ``sni``; the TlsUpstream's JSON answer."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((ip, port), timeout=timeout) as raw, ctx.wrap_socket(raw, server_hostname=sni) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: " + sni.encode() + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return dict(json.loads(body))
