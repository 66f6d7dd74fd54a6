"""networking.istio.io Sidecar: what a workload's proxy imports (egress hosts), which
ports it serves (ingress listeners) and where unknown destinations go
(outboundTrafficPolicy).

The checks are Istio's (pkg/config/validation ValidateSidecar and the functions it
calls), each at its exact field path. Its warnings (duplicated egress hosts, a selector
without labels) are found by ``warnings`` and reported by the translator.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from translators.model.base import IstioModel, Resource
from translators.model.names import KNOWN, is_ip
from translators.model.networking import (
    ISTIO_NETWORKING,
    ConnectionPoolSettings,
    Destination,
    Loc,
    Problems,
    WorkloadSelector,
)
from translators.model.types import domain_problem, is_dns1123_label

UNIX_PREFIX = "unix://"

CaptureMode = Literal["DEFAULT", "IPTABLES", "NONE"]


class SidecarPort(IstioModel):
    number: int = Field(default=0, ge=0, le=65535)  # 0: a unix domain socket listener (bind says where)
    protocol: str = ""
    name: str = ""
    targetPort: int = 0  # deprecated: no effect on a Sidecar


class SidecarTLS(IstioModel):
    """The parts of ServerTLSSettings Istio checks on a Sidecar ingress listener."""

    mode: str = "SIMPLE"
    httpsRedirect: bool = False
    credentialName: str = ""
    credentialNames: list[str] = []
    subjectAltNames: list[str] = []
    tlsCertificates: list[dict] = []


class IstioIngressListener(IstioModel):
    port: SidecarPort | None = None
    bind: str = ""
    captureMode: CaptureMode = "DEFAULT"
    defaultEndpoint: str = ""
    tls: SidecarTLS | None = None
    connectionPool: ConnectionPoolSettings | None = None


class IstioEgressListener(IstioModel):
    port: SidecarPort | None = None
    bind: str = ""
    captureMode: CaptureMode = "DEFAULT"
    hosts: list[str] = []


class OutboundTrafficPolicy(IstioModel):
    mode: Literal["REGISTRY_ONLY", "ALLOW_ANY", "ALLOW_ANY_DYNAMIC_DNS"] = "REGISTRY_ONLY"  # the proto's zero value
    egressProxy: Destination | None = None


class SidecarSpec(IstioModel):
    workloadSelector: WorkloadSelector | None = None
    ingress: list[IstioIngressListener] = []
    egress: list[IstioEgressListener] = []
    outboundTrafficPolicy: OutboundTrafficPolicy | None = None
    inboundConnectionPool: ConnectionPoolSettings | None = None


def _protocol_problem(protocol: str) -> str | None:
    # Empty means "detect"; otherwise one of Istio's protocol names (any case).
    if protocol and protocol.lower() not in KNOWN | {"https", "grpc-web", "http_proxy"}:
        return f"unsupported protocol: {protocol}"
    return None


def _port_and_bind(p: Problems, at: Loc, port: SidecarPort, bind: str, *, unix_allowed: bool) -> None:
    if port.name and not is_dns1123_label(port.name):
        p.add((*at, "port", "name"), f"invalid port name: {port.name}", port.name)
    if (m := _protocol_problem(port.protocol)) is not None:
        p.add((*at, "port", "protocol"), m, port.protocol)
    if port.number == 0 and unix_allowed:
        if not bind.startswith(UNIX_PREFIX):
            p.add((*at, "bind"), "ports with 0 value must have a unix domain socket bind address", bind)
        return
    if not 1 <= port.number <= 65535:
        p.add((*at, "port", "number"), f"port number {port.number} must be in the range 1..65535", port.number)
    if bind and not is_ip(bind):
        p.add((*at, "bind"), f"{bind} is not a valid IP address", bind)


def _default_endpoint_problem(endpoint: str) -> str | None:
    """127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port> or :<port> (Istio's rule)."""
    if endpoint.startswith(UNIX_PREFIX):
        return None if endpoint[len(UNIX_PREFIX):] else "unix domain socket path must not be empty"
    host, colon, port = endpoint.rpartition(":")
    if not colon:
        return f"defaultEndpoint {endpoint!r}: missing port in address"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host not in ("", "127.0.0.1", "0.0.0.0", "::1", "::"):
        return ("defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,[::]:port,"
                "unix://filepath or unset")
    if not port.isdigit():
        return f"defaultEndpoint port ({port}) is not a number"
    if not 1 <= int(port) <= 65535:
        return f"port number {port} must be in the range 1..65535"
    return None


def egress_host_problems(host: str) -> list[str]:
    """Istio's ValidateNamespaceSlashWildcardHostname for a sidecar: ``namespace/dnsName``,
    the namespace ``*``, ``.``, a DNS label, each optionally ``~``-prefixed (excluded)."""
    ns, slash, name = host.partition("/")
    if not slash:
        return ["host must be of form namespace/dnsName"]
    out = []
    if not ns or not name:
        out.append("config namespace and dnsName in host entry cannot be empty")
    bare = ns.removeprefix("~")
    if bare not in ("", "*", ".") and not is_dns1123_label(bare):
        out.append(f"invalid namespace value {ns!r} in sidecar")
    if not name:
        return out
    if name != "*" and "." not in name:
        out.append("short names (non FQDN) are not allowed")
    if (m := domain_problem(name)) is not None:
        out.append(m)
    elif "*" in name and name != "*" and not name.startswith("*."):
        out.append(f"partial wildcard {name!r} not allowed")
    return out


def parse_egress_host(host: str, own_namespace: str) -> tuple[str, str, bool]:
    """(namespace or "*", dnsName, excluded) of a valid egress host: ``.`` is ``own_namespace``
    and ``~`` alone is every namespace, excluded (istiod's convertIstioListenerToWrapper)."""
    ns, _, name = host.partition("/")
    excluded = ns.startswith("~")
    ns = ns.removeprefix("~") or "*"
    return (own_namespace if ns == "." else ns), name, excluded


class Sidecar(Resource):
    KIND = "Sidecar"
    API_VERSIONS = ISTIO_NETWORKING
    spec: SidecarSpec

    @model_validator(mode="after")
    def _check(self) -> Sidecar:
        s, p = self.spec, Problems()
        if not s.egress and not s.ingress and s.outboundTrafficPolicy is None and s.inboundConnectionPool is None:
            p.add(("spec",), "sidecar: empty configuration provided")
        seen: set[int] = set()
        for i, listener in enumerate(s.ingress):
            at: Loc = ("spec", "ingress", i)
            if listener.port is None:
                p.add((*at, "port"), "sidecar: port is required for ingress listeners")
                continue
            if listener.port.targetPort > 0:
                p.add((*at, "port", "targetPort"), "targetPort has no impact on Sidecars", listener.port.targetPort)
            _port_and_bind(p, at, listener.port, listener.bind, unix_allowed=False)
            if listener.port.number in seen:
                p.add((*at, "port", "number"), "sidecar: ports on IP bound listeners must be unique", listener.port.number)
            seen.add(listener.port.number)
            if listener.defaultEndpoint and (m := _default_endpoint_problem(listener.defaultEndpoint)) is not None:
                p.add((*at, "defaultEndpoint"), f"sidecar: {m}", listener.defaultEndpoint)
            if listener.tls is not None:
                _ingress_tls(p, (*at, "tls"), listener.tls, listener.port.protocol)
        seen, sockets = set(), set()
        catch_all = False
        for i, egress in enumerate(s.egress):
            at = ("spec", "egress", i)
            if egress.port is None:
                if catch_all:
                    p.add((*at, "port"), "sidecar: egress can have only one listener with empty port")
                    continue
                if i == len(s.egress) - 1:
                    catch_all = True
                else:
                    p.add((*at, "port"), "sidecar: the egress listener with empty port should be the last listener "
                          "in the list")
            else:
                port = egress.port
                if port.targetPort > 0:
                    p.add((*at, "port", "targetPort"), "targetPort has no impact on Sidecars", port.targetPort)
                _port_and_bind(p, at, port, egress.bind, unix_allowed=True)
                if port.number == 0:
                    if egress.captureMode not in ("DEFAULT", "NONE"):
                        p.add((*at, "captureMode"), "sidecar: captureMode must be DEFAULT/NONE for unix domain "
                              "socket listeners", egress.captureMode)
                    if egress.bind in sockets:
                        p.add((*at, "bind"), "sidecar: unix domain socket values for listeners must be unique")
                    sockets.add(egress.bind)
                elif port.number in seen:
                    p.add((*at, "port", "number"), "sidecar: ports on IP bound listeners must be unique", port.number)
                else:
                    seen.add(port.number)
            if not egress.hosts:
                p.add((*at, "hosts"), "sidecar: egress listener must contain at least one host")
            for k, host in enumerate(egress.hosts):
                for m in egress_host_problems(host):
                    p.add((*at, "hosts", k), m, host)
        policy = s.outboundTrafficPolicy
        if policy is not None:
            at = ("spec", "outboundTrafficPolicy")
            if policy.mode == "ALLOW_ANY_DYNAMIC_DNS":
                p.add((*at, "mode"), "sidecar: ALLOW_ANY_DYNAMIC_DNS mode is only supported in MeshConfig, not in "
                      "Sidecar resource", policy.mode)
            elif policy.egressProxy is not None:
                if policy.mode != "ALLOW_ANY":
                    p.add((*at, "egressProxy"), "sidecar: egress_proxy must be set only with ALLOW_ANY "
                          "outbound_traffic_policy mode")
                elif policy.egressProxy.port is None:
                    p.add((*at, "egressProxy", "port"), "sidecar: egress_proxy port must be non-nil")
        p.raise_any("Sidecar")
        return self

    def warnings(self) -> list[tuple[str, str]]:
        """(field, message) of what Istio accepts with a warning."""
        out = []
        selector = self.spec.workloadSelector
        if selector is not None and not selector.labels:
            out.append(("spec.workloadSelector", "workload selector without labels: the Sidecar will be applied to "
                        "all workloads in the namespace"))
        for i, listener in enumerate(self.spec.egress):
            by_ns: dict[str, set[str]] = {}
            for k, host in enumerate(listener.hosts):
                ns, _, name = host.partition("/")
                if ns.startswith("~") or not name:
                    continue
                ns = self.metadata.namespace if ns == "." else ns
                names = by_ns.setdefault(ns, set())
                if (name != "*" and (name in names or "*" in names)) or (name == "*" and names):
                    out.append((f"spec.egress[{i}].hosts[{k}]", f"duplicated egress host: {host}"))
                names.add(name)
            if "*" in by_ns.get("*", ()) and len(by_ns) != 1:
                out.append((f"spec.egress[{i}].hosts", "`*/*` host select all resources, no other hosts can be added"))
        return out


def _ingress_tls(p: Problems, at: Loc, tls: SidecarTLS, protocol: str) -> None:
    for name, bad, message in (
        ("subjectAltNames", bool(tls.subjectAltNames), "sidecar: subjectAltNames is not supported in ingress tls"),
        ("httpsRedirect", tls.httpsRedirect, "sidecar: httpsRedirect is not supported"),
        ("credentialName", bool(tls.credentialName), "sidecar: credentialName is not currently supported"),
        ("credentialNames", bool(tls.credentialNames), "sidecar: credentialNames is not currently supported"),
        ("tlsCertificates", bool(tls.tlsCertificates), "sidecar: tls_certificates is not currently supported"),
    ):
        if bad:
            p.add((*at, name), message)
    if tls.mode in ("ISTIO_MUTUAL", "AUTO_PASSTHROUGH"):
        p.add((*at, "mode"), f"configuration is invalid: cannot set mode to {tls.mode} in sidecar ingress tls", tls.mode)
    if protocol.lower() not in ("https", "tls"):
        p.add(at, "server cannot have TLS settings for non HTTPS/TLS ports")


def ingress_port(listener: IstioIngressListener) -> int:
    """The port an ingress listener forwards to: its defaultEndpoint's, else its own. The
    host is the workload's loopback (validation allows nothing else), i.e. where its app
    listens; a ``unix://`` endpoint is not served (the listener's own port is used)."""
    assert listener.port is not None
    if not listener.defaultEndpoint or listener.defaultEndpoint.startswith(UNIX_PREFIX):
        return listener.port.number
    return int(listener.defaultEndpoint.rpartition(":")[2])
