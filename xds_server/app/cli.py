"""The ``meshpilot`` command: serve, bootstrap, kube-inject, demo, and istioctl-style verbs (version, analyze, proxy-status,
proxy-config, describe, explain, diff)."""

from __future__ import annotations

import argparse
import sys


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    from xds_server.app import ca_cmd, kube_inject, serve
    from xds_server.app.verbs import analyze, describe, diff, explain, proxy_config, proxy_status, version
    from xds_server.app.verbs.common import client_version
    from xds_server.local import bootstrap, demo

    parser = argparse.ArgumentParser(prog="meshpilot", description="A service-mesh control plane for Envoy.")
    parser.add_argument("--version", action="version", version=f"meshpilot {client_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, help_ in (
        ("serve", serve, "serve xDS to Envoy from a directory of mesh manifests"),
        ("bootstrap", bootstrap, "print an Envoy bootstrap (JSON) for a sidecar or gateway"),
        ("demo", demo, "run the bundled example mesh with real Envoy sidecars and demo apps"),
        ("ca", ca_cmd, "operate the CA in a state directory (rotate-root)"),
        ("kube-inject", kube_inject, kube_inject.HELP),
        ("version", version, version.HELP),
        ("analyze", analyze, analyze.HELP),
        ("proxy-status", proxy_status, proxy_status.HELP),
        ("proxy-config", proxy_config, proxy_config.HELP),
        ("describe", describe, describe.HELP),
        ("explain", explain, explain.HELP),
        ("diff", diff, diff.HELP),
    ):
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
