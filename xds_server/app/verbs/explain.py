"""``meshpilot explain PROXY --host H --path P``: which route a request from that proxy takes, and why it
would fail.

Envoy's route matching (route_match.py) runs over the very RouteConfiguration the server holds
for the proxy (``/debug/config?proxy=``): the virtual host, the route (its name is the
VirtualService's ``http[].name``, ``default`` for a service without one), the cluster or
weighted clusters, and what would go wrong: a cluster the proxy does not have, a cluster
without endpoints (503 no healthy upstream), a fault, a redirect or direct response, and
config the proxy NACKed (it then runs an older version than the one explained).
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote, urlencode

from xds_server.app.route_match import Match, Request, match_request
from xds_server.app.verbs.common import ServerError, add_http_address, add_output, fail, get_json, print_json
from xds_server.app.verbs.proxy_config import resolve
from xds_server.app.verbs.proxy_status import statuses

HELP = "explain which VirtualService rule, Envoy route and cluster a request from a proxy matches, and why it fails"
FAULT_FILTER = "envoy.filters.http.fault"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("proxy", help="the proxy: its node id, or a part of it that names one proxy (pod name, IP)")
    p.add_argument("--host", required=True, help="the request's Host (authority); HOST:PORT also sets --port")
    p.add_argument("--port", type=int, default=None,
                   help="the port the request is sent to (the route config's name); default: from --host, "
                        "else the only route config")
    p.add_argument("--path", default="/", help="the request's path, with its query string if any")
    p.add_argument("--method", default="GET", help="the request's method")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="a request header (repeatable)")
    add_http_address(p)
    add_output(p)


def run(args: argparse.Namespace) -> int:
    headers = {}
    for h in args.header:
        name, sep, value = h.partition("=")
        if not sep:
            return fail(f"--header must be NAME=VALUE, not {h!r}", 2)
        headers[name.strip()] = value
    port = args.port
    host = args.host
    if port is None and host.count(":") == 1 and host.rsplit(":", 1)[1].isdigit():
        port = int(host.rsplit(":", 1)[1])
    try:
        proxy = resolve(args.http_address, args.proxy)
        config = get_json(args.http_address, f"/debug/config?proxy={quote(proxy, safe='')}")
        syncz = [s for s in get_json(args.http_address, "/debug/syncz") if s["proxy"] == proxy]
        result = explain(config, Request(host, args.path, args.method, headers), port)
        result["proxy"] = proxy
        result["nacks"] = {t: e for st in statuses(syncz, {}) for t, e in st["types"].items() if e["status"] == "NACKED"}
        if result.get("virtual_host"):
            result["virtual_service"] = _rule_source(args.http_address, result)
    except ServerError as e:
        return fail(str(e))
    except ValueError as e:
        return fail(str(e), 2)
    if args.output == "json":
        print_json(result)
    else:
        print("\n".join(render(result)))
    return 0


def _types(config: dict[str, Any], t: str) -> dict[str, Any]:
    full = (config.get("types", {}).get(t) or {}).get("full") or {}
    return {name: entry["resource"] for name, entry in full.items()}


#: The last virtual host of outbound route configs (outboundTrafficPolicy), by name.
_CATCH_ALLS = {
    "allow_any": "ALLOW_ANY passes the request to the address its Host names (an ip:port), else Envoy answers 503",
    "block_all": "REGISTRY_ONLY, Envoy answers 502",
}


def explain(config: dict[str, Any], request: Request, port: int | None) -> dict[str, Any]:
    routes = _types(config, "rds")
    if port is None:
        if len(routes) != 1:
            raise ValueError(f"say which port with --port (or --host HOST:PORT): this proxy has route configs "
                             f"{', '.join(sorted(routes)) or 'none'}")
        port = int(next(iter(routes)))
    rc = routes.get(str(port))
    out: dict[str, Any] = {"request": {"host": request.host, "path": request.path, "method": request.method,
                                       "headers": dict(request.headers)},
                           "route_config": str(port), "problems": [], "unevaluated": []}
    if rc is None:
        out["problems"].append(f"the proxy has no route config for port {port} (it has: "
                               f"{', '.join(sorted(routes)) or 'none'}): no HTTP listener there routes by host")
        return out
    m: Match = match_request(rc, request)
    out["unevaluated"] = [f"routes[{i}].match.{f}" for i, f in m.unevaluated]
    if m.virtual_host is None:
        out["problems"].append(f"no virtual host of route config {port} has a domain matching {request.host!r}: "
                               "Envoy answers 404 (NR)")
        return out
    out["virtual_host"] = {"name": m.virtual_host.get("name"), "domains": m.virtual_host.get("domains")}
    catch_all = _CATCH_ALLS.get(m.virtual_host.get("name", ""))
    if catch_all:  # the outboundTrafficPolicy's virtual host: the Host is no service's
        out["problems"].append(f"no service of this proxy has host {request.host!r}: {catch_all}")
    if m.route is None:
        out["problems"].append(f"no route of virtual host {m.virtual_host.get('name')} matches: Envoy answers 404 (NR)")
        return out
    route = m.route
    out["route"] = {"index": m.route_index, "name": route.get("name", ""), "match": route.get("match")}
    clusters, endpoints = _types(config, "cds"), _types(config, "eds")
    action = route.get("route")
    if action is not None:
        if "cluster" in action:
            targets = [{"name": action["cluster"], "weight": None}]
        elif "weighted_clusters" in action:
            targets = [{"name": c["name"], "weight": c.get("weight")} for c in action["weighted_clusters"]["clusters"]]
        else:
            targets = []
            out["problems"].append(f"the route picks its cluster by {', '.join(sorted(action))}: not evaluated")
        for t in targets:
            t.update(_cluster_state(t["name"], clusters, endpoints))
            if t["problem"] and (t["weight"] is None or t["weight"]):
                out["problems"].append(t["problem"])
        out["clusters"] = targets
        for key in ("timeout", "retry_policy", "request_mirror_policies", "prefix_rewrite", "host_rewrite_literal"):
            if key in action:
                out.setdefault("action", {})[key] = action[key]
    if "redirect" in route:
        out["redirect"] = route["redirect"]
        out["problems"].append(f"the route redirects ({_short(route['redirect'])}): no upstream is called")
    if "direct_response" in route:
        dr = route["direct_response"]
        out["direct_response"] = dr
        out["problems"].append(f"the route answers {dr.get('status')} itself (direct response): no upstream is called")
    fault = (route.get("typed_per_filter_config") or {}).get(FAULT_FILTER)
    if fault:
        out["fault"] = {k: v for k, v in fault.items() if k != "@type"}
        if "abort" in fault:
            abort = fault["abort"]
            code = abort.get("http_status") or f"gRPC {abort.get('grpc_status')}"
            out["problems"].append(f"fault injection aborts with {code} ({_percent(abort.get('percentage'))})")
        if "delay" in fault:
            delay = fault["delay"]
            out["problems"].append(f"fault injection delays by {delay.get('fixed_delay')} "
                                   f"({_percent(delay.get('percentage'))})")
    return out


def _percent(p: dict[str, Any] | None) -> str:
    if not p:
        return "0% of requests"
    denominator = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}[p.get("denominator", "HUNDRED")]
    return f"{100 * p.get('numerator', 0) / denominator:g}% of requests"


def _short(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items()))


def _cluster_state(name: str, clusters: dict[str, Any], endpoints: dict[str, Any]) -> dict[str, Any]:
    cluster = clusters.get(name)
    if cluster is None:
        return {"type": None, "endpoints": None,
                "problem": f"cluster {name} is not in the proxy's CDS: Envoy answers 503 (NC, cluster not found)"}
    kind = cluster.get("type", "EDS" if "eds_cluster_config" in cluster else "STATIC")
    if kind != "EDS":
        return {"type": kind, "endpoints": None, "problem": ""}
    cla = endpoints.get(name) or {}
    count = sum(len(group.get("lb_endpoints") or []) for group in cla.get("endpoints") or [])
    problem = "" if count else (f"cluster {name} has no endpoints (EDS): Envoy answers 503 "
                                "(UH, no healthy upstream); is a subset selecting no pod?")
    return {"type": kind, "endpoints": count, "problem": problem}


def _rule_source(address: str, result: dict[str, Any]) -> dict[str, Any] | None:
    """The VirtualService rule the route came from: its route name is the rule's ``http[].name``."""
    vh_name = str(result["virtual_host"]["name"])
    host = vh_name.rsplit(":", 1)[0]
    route_name = (result.get("route") or {}).get("name", "")
    try:
        svc = get_json(address, f"/debug/describe?{urlencode({'kind': 'service', 'name': host})}")
    except ServerError:
        return None
    rule_name = route_name.split(".", 1)[0] if route_name else ""  # "<http name>.<match name>"
    for vs in svc.get("virtual_services") or []:
        for rule in vs["http"]:
            if rule_name and rule["name"] == rule_name:
                return {"name": vs["name"], "rule": f"http[{rule['index']}]", "rule_name": rule["name"]}
    if route_name == "default" or not svc.get("virtual_services"):
        return {"name": None, "rule": None, "rule_name": None, "note": "the service's default route: no VirtualService"}
    names = ", ".join(vs["name"] for vs in svc["virtual_services"])
    return {"name": names, "rule": None, "rule_name": None,
            "note": "unnamed rule: give http[] entries a name to see which one"}


def render(r: dict[str, Any]) -> list[str]:
    req = r["request"]
    lines = [f"Request: {req['method']} http://{req['host']}{req['path']}"
             + "".join(f"\n   {k}: {v}" for k, v in req["headers"].items()),
             f"Proxy: {r['proxy']}", f"Route config: {r['route_config']}"]
    if r.get("virtual_host"):
        lines.append(f"Virtual host: {r['virtual_host']['name']}")
    if r.get("route"):
        lines.append(f"Route: #{r['route']['index']} {r['route']['name'] or '(unnamed)'}")
        lines.append(f"   match: {_short(r['route']['match'] or {})}")
    vs = r.get("virtual_service")
    if vs:
        if vs.get("rule"):
            lines.append(f"VirtualService: {vs['name']} {vs['rule']} ({vs['rule_name']})")
        else:
            lines.append(f"VirtualService: {vs.get('name') or '-'} ({vs.get('note')})")
    for c in r.get("clusters") or []:
        weight = f" weight {c['weight']}" if c["weight"] is not None else ""
        eps = f", {c['endpoints']} endpoint{'' if c['endpoints'] == 1 else 's'}" if c["endpoints"] is not None else ""
        lines.append(f"Cluster: {c['name']}{weight} ({c['type'] or 'missing'}{eps})")
    for t, e in sorted(r.get("nacks", {}).items()):
        lines.append(f"NACKED: the proxy rejected its last {t.upper()} ({e.get('message', '')}); it runs version "
                     f"{e.get('acked_version') or '(none)'}, not the {e.get('sent_version')} explained here")
    for f in r["unevaluated"]:
        lines.append(f"Not evaluated: {f} (assumed to match)")
    if r["problems"]:
        lines += [f"Problem: {p}" for p in r["problems"]]
    elif r.get("clusters"):
        lines.append("OK: the request would be sent upstream")
    return lines
