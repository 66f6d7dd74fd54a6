"""CorsPolicy -> the per-route config of Envoy's CORS filter."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2

from translators.features._proto import whole_percent
from translators.features.match import string_matcher
from translators.model import CorsPolicy

FILTER = "envoy.filters.http.cors"


def filter_config() -> cors_pb2.Cors:
    return cors_pb2.Cors()


def cors_policy(c: CorsPolicy) -> cors_pb2.CorsPolicy:
    out = cors_pb2.CorsPolicy(
        allow_methods=",".join(c.allowMethods),
        allow_headers=",".join(c.allowHeaders),
        expose_headers=",".join(c.exposeHeaders),
        filter_enabled=base_pb2.RuntimeFractionalPercent(default_value=whole_percent(100)),
        # Istio's default keeps Envoy's pre-1.30 behaviour: a preflight that matches no
        # origin goes on to the upstream, unless the policy says IGNORE.
        forward_not_matching_preflights=wrappers_pb2.BoolValue(value=c.unmatchedPreflights != "IGNORE"),
    )
    if c.allowOrigins:
        out.allow_origin_string_match.extend(string_matcher(m) for m in c.allowOrigins)
    else:
        out.allow_origin_string_match.extend(string_pb2.StringMatcher(exact=o) for o in c.allowOrigin)
    if c.maxAge is not None:
        out.max_age = str(c.maxAge.nanos // 1_000_000_000)
    if c.allowCredentials is not None:
        out.allow_credentials.value = c.allowCredentials
    return out
