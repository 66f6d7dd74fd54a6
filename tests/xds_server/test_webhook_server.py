"""The admission webhook's HTTP/1.1 server (real TLS on loopback): the API server's client keeps
connections alive, so several AdmissionReviews share one connection and one handshake, and a
connection is closed when asked, after an error, or when it sits idle."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from harness.net import free_port

from ca import CertificateAuthority
from xds_server.admission import webhook
from xds_server.admission.webhook import WebhookServer, ssl_context

REVIEW = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                     "request": {"uid": "u-1", "operation": "CREATE"}}).encode()


def _request(path: str = "/validate", body: bytes = REVIEW, headers: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: meshpilot\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(head[0].split()[1]), headers, json.loads(body)


@pytest.fixture
def server(tmp_path: Path) -> tuple[WebhookServer, ssl.SSLContext]:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    client = ssl.create_default_context(cadata=ca.trust_bundle().decode())
    return WebhookServer(ssl_context(ca.server_certificate(["meshpilot"], ip_addresses=["127.0.0.1"]))), client


def test_reviews_share_a_kept_alive_connection_until_it_is_closed(
        server: tuple[WebhookServer, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch) -> None:
    srv, client = server
    monkeypatch.setattr(webhook, "IDLE_TIMEOUT", 0.5)

    async def run() -> None:
        port = free_port("127.0.0.1")
        await srv.start("127.0.0.1", port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="meshpilot")
            for uid in ("u-1", "u-2", "u-3"):  # one connection, one handshake, three reviews
                writer.write(_request(body=REVIEW.replace(b"u-1", uid.encode())))
                status, headers, answer = await _response(reader)
                assert (status, headers["connection"], answer["response"]["uid"]) == (200, "keep-alive", uid)
            # Idle past IDLE_TIMEOUT: the server ends the connection quietly.
            assert await asyncio.wait_for(reader.read(), timeout=5) == b""
            writer.close()

            # "Connection: close" is honoured after the answer.
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="meshpilot")
            writer.write(_request(headers="Connection: close\r\n"))
            status, headers, _ = await _response(reader)
            assert (status, headers["connection"]) == (200, "close")
            assert await asyncio.wait_for(reader.read(), timeout=5) == b""
            writer.close()

            # An error closes too: its body may not have been read.
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="meshpilot")
            writer.write(_request(path="/nowhere"))
            status, headers, answer = await _response(reader)
            assert (status, headers["connection"]) == (404, "close")
            assert answer == {"error": "no such path: /nowhere"}
            assert await asyncio.wait_for(reader.read(), timeout=5) == b""
            writer.close()
        finally:
            await srv.close()

    asyncio.run(run())
