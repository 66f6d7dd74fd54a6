"""``meshpilot bootstrap``: the Envoy bootstrap that points a sidecar or gateway at meshpilot.

The node is written the way Istio writes it, so the server reads it back the same way
(see ``xds_server/app/node.py``)::

    id        <sidecar|router>~<ip>~<pod>.<ns>~<ns>.svc.cluster.local
    cluster   <app label or pod>.<ns>
    metadata  NAMESPACE, LABELS, SERVICE_ACCOUNT, INSTANCE_IPS, NAME, MESHPILOT_ROLE

Everything else comes over ADS. Without traffic capture each proxy owns one IP: its
listeners bind there, its admin listens there and its connection to meshpilot leaves
from there, so one machine can host many proxies on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Mapping
from typing import Any, Literal

from translators.model.types import ENVOY_MAX_PROGRAM_SIZE

#: Same values as ``translators.model.world.Role``; kept here so a bootstrap needs no translator.
Role = Literal["sidecar", "gateway"]

XDS_CLUSTER = "xds-grpc"
DEFAULT_ADMIN_PORT = 15000

_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def default_pod_name(role: Role, proxy_ip: str) -> str:
    return f"{role}-{proxy_ip.replace('.', '-').replace(':', '-')}"


def node_id(role: Role, proxy_ip: str, pod: str, namespace: str) -> str:
    kind = "router" if role == "gateway" else "sidecar"
    return f"{kind}~{proxy_ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _xds_cluster(xds_host: str, xds_port: int, proxy_ip: str, bind_source: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STATIC" if _is_ip(xds_host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(xds_host, xds_port)}}]}],
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
    if not _is_ip(xds_host):
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if bind_source:
        # The stream to meshpilot leaves from the proxy's own address, like all its traffic.
        cluster["upstream_bind_config"] = {"source_address": {"address": proxy_ip, "port_value": 0}}
    return cluster


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
) -> dict[str, Any]:
    """The bootstrap as a JSON-ready dict. Raises ``ValueError`` on bad input."""
    if role not in ("sidecar", "gateway"):
        raise ValueError(f"role must be sidecar or gateway, not {role!r}")
    if not _is_ip(proxy_ip):
        raise ValueError(f"proxy IP {proxy_ip!r} is not an IP address")
    if not namespace:
        raise ValueError("namespace must not be empty")
    if not 0 <= admin_port < 65536:
        raise ValueError(f"admin port {admin_port} is out of range")
    xds_host, xds_port = parse_host_port(xds_address)
    labels = dict(labels or {})
    pod = pod or default_pod_name(role, proxy_ip)
    app = labels.get("app") or labels.get("app.kubernetes.io/name") or pod

    ads = {"ads": {}, "resource_api_version": "V3"}
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
            },
        },
        "admin": {"address": _socket_address(admin_address or proxy_ip, admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "cds_config": dict(ads),
            "lds_config": dict(ads),
        },
        "static_resources": {"clusters": [_xds_cluster(xds_host, xds_port, proxy_ip, bind_source)]},
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
    parser.add_argument("--xds-address", required=True, metavar="HOST:PORT", help="meshpilot's xDS (gRPC) address")
    parser.add_argument("--proxy-ip", required=True, metavar="IP",
                        help="the proxy's own IP: listeners, admin and the xDS connection use it")
    parser.add_argument("--namespace", required=True, metavar="NS")
    parser.add_argument("--pod", metavar="NAME", help="pod name (default: <role>-<ip with dashes>)")
    parser.add_argument("--service-account", default="default", metavar="SA")
    parser.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE",
                        help="a workload label (repeatable); `app` also names node.cluster")
    parser.add_argument("--role", choices=("sidecar", "gateway"), default="sidecar")
    parser.add_argument("--delta", action="store_true", help="use Delta xDS (DELTA_GRPC) instead of SotW")
    parser.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT, metavar="PORT")
    parser.add_argument("--admin-address", metavar="IP", help="admin bind address (default: the proxy IP)")
    parser.add_argument("--no-bind-source", dest="bind_source", action="store_false",
                        help="do not bind the xDS connection's source address to the proxy IP")
    parser.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")


def run(args: argparse.Namespace) -> int:
    try:
        config = build_bootstrap(
            xds_address=args.xds_address,
            proxy_ip=args.proxy_ip,
            namespace=args.namespace,
            pod=args.pod,
            service_account=args.service_account,
            labels=dict(args.label),
            role=args.role,
            delta=args.delta,
            admin_port=args.admin_port,
            admin_address=args.admin_address,
            bind_source=args.bind_source,
        )
    except ValueError as e:
        print(f"meshpilot bootstrap: {e}", file=sys.stderr)
        return 2
    text = json.dumps(config, indent=2) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
