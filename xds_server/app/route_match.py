"""Envoy's HTTP route matching, over a RouteConfiguration in Envoy's JSON (proto field names).

Enough of Envoy's semantics for what meshpilot's translator emits: virtual host selection by
domain (exact, then the longest ``*``-suffix, then the longest ``*``-prefix wildcard, then
``*``; the port ignored, as ``ignore_port_in_host_matching`` says), then the first route whose
match holds: ``prefix``, ``path`` and ``safe_regex`` (RE2, the whole path without the query
string), ``case_sensitive``, header matchers (string matches, presence, inversion,
``treat_missing_header_as_empty``) and query parameter matchers. A match field outside that
set is reported in ``unevaluated`` and treated as matching, so the caller can say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import re2

#: RouteMatch fields this module evaluates; any other set field is reported, not evaluated.
EVALUATED = frozenset({"prefix", "path", "safe_regex", "case_sensitive", "headers", "query_parameters"})


@dataclass
class Request:
    host: str
    path: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        name = name.lower()
        if name == ":authority" or name == "host":
            return self.host
        if name == ":method":
            return self.method
        if name == ":path":
            return self.path
        if name == ":scheme":
            return self.headers.get(":scheme", "http")
        return next((v for k, v in self.headers.items() if k.lower() == name), None)

    @property
    def path_only(self) -> str:
        return self.path.split("?", 1)[0].split("#", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        _, _, q = self.path.partition("?")
        out: dict[str, str] = {}
        for part in q.split("&"):
            if part:
                k, _, v = part.partition("=")
                out.setdefault(k, v)  # Envoy: the first value of a repeated parameter
        return out


@dataclass
class Match:
    virtual_host: dict[str, Any] | None
    route: dict[str, Any] | None
    route_index: int = -1
    #: (route index, field) pairs of match fields that were not evaluated (assumed to match)
    unevaluated: list[tuple[int, str]] = field(default_factory=list)


def _domain_rank(domain: str, host: str) -> tuple[int, int] | None:
    """How well ``domain`` matches ``host``: lower is better, None when it does not."""
    if domain == host:
        return (0, 0)
    if domain == "*":
        return (3, 0)
    if domain.startswith("*") and host.endswith(domain[1:]) and len(host) > len(domain) - 1:
        return (1, -len(domain))
    if domain.endswith("*") and host.startswith(domain[:-1]) and len(host) > len(domain) - 1:
        return (2, -len(domain))
    return None


def select_virtual_host(virtual_hosts: Sequence[dict[str, Any]], host: str) -> dict[str, Any] | None:
    host = host.lower()
    if host.startswith("["):  # [v6]:port
        host = host.split("]", 1)[0] + "]"
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    best: tuple[tuple[int, int], int] | None = None
    for i, vh in enumerate(virtual_hosts):
        for d in vh.get("domains") or []:
            rank = _domain_rank(d.lower().split(":", 1)[0] if d.count(":") == 1 else d.lower(), host)
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, i)
    return virtual_hosts[best[1]] if best is not None else None


def string_match(m: Mapping[str, Any], value: str) -> bool:
    ignore = bool(m.get("ignore_case"))
    v = value.lower() if ignore else value

    def norm(s: str) -> str:
        return s.lower() if ignore else s

    if "exact" in m:
        return v == norm(m["exact"])
    if "prefix" in m:
        return v.startswith(norm(m["prefix"]))
    if "suffix" in m:
        return v.endswith(norm(m["suffix"]))
    if "contains" in m:
        return norm(m["contains"]) in v
    if "safe_regex" in m:
        return re2.fullmatch(m["safe_regex"]["regex"], value) is not None
    return True  # an empty matcher: any value


def header_match(h: Mapping[str, Any], request: Request) -> bool:
    value = request.header(h["name"])
    if value is None and h.get("treat_missing_header_as_empty"):
        value = ""
    if "present_match" in h:
        result = (value is not None) == bool(h["present_match"])
    elif value is None:
        return False  # Envoy: a missing header fails the match, inverted or not
    elif "string_match" in h:
        result = string_match(h["string_match"], value)
    elif "exact_match" in h:
        result = value == h["exact_match"]
    elif "prefix_match" in h:
        result = value.startswith(h["prefix_match"])
    elif "safe_regex_match" in h:
        result = re2.fullmatch(h["safe_regex_match"]["regex"], value) is not None
    else:
        result = True
    return result != bool(h.get("invert_match"))


def query_match(q: Mapping[str, Any], request: Request) -> bool:
    value = request.query.get(q["name"])
    if q.get("present_match"):
        return value is not None
    if value is None:
        return False
    return string_match(q.get("string_match") or {}, value)


def route_matches(match: Mapping[str, Any], request: Request, unevaluated: list[str]) -> bool:
    case_sensitive = match.get("case_sensitive", True)
    path = request.path_only

    def fold(s: str) -> str:
        return s if case_sensitive else s.lower()

    if "prefix" in match:
        ok = fold(request.path).startswith(fold(match["prefix"]))
    elif "path" in match:
        ok = fold(path) == fold(match["path"])
    elif "safe_regex" in match:
        ok = re2.fullmatch(match["safe_regex"]["regex"], path) is not None
    else:
        which = next((k for k in match if k not in EVALUATED), "path_specifier")
        unevaluated.append(which)
        ok = True
    unevaluated.extend(k for k in match if k not in EVALUATED and k not in unevaluated)
    return (ok and all(header_match(h, request) for h in match.get("headers") or [])
            and all(query_match(q, request) for q in match.get("query_parameters") or []))


def match_request(config: Mapping[str, Any], request: Request) -> Match:
    vh = select_virtual_host(config.get("virtual_hosts") or [], request.host)
    if vh is None:
        return Match(None, None)
    result = Match(vh, None)
    for i, route in enumerate(vh.get("routes") or []):
        skipped: list[str] = []
        if route_matches(route.get("match") or {}, request, skipped):
            result.route, result.route_index = route, i
            # Only the chosen route's matter: a route that failed, failed on what was evaluated.
            result.unevaluated += [(i, f) for f in skipped]
            return result
    return result
