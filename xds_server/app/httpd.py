"""Health, metrics and debug endpoints over plain HTTP/1.1 (GET only, one request per connection).

Small enough not to need a web framework: the control plane answers a handful of
read-only paths for people and probes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = structlog.get_logger("http")

Reply = tuple[int, str, bytes]
Handler = Callable[[dict[str, list[str]]], Reply | Awaitable[Reply]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 503: "Service Unavailable"}


def json_reply(obj: object, status: int = 200) -> Reply:
    return status, "application/json", (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def text_reply(text: str, status: int = 200) -> Reply:
    return status, "text/plain; charset=utf-8", text.encode()


def metrics(_query: dict[str, list[str]]) -> Reply:
    return 200, CONTENT_TYPE_LATEST, generate_latest()


class HttpServer:
    def __init__(self, routes: dict[str, Handler]):
        self.routes = {"/metrics": metrics, **routes}
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            url = urlsplit(target)
            if method not in ("GET", "HEAD"):
                reply = text_reply("only GET\n", 405)
            elif url.path == "/":
                index = "".join(f"{p}\n" for p in sorted(self.routes))
                reply = text_reply(index)
            elif url.path in self.routes:
                result = self.routes[url.path](parse_qs(url.query))
                reply = await result if asyncio.iscoroutine(result) else result  # type: ignore[assignment]
            else:
                reply = text_reply(f"no such page: {url.path}; see /\n", 404)
            status, ctype, body = reply
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        except Exception:  # a debug page must never take the control plane down
            log.exception("debug endpoint failed")
        finally:
            writer.close()
