"""``meshpilot diff --config-dir NEW``: what each connected proxy's xDS would become, before applying NEW.

NEW is read as ``serve --config-dir`` reads it and translated here by the same Translator
for every proxy the server has a stream with, described as translation sees it
(``/debug/proxies``: node metadata and the identity the server verified). The result is
compared, per proxy and xDS type, with what the server holds for that proxy now
(``/debug/config?proxy=``), resource by resource in Envoy's JSON. Secrets are not compared
(they do not come from config). Exit status as ``diff``: 0 no change, 1 changes, 2 trouble.
"""

from __future__ import annotations

import argparse
import difflib
import gc
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from translators import api
from xds_server.app.config_dump import proxy_config
from xds_server.app.node import proxy_from_dict
from xds_server.app.pipeline import Pipeline
from xds_server.app.verbs.common import ServerError, add_http_address, add_output, fail, get_json, print_json
from xds_server.sources.files import DirectorySource

HELP = "show what a new config directory would change in each connected proxy's xDS (exit 1 when it would)"
TYPES = tuple(api.SHORT_NAMES[t] for t in api.PUSH_ORDER)  # cds, eds, lds, rds: what translation makes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-dir", required=True, type=Path, metavar="NEW",
                   help="the directory of manifests to compare with what the server serves")
    p.add_argument("--namespace", default="default", help="namespace of manifests that name none")
    p.add_argument("proxy", nargs="?", default=None, help="only proxies whose node id contains this")
    add_http_address(p)
    p.add_argument("--server", dest="http_address", metavar="HOST:PORT", help="the same as --http-address")
    p.add_argument("--details", action="store_true", help="print a unified diff of each changed resource's JSON")
    add_output(p)


def run(args: argparse.Namespace) -> int:
    if not args.config_dir.is_dir():
        return fail(f"not a directory: {args.config_dir}", 2)
    address = args.http_address.removeprefix("http://").rstrip("/")
    try:
        proxies = [proxy_from_dict(d) for d in get_json(address, "/debug/proxies")]
        if args.proxy:
            proxies = [p for p in proxies if args.proxy in p.id]
        current = {p.id: get_json(address, f"/debug/config?proxy={quote(p.id, safe='')}") for p in proxies}
    except ServerError as e:
        return fail(str(e), 2)
    loaded = DirectorySource(args.config_dir, default_namespace=args.namespace).load()
    pipeline = Pipeline()
    pipeline.apply(loaded.resources, loaded.errors)
    gc.unfreeze()  # apply() freezes the heap for a long-running server; a one-shot command need not
    errors = sum(1 for e in pipeline.errors if e.severity == "error")
    result = {p.id: compare(current[p.id], proxy_config(p.id, pipeline.cache.view(p))) for p in proxies}
    changed = any(t for per_type in result.values() for t in per_type.values())
    if args.output == "json":
        print_json({"proxies": result, "changed": changed, "errors_in_new": errors})
    else:
        print(render(result, args.details) if proxies else f"no proxies connected to meshpilot at {address}")
        if errors:
            print(f"\n{errors} error{'s' if errors != 1 else ''} in {args.config_dir}: "
                  f"see `meshpilot analyze {args.config_dir}`")
    return 1 if changed else 0


def _full(config: dict[str, Any], t: str) -> dict[str, Any]:
    full = (config.get("types", {}).get(t) or {}).get("full") or {}
    return {name: entry["resource"] for name, entry in full.items()}


def compare(now: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per xDS type with a difference: added and removed names, and changed name -> {before, after}."""
    out: dict[str, dict[str, Any]] = {}
    for t in TYPES:
        before, after = _full(now, t), _full(new, t)
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        changed = {n: {"before": before[n], "after": after[n]}
                   for n in sorted(before.keys() & after.keys()) if before[n] != after[n]}
        if added or removed or changed:
            out[t] = {"added": added, "removed": removed, "changed": changed}
    return out


def unified(name: str, before: Any, after: Any) -> list[str]:
    def lines(x: Any) -> list[str]:
        return json.dumps(x, indent=2, sort_keys=True).splitlines()

    return list(difflib.unified_diff(lines(before), lines(after), f"{name} (now)", f"{name} (new)", lineterm=""))


def render(result: dict[str, dict[str, dict[str, Any]]], details: bool) -> str:
    out: list[str] = []
    for proxy, per_type in sorted(result.items()):
        if not per_type:
            out.append(f"{proxy}: no change")
            continue
        counts = ", ".join(f"{t.upper()} +{len(d['added'])} -{len(d['removed'])} ~{len(d['changed'])}"
                           for t, d in per_type.items())
        out.append(f"{proxy}: {counts}")
        for t, d in per_type.items():
            out += [f"  {t.upper()} + {n}" for n in d["added"]]
            out += [f"  {t.upper()} - {n}" for n in d["removed"]]
            for n, change in d["changed"].items():
                out.append(f"  {t.upper()} ~ {n}")
                if details:
                    out += [f"    {line}" for line in unified(n, change["before"], change["after"])]
    return "\n".join(out)
