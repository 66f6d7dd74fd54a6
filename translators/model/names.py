"""Names and small vocabularies shared by the translators: Istio cluster names, port
protocols, host name resolution and label selection."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

DOMAIN_SUFFIX = "svc.cluster.local"
BLACKHOLE = "BlackHoleCluster"


def outbound_cluster(port: int, host: str, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{host}"


def inbound_cluster(port: int) -> str:
    return f"inbound|{port}||"


def outbound_listener(ip: str, port: int) -> str:
    return f"{ip}_{port}"


def inbound_listener(ip: str, port: int) -> str:
    # Prefixed like Istio's inbound cluster names so it never collides with the outbound
    # listener name for the same ip:port, and sorts apart from it.
    return f"inbound|{ip}_{port}"


def kube_host(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.{DOMAIN_SUFFIX}"


def resolve_host(host: str, namespace: str) -> str:
    """Istio's short-name rule: a host without a dot is a Service in ``namespace``.

    Anything with a dot (``reviews.default``, ``*.example.com``) is taken as written, as Istio does.
    """
    if "." in host or host == "*":
        return host
    return kube_host(host, namespace)


def is_ip(host: str) -> bool:
    """An IPv4 or IPv6 address, not a host name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_matches(pattern: str, host: str) -> bool:
    """``*.example.com`` matches ``a.example.com`` and ``a.b.example.com``; ``*`` matches all."""
    if pattern == host:
        return True
    if pattern.startswith("*"):
        return host.endswith(pattern[1:])
    return False


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A label selector (non-empty) matches when ``labels`` is a superset of it."""
    return all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------- protocols

# Istio's protocol names (``<proto>`` or ``<proto>-suffix`` port names, appProtocol, or the
# ServiceEntry port ``protocol``), lower-cased. HTTP-family ports get an HTTP connection
# manager; ``https``/``tls`` are opaque TLS (routed by SNI); the rest are opaque TCP; a
# port that says nothing we know is ``auto``: detected on the wire (features/l4.py).
HTTP_FAMILY = frozenset({"http", "http2", "grpc", "grpc-web", "http_proxy"})
HTTP2_UPSTREAM = frozenset({"http2", "grpc", "grpc-web"})
TLS_FAMILY = frozenset({"https", "tls"})
KNOWN = HTTP_FAMILY | TLS_FAMILY | {"tcp", "mongo", "redis", "mysql", "thrift", "udp"}
AUTO = "auto"

_APP_PROTOCOLS = {"kubernetes.io/h2c": "http2", "kubernetes.io/ws": "http", "kubernetes.io/wss": "https"}


def port_protocol(name: str, app_protocol: str | None = None, declared: str = "") -> str:
    """The Istio protocol of a port; explicit ``declared``/``appProtocol`` beat the name prefix.

    Unnamed ports and unknown names are ``auto``, as in Istio: the proxy sniffs HTTP.
    """
    for explicit in (declared, app_protocol):
        if explicit:
            proto = _APP_PROTOCOLS.get(explicit.lower(), explicit.lower())
            if proto in KNOWN:
                return proto
    prefix = name.lower().split("-", 1)[0]
    return prefix if prefix in KNOWN else AUTO


def is_http(protocol: str) -> bool:
    """Declared HTTP: only HTTP reaches this port."""
    return protocol in HTTP_FAMILY


def carries_http(protocol: str) -> bool:
    """HTTP may reach this port (declared, or detected on an ``auto`` port): it has routes."""
    return protocol in HTTP_FAMILY or protocol == AUTO


def is_tls(protocol: str) -> bool:
    """Opaque TLS for a sidecar: proxied by SNI, never terminated."""
    return protocol in TLS_FAMILY


# ---------------------------------------------------------------- localities


def parse_locality(text: str) -> tuple[str, str, str]:
    """``region/zone/subzone`` (missing parts empty); also Istio's label form ``a.b.c``."""
    parts = (text.replace(".", "/") if "/" not in text else text).split("/")
    parts += ["", "", ""]
    return parts[0], parts[1], parts[2]


def locality_of_labels(labels: Mapping[str, str]) -> str:
    """A pod's locality from its labels: Istio's ``istio-locality`` or the topology labels."""
    if labels.get("istio-locality"):
        return "/".join(parse_locality(labels["istio-locality"])).rstrip("/")
    region = labels.get("topology.kubernetes.io/region", "")
    zone = labels.get("topology.kubernetes.io/zone", "")
    sub = labels.get("topology.istio.io/subzone", "")
    return "/".join((region, zone, sub)).rstrip("/") if region or zone or sub else ""
