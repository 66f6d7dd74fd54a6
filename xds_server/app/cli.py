"""The ``meshpilot`` command: serve, bootstrap, demo."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from xds_server.app import serve
    from xds_server.local import bootstrap, demo

    parser = argparse.ArgumentParser(prog="meshpilot", description="A service-mesh control plane for Envoy.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, help_ in (
        ("serve", serve, "serve xDS to Envoy from a directory of mesh manifests"),
        ("bootstrap", bootstrap, "print an Envoy bootstrap (JSON) for a sidecar or gateway"),
        ("demo", demo, "run the bundled example mesh with real Envoy sidecars and demo apps"),
    ):
        p = sub.add_parser(name, help=help_, description=help_)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
