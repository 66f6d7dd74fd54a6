"""The route actions other than forwarding (redirect, directResponse) and the request
rewrites of a forwarding route (uri prefix, uriRegexRewrite, authority)."""

from __future__ import annotations

import base64

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2

from translators.model import HTTPDirectResponse, HTTPRedirect, HTTPRewrite

_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}


def redirect_action(r: HTTPRedirect, listener_port: int, tls: bool = False) -> rc.RedirectAction:
    out = rc.RedirectAction(host_redirect=r.authority, response_code=_CODES[r.redirectCode or 301])  # type: ignore[arg-type]
    if r.uri:
        out.path_redirect = r.uri
    if r.scheme:
        out.scheme_redirect = r.scheme
    port = 0
    if r.port is not None:
        port = r.port
    elif r.derivePort == "FROM_REQUEST_PORT":
        port = listener_port  # routes are built per listener port: the request's port is known
    if r.port is not None or r.derivePort is not None:
        scheme = r.scheme or ("https" if tls else "http")
        if (port, scheme) in ((80, "http"), (443, "https")):
            port = 0  # no explicit default port in the Location
    if port:
        out.port_redirect = port
    return out


def direct_response(d: HTTPDirectResponse) -> rc.DirectResponseAction:
    out = rc.DirectResponseAction(status=d.status)
    if d.body is not None:
        if d.body.string is not None:
            out.body.CopyFrom(base_pb2.DataSource(inline_string=d.body.string))
        elif d.body.bytes is not None:
            out.body.CopyFrom(base_pb2.DataSource(inline_bytes=base64.b64decode(d.body.bytes)))
    return out


def apply_rewrite(action: rc.RouteAction, rewrite: HTTPRewrite | None) -> str:
    """Path rewrites onto ``action``; returns the authority to rewrite to ("" for none)."""
    if rewrite is None:
        return ""
    if rewrite.uriRegexRewrite is not None:
        action.regex_rewrite.pattern.CopyFrom(regex_pb2.RegexMatcher(regex=rewrite.uriRegexRewrite.match))
        action.regex_rewrite.substitution = rewrite.uriRegexRewrite.rewrite
    elif rewrite.uri:
        action.prefix_rewrite = rewrite.uri
    return rewrite.authority
