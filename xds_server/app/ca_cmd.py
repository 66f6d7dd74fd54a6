"""``meshpilot ca``: operate the self-signed CA kept in a state directory.

``meshpilot ca trust-bundle`` prints the roots (PEM, no key). ``meshpilot ca rotate-root`` makes a new root in the state and keeps the old one trusted for
``--overlap`` seconds. A running ``meshpilot serve`` on the same state notices the new files
within a second (it polls them) and rolls the mesh over: trust bundle (old and new roots) to
every proxy first, then workload certificates signed by the new root.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path

from ca import CAError, CertificateAuthority, default_state_dir
from ca.certs import fingerprint
from ca.identity import DEFAULT_TRUST_DOMAIN
from ca.rootstore import ROOT_FILE


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="ca_command", required=True)
    rotate = sub.add_parser(
        "rotate-root", help="make a new root; the old one stays trusted for --overlap seconds",
        description="Make a new root in the CA state. A `meshpilot serve` using this state pushes the trust "
        "bundle (old and new roots) to every proxy, then re-issues workload certificates with the new root.")
    rotate.add_argument("--ca-state", type=Path, default=None, metavar="DIR",
                        help=f"the CA's state directory (default: {default_state_dir()})")
    rotate.add_argument("--overlap", type=float, default=None, metavar="SECONDS",
                        help="how long the old root stays trusted (default: until it expires); keep it longer "
                        "than a proxy may stay disconnected")
    rotate.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    rotate.set_defaults(ca_run=rotate_root)
    bundle = sub.add_parser(
        "trust-bundle", help="print the roots the mesh trusts (PEM): the webhook's caBundle, for one",
        description="Print the trust bundle of the CA state (the current root and those still trusted), PEM. "
        "In the chart: helm upgrade ... --set webhook.caBundle=\"$(kubectl exec deploy/meshpilot -- "
        "meshpilot ca trust-bundle | base64 -w0)\"")
    bundle.add_argument("--ca-state", type=Path, default=None, metavar="DIR",
                        help=f"the CA's state directory (default: {default_state_dir()})")
    bundle.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    bundle.set_defaults(ca_run=trust_bundle)


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.ca_run(args))
    except CAError as e:
        print(f"meshpilot ca: {e}", file=sys.stderr)
        return 1


def rotate_root(args: argparse.Namespace) -> int:
    state = args.ca_state or default_state_dir()
    if not (state / ROOT_FILE).is_file():
        raise CAError(f"no CA state in {state}: nothing to rotate")
    if args.overlap is not None and args.overlap < 0:
        raise CAError(f"--overlap must not be negative, not {args.overlap}")
    ca = CertificateAuthority.load_or_create(state, trust_domain=args.trust_domain)
    old = ca.signing_certificate
    overlap = None if args.overlap is None else timedelta(seconds=args.overlap)
    new = ca.rotate_root(overlap=overlap)
    print(json.dumps({"state": str(state), "old_root": fingerprint(old), "new_root": fingerprint(new),
                      "trusted": ca.describe()["roots"]}, indent=2))
    return 0


def trust_bundle(args: argparse.Namespace) -> int:
    state = args.ca_state or default_state_dir()
    if not (state / ROOT_FILE).is_file():  # never create a root here: serve does, at its first start
        raise CAError(f"no CA state in {state}: has meshpilot serve started with it?")
    sys.stdout.write(CertificateAuthority.load_or_create(state, trust_domain=args.trust_domain).trust_bundle().decode())
    return 0
