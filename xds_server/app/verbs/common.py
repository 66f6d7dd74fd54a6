"""What the verbs share: the client version, the server's HTTP API, and output as a table, JSON or YAML."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import yaml

DEFAULT_HTTP_ADDRESS = "127.0.0.1:15014"


def client_version() -> str:
    try:
        return metadata.version("meshpilot")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


class ServerError(Exception):
    """The server could not be reached, or answered an error; the message says which."""


def add_http_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http-address", default=DEFAULT_HTTP_ADDRESS, metavar="HOST:PORT",
                   help="the HTTP address of `meshpilot serve` (its --http-address)")


def add_output(p: argparse.ArgumentParser, choices: Sequence[str] = ("table", "json"), default: str = "table") -> None:
    p.add_argument("-o", "--output", choices=tuple(choices), default=default,
                   help="output format: a table for people, json (or yaml) for scripts")


def get_json(address: str, path: str, timeout: float = 5.0) -> Any:
    """GET ``path`` from the server's HTTP API; a 404 with a JSON body is returned as a ServerError."""
    url = f"http://{address}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
        try:
            detail = json.loads(body)
        except ValueError:
            detail = body.strip()
        raise ServerError(f"{url} answered {e.code}: {detail.get('error', detail) if isinstance(detail, dict) else detail}",
                          ) from e
    except (OSError, ValueError) as e:
        raise ServerError(f"cannot reach meshpilot at {address} ({e}); is `meshpilot serve` running "
                          "with this --http-address?") from e


def fail(message: str, code: int = 1) -> int:
    print(f"meshpilot: {message}", file=sys.stderr)
    return code


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def print_yaml(obj: Any) -> None:
    print(yaml.safe_dump(obj, sort_keys=True, default_flow_style=False), end="")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, as istioctl prints them."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)
