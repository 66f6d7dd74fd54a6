"""``meshpilot kube-inject -f FILE``: the sidecar injection of the webhook, offline.

Reads Kubernetes YAML (multi-document; ``-`` is stdin), injects every Pod and pod template
(Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs) that does not opt out
with ``sidecar.istio.io/inject: "false"``, and prints the result. Running it twice
changes nothing the second time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ca import CAError, CertificateAuthority, default_state_dir
from xds_server.admission.inject import (
    DEFAULT_INIT_IMAGE,
    DEFAULT_PROXY_IMAGE,
    InjectConfig,
    InjectionError,
    inject_object,
)

HELP = "add the Envoy sidecar to the pods of Kubernetes YAML, as the injection webhook does"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", required=True, metavar="FILE", help="YAML to inject ('-': stdin)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.add_argument("--xds-address", default="meshpilot.istio-system.svc:15012", metavar="HOST:PORT",
                   help="meshpilot's TLS xDS address as pods reach it")
    p.add_argument("--ca-state", type=Path, default=None, metavar="DIR",
                   help=f"the CA state whose root the proxies trust (default: {default_state_dir()})")
    p.add_argument("--cacerts", type=Path, default=None, metavar="DIR",
                   help="a plugged-in CA (Istio's cacerts layout): its root-cert.pem is the root")
    p.add_argument("--root-file", type=Path, default=None, metavar="FILE",
                   help="the mesh trust bundle (PEM) instead of --ca-state/--cacerts")
    p.add_argument("--proxy-image", default=DEFAULT_PROXY_IMAGE)
    p.add_argument("--init-image", default=DEFAULT_INIT_IMAGE, help="an image with meshpilot and iptables")
    p.add_argument("--xds-api", choices=("delta", "sotw"), default="delta",
                   help="the xDS protocol the proxies speak (default delta, as Istio's; a pod's "
                   "proxy.istio.io/config proxyMetadata ISTIO_DELTA_XDS overrides it)")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the iptables script, the root PEM) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and not any(c in value for c in "\r\t") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def root_pem(args: argparse.Namespace) -> bytes:
    if args.root_file is not None:
        return bytes(args.root_file.read_bytes())
    if args.cacerts is not None:
        return CertificateAuthority.from_cacerts(args.cacerts).trust_bundle()
    return CertificateAuthority.load_or_create(args.ca_state or default_state_dir()).trust_bundle()


def run(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
        config = InjectConfig(xds_address=args.xds_address, root_pem=root_pem(args),
                              proxy_image=args.proxy_image, init_image=args.init_image,
                              delta=args.xds_api == "delta")
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        out = yaml.dump_all([inject_object(d, config) for d in docs], Dumper=_Dumper, sort_keys=False)
    except (OSError, CAError, yaml.YAMLError, InjectionError) as e:
        print(f"meshpilot kube-inject: {e}", file=sys.stderr)
        return 1
    if args.output:
        Path(args.output).write_text(out)
    else:
        sys.stdout.write(out)
    return 0
