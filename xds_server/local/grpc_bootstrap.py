"""``meshpilot bootstrap --format grpc``: the xDS bootstrap of a proxyless gRPC application.

gRPC reads it from the file ``GRPC_XDS_BOOTSTRAP`` names (or the JSON itself in
``GRPC_XDS_BOOTSTRAP_CONFIG``), then resolves ``xds:///<host>:<port>`` targets through
meshpilot and, in an xDS-enabled server, asks for the listener named after
``server_listener_resource_name_template`` with its listening address. The node is the
one istio-agent writes for a proxyless pod, so meshpilot reads it as it reads Envoy's
(``xds_server/app/node.py``), ``GENERATOR=grpc`` telling it which config to serve.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from translators.model.names import is_ip
from xds_server.local.bootstrap import default_pod_name, node_id, parse_host_port

#: As istio-agent writes it: ``%s`` is the server's listening ``IP:port``.
SERVER_LISTENER_TEMPLATE = "xds.istio.io/grpc/lds/inbound/%s"


def build_grpc_bootstrap(
    *,
    xds_address: str,
    proxy_ip: str,
    namespace: str = "default",
    pod: str | None = None,
    service_account: str = "default",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The gRPC bootstrap as a JSON-ready dict (plaintext to meshpilot's xDS port). Raises
    ``ValueError`` on bad input."""
    if not is_ip(proxy_ip):
        raise ValueError(f"proxy IP {proxy_ip!r} is not an IP address")
    if not namespace:
        raise ValueError("namespace must not be empty")
    host, port = parse_host_port(xds_address)
    labels = dict(labels or {})
    pod = pod or default_pod_name("sidecar", proxy_ip)
    app = labels.get("app") or labels.get("app.kubernetes.io/name") or pod
    return {
        "xds_servers": [{
            "server_uri": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": node_id("sidecar", proxy_ip, pod, namespace),
            "cluster": f"{app}.{namespace}",
            "locality": {},
            "metadata": {
                "NAMESPACE": namespace,
                "LABELS": labels,
                "SERVICE_ACCOUNT": service_account,
                "INSTANCE_IPS": proxy_ip,
                "NAME": pod,
                "GENERATOR": "grpc",
            },
        },
        "server_listener_resource_name_template": SERVER_LISTENER_TEMPLATE,
    }


def run(args: argparse.Namespace) -> int:
    """The ``--format grpc`` branch of ``meshpilot bootstrap`` (same identity flags)."""
    if args.xds_tls_address or not args.xds_address:
        print("meshpilot bootstrap: --format grpc needs --xds-address (plaintext): proxyless gRPC over "
              "meshpilot's TLS port is not supported yet", file=sys.stderr)
        return 2
    if args.role != "sidecar":
        print("meshpilot bootstrap: --format grpc is for applications (--role sidecar)", file=sys.stderr)
        return 2
    try:
        config = build_grpc_bootstrap(xds_address=args.xds_address, proxy_ip=args.proxy_ip, namespace=args.namespace,
                                      pod=args.pod, service_account=args.service_account, labels=dict(args.label))
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
