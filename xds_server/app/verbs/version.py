"""``meshpilot version``: this client's version and, when it answers, the server's."""

from __future__ import annotations

import argparse

from xds_server.app.verbs.common import (
    ServerError,
    add_http_address,
    add_output,
    client_version,
    get_json,
    print_json,
)

HELP = "print the client version and, when reachable, the server's"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_http_address(p)
    p.add_argument("--remote", action=argparse.BooleanOptionalAction, default=True,
                   help="also ask the server at --http-address for its version")
    add_output(p, ("short", "json"), default="short")


def run(args: argparse.Namespace) -> int:
    out: dict[str, object] = {"client": {"version": client_version()}}
    if args.remote:
        try:
            out["server"] = get_json(args.http_address, "/version", timeout=2)
        except ServerError as e:
            out["server_error"] = str(e)
    if args.output == "json":
        print_json(out)
        return 0
    print(f"client version: {client_version()}")
    server = out.get("server")
    if isinstance(server, dict):
        print(f"control plane version: {server.get('version')} ({args.http_address})")
    elif args.remote:
        print(f"control plane version: unreachable at {args.http_address}")
    return 0
