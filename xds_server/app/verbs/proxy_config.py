"""``meshpilot proxy-config TYPE PROXY``: the resources the control plane holds for one proxy,
in Envoy's JSON, from ``/debug/config`` (secrets as names and certificate dates only)."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

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

HELP = "show the clusters, listeners, routes, endpoints or secrets meshpilot holds for a proxy"
#: verb argument -> /debug/config type
KINDS = {"cluster": "cds", "listener": "lds", "route": "rds", "endpoint": "eds", "secret": "sds"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=(*KINDS, "all"), help="which resources")
    p.add_argument("proxy", help="the proxy: its node id, or a part of it that names one proxy (pod name, IP)")
    add_http_address(p)
    add_output(p, ("short", "json", "yaml"), default="short")


def resolve(address: str, wanted: str) -> str:
    ids = sorted({s["proxy"] for s in get_json(address, "/debug/syncz")})
    if wanted in ids:
        return wanted
    matches = [i for i in ids if any(wanted in (part, part.split(".", 1)[0]) for part in i.split("~"))]
    matches = matches or [i for i in ids if wanted in i]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ServerError(f"no connected proxy matches {wanted!r}; connected: {', '.join(ids) or 'none'}")
    raise ServerError(f"{wanted!r} matches several proxies: {', '.join(matches)}")


def run(args: argparse.Namespace) -> int:
    try:
        proxy = resolve(args.http_address, args.proxy)
        config = get_json(args.http_address, f"/debug/config?proxy={quote(proxy, safe='')}")
    except ServerError as e:
        return fail(str(e))
    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    selected = {k: _resources(config, KINDS[k]) for k in kinds}
    if args.output in ("json", "yaml"):
        out: Any = selected[args.kind] if args.kind != "all" else selected
        (print_json if args.output == "json" else print_yaml)(out)
        return 0
    sections = []
    for kind in kinds:
        headers, rows = SHORT[kind](config["types"].get(KINDS[kind], {}))
        text = table(headers, rows) if rows else f"(no {kind}s)"
        sections.append(f"{kind.upper()}S of {proxy}:\n{text}" if args.kind == "all" else text)
    print("\n\n".join(sections))
    return 0


def _resources(config: dict[str, Any], t: str) -> list[dict[str, Any]]:
    full = (config["types"].get(t) or {}).get("full") or {}
    return [full[name]["resource"] for name in sorted(full)]


def _entries(tv: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    full = tv.get("full") or {}
    return [(name, full[name]["version"], full[name]["resource"]) for name in sorted(full)]


def _clusters(tv: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for name, version, c in _entries(tv):
        fqdn = name.split("|")[3] if name.count("|") == 3 else ""
        port, subset = (name.split("|")[1], name.split("|")[2]) if fqdn else ("", "")
        rows.append([name, fqdn or "-", port or "-", subset or "-", c.get("type", "EDS" if "eds_cluster_config" in c
                                                                      else "-"), version])
    return ["NAME", "SERVICE FQDN", "PORT", "SUBSET", "TYPE", "VERSION"], rows


def _listeners(tv: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for name, version, lis in _entries(tv):
        sock = (lis.get("address") or {}).get("socket_address") or {}
        address = f"{sock.get('address', '-')}:{sock.get('port_value', '-')}" if sock else "-"
        rows.append([name, address, str(len(lis.get("filter_chains") or [])), version])
    return ["NAME", "ADDRESS", "FILTER CHAINS", "VERSION"], rows


def _routes(tv: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for name, version, rc in _entries(tv):
        for vh in rc.get("virtual_hosts") or [{}]:
            domains = vh.get("domains") or []
            shown = ", ".join(domains[:2]) + (f" +{len(domains) - 2} more" if len(domains) > 2 else "")
            rows.append([name, vh.get("name", "-"), shown or "-", str(len(vh.get("routes") or [])), version])
    return ["NAME", "VIRTUAL HOST", "DOMAINS", "ROUTES", "VERSION"], rows


def _endpoints(tv: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for name, version, cla in _entries(tv):
        addresses = []
        for group in cla.get("endpoints") or []:
            for lb in group.get("lb_endpoints") or []:
                sock = ((lb.get("endpoint") or {}).get("address") or {}).get("socket_address") or {}
                addresses.append(f"{sock.get('address')}:{sock.get('port_value')}")
        rows.append([name, ", ".join(addresses) or "(none)", version])
    return ["CLUSTER", "ENDPOINTS", "VERSION"], rows


def _secrets(tv: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = [[name, s.get("identity") or "-", s.get("serial", "-"), s.get("not_after", "-"), version]
            for name, version, s in _entries(tv)]  # ROOTCA: not after is the earliest root's
    return ["NAME", "IDENTITY", "SERIAL", "NOT AFTER", "VERSION"], rows


SHORT = {"cluster": _clusters, "listener": _listeners, "route": _routes, "endpoint": _endpoints, "secret": _secrets}
