"""security.istio.io (v1, v1beta1): the security policies, with Istio's field names and the
checks of Istio's validation (pkg/config/validation, pkg/config/security), each error at
its exact field.

Each kind lives in its own block below.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, model_validator

from translators.model.base import IstioModel, Resource
from translators.model.networking import Loc, Problems
from translators.model.types import PositiveDuration, is_token

ISTIO_SECURITY = ("security.istio.io/v1", "security.istio.io/v1beta1")

# ================================================================ AuthorizationPolicy and RequestAuthentication


def _port_text(value: object) -> object:
    # Istio's ports are strings ("8080"); a YAML number is taken as its string.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


PortText = Annotated[str, BeforeValidator(_port_text, json_schema_input_type=int | str)]


class PolicySelector(IstioModel):
    """istio.type.v1beta1.WorkloadSelector: the workloads (by label) a policy applies to."""

    matchLabels: dict[str, str] = {}


class PolicyTargetReference(IstioModel):
    group: str = ""
    kind: str = ""
    name: str = ""
    namespace: str = ""

    @property
    def canonical_group(self) -> str:
        return self.group or "core"


#: (canonical group, kind) a targetRef may name (Istio's allowedTargetRefs).
TARGET_KINDS = (("core", "Service"), ("networking.istio.io", "ServiceEntry"),
                ("gateway.networking.k8s.io", "Gateway"), ("gateway.networking.k8s.io", "GatewayClass"))


def _selection_problems(p: Problems, selector: PolicySelector | None, target_ref: PolicyTargetReference | None,
                        target_refs: list[PolicyTargetReference]) -> None:
    """Istio's validateOneOfSelectorType, validateWorkloadSelector, validatePolicyTargetReference."""
    if sum((selector is not None, target_ref is not None, bool(target_refs))) > 1:
        p.add(("spec",), "only one of targetRefs or workloadSelector can be set")
    if selector is not None:
        for k, v in selector.matchLabels.items():
            if not k:
                p.add(("spec", "selector", "matchLabels"), f"empty key is not supported in selector: {k}={v}")
            if "*" in k or "*" in v:
                p.add(("spec", "selector", "matchLabels", k), f"wildcard is not supported in selector: {k}={v}")
    refs: list[tuple[Loc, PolicyTargetReference]] = [(("spec", "targetRefs", i), r) for i, r in enumerate(target_refs)]
    if target_ref is not None:
        refs.insert(0, (("spec", "targetRef"), target_ref))
    for loc, ref in refs:
        if not ref.name:
            p.add((*loc, "name"), "targetRef name must be set")
        if ref.namespace:
            p.add((*loc, "namespace"), "targetRef namespace must not be set; cross namespace referencing is not supported")
        if (ref.canonical_group, ref.kind) not in TARGET_KINDS:
            allowed = ", ".join(f"{g}/{k}" for g, k in TARGET_KINDS)
            p.add((*loc, "kind"), f"targetRef must be to one of {allowed} but was {ref.group}/{ref.kind}")


def _ip_problem(value: str) -> str | None:
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        return f"bad CIDR range ({value})" if "/" in value else f"bad IP address ({value})"
    return None


def _port_problem(value: str) -> str | None:
    return None if value.isdigit() and int(value) <= 65535 else f"bad port ({value})"


def _empty(p: Problems, loc: Loc, values: list[str]) -> None:
    for i, v in enumerate(values):
        if v == "":
            p.add((*loc, i), f"empty value not allowed, found in {loc[-1]}")


def _wildcards(p: Problems, loc: Loc, values: list[str]) -> None:
    """Istio's CheckWildcardValues: at most one '*', at the start or the end."""
    for i, v in enumerate(values):
        n = v.count("*")
        if n > 1:
            p.add((*loc, i), f"at most one wildcard is allowed: {v!r}")
        elif n == 1 and v != "*" and not v.startswith("*") and not v.endswith("*"):
            p.add((*loc, i), f"wildcard is only allowed at the start or end: {v!r}")


def _service_accounts(p: Problems, loc: Loc, values: list[str]) -> None:
    """Istio's CheckServiceAccount: 'name' or 'namespace/name', at most 16 of them."""
    if len(values) > 16:
        p.add(loc, "may not have more than 16 values")
    for i, v in enumerate(values):
        ns, slash, sa = v.partition("/")
        if not v:
            p.add((*loc, i), "empty value not allowed")
        elif "*" in v:
            p.add((*loc, i), "wildcard not allowed")
        elif v.count("/") > 1 or (slash and (not ns or not sa)) or len(v) > 320:
            p.add((*loc, i), f"expected format 'serviceAccount' or 'namespace/serviceAccount', found {v!r}")


MATCH_ONE_TEMPLATE, MATCH_ANY_TEMPLATE = "{*}", "{**}"
_PCHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()+,;:@=")


def is_path_template(path: str) -> bool:
    return MATCH_ONE_TEMPLATE in path or MATCH_ANY_TEMPLATE in path


def _path_template_problem(path: str) -> str | None:
    """Istio's CheckValidPathTemplate: {*} and {**} as whole segments, {**} last."""
    template = is_path_template(path)
    any_seen = False
    for glob in path.strip("/").split("/"):
        if glob in (MATCH_ONE_TEMPLATE, MATCH_ANY_TEMPLATE):
            if any_seen:
                return f"invalid or unsupported path {path}: {{**}} is not the last operator"
            any_seen = glob == MATCH_ANY_TEMPLATE
            continue
        if "{" in glob or "}" in glob:
            return f"invalid or unsupported path {path}: contains '{{' or '}}' beyond a supported path template"
        if template and (not glob or not set(glob) <= _PCHARS):
            return f"invalid or unsupported path {path}: segment {glob!r} is not a valid literal"
    return None


# Attributes of `when` conditions (Istio's authz model) and how their values are checked.
_ATTRIBUTES = ("request.headers", "source.ip", "remote.ip", "source.namespace", "source.serviceAccount",
               "source.principal", "source.trustDomain", "request.auth.principal", "request.auth.audiences",
               "request.auth.presenter", "request.auth.claims", "destination.ip", "destination.port",
               "connection.sni", "experimental.envoy.filters.")
_MAP_KEYS = ("request.headers", "request.auth.claims", "experimental.envoy.filters.")


def attribute_key_problem(key: str) -> str | None:
    """Istio's ValidateAttribute, for the key."""
    if key.startswith(_MAP_KEYS):
        open_ = key.find("[")
        if not (key.endswith("]") and 0 < open_ < len(key) - 2):
            return f"bad key ({key}): should have format a[b]"
        return None
    if key in _ATTRIBUTES:
        return None
    if key == "destination.namespace":
        return f"attribute {key} is replaced by the metadata.namespace"
    if key.startswith("destination.labels"):
        return f"attribute {key} is replaced by the workload selector"
    if key in ("destination.name", "destination.user"):
        return f"deprecated attribute {key}: only supported in v1alpha1"
    return f"unknown attribute: {key}"


def attribute_values_problem(key: str, values: list[str]) -> str | None:
    """Istio's ValidateAttribute, for the values of a valid key."""
    if any(v == "" for v in values):
        return f"empty value not allowed, found in {key}"
    if key in ("source.ip", "remote.ip", "destination.ip"):
        return next((m for v in values if (m := _ip_problem(v))), None)
    if key == "destination.port":
        return next((m for v in values if (m := _port_problem(v))), None)
    if key in ("source.serviceAccount", "source.trustDomain"):
        p = Problems()
        (_service_accounts if key == "source.serviceAccount" else _wildcards)(p, (), values)
        return p.items[0][1] if p.items else None
    return None


class Source(IstioModel):
    principals: list[str] = []
    notPrincipals: list[str] = []
    requestPrincipals: list[str] = []
    notRequestPrincipals: list[str] = []
    namespaces: list[str] = []
    notNamespaces: list[str] = []
    serviceAccounts: list[str] = []
    notServiceAccounts: list[str] = []
    trustDomains: list[str] = []
    notTrustDomains: list[str] = []
    ipBlocks: list[str] = []
    notIpBlocks: list[str] = []
    remoteIpBlocks: list[str] = []
    notRemoteIpBlocks: list[str] = []

    @property
    def tcp_fields(self) -> bool:
        """Has a field a TCP connection can be matched on."""
        return bool(self.principals or self.notPrincipals or self.namespaces or self.notNamespaces
                    or self.serviceAccounts or self.notServiceAccounts or self.ipBlocks or self.notIpBlocks
                    or self.remoteIpBlocks or self.notRemoteIpBlocks)


class Operation(IstioModel):
    hosts: list[str] = []
    notHosts: list[str] = []
    ports: list[PortText] = []
    notPorts: list[PortText] = []
    methods: list[str] = []
    notMethods: list[str] = []
    paths: list[str] = []
    notPaths: list[str] = []


class RuleFrom(IstioModel):
    source: Source | None = None


class RuleTo(IstioModel):
    operation: Operation | None = None


class Condition(IstioModel):
    key: str = ""
    values: list[PortText] = []
    notValues: list[PortText] = []


class Rule(IstioModel):
    from_: list[RuleFrom] = Field(default=[], alias="from")
    to: list[RuleTo] = []
    when: list[Condition] = []


class ExtensionProviderRef(IstioModel):
    name: str = ""


AuthorizationAction = Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"]


class AuthorizationPolicySpec(IstioModel):
    selector: PolicySelector | None = None
    targetRef: PolicyTargetReference | None = None
    targetRefs: list[PolicyTargetReference] = []
    rules: list[Rule] = []
    action: AuthorizationAction = "ALLOW"
    provider: ExtensionProviderRef | None = None


#: Keys of `when` that CUSTOM policies cannot use (Istio's validation).
_NOT_FOR_CUSTOM_SOURCE = ("namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts", "trustDomains",
                          "notTrustDomains", "principals", "notPrincipals", "requestPrincipals",
                          "notRequestPrincipals")
_NOT_FOR_CUSTOM_WHEN = ("source.namespace", "source.serviceAccount", "source.trustDomain", "source.principal")


class AuthorizationPolicy(Resource):
    KIND = "AuthorizationPolicy"
    API_VERSIONS = ISTIO_SECURITY
    spec: AuthorizationPolicySpec = AuthorizationPolicySpec()

    @property
    def dry_run(self) -> bool:
        return self.metadata.annotations.get("istio.io/dry-run", "").lower() in ("true", "1", "t")

    @model_validator(mode="after")
    def _check(self) -> AuthorizationPolicy:
        p = Problems()
        spec = self.spec
        _selection_problems(p, spec.selector, spec.targetRef, spec.targetRefs)
        if spec.action == "CUSTOM":
            if not spec.rules:
                p.add(("spec", "rules"), "CUSTOM action without `rules` is meaningless as it will never be triggered, "
                      "add an empty rule `{}` if you want it be triggered for every request")
            elif spec.provider is None or not spec.provider.name:
                p.add(("spec", "provider", "name"), "`provider.name` must not be empty")
            for i, rule in enumerate(spec.rules):
                for j, f in enumerate(rule.from_):
                    for name in _NOT_FOR_CUSTOM_SOURCE:
                        if f.source is not None and getattr(f.source, name):
                            p.add(("spec", "rules", i, "from", j, "source", name),
                                  f"{name} is currently not supported with CUSTOM action")
                for j, c in enumerate(rule.when):
                    if c.key in _NOT_FOR_CUSTOM_WHEN or c.key.startswith("request.auth."):
                        p.add(("spec", "rules", i, "when", j, "key"), f"{c.key} is currently not supported with CUSTOM action")
        elif spec.provider is not None:
            p.add(("spec", "provider"), f"`provider` must not be with non CUSTOM action, found {spec.action}")
        if spec.action == "DENY" and not spec.rules:
            p.add(("spec", "rules"), "DENY action without `rules` is meaningless as it will never be triggered, "
                  "add an empty rule `{}` if you want it be triggered for every request")
        for i, rule in enumerate(spec.rules):
            at: Loc = ("spec", "rules", i)
            for j, f in enumerate(rule.from_):
                if f.source is None:
                    p.add((*at, "from", j, "source"), f"`from.source` must not be nil, found at rule {i}")
                    continue
                src, sloc = f.source, (*at, "from", j, "source")
                if (src.principals or src.notPrincipals or src.namespaces or src.notNamespaces) and (
                        src.serviceAccounts or src.notServiceAccounts):
                    p.add(sloc, f"cannot set serviceAccounts with namespaces or principals, found at rule {i}")
                if not any(getattr(src, name) for name in Source.model_fields):
                    p.add(sloc, f"`from.source` must not be empty, found at rule {i}")
                for name in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
                    for k, v in enumerate(getattr(src, name)):
                        if (m := _ip_problem(v)) is not None:
                            p.add((*sloc, name, k), m)
                for name in ("principals", "requestPrincipals", "namespaces", "notPrincipals",
                             "notRequestPrincipals", "notNamespaces"):
                    _empty(p, (*sloc, name), getattr(src, name))
                for name in ("serviceAccounts", "notServiceAccounts"):
                    _service_accounts(p, (*sloc, name), getattr(src, name))
                for name in ("trustDomains", "notTrustDomains"):
                    _wildcards(p, (*sloc, name), getattr(src, name))
                    for k, v in enumerate(getattr(src, name)):
                        if "/" in v:
                            p.add((*sloc, name, k), f"trust domain must not contain '/': {v!r}")
            for j, t in enumerate(rule.to):
                if t.operation is None:
                    p.add((*at, "to", j, "operation"), f"`to.operation` must not be nil, found at rule {i}")
                    continue
                op, oloc = t.operation, (*at, "to", j, "operation")
                if not any(getattr(op, name) for name in Operation.model_fields):
                    p.add(oloc, f"`to.operation` must not be empty, found at rule {i}")
                for name in ("ports", "notPorts"):
                    for k, v in enumerate(getattr(op, name)):
                        if (m := _port_problem(v)) is not None:
                            p.add((*oloc, name, k), m)
                for name in Operation.model_fields:
                    _empty(p, (*oloc, name), getattr(op, name))
                for name in ("paths", "notPaths"):
                    for k, v in enumerate(getattr(op, name)):
                        if v and (m := _path_template_problem(v)) is not None:
                            p.add((*oloc, name, k), m)
            for j, c in enumerate(rule.when):
                cloc = (*at, "when", j)
                if not c.key:
                    p.add((*cloc, "key"), "`key` must not be empty")
                elif not c.values and not c.notValues:
                    p.add(cloc, f"at least one of `values` or `notValues` must be set for key {c.key}")
                elif (m := attribute_key_problem(c.key)) is not None:
                    p.add((*cloc, "key"), m)
                else:
                    for name in ("values", "notValues"):
                        if (m := attribute_values_problem(c.key, getattr(c, name))) is not None:
                            p.add((*cloc, name), f"invalid `{name[:-1]}` for `key` {c.key}: {m}")
        p.raise_any("AuthorizationPolicy")
        return self


class JWTHeader(IstioModel):
    name: str = ""
    prefix: str = ""


class ClaimToHeader(IstioModel):
    header: str = ""
    claim: str = ""


class JWTRule(IstioModel):
    issuer: str = ""
    audiences: list[str] = []
    jwksUri: str = ""
    jwks: str = ""
    fromHeaders: list[JWTHeader] = []
    fromParams: list[str] = []
    fromCookies: list[str] = []
    outputPayloadToHeader: str = ""
    forwardOriginalToken: bool = False
    outputClaimToHeaders: list[ClaimToHeader] = []
    timeout: PositiveDuration | None = None
    spaceDelimitedClaims: list[str] = []


class RequestAuthenticationSpec(IstioModel):
    selector: PolicySelector | None = None
    targetRef: PolicyTargetReference | None = None
    targetRefs: list[PolicyTargetReference] = []
    jwtRules: list[JWTRule] = []


def jwks_uri_parts(uri: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a jwksUri as Istio's ParseJwksURI reads it, or None."""
    try:
        u = urlsplit(uri)
        port = u.port
    except ValueError:
        return None
    if u.scheme not in ("http", "https") or not u.hostname:
        return None
    return u.scheme, u.hostname, port if port is not None else (443 if u.scheme == "https" else 80)


def jwks_problem(text: str) -> str | None:
    """Why ``text`` is not a JWK set (or a single JWK) in JSON, or None."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        return f"jwks parse error: {e}"
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and "kty" in doc:
        keys = [doc]
    if not isinstance(keys, list) or not all(isinstance(k, dict) and isinstance(k.get("kty"), str) for k in keys):
        return "jwks parse error: expected a JWK set {\"keys\": [...]} of keys with a \"kty\""
    return None


class RequestAuthentication(Resource):
    KIND = "RequestAuthentication"
    API_VERSIONS = ISTIO_SECURITY
    spec: RequestAuthenticationSpec = RequestAuthenticationSpec()

    @model_validator(mode="after")
    def _check(self) -> RequestAuthentication:
        p = Problems()
        spec = self.spec
        _selection_problems(p, spec.selector, spec.targetRef, spec.targetRefs)
        for i, rule in enumerate(spec.jwtRules):
            at: Loc = ("spec", "jwtRules", i)
            for k, aud in enumerate(rule.audiences):
                if not aud:
                    p.add((*at, "audiences", k), "audience must be non-empty string")
            if not rule.issuer and not rule.jwksUri:
                p.add(at, "issuer or jwksUri must be non-empty string")
            if rule.jwksUri and jwks_uri_parts(rule.jwksUri) is None:
                p.add((*at, "jwksUri"), f"jwksUri {rule.jwksUri!r} is not an http:// or https:// URI with a host")
            if rule.jwks and (m := jwks_problem(rule.jwks)) is not None:
                p.add((*at, "jwks"), m)
            for k, h in enumerate(rule.fromHeaders):
                if not h.name:
                    p.add((*at, "fromHeaders", k, "name"), "location header name must be non-empty string")
                elif not is_token(h.name):
                    p.add((*at, "fromHeaders", k, "name"), f"invalid header name {h.name!r}")
            for k, q in enumerate(rule.fromParams):
                if not q:
                    p.add((*at, "fromParams", k), "location query must be non-empty string")
            for k, c in enumerate(rule.fromCookies):
                if not c:
                    p.add((*at, "fromCookies", k), "cookie name must be non-empty string")
            for k, ch in enumerate(rule.outputClaimToHeaders):
                if not ch.claim or not ch.header:
                    p.add((*at, "outputClaimToHeaders", k), "outputClaimToHeaders header and claim value must be "
                          "non-empty string")
                elif not is_token(ch.header):
                    p.add((*at, "outputClaimToHeaders", k, "header"), f"invalid header name {ch.header!r}")
            if rule.outputPayloadToHeader and not is_token(rule.outputPayloadToHeader):
                p.add((*at, "outputPayloadToHeader"), f"invalid header name {rule.outputPayloadToHeader!r}")
        p.raise_any("RequestAuthentication")
        return self


# ================================================================ end of AuthorizationPolicy and RequestAuthentication


# ================================================================ PeerAuthentication


MTLSMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class PeerAuthenticationMutualTLS(IstioModel):
    mode: MTLSMode = "UNSET"


def _port_key(value: object) -> object:
    # YAML keys of portLevelMtls may be numbers or strings ("8080"): both name a port.
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


class PeerAuthenticationSpec(IstioModel):
    selector: PolicySelector | None = None
    mtls: PeerAuthenticationMutualTLS | None = None
    #: Keyed by the workload's port (the container port, not the Service port), as in Istio.
    portLevelMtls: dict[Annotated[int, BeforeValidator(_port_key)], PeerAuthenticationMutualTLS] | None = None


class PeerAuthentication(Resource):
    """security.istio.io PeerAuthentication: how a workload's sidecar accepts connections.

    In the root namespace without selector: mesh-wide; elsewhere without selector: the
    namespace; with ``selector.matchLabels``: the selected workloads (and, only then, per
    port with ``portLevelMtls``)."""

    KIND = "PeerAuthentication"
    API_VERSIONS = ISTIO_SECURITY
    spec: PeerAuthenticationSpec = PeerAuthenticationSpec()

    @property
    def workload_level(self) -> bool:
        return self.spec.selector is not None and bool(self.spec.selector.matchLabels)

    @model_validator(mode="after")
    def _check(self) -> PeerAuthentication:
        # Istio's ValidatePeerAuthentication, with its messages.
        p = Problems()
        spec = self.spec
        ports = spec.portLevelMtls
        if not self.workload_level and ports:
            p.add(("spec", "portLevelMtls"), "mesh/namespace peer authentication cannot have port level mTLS")
        if ports is not None and not ports:
            p.add(("spec", "portLevelMtls"), "port level mTLS, if defined, must have at least one element")
        for port in ports or {}:
            if not 0 < port <= 65535:
                p.add(("spec", "portLevelMtls", port), "port must be in range 1..65535", port)
        _selection_problems(p, spec.selector, None, [])
        p.raise_any("PeerAuthentication")
        return self


# ================================================================ end of PeerAuthentication
