"""``meshpilot describe pod|service NAME``: what applies to a workload or a service, and what cannot work.

From the server's ``/debug/describe`` (its World and registry) and ``/debug/syncz`` statuses:
for a pod, its proxy, the services selecting it, their VirtualServices and DestinationRules,
its PeerAuthentication mode and AuthorizationPolicies; for a service, its ports and ready
endpoints, the VirtualServices routing it, DestinationRules and subsets with their endpoint
counts, and problems (a subset without endpoints, a VirtualService bound to nothing).
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import urlencode

from xds_server.app.verbs.common import ServerError, add_http_address, add_output, fail, get_json, print_json
from xds_server.app.verbs.proxy_status import TYPES, statuses

HELP = "describe a pod or a service: routing, destination rules, subsets, security, problems"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=("pod", "service", "svc"), help="what to describe")
    p.add_argument("name", help="its name (a service may also be given by host)")
    p.add_argument("-n", "--namespace", default="default", help="its namespace")
    add_http_address(p)
    add_output(p)


def run(args: argparse.Namespace) -> int:
    kind = "service" if args.kind == "svc" else args.kind
    query = urlencode({"kind": kind, "name": args.name, "namespace": args.namespace})
    try:
        found = get_json(args.http_address, f"/debug/describe?{query}")
    except ServerError as e:
        return fail(str(e))
    proxy = found.get("proxy")
    if proxy:
        proxy["status"] = statuses(proxy.pop("streams"), {"address": args.http_address})
    if args.output == "json":
        print_json(found)
    else:
        print("\n".join(render_pod(found) if kind == "pod" else render_service(found)))
    return 0


def render_pod(d: dict[str, Any]) -> list[str]:
    lines = [f"Pod: {d['name']}.{d['namespace']}", f"   Pod IP: {d['ip'] or '-'}",
             f"   Labels: {', '.join(f'{k}={v}' for k, v in sorted(d['labels'].items())) or '-'}"]
    proxy = d.get("proxy")
    if not proxy:
        lines.append("   Proxy: not connected")
    else:
        lines.append(f"   Proxy: {proxy['id']} (identity: {proxy['identity'] or 'none: plaintext xDS port'})")
        for stream in proxy["status"]:
            types = stream["types"]
            lines.append("      " + "  ".join(f"{t.upper()} {types[t]['status']}" for t in TYPES if t in types)
                         + f"  ({stream['protocol']})")
            acked = [f"{t.upper()} {e['acked_version']}" for t, e in sorted(types.items()) if e.get("acked_version")]
            if acked:
                lines.append(f"      ACKed versions: {', '.join(acked)}")
            lines += [f"      {t.upper()} NACKED: {e.get('message', '')}" for t, e in sorted(types.items())
                      if e["status"] == "NACKED"]
    peer = d["peer_authentication"]
    ports = ", ".join(f"{p}: {m}" for p, m in sorted(peer["ports"].items()))
    lines.append(f"   PeerAuthentication: {peer['mode']}{f' (ports {ports})' if ports else ''}"
                 f"{' from ' + ', '.join(peer['policies']) if peer['policies'] else ' (no policy: the default)'}")
    authz = d["authorization_policies"]
    lines.append("   AuthorizationPolicies: " + (", ".join(
        f"{a['name']} ({a['action']}, {a['rules']} rules{', dry run' if a['dry_run'] else ''})" for a in authz)
        or "none"))
    if not d["services"]:
        lines.append("   No service selects this pod.")
    for svc in d["services"]:
        lines.append("--------------------")
        lines += render_service(svc)
    return lines


def render_service(d: dict[str, Any]) -> list[str]:
    lines = [f"Service: {d['host']} ({d['resource']}, {d['discovery']})"]
    for p in d["ports"]:
        target = f" -> {p['target_port']}" if p.get("target_port") not in (None, "") else ""
        lines.append(f"   Port: {p['name'] or '-'} {p['port']}/{p['protocol']}{target}, "
                     f"{p['ready_endpoints']} ready endpoint{'' if p['ready_endpoints'] == 1 else 's'}")
    for dr in d["destination_rules"]:
        lines.append(f"DestinationRule: {dr['name']} for \"{dr['host']}\"")
        selector = dr.get("workload_selector")
        if selector is not None:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(selector.items())) or "any labels"
            lines.append(f"   For clients: the workloads of {dr['name'].split('/')[0]} with {labels}")
        if dr["traffic_policy"]:
            lines.append(f"   Traffic policy: {dr['traffic_policy']}")
        for s in dr["subsets"]:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s["labels"].items()))
            lines.append(f"   Subset: {s['name']} ({labels or 'no labels'}): {s['endpoints']} endpoint"
                         f"{'' if s['endpoints'] == 1 else 's'}"
                         + (f"; policy {s['traffic_policy']}" if s["traffic_policy"] else ""))
    if not d["destination_rules"]:
        lines.append("DestinationRule: none")
    for vs in d["virtual_services"]:
        lines.append(f"VirtualService: {vs['name']} (gateways: {', '.join(vs['gateways'])})")
        for rule in vs["http"]:
            what = f"{rule['matches']} match{'es' if rule['matches'] != 1 else ''}" if rule["matches"] else "no match"
            lines.append(f"   http[{rule['index']}] {rule['name'] or '(unnamed)'}: {what} -> {'; '.join(rule['to'])}")
    if not d["virtual_services"]:
        lines.append("VirtualService: none (the default route to every endpoint)")
    for problem in d["problems"]:
        where = " ".join(x for x in (problem["resource"], problem["field"]) if x)
        lines.append(f"{problem['severity'].capitalize()}: {where}: {problem['message']}")
    return lines
