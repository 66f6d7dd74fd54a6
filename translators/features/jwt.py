"""RequestAuthentication -> ``envoy.filters.http.jwt_authn``, as istiod writes it
(pilot/pkg/security/authn): one provider ``origins-<i>`` per JWT rule (rules sorted by
issuer), each required only when its token is present, so

* a request with a token that fails (bad signature, expired, wrong audience or issuer)
  gets 401;
* a request without a token passes, and it is then up to an AuthorizationPolicy
  (``requestPrincipals``) to refuse it (403);
* the verified payload is put in the dynamic metadata under ``payload``, where the RBAC
  rules for ``requestPrincipals`` and ``request.auth.*`` look.

Keys: ``jwks`` inline, or fetched by Envoy itself from ``jwksUri`` (``remote_jwks``,
cached 5 minutes; istiod's PILOT_JWT_ENABLE_REMOTE_JWKS=envoy). istiod by default fetches
the keys itself and inlines them, but translators do no I/O, and a control plane that
fetched keys would have to reach every issuer and re-push on rotation; Envoy fetching
them keeps rotation with the issuer. The fetch goes through the registry's cluster when
the URI's host and port are a mesh service, else through a cluster made for it here
(``jwks|<port>||<host>``: static for an IP, DNS otherwise, TLS for https verified against
the system roots).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, http_uri_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf import duration_pb2, empty_pb2

from translators.endpoints import load_assignment
from translators.errors import ConfigError
from translators.features._proto import to_any
from translators.features.connection_pool import CONNECT_TIMEOUT
from translators.features.tls import SOCKET, upstream_tls
from translators.model import ClientTLSSettings
from translators.model.names import is_ip
from translators.model.registry import Endpoint
from translators.model.security import JWTRule, RequestAuthentication, jwks_uri_parts

FILTER = "envoy.filters.http.jwt_authn"
PAYLOAD_KEY = "payload"
FETCH_TIMEOUT = duration_pb2.Duration(seconds=5)
CACHE_DURATION = duration_pb2.Duration(seconds=5 * 60)
SPACE_DELIMITED_CLAIMS = ("permission", "scope")

#: A key set no one can sign for (its private key was discarded when it was made): the
#: keys of a rule whose keys cannot be had, so every token of that issuer fails.
UNUSABLE_JWKS = (
    '{"keys": [{"kty": "RSA", "e": "AQAB", "n": "liky_MP1JFBlms24MG0d9c9nYq1hiIXHq1fddDH7qdVLSoHu-xz75kkgpDokY-P4YxSmH0vwFv'
    "X9mo2secANKqSWpJqpJ1QLDlhi1o3ePmMQlpeX8JJveW_cCqFPugCcW_J5fjxo-1Q4YwpaAgsIB3z_WK0Rb56of3992JpstWl89-TGJHnCM5NLOIZmDS"
    "uHwHbHbnJTwFXSLfv4pJCIMiGpbCoZB6SR71mmIgA41FC2vnqCYZwWNdbK9OS7nr9i0GaohDxS9RfGze0ggyrajOESrZ7jZmq19Z6jKpOXWAmYq7ik6O"
    'iW0t4Oprs_742_0NHs6WotxZTXlhmId3qlAQ"}]}'
)

#: ``lookup(host, port)``: the registry's cluster for a mesh service there, else None.
ClusterLookup = Callable[[str, int], str | None]


def jwks_cluster_name(host: str, port: int) -> str:
    return f"jwks|{port}||{host}"



@functools.lru_cache(maxsize=256)
def jwks_cluster(scheme: str, host: str, port: int) -> cluster_pb2.Cluster:
    """A cluster to fetch keys from ``host:port`` outside the mesh's registry (one object
    per address: every proxy using it shares it; never modify it)."""
    name = jwks_cluster_name(host, port)
    c = cluster_pb2.Cluster(name=name, connect_timeout=CONNECT_TIMEOUT,
                            load_assignment=load_assignment(name, (Endpoint(host, port),)))
    if is_ip(host):
        c.type = cluster_pb2.Cluster.STATIC
    else:
        c.type = cluster_pb2.Cluster.STRICT_DNS
        c.dns_lookup_family = cluster_pb2.Cluster.V4_ONLY
    if scheme == "https":
        tls = upstream_tls(ClientTLSSettings(mode="SIMPLE", sni="" if is_ip(host) else host, subjectAltNames=[host]))
        assert tls is not None
        c.transport_socket.CopyFrom(base_pb2.TransportSocket(name=SOCKET, typed_config=to_any(tls)))
    return c


def _provider(rule: JWTRule) -> jwt_pb2.JwtProvider:
    claims = sorted(set(rule.spaceDelimitedClaims) | set(SPACE_DELIMITED_CLAIMS))
    p = jwt_pb2.JwtProvider(
        issuer=rule.issuer,
        audiences=rule.audiences,
        forward=rule.forwardOriginalToken,
        forward_payload_header=rule.outputPayloadToHeader,
        payload_in_metadata=PAYLOAD_KEY,
        normalize_payload_in_metadata=jwt_pb2.JwtProvider.NormalizePayload(space_delimited_claims=claims),
        from_headers=[jwt_pb2.JwtHeader(name=h.name, value_prefix=h.prefix) for h in rule.fromHeaders],
        from_params=rule.fromParams,
        from_cookies=rule.fromCookies,
        claim_to_headers=[jwt_pb2.JwtClaimToHeader(header_name=c.header, claim_name=c.claim)
                          for c in rule.outputClaimToHeaders],
    )
    return p


def authentication(
    rules: Sequence[tuple[RequestAuthentication, int, JWTRule]], lookup: ClusterLookup
) -> tuple[jwt_pb2.JwtAuthentication | None, list[cluster_pb2.Cluster], list[ConfigError]]:
    """The filter config for the JWT rules of a workload (with the RequestAuthentication
    and index each comes from), the clusters its key fetches need, and problems."""
    if not rules:
        return None, [], []
    ordered = sorted(rules, key=lambda r: r[2].issuer)  # stable, as istiod sorts them
    providers: dict[str, jwt_pb2.JwtProvider] = {}
    clusters: dict[str, cluster_pb2.Cluster] = {}
    errors: list[ConfigError] = []
    each: list[jwt_pb2.JwtRequirement] = []
    for i, (ra, index, rule) in enumerate(ordered):
        provider = _provider(rule)
        timeout = rule.timeout.proto() if rule.timeout is not None else FETCH_TIMEOUT
        parts = jwks_uri_parts(rule.jwksUri) if rule.jwksUri and not rule.jwks else None
        if rule.jwks:
            provider.local_jwks.inline_string = rule.jwks
        elif parts is not None:
            scheme, host, port = parts
            cluster = lookup(host, port)
            if cluster is None:
                cluster = jwks_cluster_name(host, port)
                clusters.setdefault(cluster, jwks_cluster(scheme, host, port))
            provider.remote_jwks.http_uri.CopyFrom(http_uri_pb2.HttpUri(uri=rule.jwksUri, cluster=cluster, timeout=timeout))
            provider.remote_jwks.cache_duration.CopyFrom(CACHE_DURATION)
        else:
            provider.local_jwks.inline_string = UNUSABLE_JWKS
            errors.append(ConfigError(ra.source, str(ra.key), f"spec.jwtRules[{index}]",
                                      "no jwksUri or jwks: meshpilot does not discover keys from the issuer "
                                      "(OpenID discovery); tokens of this issuer are refused", "warning"))
        name = f"origins-{i}"
        providers[name] = provider
        each.append(jwt_pb2.JwtRequirement(requires_any=jwt_pb2.JwtRequirementOrList(requirements=[
            jwt_pb2.JwtRequirement(provider_name=name),
            jwt_pb2.JwtRequirement(allow_missing=empty_pb2.Empty()),
        ])))
    if len(each) == 1:
        requires = each[0]
    else:
        # Any one provider, or all of them each with its token or none: a token present
        # must be valid, and providers sharing a token location still pass.
        requires = jwt_pb2.JwtRequirement(requires_any=jwt_pb2.JwtRequirementOrList(requirements=[
            *(jwt_pb2.JwtRequirement(provider_name=n) for n in providers),
            jwt_pb2.JwtRequirement(requires_all=jwt_pb2.JwtRequirementAndList(requirements=each)),
        ]))
    config = jwt_pb2.JwtAuthentication(
        rules=[jwt_pb2.RequirementRule(match=rc.RouteMatch(prefix="/"), requires=requires)],
        bypass_cors_preflight=True,
    )
    for name, provider in providers.items():
        config.providers[name].CopyFrom(provider)
    return config, list(clusters.values()), errors


def http_filter(config: jwt_pb2.JwtAuthentication) -> hcm.HttpFilter:
    return hcm.HttpFilter(name=FILTER, typed_config=to_any(config))
