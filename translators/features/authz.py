"""AuthorizationPolicy -> Envoy RBAC (``envoy.filters.http.rbac`` on HTTP ports,
``envoy.filters.network.rbac`` on TCP ports) and, for ``action: CUSTOM``, ext_authz with a
provider from the mesh config, the way istiod builds them (pilot/pkg/security/authz):

* filters in Istio's order: CUSTOM (an RBAC filter in shadow mode that marks the requests
  the rules select, then ext_authz, enabled only for marked requests), then AUDIT
  (``LOG``), DENY, ALLOW; no ALLOW policy allows, an ALLOW policy without rules matches
  nothing and so denies all;
* each rule is one RBAC policy ``ns[<ns>]-policy[<name>]-rule[<i>]``: its ``from`` entries
  ORed as principals, its ``to`` entries ORed as permissions, ``when`` ANDed into both;
* on a TCP port, a rule using an HTTP-only field (paths, methods, hosts, request
  principals, headers, JWT claims) is dropped from ALLOW policies (less is allowed) and
  the field is ignored in DENY and AUDIT ones (more is denied), as istiod does;
* peer identities (``principals``, ``namespaces``, ``source.principal``...) match the
  mTLS peer certificate (``authenticated``): over plaintext they never match;
* ``istio.io/dry-run: "true"`` policies are RBAC shadow rules: evaluated, counted, never
  enforced.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    grpc_service_pb2,
    http_uri_pb2,
)
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_ext_authz
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as tcp_ext_authz
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as tcp_rbac
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from translators.errors import ConfigError
from translators.features import jwt
from translators.features._proto import to_any
from translators.model.mesh import EnvoyExtAuthzGrpc, EnvoyExtAuthzHttp, MeshConfig
from translators.model.security import (
    MATCH_ANY_TEMPLATE,
    MATCH_ONE_TEMPLATE,
    AuthorizationPolicy,
    Rule,
    is_path_template,
)

HTTP_RBAC = "envoy.filters.http.rbac"
TCP_RBAC = "envoy.filters.network.rbac"
HTTP_EXT_AUTHZ = "envoy.filters.http.ext_authz"
TCP_EXT_AUTHZ = "envoy.filters.network.ext_authz"

TCP_STAT_PREFIX = "tcp."
DRY_RUN_ALLOW_PREFIX = "istio_dry_run_allow_"
DRY_RUN_DENY_PREFIX = "istio_dry_run_deny_"
EXT_AUTHZ_SHADOW_PREFIX = "istio_ext_authz_"
EXT_AUTHZ_MATCH_PREFIX = "istio-ext-authz"
BAD_CUSTOM_SUFFIX = "-deny-due-to-bad-CUSTOM-action"
SPIFFE = "spiffe://"

Permission: TypeAlias = rbac_pb2.Permission
Principal: TypeAlias = rbac_pb2.Principal
SM: TypeAlias = string_pb2.StringMatcher

_ALLOW, _DENY, _LOG = rbac_pb2.RBAC.ALLOW, rbac_pb2.RBAC.DENY, rbac_pb2.RBAC.LOG

#: Matches no request: what a policy without rules contributes.
MATCH_NEVER = rbac_pb2.Policy(permissions=[Permission(not_rule=Permission(any=True))],
                              principals=[Principal(not_id=Principal(any=True))])


class Unsupported(Exception):
    """A value that cannot be matched here (an HTTP-only attribute on a TCP port)."""


# ---------------------------------------------------------------- string matchers


def _regex(regex: str) -> SM:
    return SM(safe_regex=regex_pb2.RegexMatcher(regex=regex))


def _quote_meta(text: str) -> str:
    # Go's regexp.QuoteMeta: escapes exactly the characters RE2 treats as special.
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$" else c for c in text)


def string_matcher(value: str, prefix: str = "") -> SM:
    """Istio's StringMatcherWithPrefix: ``*`` is any non-empty value, ``*x`` a suffix, ``x*`` a
    prefix, anything else exact; ``prefix`` is put before the value."""
    if value == "*":
        return _regex(".+")
    if value.startswith("*"):
        if not prefix:
            return SM(suffix=value[1:])
        return _regex(prefix + ".*" + _quote_meta(value[1:]))
    if value.endswith("*"):
        return SM(prefix=prefix + value[:-1])
    return SM(exact=prefix + value)


def header_matcher(name: str, value: str, ignore_case: bool = False) -> rc.HeaderMatcher:
    """Istio's HeaderMatcher (HostMatcher with ``ignore_case``): ``*`` is presence."""
    if value == "*":
        return rc.HeaderMatcher(name=name, present_match=True)
    if value.startswith("*"):
        return rc.HeaderMatcher(name=name, string_match=SM(suffix=value[1:], ignore_case=ignore_case))
    if value.endswith("*"):
        return rc.HeaderMatcher(name=name, string_match=SM(prefix=value[:-1], ignore_case=ignore_case))
    return rc.HeaderMatcher(name=name, string_match=SM(exact=value, ignore_case=ignore_case))


def _value(m: SM) -> value_pb2.ValueMatcher:
    return value_pb2.ValueMatcher(string_match=m)


def _or_values(matchers: list[value_pb2.ValueMatcher]) -> value_pb2.ValueMatcher:
    if len(matchers) == 1:
        return matchers[0]
    return value_pb2.ValueMatcher(or_match=value_pb2.OrMatcher(value_matchers=matchers))


def _metadata(filter_name: str, keys: Iterable[str], value: value_pb2.ValueMatcher) -> metadata_pb2.MetadataMatcher:
    return metadata_pb2.MetadataMatcher(filter=filter_name, path=[metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in keys],
                                        value=value)


def _claim_list(claims: list[str], value: value_pb2.ValueMatcher) -> metadata_pb2.MetadataMatcher:
    """A JWT claim (nested keys) that is the value or a list holding it."""
    one_of = value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=value))
    either = value_pb2.ValueMatcher(or_match=value_pb2.OrMatcher(value_matchers=[one_of, value]))
    return _metadata(jwt.FILTER, [jwt.PAYLOAD_KEY, *claims], either)


def _cidr(value: str) -> address_pb2.CidrRange:
    iface = ipaddress.ip_interface(value)
    return address_pb2.CidrRange(address_prefix=str(iface.ip), prefix_len=wrappers_pb2.UInt32Value(value=iface.network.prefixlen))


def _authenticated(m: SM) -> Principal:
    return Principal(authenticated=Principal.Authenticated(principal_name=m))


def _bracketed(text: str) -> str:
    if not (text.startswith("[") and text.endswith("]")):
        raise Unsupported(f"expecting format [<NAME>], but found {text}")
    return text[1:-1]


def _nested(text: str) -> list[str]:
    """``[a][b]`` -> [a, b]; ``[a.b]`` -> [a.b] (Istio's extractNameInNestedBrackets)."""
    out, pos = [], 0
    while pos < len(text):
        end = text.find("]", pos)
        if text[pos] != "[" or end < 0 or "[" in text[pos + 1:end]:
            return [_bracketed(text)]
        out.append(text[pos + 1:end])
        pos = end + 1
    return out


# ---------------------------------------------------------------- attributes
#
# Each attribute is matched by a permission (what is asked for) or by a principal (who
# asks). A "simple" one makes a matcher per value (ORed); an "extended" one takes all
# values at once.


def _http_only(key: str, tcp: bool) -> None:
    if tcp:
        raise Unsupported(f"{key!r} is HTTP only")


def _perm_destination_ip(key: str, v: str, tcp: bool) -> Permission:
    return Permission(destination_ip=_cidr(v))


def _perm_destination_port(key: str, v: str, tcp: bool) -> Permission:
    return Permission(destination_port=int(v))


def _perm_sni(key: str, v: str, tcp: bool) -> Permission:
    return Permission(requested_server_name=string_matcher(v))


def _perm_host(key: str, v: str, tcp: bool) -> Permission:
    _http_only(key, tcp)
    return Permission(header=header_matcher(":authority", v, ignore_case=True))


def _perm_method(key: str, v: str, tcp: bool) -> Permission:
    _http_only(key, tcp)
    return Permission(header=header_matcher(":method", v))


def _perm_path(key: str, v: str, tcp: bool) -> Permission:
    _http_only(key, tcp)
    if is_path_template(v):
        template = v.replace(MATCH_ANY_TEMPLATE, "**").replace(MATCH_ONE_TEMPLATE, "*")
        config = uri_template_match_pb2.UriTemplateMatchConfig(path_template=template)
        return Permission(uri_template=extension_pb2.TypedExtensionConfig(name="uri-template", typed_config=to_any(config)))
    return Permission(url_path=path_pb2.PathMatcher(path=string_matcher(v)))


def _perm_envoy_filter(key: str, values: list[str], tcp: bool) -> Permission:
    # experimental.envoy.filters.a.b[c]: the dynamic metadata of filter envoy.filters.a.b, key c.
    name, _, rest = key.removeprefix("experimental.").partition("[")
    if not rest.endswith("]"):
        raise Unsupported(f"invalid key: {key}")
    matchers = []
    for v in values:
        if v.startswith("[") and v.endswith("]"):
            matchers.append(value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=_value(string_matcher(v[1:-1])))))
        else:
            matchers.append(_value(string_matcher(v)))
    return Permission(metadata=_metadata(name, [rest[:-1]], _or_values(matchers)))


def _prin_source_ip(key: str, v: str, tcp: bool) -> Principal:
    return Principal(direct_remote_ip=_cidr(v))


def _prin_remote_ip(key: str, v: str, tcp: bool) -> Principal:
    return Principal(remote_ip=_cidr(v))


def _prin_namespace(key: str, v: str, tcp: bool) -> Principal:
    regex = ".*".join(_quote_meta(part) for part in v.split("*"))
    return _authenticated(_regex(f".*/ns/{regex}/.*"))


def _prin_service_account(namespace: str) -> Callable[[str, str, bool], Principal]:
    def gen(key: str, v: str, tcp: bool) -> Principal:
        ns, slash, sa = v.partition("/")
        if not slash:
            ns, sa = namespace, v
        return _authenticated(_regex(f"spiffe://.+/ns/{_quote_meta(ns)}/(.+/|)sa/{_quote_meta(sa)}(/.+)?"))
    return gen


def _prin_trust_domain(key: str, v: str, tcp: bool) -> Principal:
    if v == "*":
        return _authenticated(SM(prefix=SPIFFE))
    if "*" not in v:
        return _authenticated(SM(prefix=f"{SPIFFE}{v}/"))
    head, _, tail = v.partition("*")
    return _authenticated(_regex(f"spiffe://{_quote_meta(head)}[^/]*{_quote_meta(tail)}/.*"))


def _prin_principal(key: str, v: str, tcp: bool) -> Principal:
    return _authenticated(string_matcher(v, SPIFFE))


def _prin_header(key: str, v: str, tcp: bool) -> Principal:
    _http_only(key, tcp)
    return Principal(header=header_matcher(_bracketed(key.removeprefix("request.headers")), v))


_ANY = _regex(".+")


def _prin_request_principal(key: str, values: list[str], tcp: bool) -> Principal:
    """``iss/sub`` against the JWT payload jwt_authn leaves in the dynamic metadata; ``*``
    at either end of the whole value is a wildcard on the issuer or the subject."""
    _http_only(key, tcp)
    ors = []
    for v in values:
        iss, slash, sub = v.rpartition("/")
        if not slash:
            iss, sub = v, ""
        if v == "*":
            m_iss, m_sub = _ANY, _ANY
        elif v.startswith("*"):
            if slash:
                m_iss, m_sub = (_ANY if iss == "*" else SM(suffix=iss[1:])), SM(exact=sub)
            else:
                m_iss, m_sub = _ANY, SM(suffix=v[1:])
        elif v.endswith("*"):
            if slash:
                m_iss, m_sub = SM(exact=iss), (_ANY if sub == "*" else SM(prefix=sub[:-1]))
            else:
                m_iss, m_sub = SM(prefix=v[:-1]), _ANY
        else:
            m_iss, m_sub = SM(exact=iss), SM(exact=sub)
        ors.append(Principal(and_ids=Principal.Set(ids=[
            Principal(metadata=_metadata(jwt.FILTER, [jwt.PAYLOAD_KEY, "iss"], _value(m_iss))),
            Principal(metadata=_metadata(jwt.FILTER, [jwt.PAYLOAD_KEY, "sub"], _value(m_sub))),
        ])))
    return ors[0] if len(ors) == 1 else Principal(or_ids=Principal.Set(ids=ors))


def _claim_values(values: list[str]) -> value_pb2.ValueMatcher:
    return _or_values([_value(string_matcher(v)) for v in values])


def _prin_audiences(key: str, values: list[str], tcp: bool) -> Principal:
    _http_only(key, tcp)
    return Principal(metadata=_claim_list(["aud"], _claim_values(values)))


def _prin_presenter(key: str, values: list[str], tcp: bool) -> Principal:
    _http_only(key, tcp)
    return Principal(metadata=_claim_list(["azp"], _claim_values(values)))


def _prin_claims(key: str, values: list[str], tcp: bool) -> Principal:
    _http_only(key, tcp)
    return Principal(metadata=_claim_list(_nested(key.removeprefix("request.auth.claims")), _claim_values(values)))


@dataclass(frozen=True, slots=True)
class _Condition:
    key: str
    values: tuple[str, ...]
    not_values: tuple[str, ...]
    gen: Callable[[str, str, bool], Message] | None = None
    extended: Callable[[str, list[str], bool], Message] | None = None


def _when(key: str, values: list[str], not_values: list[str], namespace: str) -> tuple[str, _Condition]:
    """Which side (``permission`` or ``principal``) a ``when`` key matches on, and how."""
    c = (key, tuple(values), tuple(not_values))
    simple: dict[str, tuple[str, Callable[[str, str, bool], Message]]] = {
        "destination.ip": ("permission", _perm_destination_ip),
        "destination.port": ("permission", _perm_destination_port),
        "connection.sni": ("permission", _perm_sni),
        "source.ip": ("principal", _prin_source_ip),
        "remote.ip": ("principal", _prin_remote_ip),
        "source.namespace": ("principal", _prin_namespace),
        "source.trustDomain": ("principal", _prin_trust_domain),
        "source.serviceAccount": ("principal", _prin_service_account(namespace)),
        "source.principal": ("principal", _prin_principal),
    }
    extended: dict[str, Callable[[str, list[str], bool], Message]] = {
        "request.auth.principal": _prin_request_principal,
        "request.auth.audiences": _prin_audiences,
        "request.auth.presenter": _prin_presenter,
    }
    if key in simple:
        side, gen = simple[key]
        return side, _Condition(*c, gen=gen)
    if key in extended:
        return "principal", _Condition(*c, extended=extended[key])
    if key.startswith("experimental.envoy.filters."):
        return "permission", _Condition(*c, extended=_perm_envoy_filter)
    if key.startswith("request.headers"):
        return "principal", _Condition(*c, gen=_prin_header)
    if key.startswith("request.auth.claims"):
        return "principal", _Condition(*c, extended=_prin_claims)
    raise Unsupported(f"unknown attribute {key}")  # validation refuses these


def _matchers(cond: _Condition, tcp: bool, action: int, side: type[Message]) -> list[Message]:
    """The matchers of one condition: its values ORed, its notValues ORed and negated. A
    value that cannot be matched fails an ALLOW rule (nothing more is allowed) and is left
    out of the others (more is denied)."""
    out: list[Message] = []
    for values, negated in ((cond.values, False), (cond.not_values, True)):
        if not values:
            continue
        found: list[Message] = []
        try:
            if cond.extended is not None:
                found.append(cond.extended(cond.key, list(values), tcp))
        except Unsupported:
            if action == _ALLOW:
                raise
        for v in values if cond.gen is not None else ():
            try:
                found.append(cond.gen(cond.key, v, tcp))  # type: ignore[misc]
            except Unsupported:
                if action == _ALLOW:
                    raise
        if not found:
            continue
        if cond.extended is not None:
            m = found[0]
        elif side is Permission:
            m = Permission(or_rules=Permission.Set(rules=found))
        else:
            m = Principal(or_ids=Principal.Set(ids=found))
        if negated:
            m = Permission(not_rule=m) if side is Permission else Principal(not_id=m)
        out.append(m)
    return out


def rule_policy(policy: AuthorizationPolicy, rule: Rule, tcp: bool, action: int) -> rbac_pb2.Policy | None:
    """One rule as an RBAC policy; None when it cannot apply here (an ALLOW rule using an
    HTTP-only attribute on a TCP port)."""
    namespace = policy.metadata.namespace
    base: dict[str, list[_Condition]] = {"permission": [], "principal": []}
    for c in rule.when:
        side, cond = _when(c.key, c.values, c.notValues, namespace)
        base[side].append(cond)

    principals: list[list[_Condition]] = []
    for f in rule.from_:
        conds = []
        s = f.source
        if s is not None:  # Istio's order: each inserted at the front
            for key, vals, nots in (
                ("source.principal", s.principals, s.notPrincipals),
                ("request.auth.principal", s.requestPrincipals, s.notRequestPrincipals),
                ("source.serviceAccount", s.serviceAccounts, s.notServiceAccounts),
                ("source.trustDomain", s.trustDomains, s.notTrustDomains),
                ("source.namespace", s.namespaces, s.notNamespaces),
                ("remote.ip", s.remoteIpBlocks, s.notRemoteIpBlocks),
                ("source.ip", s.ipBlocks, s.notIpBlocks),
            ):
                if vals or nots:
                    conds.append(_when(key, vals, nots, namespace)[1])
        principals.append(conds + base["principal"])
    if not rule.from_:
        principals.append(base["principal"])

    permissions: list[list[_Condition]] = []
    for t in rule.to:
        conds = []
        o = t.operation
        if o is not None:
            for key, vals, nots, fn in (("hosts", o.hosts, o.notHosts, _perm_host),
                                        ("methods", o.methods, o.notMethods, _perm_method),
                                        ("paths", o.paths, o.notPaths, _perm_path),
                                        ("ports", o.ports, o.notPorts, _perm_destination_port)):
                if vals or nots:
                    conds.append(_Condition(key, tuple(vals), tuple(nots), gen=fn))
        permissions.append(conds + base["permission"])
    if not rule.to:
        permissions.append(base["permission"])

    try:
        perms = [_and_permission([m for c in conds for m in _matchers(c, tcp, action, Permission)])
                 for conds in permissions]
        prins = [_and_principal([m for c in conds for m in _matchers(c, tcp, action, Principal)])
                 for conds in principals]
    except Unsupported:
        return None
    return rbac_pb2.Policy(permissions=perms, principals=prins)


def _and_permission(ms: list[Message]) -> Permission:
    return Permission(and_rules=Permission.Set(rules=ms or [Permission(any=True)]))


def _and_principal(ms: list[Message]) -> Principal:
    return Principal(and_ids=Principal.Set(ids=ms or [Principal(any=True)]))


def policy_name(policy: AuthorizationPolicy, rule: int, provider: str = "") -> str:
    prefix = f"{EXT_AUTHZ_MATCH_PREFIX}-{provider}-" if provider else ""
    return f"{prefix}ns[{policy.metadata.namespace}]-policy[{policy.metadata.name}]-rule[{rule}]"


# ---------------------------------------------------------------- RBAC per action


@dataclass(frozen=True, slots=True)
class _Built:
    rules: rbac_pb2.RBAC | None  # enforced
    shadow: rbac_pb2.RBAC | None  # dry-run


def _build(policies: Sequence[AuthorizationPolicy], action: int, tcp: bool, provider: str = "") -> _Built | None:
    if not policies:
        return None
    enforce, shadow = rbac_pb2.RBAC(action=action), rbac_pb2.RBAC(action=action)  # type: ignore[arg-type]
    has_enforce = has_shadow = False
    for policy in policies:
        target = shadow if policy.dry_run else enforce
        has_shadow |= policy.dry_run
        has_enforce |= not policy.dry_run
        for i, rule in enumerate(policy.spec.rules):
            generated = rule_policy(policy, rule, tcp, action)
            if generated is not None:
                target.policies[policy_name(policy, i, provider)].CopyFrom(generated)
        if not policy.spec.rules:
            target.policies[policy_name(policy, 0, provider)].CopyFrom(MATCH_NEVER)
    return _Built(enforce if has_enforce else None, shadow if has_shadow else None)


def _shadow_prefix(rules: rbac_pb2.RBAC | None) -> str:
    if rules is None:
        return ""
    return {_ALLOW: DRY_RUN_ALLOW_PREFIX, _DENY: DRY_RUN_DENY_PREFIX}.get(rules.action, "")


def _http_filter(name: str, config: Message) -> hcm.HttpFilter:
    return hcm.HttpFilter(name=name, typed_config=to_any(config))


def _tcp_filter(name: str, config: Message) -> lc.Filter:
    return lc.Filter(name=name, typed_config=to_any(config))


def _bad_custom(rules: rbac_pb2.RBAC | None) -> rbac_pb2.RBAC:
    """Deny what the CUSTOM rules select, when their provider cannot be used."""
    out = rbac_pb2.RBAC(action=_DENY)
    for key, value in (rules.policies.items() if rules is not None else ()):
        out.policies[key + BAD_CUSTOM_SUFFIX].CopyFrom(value)
    return out


# ---------------------------------------------------------------- ext_authz providers


@dataclass(frozen=True, eq=False)
class Provider:
    """An extension provider of the mesh config, ready to be used (or why it cannot be)."""

    name: str
    http: http_ext_authz.ExtAuthz | None = None
    tcp: tcp_ext_authz.ExtAuthz | None = None
    error: str = ""


#: ``lookup(service, port)`` -> (host, cluster), or a message saying why there is none.
Lookup = Callable[[str, int], tuple[str, str] | str]


def _list_matcher(headers: list[str]) -> string_pb2.ListStringMatcher | None:
    if not headers:
        return None
    patterns = []
    for h in headers:
        if h.startswith("*"):
            patterns.append(SM(suffix=h[1:], ignore_case=True))
        elif h.endswith("*"):
            patterns.append(SM(prefix=h[:-1], ignore_case=True))
        else:
            patterns.append(SM(exact=h, ignore_case=True))
    return string_pb2.ListStringMatcher(patterns=patterns)


def _timeout(config: EnvoyExtAuthzHttp | EnvoyExtAuthzGrpc) -> duration_pb2.Duration:
    return config.timeout.proto() if config.timeout is not None else duration_pb2.Duration(seconds=600)


def _status(config: EnvoyExtAuthzHttp | EnvoyExtAuthzGrpc) -> http_status_pb2.HttpStatus | None:
    return http_status_pb2.HttpStatus(code=int(config.statusOnError)) if config.statusOnError else None  # type: ignore[arg-type]


def _body(config: EnvoyExtAuthzHttp | EnvoyExtAuthzGrpc) -> http_ext_authz.BufferSettings | None:
    b = config.includeRequestBodyInCheck
    if b is None:
        return None
    return http_ext_authz.BufferSettings(max_request_bytes=b.maxRequestBytes, allow_partial_message=b.allowPartialMessage,
                                         pack_as_bytes=b.packAsBytes)


def _http_provider(host: str, cluster: str, config: EnvoyExtAuthzHttp) -> http_ext_authz.ExtAuthz:
    service = http_ext_authz.HttpService(
        path_prefix=config.pathPrefix,
        # The URI is required but unused: the cluster is what is called.
        server_uri=http_uri_pb2.HttpUri(uri=f"http://{host}", cluster=cluster, timeout=_timeout(config)),
    )
    if config.includeAdditionalHeadersInCheck:
        service.authorization_request.headers_to_add.extend(
            base_pb2.HeaderValue(key=k, value=v) for k, v in sorted(config.includeAdditionalHeadersInCheck.items()))
    if config.headersToUpstreamOnAllow or config.headersToDownstreamOnDeny or config.headersToDownstreamOnAllow:
        response = service.authorization_response
        response.SetInParent()
        for field, headers in (("allowed_upstream_headers", config.headersToUpstreamOnAllow),
                               ("allowed_client_headers", config.headersToDownstreamOnDeny),
                               ("allowed_client_headers_on_success", config.headersToDownstreamOnAllow)):
            if (m := _list_matcher(headers)) is not None:
                getattr(response, field).CopyFrom(m)
    out = http_ext_authz.ExtAuthz(
        status_on_error=_status(config), failure_mode_allow=config.failOpen,
        transport_api_version=config_source_pb2.V3, http_service=service, with_request_body=_body(config),
    )
    allowed = _list_matcher(config.includeRequestHeadersInCheck) or _list_matcher(config.includeHeadersInCheck)
    if allowed is not None:
        out.allowed_headers.CopyFrom(allowed)
    return out


def _grpc_provider(host: str, cluster: str, config: EnvoyExtAuthzGrpc) -> tuple[http_ext_authz.ExtAuthz, tcp_ext_authz.ExtAuthz]:
    grpc = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster, authority=host), timeout=_timeout(config))
    http = http_ext_authz.ExtAuthz(
        status_on_error=_status(config), failure_mode_allow=config.failOpen, grpc_service=grpc,
        transport_api_version=config_source_pb2.V3, with_request_body=_body(config),
    )
    tcp = tcp_ext_authz.ExtAuthz(stat_prefix=TCP_STAT_PREFIX, failure_mode_allow=config.failOpen,
                                 transport_api_version=config_source_pb2.V3, grpc_service=grpc)
    return http, tcp


def resolve_providers(mesh: MeshConfig | None, lookup: Lookup) -> tuple[dict[str, Provider], list[ConfigError]]:
    """The ext_authz providers of the mesh config, each with its service's cluster."""
    providers: dict[str, Provider] = {}
    errors: list[ConfigError] = []
    if mesh is None:
        return providers, errors
    for i, p in enumerate(mesh.spec.extensionProviders):
        config: EnvoyExtAuthzHttp | EnvoyExtAuthzGrpc | None = p.envoyExtAuthzHttp or p.envoyExtAuthzGrpc
        if config is None:
            continue  # a provider of another kind (tracing, logging): not ours
        kind = "envoyExtAuthzHttp" if p.envoyExtAuthzHttp is not None else "envoyExtAuthzGrpc"
        found = lookup(config.service, config.port)
        if isinstance(found, str):
            providers[p.name] = Provider(p.name, error=found)
            errors.append(ConfigError(mesh.source, str(mesh.key), f"spec.extensionProviders[{i}].{kind}.service",
                                      f"provider {p.name}: {found}; CUSTOM policies using it deny the requests they select",
                                      "warning"))
            continue
        host, cluster = found
        if isinstance(config, EnvoyExtAuthzHttp):
            providers[p.name] = Provider(p.name, http=_http_provider(host, cluster, config))
        else:
            http, tcp = _grpc_provider(host, cluster, config)
            providers[p.name] = Provider(p.name, http=http, tcp=tcp)
    return providers, errors


def _enabled_by(rbac_filter: str, provider: str) -> metadata_pb2.MetadataMatcher:
    """ext_authz runs only for requests the CUSTOM rules of ``provider`` selected."""
    return _metadata(rbac_filter, [EXT_AUTHZ_SHADOW_PREFIX + "shadow_effective_policy_id"],
                     _value(SM(prefix=f"{EXT_AUTHZ_MATCH_PREFIX}-{provider}")))


# ---------------------------------------------------------------- the filters of a workload


@dataclass(frozen=True, slots=True)
class Selected:
    """The AuthorizationPolicies that apply to one workload, by action, in Istio's order."""

    custom: tuple[AuthorizationPolicy, ...] = ()
    deny: tuple[AuthorizationPolicy, ...] = ()
    allow: tuple[AuthorizationPolicy, ...] = ()
    audit: tuple[AuthorizationPolicy, ...] = ()

    @classmethod
    def of(cls, policies: Iterable[AuthorizationPolicy]) -> Selected:
        by: dict[str, list[AuthorizationPolicy]] = {"CUSTOM": [], "DENY": [], "ALLOW": [], "AUDIT": []}
        for p in policies:
            by[p.spec.action].append(p)
        return cls(tuple(by["CUSTOM"]), tuple(by["DENY"]), tuple(by["ALLOW"]), tuple(by["AUDIT"]))


def _custom_groups(custom: Sequence[AuthorizationPolicy]) -> dict[str, list[AuthorizationPolicy]]:
    groups: dict[str, list[AuthorizationPolicy]] = {}
    for p in custom:
        groups.setdefault(p.spec.provider.name if p.spec.provider else "", []).append(p)
    return dict(sorted(groups.items()))


def _custom_problem(groups: dict[str, list[AuthorizationPolicy]], providers: dict[str, Provider],
                    name: str) -> str | None:
    if len(groups) > 1:
        return (f"a workload can use one CUSTOM provider, found {len(groups)}: {', '.join(groups)}; "
                "the requests their rules select are denied")
    provider = providers.get(name)
    if provider is None:
        known = ", ".join(sorted(providers)) or "none"
        return f"extension provider {name!r} is not defined in the mesh config (defined: {known}); " \
               "the requests its rules select are denied"
    if provider.error:
        return f"extension provider {name!r} cannot be used ({provider.error}); the requests its rules select are denied"
    return None


def _custom_errors(custom: Sequence[AuthorizationPolicy], providers: dict[str, Provider]) -> list[ConfigError]:
    groups = _custom_groups(custom)
    return [ConfigError(p.source, str(p.key), "spec.provider.name", problem, "warning")
            for name, ps in groups.items() if (problem := _custom_problem(groups, providers, name)) is not None
            for p in ps]


def http_filters(selected: Selected, providers: dict[str, Provider]) -> tuple[list[hcm.HttpFilter], list[hcm.HttpFilter], list[ConfigError]]:
    """(CUSTOM filters, AUDIT/DENY/ALLOW filters, problems) for the HTTP ports; the
    request authentication filter goes between the two lists, as istiod orders them."""
    custom: list[hcm.HttpFilter] = []
    groups = _custom_groups(selected.custom)
    for name, policies in groups.items():
        built = _build(policies, _DENY, False, name)
        assert built is not None
        if _custom_problem(groups, providers, name) is not None:
            custom.append(_http_filter(HTTP_RBAC, http_rbac.RBAC(rules=_bad_custom(built.rules))))
            continue
        provider = providers[name]
        if provider.http is None:
            continue
        # The rules only mark the requests they select (shadow mode): ext_authz then decides.
        rbac = http_rbac.RBAC(shadow_rules=built.rules or rbac_pb2.RBAC(action=_DENY),
                              shadow_rules_stat_prefix=EXT_AUTHZ_SHADOW_PREFIX, rules=built.shadow)
        ext = http_ext_authz.ExtAuthz()
        ext.CopyFrom(provider.http)
        ext.filter_enabled_metadata.CopyFrom(_enabled_by(HTTP_RBAC, name))
        custom += [_http_filter(HTTP_RBAC, rbac), _http_filter(HTTP_EXT_AUTHZ, ext)]
    local: list[hcm.HttpFilter] = []
    for by_action, action in ((selected.audit, _LOG), (selected.deny, _DENY), (selected.allow, _ALLOW)):
        built = _build(by_action, action, False)
        if built is not None:
            local.append(_http_filter(HTTP_RBAC, http_rbac.RBAC(
                rules=built.rules, shadow_rules=built.shadow, shadow_rules_stat_prefix=_shadow_prefix(built.shadow))))
    return custom, local, _custom_errors(selected.custom, providers)


def network_filters(selected: Selected, providers: dict[str, Provider]) -> list[lc.Filter]:
    """The filters ahead of tcp_proxy on the TCP ports."""
    out: list[lc.Filter] = []
    groups = _custom_groups(selected.custom)
    for name, policies in groups.items():
        built = _build(policies, _DENY, True, name)
        assert built is not None
        if _custom_problem(groups, providers, name) is not None:
            out.append(_tcp_filter(TCP_RBAC, tcp_rbac.RBAC(rules=_bad_custom(built.rules), stat_prefix=TCP_STAT_PREFIX)))
            continue
        provider = providers[name]
        if provider.tcp is None:
            continue  # an HTTP provider says nothing about TCP connections (istiod ignores it there)
        rbac = tcp_rbac.RBAC(shadow_rules=built.rules or rbac_pb2.RBAC(action=_DENY), stat_prefix=TCP_STAT_PREFIX,
                             shadow_rules_stat_prefix=EXT_AUTHZ_SHADOW_PREFIX, rules=built.shadow)
        ext = tcp_ext_authz.ExtAuthz()
        ext.CopyFrom(provider.tcp)
        ext.filter_enabled_metadata.CopyFrom(_enabled_by(TCP_RBAC, name))
        out += [_tcp_filter(TCP_RBAC, rbac), _tcp_filter(TCP_EXT_AUTHZ, ext)]
    for by_action, action in ((selected.audit, _LOG), (selected.deny, _DENY), (selected.allow, _ALLOW)):
        built = _build(by_action, action, True)
        if built is not None:
            out.append(_tcp_filter(TCP_RBAC, tcp_rbac.RBAC(
                rules=built.rules, stat_prefix=TCP_STAT_PREFIX, shadow_rules=built.shadow,
                shadow_rules_stat_prefix=_shadow_prefix(built.shadow))))
    return out
