"""HTTPMatchRequest -> RouteMatch: uri, scheme, method, authority, headers (and their
absence), query parameters, ignoreUriCase. Port and source conditions select which
routes a listener or proxy gets; they are not part of Envoy's match (see routes.py)."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from translators.model import HTTPMatchRequest, StringMatch


def string_matcher(m: StringMatch) -> string_pb2.StringMatcher:
    if m.exact is not None:
        return string_pb2.StringMatcher(exact=m.exact)
    if m.prefix is not None:
        return string_pb2.StringMatcher(prefix=m.prefix)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=m.regex))


def _presence(m: StringMatch) -> bool:
    # Istio: an empty match, or the regex "*" (not RE2, a wildcard), means "header present".
    return m.empty or m.regex == "*"


def header_matcher(name: str, m: StringMatch, *, invert: bool = False) -> rc.HeaderMatcher:
    out = rc.HeaderMatcher(name=name, invert_match=invert)
    if _presence(m):
        out.present_match = True
    else:
        out.string_match.CopyFrom(string_matcher(m))
        if invert:
            # A request without the header does not have the value either: it matches.
            out.treat_missing_header_as_empty = True
    return out


def route_match(m: HTTPMatchRequest | None) -> rc.RouteMatch:
    out = rc.RouteMatch(prefix="/")
    if m is None:
        return out
    headers = [header_matcher(n, sm) for n, sm in m.headers.items()]
    headers += [header_matcher(n, sm, invert=True) for n, sm in m.withoutHeaders.items()]
    headers.sort(key=lambda h: h.name)
    uri = m.uri
    if uri is not None:
        if uri.exact is not None:
            out.path = uri.exact
        elif uri.prefix is not None:
            out.prefix = uri.prefix
        elif uri.regex is not None:
            out.safe_regex.regex = uri.regex
        # (an empty uri match {} matches every path, as in istiod)
    out.case_sensitive.value = not m.ignoreUriCase
    for name, sm in ((":method", m.method), (":authority", m.authority), (":scheme", m.scheme)):
        if sm is not None:
            headers.append(header_matcher(name, sm))
    out.headers.extend(headers)
    for name, sm in sorted(m.queryParams.items()):
        q = rc.QueryParameterMatcher(name=name)
        if _presence(sm):
            q.present_match = True
        else:
            q.string_match.CopyFrom(string_matcher(sm))
        out.query_parameters.append(q)
    return out


def is_catch_all(match: rc.RouteMatch) -> bool:
    """Matches every request: prefix ``/`` (or regex ``.*``) and nothing else."""
    which = match.WhichOneof("path_specifier")
    path_all = (which == "prefix" and match.prefix == "/") or (which == "safe_regex" and match.safe_regex.regex == ".*")
    return path_all and not match.headers and not match.query_parameters
