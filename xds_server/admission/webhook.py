"""``POST /validate``: an AdmissionReview v1 in, allowed or denied with file mode's messages out.

The same :func:`parse_object` as file mode judges the object, so a refusal names the field
exactly as ``/debug/errors`` would (``spec.http[0].route[0].weight: ...``). Warnings (unknown
fields) do not refuse. A small HTTPS/1.1 server, one request per connection: the API server
is the only client.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Histogram

from ca import IssuedCertificate
from xds_server.sources.parse import parse_object

log = structlog.get_logger("admission")

#: An AdmissionReview is small; refuse anything absurd before reading it.
MAX_BODY = 3 * 1024 * 1024
MAX_HEADER_LINES = 100

WEBHOOK_SECONDS = Histogram(
    "meshpilot_webhook_seconds",
    "Admission requests (after the TLS handshake): reading the AdmissionReview to the answer sent, by path",
    ["path"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)


def review(body: Any) -> dict[str, Any]:
    """The AdmissionReview answer for one AdmissionReview request (decoded JSON)."""
    request = body.get("request") if isinstance(body, dict) else None
    if not isinstance(request, dict):
        raise ValueError("not an AdmissionReview: no request")
    uid = request.get("uid", "")
    obj = request.get("object")
    problems: list[str] = []
    if request.get("operation") != "DELETE" and obj is not None:
        namespace = request.get("namespace") or "default"
        doc = parse_object(obj, "admission", "object", default_namespace=namespace)
        problems = [
            f"{e.field}: {e.message}" if e.field else e.message for e in doc.errors if e.severity == "error"
        ]
    response: dict[str, Any] = {"uid": uid, "allowed": not problems}
    if problems:
        response["status"] = {"code": 400, "reason": "Invalid", "message": "; ".join(problems)}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def ssl_context(cert: IssuedCertificate) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl loads keys from files only: a private temporary directory, gone once loaded.
    with tempfile.TemporaryDirectory(prefix="meshpilot-webhook-") as tmp:
        chain, key = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
        chain.write_bytes(cert.chain_pem)
        key.touch(mode=0o600)
        key.write_bytes(cert.private_key.reveal())
        ctx.load_cert_chain(chain, key)
    return ctx


#: The first request on a connection must arrive whole within this; a kept-alive connection
#: may then sit idle this long (Go's HTTP client, the API server's, drops idle ones at 90 s).
FIRST_REQUEST_TIMEOUT, IDLE_TIMEOUT = 10.0, 90.0

#: An admission handler: a decoded AdmissionReview in, the answer out (ValueError: a 400).
Handler = Callable[[Any], dict[str, Any]]


class WebhookServer:
    """Serves ``routes`` (path -> handler); by default the validating webhook at /validate."""

    def __init__(self, context: ssl.SSLContext, routes: Mapping[str, Handler] | None = None) -> None:
        self.context = context
        self.routes: dict[str, Handler] = dict(routes) if routes is not None else {"/validate": review}
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, ssl=self.context)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests on one connection in turn, kept alive as the API server's HTTP/1.1 client
        expects: a new TLS handshake per AdmissionReview costs more than the review itself."""
        timeout = FIRST_REQUEST_TIMEOUT
        try:
            while True:
                req = _Request()
                try:
                    status, payload = await asyncio.wait_for(self._answer(reader, req), timeout=timeout)
                except (TimeoutError, asyncio.IncompleteReadError):
                    if req.started or timeout == FIRST_REQUEST_TIMEOUT:
                        raise  # a request cut short (an idle kept-alive connection just ends)
                    return
                keep = status == 200 and req.keep_alive  # on errors the body may be unread: close
                body = (json.dumps(payload) + "\n").encode()
                writer.write(
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep else 'close'}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                WEBHOOK_SECONDS.labels(req.path if req.path in self.routes else "other").observe(
                    time.perf_counter() - req.started)
                if not keep:
                    return
                timeout = IDLE_TIMEOUT
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, asyncio.LimitOverrunError):
            pass
        except Exception:  # a bad request must never take the control plane down
            log.exception("admission request failed")
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, req: _Request) -> tuple[int, Any]:
        line = await reader.readuntil(b"\r\n")  # the wait for it is idle time, not the request's
        req.started = time.perf_counter()
        head = []
        while line != b"\r\n":
            head.append(line[:-2].decode("latin-1"))
            if len(head) > MAX_HEADER_LINES:
                raise ValueError("too many header lines")
            line = await reader.readuntil(b"\r\n")
        method, target, version = head[0].split(" ", 2)
        req.path = target.split("?", 1)[0]
        handler = self.routes.get(req.path)
        length = 0
        connection = ""
        for header in head[1:]:
            name, _, value = header.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection":
                connection = value.strip().lower()
        req.keep_alive = version.strip() == "HTTP/1.1" and connection != "close"
        if handler is None:
            return 404, {"error": f"no such path: {target}"}
        if method != "POST":
            return 405, {"error": "POST an AdmissionReview"}
        if not 0 < length <= MAX_BODY:
            return 400, {"error": "a Content-Length up to 3 MiB is required"}
        try:
            return 200, handler(json.loads(await reader.readexactly(length)))
        except ValueError as e:
            return 400, {"error": str(e)}


class _Request:
    """What one request on a connection said about itself (filled as it is read)."""

    __slots__ = ("started", "path", "keep_alive")

    def __init__(self) -> None:
        self.started = 0.0
        self.path = ""
        self.keep_alive = False
