"""networking.istio.io Gateway: the servers (port, hosts, TLS) of an ingress or egress proxy.

Validation is Istio's (pkg/config/validation ValidateGateway, validateServer,
validateServerPort, validateTLSOptions and agent.ValidateNamespaceSlashWildcardHostname),
each error at its exact field path (``spec.servers[0].tls.credentialName``). What Istio
only warns about (httpsRedirect on a non-HTTP server, certificates on PASSTHROUGH, unknown
cipher suites) is left to the translator's warnings, so the resource still loads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from translators.model.base import IstioModel, Resource
from translators.model.names import is_ip
from translators.model.networking import ISTIO_NETWORKING, Problems, _labels
from translators.model.types import domain_problem, is_dns1123_label

#: Istio's protocol.Parse names (case-insensitive), and how a gateway serves each.
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTP_PROXY"})
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})
PROTOCOLS = HTTP_PROTOCOLS | TLS_PROTOCOLS | {"TCP", "UDP", "MONGO", "REDIS", "MYSQL"}

TLSMode = Literal["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"]
TLSVersion = Literal["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"]

#: Istio's security.IsValidCipherSuite list (the names Envoy's BoringSSL knows).
CIPHER_SUITES = frozenset({
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA", "AES128-SHA", "AES256-SHA", "DES-CBC3-SHA", "ECDHE-PSK-AES128-CBC-SHA",
    "ECDHE-PSK-AES256-CBC-SHA", "ECDHE-PSK-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-RSA-AES256-SHA384", "AES128-SHA256",
    "AES256-SHA256",
})


def protocol_of(name: str) -> str:
    """Istio's protocol.Parse: upper case, or "" for what it does not know."""
    upper = name.upper()
    return upper if upper in PROTOCOLS else ""


class GatewayPort(IstioModel):
    number: int = 0
    protocol: str = ""
    name: str = ""
    targetPort: int = 0

    @property
    def proto(self) -> str:
        return protocol_of(self.protocol)


class ServerTLSSettings(IstioModel):
    httpsRedirect: bool = False
    mode: TLSMode = "PASSTHROUGH"  # the proto's zero value
    serverCertificate: str = ""
    privateKey: str = ""
    caCertificates: str = ""
    caCrl: str = ""
    credentialName: str = ""
    credentialNames: list[str] = []
    subjectAltNames: list[str] = []
    verifyCertificateSpki: list[str] = []
    verifyCertificateHash: list[str] = []
    minProtocolVersion: TLSVersion = "TLS_AUTO"
    maxProtocolVersion: TLSVersion = "TLS_AUTO"
    cipherSuites: list[str] = []

    @property
    def terminates(self) -> bool:
        """The gateway holds the certificate (not PASSTHROUGH)."""
        return self.mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL")

    @model_validator(mode="after")
    def _check(self) -> ServerTLSSettings:
        # Istio's validateTLSOptions: its errors; its warnings are the translator's.
        p = Problems()
        if self.mode == "ISTIO_MUTUAL":
            for f, what in (("serverCertificate", "server certificate"), ("privateKey", "private key"),
                            ("caCertificates", "CA bundle"), ("credentialName", "credentialName"),
                            ("credentialNames", "credentialNames")):
                if getattr(self, f):
                    p.add((f,), f"ISTIO_MUTUAL TLS cannot have associated {what}", getattr(self, f))
            p.raise_any("ServerTLSSettings")
            return self
        sources = [f for f, v in (("serverCertificate/privateKey", self.serverCertificate and self.privateKey),
                                  ("credentialName", self.credentialName),
                                  ("credentialNames", self.credentialNames)) if v]
        if len(sources) > 1:
            p.add((), f"only one of credentialName, credentialNames, serverCertificate/privateKey should be "
                  f"specified (got {', '.join(sources)})")
        if self.mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL") and not (self.credentialName or self.credentialNames):
            prefix = "SIMPLE TLS" if self.mode == "SIMPLE" else "MUTUAL TLS"
            if self.mode != "SIMPLE" and not self.caCertificates:
                p.add(("caCertificates",), f"{prefix} requires a client CA bundle (or a credentialName)")
            if not self.serverCertificate:
                p.add(("serverCertificate",), f"{prefix} requires a server certificate (or a credentialName)")
            if not self.privateKey:
                p.add(("privateKey",), f"{prefix} requires a private key (or a credentialName)")
        if self.caCrl:
            if self.credentialName:
                p.add(("caCrl",), "CRL is not supported with credentialName. CRL has to be specified in the credential")
            if self.mode == "SIMPLE":
                p.add(("caCrl",), "CRL is not supported with SIMPLE TLS")
        if self.credentialName and not _is_secret_name(self.credentialName):
            p.add(("credentialName",), f"credentialName {self.credentialName!r} is not a Secret name",
                  self.credentialName)
        p.raise_any("ServerTLSSettings")
        return self


def _is_secret_name(name: str) -> bool:
    # A Kubernetes object name; istiod also accepts "kubernetes://name" and "<ns>/<name>" is not meaningful.
    name = name.removeprefix("kubernetes://")
    return 0 < len(name) <= 253 and all(is_dns1123_label(part) for part in name.split("."))


def host_problem(host: str) -> str | None:
    """Istio's ValidateNamespaceSlashWildcardHostname for gateways: ``[ns/]dnsName`` with
    ``ns`` one of ``*``, ``.`` or a namespace name, and ``dnsName`` ``*``, a wildcard
    domain or an IP, never a short name."""
    ns, slash, name = host.partition("/")
    if not slash:
        ns, name = "", host
    elif not ns or not name:
        return "config namespace and dnsName in host entry cannot be empty"
    elif ns not in ("*", ".") and not is_dns1123_label(ns):
        return f"invalid namespace value {ns!r} in gateway"
    if name != "*" and "." not in name:
        return f"short names (non FQDN) are not allowed: {name!r}"
    if (problem := domain_problem(name)) is not None and not is_ip(name):
        return problem
    if "*" in name and name != "*" and not name.startswith("*."):
        return f"partial wildcard {name!r} not allowed"
    return None


class Server(IstioModel):
    port: GatewayPort | None = None
    bind: str = ""
    hosts: list[str] = []
    tls: ServerTLSSettings | None = None
    defaultEndpoint: str = ""
    name: str = ""

    @model_validator(mode="after")
    def _check(self) -> Server:
        p = Problems()
        if not self.hosts:
            p.add(("hosts",), "server config must contain at least one host")
        for i, host in enumerate(self.hosts):
            if (problem := host_problem(host)) is not None:
                p.add(("hosts", i), problem, host)
        port = self.port
        if port is None:
            p.add(("port",), "port is required")
        else:
            port_ok = True
            if not port.proto:
                p.add(("port", "protocol"), f"invalid protocol {port.protocol!r}, supported protocols are HTTP, "
                      "HTTP2, GRPC, GRPC-WEB, HTTPS, TLS, MONGO, REDIS, MYSQL, TCP", port.protocol)
                port_ok = False
            if not 1 <= port.number <= 65535:
                p.add(("port", "number"), f"port number {port.number} must be in the range 1..65535", port.number)
                port_ok = False
            if port.targetPort:
                p.add(("port", "targetPort"), "targetPort has no impact on Gateways", port.targetPort)
                port_ok = False
            if not port.name:
                p.add(("port", "name"), "port name must be set")
                port_ok = False
            if port_ok:
                proto = port.proto
                if proto in TLS_PROTOCOLS and self.tls is None:
                    p.add(("tls",), "server must have TLS settings for HTTPS/TLS protocols")
                elif proto not in TLS_PROTOCOLS and self.tls is not None:
                    t = self.tls
                    if proto in HTTP_PROTOCOLS:
                        if t.mode != "PASSTHROUGH" or t.caCertificates or t.privateKey or t.serverCertificate:
                            p.add(("tls",), "server cannot have TLS settings for plain text HTTP ports "
                                  "(only httpsRedirect)")
                    else:
                        p.add(("tls",), "server cannot have TLS settings for non HTTPS/TLS ports")
        if self.bind and not is_ip(self.bind):
            p.add(("bind",), f"bind {self.bind!r} must be an IP address", self.bind)
        p.raise_any("Server")
        return self


class GatewaySpec(IstioModel):
    servers: list[Server] = []
    selector: dict[str, str] = {}

    @model_validator(mode="after")
    def _check(self) -> GatewaySpec:
        p = Problems()
        if not self.servers:
            p.add(("servers",), "gateway must have at least one server")
        names: dict[str, int] = {}
        for i, s in enumerate(self.servers):
            if s.port is None or not s.port.name:
                continue
            if s.port.name in names:
                p.add(("servers", i, "port", "name"), f"port names in servers must be unique: duplicate name "
                      f"{s.port.name} (also spec.servers[{names[s.port.name]}])", s.port.name)
            names.setdefault(s.port.name, i)
        _labels(p, ("selector",), self.selector)
        p.raise_any("GatewaySpec")
        return self


class Gateway(Resource):
    KIND = "Gateway"
    API_VERSIONS = ISTIO_NETWORKING
    spec: GatewaySpec

    @model_validator(mode="after")
    def _name(self) -> Gateway:
        if not is_dns1123_label(self.metadata.name):
            p = Problems()
            p.add(("metadata", "name"), f"invalid gateway name: {self.metadata.name!r} (a DNS label, no dots)",
                  self.metadata.name)
            p.raise_any("Gateway")
        return self

