"""``meshpilot proxy-status``: every connected proxy and, per xDS type, whether it has what it should.

Per type, from ``/debug/syncz``:

* SYNCED: the proxy ACKed the last response sent;
* NACKED: it rejected the last response sent (Envoy's message is shown; it keeps its last good config);
* STALE: a response was sent and not answered yet;
* NOT SENT: nothing of this type was sent on this stream (the proxy did not ask, or there is nothing).

A VHDS column (virtual hosts, delta streams' routes) is shown when some stream subscribed to
them; SotW streams, which never do, show ``-`` there.
"""

from __future__ import annotations

import argparse
from typing import Any

from xds_server.app.verbs.common import (
    ServerError,
    add_http_address,
    add_output,
    fail,
    get_json,
    print_json,
    print_yaml,
    table,
)

HELP = "show every connected proxy and whether each xDS type is SYNCED, NOT SENT, STALE or NACKED"
TYPES = ("cds", "lds", "eds", "rds", "sds")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("proxy", nargs="?", default=None,
                   help="only proxies whose node id contains this (a pod name, an IP, a full id)")
    add_http_address(p)
    add_output(p, ("table", "json", "yaml"))


def type_status(st: dict[str, Any] | None) -> str:
    if not st or not st.get("sent_nonce"):
        return "NOT SENT"
    nack = st.get("nack")
    if nack and nack.get("nonce") == st["sent_nonce"]:
        return "NACKED"
    return "SYNCED" if st.get("acked_nonce") == st["sent_nonce"] else "STALE"


def statuses(syncz: list[dict[str, Any]], server: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for stream in syncz:
        types = stream.get("types") or {}
        per_type = {}
        for t in sorted(set(TYPES) | set(types)):
            st = types.get(t)
            entry: dict[str, Any] = {"status": type_status(st)}
            if st:
                entry.update({k: st[k] for k in ("sent_version", "acked_version") if k in st})
                if entry["status"] == "NACKED":
                    entry["message"] = st["nack"].get("message", "")
            per_type[t] = entry
        out.append({
            "proxy": stream["proxy"],
            "protocol": stream.get("protocol"),
            "control_plane": server,
            "types": per_type,
        })
    return out


def run(args: argparse.Namespace) -> int:
    try:
        syncz = get_json(args.http_address, "/debug/syncz")
        server = {"address": args.http_address, "version": get_json(args.http_address, "/version").get("version")}
    except ServerError as e:
        return fail(str(e))
    if args.proxy:
        syncz = [s for s in syncz if args.proxy in s["proxy"]]
    result = statuses(syncz, server)
    if args.output == "json":
        print_json(result)
        return 0
    if args.output == "yaml":
        print_yaml(result)
        return 0
    print(text(result, args.http_address, server["version"]))
    return 0


def text(result: list[dict[str, Any]], http_address: str, version: str | None) -> str:
    """The table people read (and the NACK messages under it)."""
    if not result:
        return f"no proxies connected to meshpilot at {http_address}"
    instance = f"meshpilot {version} @ {http_address}"
    shown = [*TYPES, *(["vhds"] if any("vhds" in r["types"] for r in result) else [])]

    def cell(r: dict[str, Any], t: str) -> str:
        if t == "vhds" and r["protocol"] != "delta":
            return "-"
        entry = r["types"].get(t)
        return entry["status"] if entry else "NOT SENT"

    rows = [[r["proxy"], *(cell(r, t) for t in shown), r["protocol"], instance] for r in result]
    lines = [table(["NAME", *(t.upper() for t in shown), "XDS", "CONTROL PLANE"], rows)]
    nacks = [(r["proxy"], t, e["message"]) for r in result for t, e in r["types"].items() if e["status"] == "NACKED"]
    lines += [f"\n{t.upper()} NACKED by {proxy}: {message}" for proxy, t, message in nacks]
    return "\n".join(lines)


def report(http_address: str) -> str:
    """What ``meshpilot proxy-status`` prints for the server at ``http_address``."""
    syncz = get_json(http_address, "/debug/syncz")
    return text(statuses(syncz, {"address": http_address}), http_address,
                get_json(http_address, "/version").get("version"))
