"""``meshpilot bootstrap``: the Envoy bootstrap that points a sidecar or gateway at meshpilot.

The node is written the way Istio writes it, so the server reads it back the same way
(see ``xds_server/app/node.py``)::

    id        <sidecar|router>~<ip>~<pod>.<ns>~<ns>.svc.cluster.local
    cluster   <app label or pod>.<ns>
    metadata  NAMESPACE, LABELS, SERVICE_ACCOUNT, INSTANCE_IPS, NAME, MESHPILOT_ROLE
              (and INTERCEPTION_MODE=REDIRECT with ``--capture``)

Everything else comes over ADS. Without traffic capture each proxy owns one IP: its
listeners bind there, its admin listens there and its connection to meshpilot leaves
from there, so one machine can host many proxies on 127.0.0.0/8. With ``--capture`` (an
injected pod, whose iptables send its traffic to 15001 and 15006) it gets Istio's
virtual listeners instead (translators/listeners.py).

Two ways to reach meshpilot:

* ``--xds-address``: the plaintext port (15010). Config only: no certificate is ever
  served there, so the proxy has no mesh identity and talks plaintext;
* ``--xds-tls-address``: the TLS port (15012). The bootstrap embeds the mesh's trust
  bundle, which the xDS cluster verifies meshpilot's certificate against, and a token
  for ``--namespace``/``--service-account`` (from the CA state shared with ``serve``),
  sent as ``authorization: Bearer`` on every stream: with it the proxy gets its own
  certificate over SDS. The token is a credential: the file is written 0600.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from ca import CAError, CertificateAuthority, TokenAuthority, WorkloadIdentity, default_state_dir
from ca.identity import InvalidIdentity
from ca.tokens import DEFAULT_TOKEN_TTL
from translators.model.names import is_ip, parse_locality
from translators.model.types import ENVOY_MAX_PROGRAM_SIZE

#: Same values as ``translators.model.world.Role``; kept here so a bootstrap needs no translator.
Role = Literal["sidecar", "gateway"]

XDS_CLUSTER = "xds-grpc"
DEFAULT_ADMIN_PORT = 15000
#: Istio's Prometheus port: ``/stats/prometheus`` served from the admin, nothing else of it.
DEFAULT_STATS_PORT = 15090
STATS_PATH = "/stats/prometheus"
#: Prometheus labels as Istio's sidecars have them (its bootstrap: use_all_default_tags false, these
#: names without Envoy's "envoy_" prefix), so dashboards and queries made for Istio work. Envoy's
#: own cluster_name tag stops at the first dot of ``outbound|80||web.default.svc.cluster.local``:
#: ours runs to the first dot followed by a stat word (stat words have an underscore or are one of
#: a few; DNS labels have neither); other clusters (xds-grpc...) to their first dot. The first group
#: is cut from the stat name, the second is the value.
STATS_TAGS = (
    ("cluster_name", r"^cluster(\.((?:outbound|inbound)\|[^|]*\|[^|]*\|[^_]*?|[^.|]+))"
                     r"\.(?:[a-z0-9]*_|version$|canary\.|internal\.|external\.|zone\.|ssl\.|tls\.|retry\.|http[123]\.)"),
    ("http_conn_manager_prefix", r"^http\.((.*?)\.)"),
    ("listener_address", r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
    ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
)
# Each tag's regex runs on every stat name its literal prefix lets through, and Envoy makes
# about a hundred stats per cluster: these cost Envoy ~1.5 ms per cluster at start (2000
# clusters: 2.0 s without, 4-5 s with, measured with --mode init_only). Istio's response_code
# tags, unanchored, ran on every stat and tripled that: Envoy's names (upstream_rq_200) stay.

_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_UPSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@dataclass(frozen=True)
class XdsTls:
    """How a proxy reaches meshpilot's TLS port: the roots it trusts and the token it presents."""

    #: PEM of the mesh's trust bundle: meshpilot's serving certificate must chain to it.
    root_pem: bytes
    #: The identity token (``ca.tokens``); without one the proxy gets config but no certificate.
    token: str | None = None
    #: The name meshpilot's certificate must carry (DNS or IP SAN); default: the address's host.
    server_name: str | None = None

    def __repr__(self) -> str:  # a bootstrap's token is a credential: never print it
        return f"XdsTls(server_name={self.server_name!r}, token={'<redacted>' if self.token else None})"


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)



def default_pod_name(role: Role, proxy_ip: str) -> str:
    return f"{role}-{proxy_ip.replace('.', '-').replace(':', '-')}"


def node_id(role: Role, proxy_ip: str, pod: str, namespace: str) -> str:
    kind = "router" if role == "gateway" else "sidecar"
    return f"{kind}~{proxy_ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _upstream_tls(xds_host: str, tls: XdsTls) -> dict[str, Any]:
    name = tls.server_name or xds_host
    san_type = "IP_ADDRESS" if is_ip(name) else "DNS"
    context: dict[str, Any] = {
        "@type": f"type.googleapis.com/{_UPSTREAM_TLS}",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "validation_context": {
                "trusted_ca": {"inline_string": tls.root_pem.decode()},
                "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": name}}],
            },
        },
    }
    if not is_ip(name):
        context["sni"] = name
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}



def _xds_cluster(
    xds_host: str, xds_port: int, proxy_ip: str, bind_source: bool, tls: XdsTls | None = None,
    replicas: Sequence[tuple[str, int]] = (),
) -> dict[str, Any]:
    addresses = [(xds_host, xds_port), *replicas]
    if len({is_ip(h) for h, _ in addresses}) > 1:
        raise ValueError("the xDS addresses must be all IPs or all DNS names")
    cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STATIC" if is_ip(xds_host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            # Several: replicas of one control plane; a stream that breaks reconnects to another.
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(h, p)}} for h, p in addresses]}],
        },
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        # Notice a dead control plane (or a dead NAT entry) within a minute, not hours.
        "upstream_connection_options": {
            "tcp_keepalive": {"keepalive_probes": 3, "keepalive_time": 30, "keepalive_interval": 5}
        },
        # The proxy's gRPC streams are long-lived; the default budgets are for request traffic.
        "circuit_breakers": {
            "thresholds": [
                {"priority": "DEFAULT", "max_connections": 100000, "max_pending_requests": 100000,
                 "max_requests": 100000},
                {"priority": "HIGH", "max_connections": 100000, "max_pending_requests": 100000,
                 "max_requests": 100000},
            ]
        },
    }
    if not is_ip(xds_host):
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if tls is not None:
        cluster["transport_socket"] = _upstream_tls(xds_host, tls)
    if bind_source:
        # The stream to meshpilot leaves from the proxy's own address, like all its traffic.
        cluster["upstream_bind_config"] = {"source_address": {"address": proxy_ip, "port_value": 0}}
    return cluster


_ADMIN_CLUSTER = "meshpilot-admin"
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _admin_cluster(address: str, port: int) -> dict[str, Any]:
    return {"name": _ADMIN_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": _ADMIN_CLUSTER, "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(address, port)}}]}]}}


def _admin_listener(name: str, address: str, port: int, route: dict[str, Any]) -> dict[str, Any]:
    """``address:port`` -> one route to the admin: the admin (which can stop Envoy) is never
    reachable from the network, only these paths of it."""
    return {
        "name": name,
        "address": _socket_address(address, port),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": f"type.googleapis.com/{_HCM}", "stat_prefix": name.removeprefix("meshpilot-"),
            "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        }}]}],
    }


def _health_listener(address: str, port: int) -> dict[str, Any]:
    """``<proxy ip>:<port>/healthz/ready`` -> the admin's ``/ready``: a kubelet probes it, as Istio's 15021."""
    return _admin_listener("meshpilot-health", address, port, {
        "match": {"path": "/healthz/ready"},
        "route": {"cluster": _ADMIN_CLUSTER, "prefix_rewrite": "/ready", "timeout": "2s"}})


def _stats_listener(address: str, port: int) -> dict[str, Any]:
    """``<proxy ip>:<port>/stats/prometheus``: Envoy's stats for Prometheus, as Istio's 15090."""
    return _admin_listener("meshpilot-stats", address, port, {
        "match": {"prefix": STATS_PATH}, "route": {"cluster": _ADMIN_CLUSTER, "timeout": "5s"}})


def build_bootstrap(
    *,
    xds_address: str,
    proxy_ip: str,
    namespace: str = "default",
    pod: str | None = None,
    service_account: str = "default",
    labels: Mapping[str, str] | None = None,
    role: Role = "sidecar",
    delta: bool = False,
    admin_port: int = DEFAULT_ADMIN_PORT,
    admin_address: str | None = None,
    bind_source: bool = True,
    xds_tls: XdsTls | None = None,
    locality: str = "",
    health_port: int | None = None,
    capture: bool = False,
    xds_replicas: Sequence[str] = (),
    stats_port: int | None = None,
) -> dict[str, Any]:
    """The bootstrap as a JSON-ready dict. Raises ``ValueError`` on bad input.

    ``capture``: the pod's traffic is captured by iptables (INTERCEPTION_MODE=REDIRECT).

    With ``xds_tls``, ``xds_address`` is meshpilot's TLS port: the connection verifies the
    server against ``xds_tls.root_pem`` and every stream carries ``xds_tls.token``.
    ``health_port`` / ``stats_port``: listeners on the proxy IP for ``/healthz/ready`` and
    ``/stats/prometheus`` (Istio's 15021 and 15090), each reaching only that path of the admin.
    ``xds_replicas``: more addresses of the same control plane (its other replicas), beside
    ``xds_address`` in the xDS cluster; with TLS, each must carry ``xds_tls.server_name``."""
    if role not in ("sidecar", "gateway"):
        raise ValueError(f"role must be sidecar or gateway, not {role!r}")
    if not is_ip(proxy_ip):
        raise ValueError(f"proxy IP {proxy_ip!r} is not an IP address")
    if not namespace:
        raise ValueError("namespace must not be empty")
    for what, port in (("admin", admin_port), ("health", health_port or 0), ("stats", stats_port or 0)):
        if not 0 <= port < 65536:
            raise ValueError(f"{what} port {port} is out of range")
    static_listeners = [*([_health_listener(proxy_ip, health_port)] if health_port else []),
                        *([_stats_listener(proxy_ip, stats_port)] if stats_port else [])]
    xds_host, xds_port = parse_host_port(xds_address)
    labels = dict(labels or {})
    pod = pod or default_pod_name(role, proxy_ip)
    app = labels.get("app") or labels.get("app.kubernetes.io/name") or pod

    ads = {"ads": {}, "resource_api_version": "V3"}
    # Reconnect within a second of the control plane coming back (Envoy's default backs off
    # to 30 s); jittered, so a restart does not see every proxy at the same instant.
    retry = {"retry_back_off": {"base_interval": "0.2s", "max_interval": "1s"}}
    grpc_service: dict[str, Any] = {"envoy_grpc": {"cluster_name": XDS_CLUSTER, "retry_policy": retry}}
    if xds_tls is not None and xds_tls.token:
        # Sent as request headers on each stream: over TLS only, it is a credential.
        grpc_service["initial_metadata"] = [{"key": "authorization", "value": f"Bearer {xds_tls.token}"}]
    return {
        "node": {
            "id": node_id(role, proxy_ip, pod, namespace),
            "cluster": f"{app}.{namespace}",
            "metadata": {
                "NAMESPACE": namespace,
                "LABELS": labels,
                "SERVICE_ACCOUNT": service_account,
                "INSTANCE_IPS": proxy_ip,
                "NAME": pod,
                "MESHPILOT_ROLE": role,
                **({"INTERCEPTION_MODE": "REDIRECT"} if capture else {}),
            },
            **({"locality": dict(zip(("region", "zone", "sub_zone"), parse_locality(locality), strict=True))}
               if locality else {}),
        },
        "admin": {"address": _socket_address(admin_address or proxy_ip, admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [grpc_service],
            },
            "cds_config": dict(ads),
            "lds_config": dict(ads),
        },
        "static_resources": {
            "clusters": [_xds_cluster(xds_host, xds_port, proxy_ip, bind_source, xds_tls,
                                      [parse_host_port(a) for a in xds_replicas]),
                         *([_admin_cluster(admin_address or proxy_ip, admin_port)] if static_listeners else [])],
            **({"listeners": static_listeners} if static_listeners else {}),
        },
        # Scraped sidecars only (their cost is above): Prometheus labels with Istio's names
        # (cluster_name="outbound|80||web.default.svc.cluster.local").
        **({"stats_config": {"use_all_default_tags": False,
                             "stats_tags": [{"tag_name": n, "regex": r} for n, r in STATS_TAGS]}} if stats_port else {}),
        # A connection limit, mostly so Envoy does not warn at start that there is none.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 50000,
                    },
                }
            ]
        },
        "layered_runtime": {
            "layers": [
                # As istiod's bootstrap: Envoy's default RE2 limit (100) refuses ordinary regexes.
                {"name": "static", "static_layer": {"re2.max_program_size.error_level": ENVOY_MAX_PROGRAM_SIZE}},
                {"name": "admin", "admin_layer": {}},
            ]
        },
    }


# ---------------------------------------------------------------- CLI


def _label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{value!r} is not KEY=VALUE")
    return key, val


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--xds-address", metavar="HOST:PORT",
                        help="meshpilot's plaintext xDS address (15010): config only, the proxy gets no certificate")
    parser.add_argument("--xds-tls-address", metavar="HOST:PORT",
                        help="meshpilot's TLS xDS address (15012): verified against the mesh root, with a token "
                        "for --namespace/--service-account, so the proxy gets its certificate over SDS")
    parser.add_argument("--xds-replica-address", action="append", default=[], metavar="HOST:PORT",
                        help="another replica of the same meshpilot (repeatable): the proxy's xDS cluster balances "
                        "over all, and a broken stream reconnects to a live one (with TLS, give --xds-server-name "
                        "a name every replica's certificate carries)")
    parser.add_argument("--xds-server-name", metavar="NAME",
                        help="the name (DNS or IP) meshpilot's TLS certificate must carry (default: its host)")
    parser.add_argument("--ca-state", type=Path, default=None, metavar="DIR",
                        help=f"the CA state shared with `meshpilot serve` (default: {default_state_dir()})")
    parser.add_argument("--cacerts", type=Path, default=None, metavar="DIR",
                        help="serve's plugged-in CA (Istio's cacerts layout): its root-cert.pem is the trust bundle")
    parser.add_argument("--token-ttl", type=float, default=DEFAULT_TOKEN_TTL.total_seconds(), metavar="SECONDS",
                        help="lifetime of the embedded identity token (default 30 days)")
    parser.add_argument("--proxy-ip", required=True, metavar="IP",
                        help="the proxy's own IP: listeners, admin and the xDS connection use it")
    parser.add_argument("--namespace", required=True, metavar="NS")
    parser.add_argument("--pod", metavar="NAME", help="pod name (default: <role>-<ip with dashes>)")
    parser.add_argument("--service-account", default="default", metavar="SA")
    parser.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE",
                        help="a workload label (repeatable); `app` also names node.cluster")
    parser.add_argument("--role", choices=("sidecar", "gateway"), default="sidecar")
    parser.add_argument("--delta", action="store_true", help="use Delta xDS (DELTA_GRPC) instead of SotW")
    parser.add_argument("--locality", default="", metavar="REGION/ZONE/SUBZONE",
                        help="the proxy's locality, for locality load balancing (node.locality)")
    parser.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT, metavar="PORT")
    parser.add_argument("--admin-address", metavar="IP", help="admin bind address (default: the proxy IP)")
    parser.add_argument("--no-bind-source", dest="bind_source", action="store_false",
                        help="do not bind the xDS connection's source address to the proxy IP")
    parser.add_argument("--token-file", type=Path, metavar="FILE",
                        help="send this token (a Kubernetes projected service-account token, audience istio-ca) "
                        "instead of minting a mesh token: meshpilot checks it with a TokenReview")
    parser.add_argument("--root-env", metavar="NAME",
                        help="read the mesh trust bundle (PEM) from this environment variable instead of the CA "
                        "state (injected pods: the CA state is not theirs to read)")
    parser.add_argument("--labels-file", type=Path, metavar="FILE",
                        help="workload labels in the downward API's format (key=\"value\" lines), added to --label")
    parser.add_argument("--health-port", type=int, metavar="PORT",
                        help="also listen on PROXY_IP:PORT for GET /healthz/ready (the admin's /ready), for a kubelet")
    parser.add_argument("--capture", action="store_true",
                        help="the pod's traffic is captured by iptables to 15001/15006 (as `meshpilot kube-inject` "
                        "sets up): node metadata INTERCEPTION_MODE=REDIRECT, the proxy gets Istio's virtual listeners")
    parser.add_argument("--stats-port", type=int, default=DEFAULT_STATS_PORT, metavar="PORT",
                        help=f"serve Envoy's Prometheus stats on PROXY_IP:PORT{STATS_PATH} (default "
                        f"{DEFAULT_STATS_PORT}, Istio's; 0: no stats listener)")
    parser.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--format", choices=("envoy", "grpc"), default="envoy",
                        help="envoy: an Envoy bootstrap (default); grpc: the xDS bootstrap of a proxyless gRPC "
                        "application (for GRPC_XDS_BOOTSTRAP), with the same identity flags")


def xds_tls_for(
    state_dir: Path,
    namespace: str,
    service_account: str,
    *,
    cacerts: Path | None = None,
    token_ttl: timedelta = DEFAULT_TOKEN_TTL,
    server_name: str | None = None,
) -> XdsTls:
    """The trust bundle and a fresh token for one identity, from the CA state ``serve`` uses."""
    if cacerts is not None:
        authority = CertificateAuthority.from_cacerts(cacerts)
    else:
        authority = CertificateAuthority.load_or_create(state_dir)
    tokens = TokenAuthority.load_or_create(state_dir, trust_domain=authority.trust_domain)
    try:
        identity = WorkloadIdentity(authority.trust_domain, namespace, service_account)
    except InvalidIdentity as e:
        raise ValueError(str(e)) from None
    token = tokens.issue_token(identity, token_ttl)
    return XdsTls(authority.trust_bundle(), token, server_name)


def read_downward_labels(text: str) -> dict[str, str]:
    """A downward API ``metadata.labels`` file: ``key="value"`` lines, values Go-quoted."""
    labels = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or not key:
            continue
        try:
            labels[key] = json.loads(value) if value.startswith('"') else value
        except ValueError:
            labels[key] = value.strip('"')
    return labels


def kube_xds_tls(token_file: Path | None, root_env: str | None, server_name: str | None) -> XdsTls:
    """An injected pod's TLS settings: its projected token and the root the injector gave it."""
    if token_file is None or root_env is None:
        raise ValueError("--token-file and --root-env go together")
    root = os.environ.get(root_env, "")
    if "BEGIN CERTIFICATE" not in root:
        raise ValueError(f"environment variable {root_env} holds no PEM certificate")
    token = token_file.read_text().strip()
    if not token:
        raise ValueError(f"{token_file} is empty")
    return XdsTls(root.encode(), token, server_name)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "format", "envoy") == "grpc":
        from xds_server.local import grpc_bootstrap

        return grpc_bootstrap.run(args)
    if bool(args.xds_address) == bool(args.xds_tls_address):
        print("meshpilot bootstrap: give one of --xds-address (plaintext) or --xds-tls-address (TLS)",
              file=sys.stderr)
        return 2
    try:
        tls = None
        labels = dict(args.label)
        if getattr(args, "labels_file", None) is not None:
            labels = {**read_downward_labels(args.labels_file.read_text()), **labels}
        if args.xds_tls_address and (getattr(args, "token_file", None) or getattr(args, "root_env", None)):
            tls = kube_xds_tls(args.token_file, args.root_env, args.xds_server_name)
        elif args.xds_tls_address:
            tls = xds_tls_for(args.ca_state or default_state_dir(), args.namespace, args.service_account,
                              cacerts=args.cacerts, token_ttl=timedelta(seconds=args.token_ttl),
                              server_name=args.xds_server_name)
        config = build_bootstrap(
            xds_address=args.xds_tls_address or args.xds_address,
            proxy_ip=args.proxy_ip,
            namespace=args.namespace,
            pod=args.pod,
            service_account=args.service_account,
            labels=labels,
            role=args.role,
            delta=args.delta,
            locality=args.locality,
            admin_port=args.admin_port,
            admin_address=args.admin_address,
            bind_source=args.bind_source,
            xds_tls=tls,
            health_port=getattr(args, "health_port", None),
            capture=getattr(args, "capture", False),
            xds_replicas=getattr(args, "xds_replica_address", None) or (),
            stats_port=getattr(args, "stats_port", None) or None,
        )
    except (ValueError, CAError, OSError) as e:
        print(f"meshpilot bootstrap: {e}", file=sys.stderr)
        return 2
    text = json.dumps(config, indent=2) + "\n"
    if args.output:
        # 0600 from the first byte: a TLS bootstrap holds a token.
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
