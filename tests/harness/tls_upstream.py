"""A TLS upstream for tests, and the test PKI it needs (made with ``cryptography``).

    pki = TestPki(tmp_dir)
    ca = pki.ca("test-ca")
    server = pki.issue(ca, "secure", sans=["secure.example"])
    client = pki.issue(ca, "client-sidecar", client=True)
    up = TlsUpstream("127.64.1.5", 8443, server, client_ca=ca).start()

Each answer is JSON saying what the TLS layer saw: the SNI the client sent and the
subject of the client certificate (when one was verified), so a test can tell SIMPLE
from MUTUAL by what reached the server, not by what the proxy was told.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness.threaded_server import ThreadedServer


@dataclass(frozen=True)
class Pem:
    """A certificate and its key as PEM files (``cert`` alone for a CA bundle)."""

    name: str
    cert: Path
    key: Path


class TestPki:
    """Writes CAs and leaf certificates (P-256, valid from yesterday for a day or so) to ``directory``."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _write(self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return Pem(name, cert_path, key_path)

    @staticmethod
    def _builder(subject: str, issuer: x509.Name | None, public_key: Any) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2)))

    def ca(self, name: str) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (self._builder(name, None, key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False),
                               critical=True)
                .sign(key, hashes.SHA256()))
        return self._write(name, cert, key)

    def issue(self, ca: Pem, name: str, *, sans: list[str] | tuple[str, ...] = (), client: bool = False) -> Pem:
        ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), None)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for san in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (self._builder(name, ca_cert.subject, key.public_key())
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]  # EC, as ca() makes
        return self._write(name, cert, key)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        up = self.server.upstream
        conn: Any = self.connection
        peer = conn.getpeercert() or {}
        subject = dict(item for rdn in peer.get("subject", ()) for item in rdn)
        seen = {"pod": up.name, "path": self.path, "sni": up.sni_of(conn), "client_cn": subject.get("commonName", ""),
                "tls_version": conn.version(), "alpn": conn.selected_alpn_protocol() or ""}
        up.record(seen)
        data = (json.dumps(seen) + "\n").encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    upstream: TlsUpstream

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs here, in the connection's own thread, so a client that fails
        # it (wrong CA, no certificate) cannot stall the accept loop.
        try:
            tls = self.upstream.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.upstream.handshake_failed(e)
            return
        try:
            _Handler(tls, client_address, self)
        finally:
            tls.close()


class TlsUpstream(ThreadedServer):
    """HTTPS (HTTP/1.1 over TLS 1.2+) on ``ip:port`` with ``server``'s certificate; with
    ``client_ca`` it requires a client certificate issued by that CA."""

    def __init__(self, ip: str, port: int, server: Pem, *, client_ca: Pem | None = None, pod: str = "tls") -> None:
        self.name = pod
        self.requests: list[dict[str, str]] = []
        self.handshake_errors: list[str] = []
        super().__init__(ip, port)
        self._lock = threading.Lock()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(server.cert, server.key)
        ctx.set_alpn_protocols(["http/1.1"])
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca.cert)
        ctx.sni_callback = self._on_sni
        self.context = ctx

    @staticmethod
    def _on_sni(sock: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        sock.sni_seen = name or ""  # on the connection itself: every request on it reads it

    @staticmethod
    def sni_of(sock: Any) -> str:
        return str(getattr(sock, "sni_seen", ""))

    def record(self, seen: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(seen)

    def handshake_failed(self, error: Exception) -> None:
        with self._lock:
            self.handshake_errors.append(str(error))

    def _make_server(self) -> _Server:
        server = _Server(self._address, _Handler)
        server.upstream = self
        return server

    def __repr__(self) -> str:
        return f"<TlsUpstream {self.name} {self.ip}:{self.port} requests={len(self.requests)}>"
