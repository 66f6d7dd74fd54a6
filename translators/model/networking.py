"""networking.istio.io (v1, v1beta1, v1alpha3): VirtualService, DestinationRule,
ServiceEntry, WorkloadEntry, with Istio's field names and its validation rules.

The rules are Istio's (pkg/config/validation: ValidateVirtualService,
ValidateDestinationRule and the functions they call), plus what Envoy refuses that Istio
lets through (empty header names, NUL/CR/LF in values Envoy copies into headers, too
large integers): a resource accepted here does not make Envoy reject its configuration.
Every error names its exact field (``spec.http[0].retries.retryOn``). What needs the rest
of the mesh (does the subset exist?) is checked by the translators.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from translators.model.base import IstioModel, Resource
from translators.model.names import is_ip
from translators.model.types import (
    AnyDuration,
    Duration,
    Int32,
    Percent,
    PositiveDuration,
    Regex,
    UInt32,
    ZeroOrPositiveDuration,
    check_envoy_text,
    check_regex,
    domain_problem,
    header_value_problem,
    is_dns1123_label,
    is_token,
    label_problem,
)

ISTIO_NETWORKING = ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3")

Port = Annotated[int, Field(ge=1, le=65535)]

# ---------------------------------------------------------------- errors at exact paths

Loc = tuple[str | int, ...]


class Problems:
    """Errors a model validator finds, each at its own field path below the model, so the
    user is told ``spec.http[0].fault`` rather than ``spec.http[0]``."""

    def __init__(self) -> None:
        self.items: list[tuple[Loc, str, object]] = []

    def add(self, loc: Loc, message: str, value: object = None) -> None:
        self.items.append((loc, message, value))

    def raise_any(self, title: str) -> None:
        if self.items:
            raise ValidationError.from_exception_data(title, [
                InitErrorDetails(type=PydanticCustomError("value_error", "{error}", {"error": message}),
                                 loc=loc, input=value)
                for loc, message, value in self.items
            ])


def _labels(p: Problems, loc: Loc, labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        if (problem := label_problem(key, value)) is not None:
            p.add((*loc, key), problem, value)


def _gateway_problem(name: str) -> str | None:
    """Istio's validateGatewayNames: ``namespace/name`` of two DNS labels, or a DNS name."""
    ns, slash, gw = name.partition("/")
    if slash:
        if not ns or not gw:
            return f"gateway {name!r}: namespace and name must not be empty"
        if not is_dns1123_label(ns):
            return f"gateway {name!r}: invalid namespace {ns!r}"
        if not is_dns1123_label(gw):
            return f"gateway {name!r}: invalid name {gw!r}"
        return None
    if not name or len(name) > 255 or not all(is_dns1123_label(part) for part in name.split(".")):
        return f"gateway {name!r} is not a valid name (write namespace/name)"
    return None


def _source_problems(p: Problems, source_labels: dict[str, str], source_namespace: str | None,
                     gateways: list[str]) -> None:
    """What HTTP and L4 matches share: sourceLabels, sourceNamespace and gateways."""
    _labels(p, ("sourceLabels",), source_labels)
    if source_namespace is not None and not is_dns1123_label(source_namespace):
        p.add(("sourceNamespace",), f"sourceNamespace {source_namespace!r} is not a namespace name", source_namespace)
    for i, gw in enumerate(gateways):
        if (problem := _gateway_problem(gw)) is not None:
            p.add(("gateways", i), problem, gw)


def export_to_problems(p: Problems, loc: Loc, export_to: list[str], namespace: str | None,
                       *, none_allowed: bool = False) -> None:
    """Istio's validateExportTo: each entry is ``.`` (own namespace), ``*`` (all), ``~`` (no
    one, ServiceEntry only) or a namespace name; no duplicates, and nothing next to ``*`` or
    ``~``. ``namespace`` None skips the check that needs it (``.`` and the namespace's name)."""
    seen: set[str] = set()
    for i, entry in enumerate(export_to):
        if entry == "~" and not none_allowed:
            p.add((*loc, i), "exportTo '~' (no one) is only allowed on a ServiceEntry", entry)
            continue
        key = namespace if entry == "." and namespace is not None else entry
        if key in seen:
            also = f" ('.' is namespace {namespace})" if namespace is not None and key == namespace else ""
            p.add((*loc, i), f"duplicate exportTo entry {entry!r}{also}", entry)
            continue
        if entry not in (".", "*", "~") and not is_dns1123_label(entry):
            p.add((*loc, i), f"exportTo entry {entry!r} must be '.', '*', '~' or a namespace name", entry)
            continue
        seen.add(key)
    if len(export_to) > 1:
        for special, what in (("*", "every namespace"), ("~", "no one")):
            if special in export_to:
                p.add(loc, f"exportTo {special!r} ({what}) cannot be combined with other entries", export_to)



# ---------------------------------------------------------------- workloads and service entries


class WorkloadEntrySpec(IstioModel):
    address: str = ""
    ports: dict[str, Port] = {}
    labels: dict[str, str] = {}
    network: str = ""
    locality: str = ""
    weight: UInt32 | None = None
    serviceAccount: str = ""


#: Istio's protocol.Parse names (case-insensitive); anything else is "unsupported".
SE_PROTOCOLS = frozenset({"tcp", "udp", "grpc", "grpc-web", "http", "http_proxy", "http2", "https", "tls", "mongo",
                          "redis", "mysql"})
_HTTP_OR_TLS = frozenset({"http", "http_proxy", "http2", "grpc", "grpc-web", "https", "tls"})


def _fqdn_problem(name: str) -> str | None:
    """Istio's ValidateFQDN: a DNS name without wildcards (a trailing dot allowed)."""
    if name.startswith("*") or domain_problem(name) is not None:
        return f"{name!r} is not a valid FQDN"
    return None


def _workload_problems(p: Problems, loc: Loc, we: WorkloadEntrySpec, port_names: set[str] | None,
                       *, fqdn_ok: bool) -> None:
    """Istio's validateWorkloadEntry; ``port_names`` are the ServiceEntry's (None: standalone)."""
    if not we.address:
        if not we.network:
            p.add((*loc, "address"), "address is required")
    elif we.address.startswith("unix://"):
        p.add((*loc, "address"), "unix domain socket addresses are not supported", we.address)
    elif not is_ip(we.address):
        if not fqdn_ok:
            p.add((*loc, "address"), f"endpoint address {we.address!r} is not a valid IP address", we.address)
        elif _fqdn_problem(we.address) is not None:
            p.add((*loc, "address"), f"endpoint address {we.address!r} is not a valid FQDN or an IP address", we.address)
    for name, number in we.ports.items():
        if not is_dns1123_label(name):
            p.add((*loc, "ports", name), f"invalid port name: {name!r}", name)
        elif port_names is not None and name not in port_names:
            p.add((*loc, "ports", name), f"endpoint port {name} ({number}) is not defined by the service entry", number)
    _labels(p, (*loc, "labels"), we.labels)


class WorkloadEntry(Resource):
    KIND = "WorkloadEntry"
    API_VERSIONS = ISTIO_NETWORKING
    spec: WorkloadEntrySpec

    @model_validator(mode="after")
    def _check(self) -> WorkloadEntry:
        p = Problems()
        _workload_problems(p, ("spec",), self.spec, None, fqdn_ok=True)
        p.raise_any("WorkloadEntry")
        return self


class SEPort(IstioModel):
    number: Port
    protocol: str = ""
    name: str = ""
    targetPort: Port | None = None


class WorkloadSelector(IstioModel):
    labels: dict[str, str] = {}

    @field_validator("labels")
    @classmethod
    def _selector(cls, labels: dict[str, str]) -> dict[str, str]:
        for k, v in labels.items():
            if not k:
                raise ValueError(f"empty key is not supported in a selector ({k}={v})")
            if "*" in k or "*" in v:
                raise ValueError(f"wildcards are not supported in a selector ({k}={v})")
        return labels


class MatchLabelsSelector(IstioModel):
    """istio.type.v1beta1.WorkloadSelector (``matchLabels``), which a DestinationRule takes,
    unlike the networking WorkloadSelector (``labels``) of ServiceEntry and Sidecar."""

    matchLabels: dict[str, str] = {}

    @field_validator("matchLabels")
    @classmethod
    def _selector(cls, labels: dict[str, str]) -> dict[str, str]:
        return WorkloadSelector._selector(labels)


class ServiceEntrySpec(IstioModel):
    hosts: list[str] = Field(min_length=1)
    addresses: list[str] = []
    ports: list[SEPort] = []
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"] = "NONE"
    endpoints: list[WorkloadEntrySpec] = []
    workloadSelector: WorkloadSelector | None = None
    exportTo: list[str] = []
    subjectAltNames: list[str] = []

    def check(self, p: Problems) -> None:
        """Istio's ValidateServiceEntry, each problem at its field."""
        if self.workloadSelector is not None and self.endpoints:
            p.add(("workloadSelector",), "only one of workloadSelector or endpoints is allowed")
        for i, host in enumerate(self.hosts):
            problem = "invalid host '*'" if host == "*" else domain_problem(host)
            if problem is not None:
                p.add(("hosts", i), problem, host)
        cidr = False
        for i, address in enumerate(self.addresses):
            cidr |= "/" in address
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                p.add(("addresses", i), f"{address!r} is not an IP address or a CIDR block", address)
        if cidr and self.resolution not in ("NONE", "STATIC"):
            p.add(("addresses",), "CIDR addresses are allowed only for NONE/STATIC resolution types")
        names: set[str] = set()
        numbers: set[int] = set()
        for i, port in enumerate(self.ports):
            if not is_dns1123_label(port.name):
                p.add(("ports", i, "name"), f"invalid port name: {port.name!r}", port.name)
            elif port.name in names:
                p.add(("ports", i, "name"), f"service entry port name {port.name!r} already defined", port.name)
            if port.number in numbers:
                p.add(("ports", i, "number"), f"service entry port {port.number} already defined", port.number)
            if port.protocol and port.protocol.lower() not in SE_PROTOCOLS:
                p.add(("ports", i, "protocol"), f"unsupported protocol: {port.protocol}", port.protocol)
            names.add(port.name)
            numbers.add(port.number)
        if self.resolution == "NONE" and self.endpoints:
            p.add(("endpoints",), "no endpoints should be provided for resolution type NONE")
        dns = self.resolution in ("DNS", "DNS_ROUND_ROBIN")
        if dns and not self.endpoints and self.workloadSelector is None:
            for i, host in enumerate(self.hosts):
                if _fqdn_problem(host) is not None:
                    p.add(("hosts", i), f"hosts must be FQDN if no endpoints are provided for resolution mode "
                                        f"{self.resolution} (DNS resolves the host itself)", host)
        if self.resolution == "DNS_ROUND_ROBIN" and len(self.endpoints) > 1:
            p.add(("endpoints",), "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN")
        if self.resolution != "NONE":
            for i, ep in enumerate(self.endpoints):
                _workload_problems(p, ("endpoints", i), ep, names, fqdn_ok=dns)
        if self.resolution != "NONE" and len(self.hosts) > 1:
            for i, port in enumerate(self.ports):
                if port.protocol.lower() not in _HTTP_OR_TLS:
                    # Plain TCP cannot tell the hosts apart (HTTP has the authority, TLS the SNI).
                    p.add(("ports", i, "protocol"), "multiple hosts provided with non-HTTP, non-TLS ports", port.protocol)
                    break


class ServiceEntry(Resource):
    KIND = "ServiceEntry"
    API_VERSIONS = ISTIO_NETWORKING
    spec: ServiceEntrySpec

    @model_validator(mode="after")
    def _check(self) -> ServiceEntry:
        p = Problems()
        spec = Problems()
        self.spec.check(spec)
        p.items = [(("spec", *loc), message, value) for loc, message, value in spec.items]
        export_to_problems(p, ("spec", "exportTo"), self.spec.exportTo, self.metadata.namespace, none_allowed=True)
        p.raise_any("ServiceEntry")
        return self


# ---------------------------------------------------------------- VirtualService: matching


class StringMatch(IstioModel):
    """Istio StringMatch: one of exact, prefix, regex. Where Istio allows it (headers,
    withoutHeaders, queryParams) an empty match ``{}`` means "present"; the containing
    match checks what its context allows (an empty prefix only for ``uri``)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @field_validator("regex")
    @classmethod
    def _re2(cls, regex: str | None) -> str | None:
        if regex is None or regex == "*":  # "*" is no regex: withoutHeaders reads it as "present"
            return regex
        return check_regex(regex)

    @model_validator(mode="after")
    def _at_most_one(self) -> StringMatch:
        set_ = [k for k in ("exact", "prefix", "regex") if getattr(self, k) is not None]
        if len(set_) > 1:
            raise ValueError(f"only one of exact, prefix, regex may be set (got {', '.join(set_)})")
        return self

    @property
    def empty(self) -> bool:
        return self.exact is None and self.prefix is None and self.regex is None


def _string_match(p: Problems, loc: Loc, m: StringMatch, *, presence: bool = False, empty_prefix: bool = False,
                  star: bool = False) -> None:
    """What a StringMatch may be where it is used (Istio's validateStringMatch)."""
    if m.empty:
        if not presence:
            p.add(loc, "one of exact, prefix, regex must be set")
        return
    if m.prefix == "" and not empty_prefix:
        p.add((*loc, "prefix"), "prefix must not be empty (to match any value, leave the match out)", "")
    if m.regex == "*" and not star:
        p.add((*loc, "regex"), "'*' is not a regex (RE2 cannot compile it); '*' means 'present' only in "
              "withoutHeaders", "*")


#: Pseudo-headers a match may name (HTTP/2, RFC 7540).
PSEUDO_HEADERS = frozenset({":method", ":scheme", ":authority", ":path", ":status"})
JWT_CLAIM = "@request.auth.claims"


def _match_header_problem(name: str) -> str | None:
    """Istio's ValidateHTTPHeaderNameOrJwtClaimRoute."""
    if not name:
        return "header name must not be empty"
    if name.startswith(JWT_CLAIM) or name in PSEUDO_HEADERS or is_token(name):
        return None
    return f"header name {name!r} is not a valid header name"


class HTTPMatchRequest(IstioModel):
    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch] = {}
    withoutHeaders: dict[str, StringMatch] = {}
    queryParams: dict[str, StringMatch] = {}
    ignoreUriCase: bool = False
    port: Port | None = None
    sourceLabels: dict[str, str] = {}
    sourceNamespace: str | None = None
    gateways: list[str] = []
    statPrefix: str | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPMatchRequest:
        p = Problems()
        # An empty {} here matches anything, as in istiod.
        if self.uri is not None:
            _string_match(p, ("uri",), self.uri, presence=True, empty_prefix=True)
        for f in ("scheme", "method", "authority"):
            if (m := getattr(self, f)) is not None:
                _string_match(p, (f,), m, presence=True)
        for f in ("headers", "withoutHeaders"):
            for name, m in getattr(self, f).items():
                if (problem := _match_header_problem(name)) is not None:
                    p.add((f, name), problem, name)
                _string_match(p, (f, name), m, presence=True, star=f == "withoutHeaders")
        for name, m in self.queryParams.items():
            if not name:
                p.add(("queryParams", name), "query parameter name must not be empty", name)
            if m.prefix is not None:
                p.add(("queryParams", name, "prefix"), "prefix matching is not supported for query parameters; "
                      "use exact or regex", m.prefix)
            _string_match(p, ("queryParams", name), m, presence=True)
        _source_problems(p, self.sourceLabels, self.sourceNamespace, self.gateways)
        p.raise_any("HTTPMatchRequest")
        return self


class PortSelector(IstioModel):
    number: Port


class Destination(IstioModel):
    host: Annotated[str, Field(min_length=1)]
    subset: str = ""
    port: PortSelector | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, host: str) -> str:
        if host == "*":
            raise ValueError("a destination host cannot be '*'")
        if (problem := domain_problem(host)) is not None:
            raise ValueError(problem)
        return host

    @field_validator("subset")
    @classmethod
    def _subset(cls, subset: str) -> str:
        if subset and not is_dns1123_label(subset):
            raise ValueError(f"subset name {subset!r} is not a DNS-1123 label")
        return subset


# ---------------------------------------------------------------- VirtualService: actions


class HeaderOperations(IstioModel):
    set: dict[str, str] = {}
    add: dict[str, str] = {}
    remove: list[str] = []


def _header_op_problem(name: str, *, authority_ok: bool) -> str | None:
    """Istio's ValidateHTTPHeader(WithAuthority)OperationName, plus what Envoy refuses."""
    if not name:
        return "header name must not be empty"
    try:
        check_envoy_text(name, "header name")
    except ValueError as e:
        return str(e)
    lower = name.lower()
    if authority_ok and lower in (":authority", "host"):
        return None  # becomes a host rewrite
    if lower == "host":
        return f"header {name!r}: the Host header cannot be removed or set on a response"
    if name.startswith(":"):
        return f"header {name!r}: pseudo-headers (':' prefix) cannot be changed"
    return None


class Headers(IstioModel):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None

    @model_validator(mode="after")
    def _check(self) -> Headers:
        p = Problems()
        for side, ops in (("request", self.request), ("response", self.response)):
            if ops is None:
                continue
            for op in ("set", "add"):
                for name, value in getattr(ops, op).items():
                    problem = _header_op_problem(name, authority_ok=side == "request")
                    if problem is None:
                        problem = header_value_problem(value)
                    if problem is not None:
                        p.add((side, op, name), problem, value)
            for i, name in enumerate(ops.remove):
                if (problem := _header_op_problem(name, authority_ok=False)) is not None:
                    p.add((side, "remove", i), problem, name)
        p.raise_any("Headers")
        return self

    def authorities(self) -> list[tuple[Loc, str]]:
        """Where the request headers set the authority (set or add of ``:authority``/``host``)."""
        if self.request is None:
            return []
        return [(("request", op, k), v) for op in ("set", "add") for k, v in getattr(self.request, op).items()
                if k.lower() in (":authority", "host")]


class HTTPRouteDestination(IstioModel):
    destination: Destination
    weight: Int32 | None = None
    headers: Headers | None = None


class HTTPRedirect(IstioModel):
    uri: str = ""
    authority: str = ""
    port: Port | None = None
    derivePort: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str = ""
    redirectCode: Literal[301, 302, 303, 307, 308] | None = None

    @field_validator("uri", "authority")
    @classmethod
    def _text(cls, value: str, info: ValidationInfo) -> str:
        return check_envoy_text(value, str(info.field_name))

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, scheme: str) -> str:
        if scheme not in ("", "http", "https"):
            raise ValueError(f"redirect scheme must be http or https (got {scheme!r})")
        return scheme

    @model_validator(mode="after")
    def _check(self) -> HTTPRedirect:
        if self.port is not None and self.derivePort is not None:
            raise ValueError("only one of port, derivePort may be set")
        if not (self.uri or self.authority or self.scheme or self.port is not None or self.derivePort is not None):
            raise ValueError("a redirect must set at least one of uri, authority, scheme, port, derivePort")
        return self


#: Istio's limit on a direct response body (istiod raises Envoy's 4 KiB limit to this).
MAX_BODY = 1024 * 1024


class HTTPBody(IstioModel):
    string: str | None = None
    bytes: str | None = None  # base64, as in the protobuf JSON form

    @field_validator("bytes")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("bytes must be base64 (standard alphabet, with padding)") from None
        return value

    @model_validator(mode="after")
    def _check(self) -> HTTPBody:
        p = Problems()
        if self.string is not None and self.bytes is not None:
            p.add((), "only one of string, bytes may be set")
        elif self.string is not None and len(self.string.encode()) > MAX_BODY:
            p.add(("string",), f"a direct response body must be at most 1 MiB (got {len(self.string.encode())} bytes)")
        elif self.bytes is not None and len(self.bytes) * 3 // 4 > MAX_BODY:
            p.add(("bytes",), "a direct response body must be at most 1 MiB")
        p.raise_any("HTTPBody")
        return self


class HTTPDirectResponse(IstioModel):
    status: Annotated[int, Field(ge=200, le=599)]
    body: HTTPBody | None = None


class RegexRewrite(IstioModel):
    match: Regex
    rewrite: Annotated[str, Field(min_length=1)]


class HTTPRewrite(IstioModel):
    uri: str = ""
    authority: str = ""
    uriRegexRewrite: RegexRewrite | None = None

    @field_validator("uri", "authority")
    @classmethod
    def _text(cls, value: str, info: ValidationInfo) -> str:
        return check_envoy_text(value, str(info.field_name))

    @model_validator(mode="after")
    def _one_uri(self) -> HTTPRewrite:
        if self.uri and self.uriRegexRewrite is not None:
            raise ValueError("only one of uri, uriRegexRewrite may be set")
        if not (self.uri or self.authority or self.uriRegexRewrite is not None):
            raise ValueError("a rewrite must set at least one of uri, uriRegexRewrite, authority")
        return self


#: retryOn conditions Envoy knows (router filter), HTTP and gRPC; numbers are status codes.
RETRY_ON = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
    "unavailable",
})
#: The HTTP status codes Istio accepts in retryOn (those Go's net/http has a name for).
STATUS_CODES = frozenset([100, 101, 102, 103, *range(200, 209), 226, *range(300, 306), 307, 308,
                          *range(400, 419), *range(421, 427), 428, 429, 431, 451, *range(500, 509), 510, 511])


class HTTPRetry(IstioModel):
    attempts: Int32 = 0
    perTryTimeout: PositiveDuration | None = None
    retryOn: str = ""
    retryRemoteLocalities: bool | None = None
    retryIgnorePreviousHosts: bool | None = None
    backoff: PositiveDuration | None = None

    @field_validator("retryOn")
    @classmethod
    def _retry_on(cls, value: str) -> str:
        for part in (p.strip() for p in value.split(",")):
            if part and part not in RETRY_ON and not (part.isdigit() and int(part) in STATUS_CODES):
                raise ValueError(f"{part!r} is not a retry condition Envoy knows "
                                 f"(one of {', '.join(sorted(RETRY_ON))}, or an HTTP status code)")
        return value

    @model_validator(mode="after")
    def _attempts(self) -> HTTPRetry:
        if self.attempts == 0:
            set_ = [f for f in ("perTryTimeout", "retryOn", "retryRemoteLocalities") if getattr(self, f) not in (None, "")]
            if set_:
                p = Problems()
                p.add(("attempts",), f"attempts is 0, which turns retries off, but {', '.join(set_)} is set; "
                      "set attempts to retry", 0)
                p.raise_any("HTTPRetry")
        return self


def _percentage(value: Percent | None) -> None:
    """Istio's validatePercentage: Envoy counts per million, so 0 or at least 0.0001."""
    if value is not None and 0 < value.value < 0.0001:
        raise ValueError(f"percentage {value.value} is neither 0 nor in [0.0001, 100]")


class FaultDelay(IstioModel):
    fixedDelay: PositiveDuration | None = None
    exponentialDelay: PositiveDuration | None = None
    percentage: Percent | None = None
    percent: Annotated[int, Field(ge=0, le=100)] | None = None  # deprecated integer form

    @field_validator("percentage")
    @classmethod
    def _pct(cls, value: Percent | None) -> Percent | None:
        _percentage(value)
        return value

    @model_validator(mode="after")
    def _delay(self) -> FaultDelay:
        p = Problems()
        if self.exponentialDelay is not None:
            p.add(("exponentialDelay",), "exponentialDelay is not supported (by Istio or Envoy); use fixedDelay")
        elif self.fixedDelay is None:
            p.add(("fixedDelay",), "fixedDelay must be set")
        p.raise_any("FaultDelay")
        return self


#: gRPC status names Istio accepts in ``abort.grpcStatus``.
GRPC_STATUS = frozenset({
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
})


class FaultAbort(IstioModel):
    httpStatus: Annotated[int, Field(ge=200, le=599)] | None = None
    grpcStatus: str | None = None
    http2Error: str | None = None
    percentage: Percent | None = None

    @field_validator("percentage")
    @classmethod
    def _pct(cls, value: Percent | None) -> Percent | None:
        _percentage(value)
        return value

    @field_validator("grpcStatus")
    @classmethod
    def _grpc(cls, value: str | None) -> str | None:
        if value is not None and value not in GRPC_STATUS:
            raise ValueError(f"gRPC status {value!r} is not one of {', '.join(sorted(GRPC_STATUS))}")
        return value

    @model_validator(mode="after")
    def _one_error(self) -> FaultAbort:
        set_ = [k for k in ("httpStatus", "grpcStatus", "http2Error") if getattr(self, k) is not None]
        if len(set_) != 1:
            # Istio only warns when none is set, and then aborts nothing: refusing says so.
            raise ValueError(f"exactly one of httpStatus, grpcStatus, http2Error must be set (got {set_ or 'none'})")
        if self.http2Error is not None:
            p = Problems()
            p.add(("http2Error",), "HTTP/2 error aborts are not supported (by Istio or Envoy); use httpStatus "
                  "or grpcStatus", self.http2Error)
            p.raise_any("FaultAbort")
        return self


class HTTPFaultInjection(IstioModel):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    @model_validator(mode="after")
    def _something(self) -> HTTPFaultInjection:
        if self.delay is None and self.abort is None:
            raise ValueError("a fault must set delay, abort or both")
        return self


class HTTPMirrorPolicy(IstioModel):
    destination: Destination
    percentage: Percent | None = None


#: The methods Istio accepts in ``corsPolicy.allowMethods``.
CORS_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"})


class CorsPolicy(IstioModel):
    allowOrigins: list[StringMatch] = []
    allowOrigin: list[str] = []  # deprecated exact-match form
    allowMethods: list[str] = []
    allowHeaders: list[str] = []
    exposeHeaders: list[str] = []
    maxAge: PositiveDuration | None = None
    allowCredentials: bool | None = None
    unmatchedPreflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] = "UNSPECIFIED"

    @model_validator(mode="after")
    def _check(self) -> CorsPolicy:
        p = Problems()
        for i, m in enumerate(self.allowOrigins):
            if not (m.exact or m.prefix or m.regex):
                p.add(("allowOrigins", i), "an origin match must set a non-empty exact, prefix or regex")
            _string_match(p, ("allowOrigins", i), m)
        for i, method in enumerate(self.allowMethods):
            if method not in CORS_METHODS:
                p.add(("allowMethods", i), f"{method!r} is not an HTTP method ({', '.join(sorted(CORS_METHODS))})",
                      method)
        for f in ("allowHeaders", "exposeHeaders"):
            for i, name in enumerate(getattr(self, f)):
                if name != "*" and not is_token(name):
                    p.add((f, i), f"{name!r} is not a valid header name", name)
        if self.maxAge is not None and self.maxAge.nanos % 1_000_000_000:
            p.add(("maxAge",), f"maxAge is sent in whole seconds (got {self.maxAge})", str(self.maxAge))
        p.raise_any("CorsPolicy")
        return self


class Delegate(IstioModel):
    name: Annotated[str, Field(min_length=1)]
    namespace: str = ""

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, ns: str) -> str:
        if ns and not is_dns1123_label(ns):
            raise ValueError(f"namespace {ns!r} is not a namespace name")
        return ns


class HTTPRoute(IstioModel):
    name: str = ""
    match: list[HTTPMatchRequest] = []
    route: list[HTTPRouteDestination] = []
    redirect: HTTPRedirect | None = None
    directResponse: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: PositiveDuration | None = None  # Istio: at least 1 ms; leave it out for "no timeout"
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrorPercentage: Percent | None = None
    mirrorPercent: Annotated[int, Field(ge=0, le=100)] | None = None  # deprecated integer form
    mirrors: list[HTTPMirrorPolicy] = []
    corsPolicy: CorsPolicy | None = None
    headers: Headers | None = None

    @field_validator("route")
    @classmethod
    def _weights(cls, route: list[HTTPRouteDestination]) -> list[HTTPRouteDestination]:
        # Current Istio: weights are relative (Envoy divides by their sum); only an all-zero
        # split is refused. Envoy also refuses a sum beyond 32 bits.
        total = sum(d.weight or 0 for d in route)
        if len(route) > 1 and total == 0:
            raise ValueError("total destination weight is 0: give at least one destination a weight")
        if total > 2**32 - 1:
            raise ValueError(f"the weights add up to {total}, more than Envoy's limit of 4294967295")
        return route

    @model_validator(mode="after")
    def _check(self) -> HTTPRoute:
        p = Problems()
        actions = [k for k in ("route", "redirect", "directResponse", "delegate") if getattr(self, k)]
        if len(actions) > 1:
            p.add((), f"only one of route, redirect, directResponse, delegate may be set (got {', '.join(actions)})")
        elif not actions:
            p.add((), "one of route, redirect, directResponse, delegate must be set")
        for f in ("rewrite", "fault"):
            if getattr(self, f) is not None and (self.redirect is not None or self.directResponse is not None):
                p.add((f,), f"{f} cannot be used with {'redirect' if self.redirect else 'directResponse'}")
        if self.mirror is not None and self.mirrors:
            p.add(("mirrors",), "only one of mirror, mirrors may be set")
        authorities = [(("headers", *loc), v) for loc, v in self.headers.authorities()] if self.headers else []
        if self.rewrite is not None and self.rewrite.authority:
            authorities.insert(0, (("rewrite", "authority"), self.rewrite.authority))
        if len(authorities) > 1:
            (first, value), (loc, other) = authorities[:2]
            p.add(loc, f"the authority is set more than once ({value!r} by {'.'.join(map(str, first))}, "
                  f"then {other!r})", other)
        p.raise_any("HTTPRoute")
        return self


def _host_overlap(a: str, b: str) -> bool:
    """Istio's host.Name.Matches: equal, or one wildcard covers the other."""
    return a == b or any(w.startswith("*") and o.endswith(w[1:]) for w, o in ((a, b), (b, a)))


# ---------------------------------------------------------------- VirtualService: tcp and tls


def _subnet_problem(value: str) -> str | None:
    """Istio's ValidateIPSubnet: an IP address or a CIDR range."""
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address or CIDR range"
    return None


class L4MatchAttributes(IstioModel):
    destinationSubnets: list[str] = []
    port: Port | None = None
    sourceLabels: dict[str, str] = {}
    gateways: list[str] = []
    sourceNamespace: str | None = None

    @model_validator(mode="after")
    def _check(self) -> L4MatchAttributes:
        p = Problems()
        self._l4_problems(p)
        p.raise_any(type(self).__name__)
        return self

    def _l4_problems(self, p: Problems) -> None:
        for i, subnet in enumerate(self.destinationSubnets):
            if (problem := _subnet_problem(subnet)) is not None:
                p.add(("destinationSubnets", i), problem, subnet)
        _source_problems(p, self.sourceLabels, self.sourceNamespace, self.gateways)


class TLSMatchAttributes(L4MatchAttributes):
    sniHosts: list[str] = []

    def _l4_problems(self, p: Problems) -> None:
        if not self.sniHosts:
            p.add(("sniHosts",), "TLS match must have at least one SNI host")
        for i, sni in enumerate(self.sniHosts):
            if (problem := domain_problem(sni)) is not None and not is_ip(sni):
                p.add(("sniHosts", i), problem, sni)
        super()._l4_problems(p)


class RouteDestination(IstioModel):
    destination: Destination
    weight: Int32 = 0


def _route_destinations(p: Problems, route: list[RouteDestination], what: str) -> None:
    """Istio's validateRouteDestinations (weights are relative, as on HTTP routes)."""
    if not route:
        p.add(("route",), f"{what} route is required")
    total = sum(d.weight for d in route)
    if len(route) > 1 and total == 0:
        p.add(("route",), "total destination weight is 0: give at least one destination a weight")
    elif total > 2**32 - 1:
        p.add(("route",), f"the weights add up to {total}, more than Envoy's limit of 4294967295")


class TCPRoute(IstioModel):
    match: list[L4MatchAttributes] = []
    route: list[RouteDestination] = []

    @model_validator(mode="after")
    def _check(self) -> TCPRoute:
        p = Problems()
        _route_destinations(p, self.route, "TCP")
        p.raise_any("TCPRoute")
        return self


class TLSRoute(IstioModel):
    match: list[TLSMatchAttributes] = []
    route: list[RouteDestination] = []

    @model_validator(mode="after")
    def _check(self) -> TLSRoute:
        p = Problems()
        if not self.match:
            p.add(("match",), "TLS route must have at least one match condition")
        _route_destinations(p, self.route, "TLS")
        p.raise_any("TLSRoute")
        return self


def _sni_within(sni: str, host: str) -> bool:
    """Istio's host.Name.SubsetOf: ``sni`` names nothing ``host`` does not cover."""
    if sni.startswith("*"):
        return host.startswith("*") and sni[1:].endswith(host[1:])
    return sni == host or (host.startswith("*") and sni.endswith(host[1:]))


class VirtualServiceSpec(IstioModel):
    hosts: list[str] = []  # empty only for a delegate VirtualService
    gateways: list[str] = []
    http: list[HTTPRoute] = []
    tls: list[TLSRoute] = []
    tcp: list[TCPRoute] = []
    exportTo: list[str] = []

    @property
    def applies_to_mesh(self) -> bool:
        return not self.gateways or "mesh" in self.gateways

    @model_validator(mode="after")
    def _check(self) -> VirtualServiceSpec:
        p = Problems()
        if not self.hosts:  # a delegate: only http entries, used through a root VirtualService
            if self.gateways:
                p.add(("gateways",), "a VirtualService without hosts is a delegate and must not set gateways "
                      "(the root VirtualService that delegates to it decides)", self.gateways)
            for f in ("tcp", "tls"):
                if getattr(self, f):
                    p.add((f,), f"a delegate VirtualService (no hosts) cannot have {f} routes")
            for i, h in enumerate(self.http):
                if h.delegate is not None:
                    p.add(("http", i, "delegate"), "a delegate VirtualService (no hosts) cannot delegate again")
        for i, gw in enumerate(self.gateways):
            if (problem := _gateway_problem(gw)) is not None:
                p.add(("gateways", i), problem, gw)
        valid = True
        for i, host in enumerate(self.hosts):
            if (problem := domain_problem(host)) is not None and not is_ip(host):
                p.add(("hosts", i), problem, host)
                valid = False
            elif host == "*" and self.applies_to_mesh:
                p.add(("hosts", i), "the wildcard host '*' is not allowed for a VirtualService of the mesh", host)
                valid = False
        if valid:
            for j, host in enumerate(self.hosts):
                first = next((h for h in self.hosts[:j] if _host_overlap(h, host)), None)
                if first is not None:
                    p.add(("hosts", j), f"duplicate host: {host!r} overlaps {first!r}", host)
        if not self.http and not self.tcp and not self.tls:
            p.add(("http",), "http, tcp or tls must be provided")
        if self.hosts:
            for i, tls in enumerate(self.tls):
                for j, tm in enumerate(tls.match):
                    for k, sni in enumerate(tm.sniHosts):
                        if not is_ip(sni) and not any(_sni_within(sni, h) for h in self.hosts):
                            p.add(("tls", i, "match", j, "sniHosts", k), f"SNI host {sni!r} is not a compatible "
                                  f"subset of any of the virtual service hosts: [{', '.join(self.hosts)}]", sni)
        if self.applies_to_mesh:
            for i, h in enumerate(self.http):
                for j, m in enumerate(h.match):
                    for f in ("headers", "withoutHeaders"):
                        for name in getattr(m, f):
                            if name.startswith(JWT_CLAIM):
                                p.add(("http", i, "match", j, f, name), "JWT claim based routing is only "
                                      "supported for gateways", name)
        export_to_problems(p, ("exportTo",), self.exportTo, None)
        p.raise_any("VirtualServiceSpec")
        return self


class VirtualService(Resource):
    KIND = "VirtualService"
    API_VERSIONS = ISTIO_NETWORKING
    spec: VirtualServiceSpec

    @model_validator(mode="after")
    def _export(self) -> VirtualService:
        # What needs the namespace: '.' is this namespace, so '.' and its name are duplicates.
        p = Problems()
        ns = self.metadata.namespace
        if "." in self.spec.exportTo and ns in self.spec.exportTo:
            p.add(("spec", "exportTo", self.spec.exportTo.index(ns)), f"duplicate exportTo entry: '.' is {ns!r}", ns)
        p.raise_any("VirtualService")
        return self


# ---------------------------------------------------------------- DestinationRule


class HttpCookie(IstioModel):
    name: Annotated[str, Field(min_length=1)]
    path: str = ""
    ttl: AnyDuration | None = None


#: Envoy's largest ring (its default maximum_ring_size); a larger minimum is refused.
MAX_RING_SIZE = 8_388_608
#: Istio's (and Envoy's) bound on a maglev table: a prime below this.
MAX_MAGLEV_TABLE = 5_000_011


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0:
        return False
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


class RingHash(IstioModel):
    minimumRingSize: Annotated[int, Field(ge=0, le=MAX_RING_SIZE)] = 0


class Maglev(IstioModel):
    tableSize: Annotated[int, Field(validate_default=True)] = 0

    @field_validator("tableSize")
    @classmethod
    def _table(cls, size: int) -> int:
        if size == 0:
            raise ValueError("tableSize must be set for maglev")
        if not 0 < size < MAX_MAGLEV_TABLE or not _is_prime(size):
            raise ValueError(f"tableSize must be a prime number below {MAX_MAGLEV_TABLE} (got {size})")
        return size


class ConsistentHash(IstioModel):
    httpHeaderName: str | None = None
    httpCookie: HttpCookie | None = None
    useSourceIp: bool | None = None
    httpQueryParameterName: str | None = None
    ringHash: RingHash | None = None
    maglev: Maglev | None = None
    minimumRingSize: Annotated[int, Field(ge=0, le=MAX_RING_SIZE)] | None = None  # deprecated: ringHash

    @field_validator("httpHeaderName")
    @classmethod
    def _header(cls, name: str | None) -> str | None:
        if name is not None and not is_token(name):
            raise ValueError(f"httpHeaderName {name!r} is not a valid header name")
        return name

    @field_validator("httpQueryParameterName")
    @classmethod
    def _query(cls, name: str | None) -> str | None:
        if name is not None:
            if not name:
                raise ValueError("httpQueryParameterName must not be empty")
            check_envoy_text(name, "httpQueryParameterName")
        return name

    @model_validator(mode="after")
    def _one_key(self) -> ConsistentHash:
        keys = [k for k in ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")
                if getattr(self, k) not in (None, False)]
        if len(keys) != 1:
            raise ValueError("exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName "
                             f"must be set (got {keys or 'none'})")
        if self.ringHash is not None and self.maglev is not None:
            raise ValueError("only one of ringHash, maglev may be set")
        if self.minimumRingSize and (self.ringHash is not None or self.maglev is not None):
            p = Problems()
            p.add(("minimumRingSize",), "the deprecated minimumRingSize cannot be used with ringHash or maglev",
                  self.minimumRingSize)
            p.raise_any("ConsistentHash")
        return self


class LocalityDistribute(IstioModel):
    from_: str = Field(alias="from")
    to: dict[str, int] = {}


class LocalityFailover(IstioModel):
    from_: str = Field(alias="from")
    to: str = ""


_TOPOLOGY_LABELS = ("topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone")


def _localities_problem(localities: Iterable[str]) -> str | None:
    """Istio's validateLocalities: region[/zone[/subzone]], one trailing '*' at most, no overlaps."""
    seen: list[tuple[str, ...]] = []
    for loc in localities:
        if loc.count("*") > 1 or ("*" in loc and not loc.endswith("*")):
            return f"locality {loc!r}: at most one '*', at the end"
        parts = tuple(loc.split("/", 2))
        if any(not part for part in parts):
            return f"locality {loc!r} must not have an empty region, zone or subzone"
        for other in seen:
            n = min(len(parts), len(other))
            if parts[:n] == other[:n] or "*" in (parts[0], other[0]):
                return f"locality {loc!r} overlaps a locality listed before it"
        seen.append(tuple(p for p in parts if p != "*") or ("*",))
    return None


class LocalityLbSetting(IstioModel):
    distribute: list[LocalityDistribute] = []
    failover: list[LocalityFailover] = []
    failoverPriority: list[str] = []
    enabled: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> LocalityLbSetting:
        p = Problems()
        if self.distribute and self.failover:
            p.add((), "distribute and failover cannot be set together")
        elif self.failover:
            for i, label in enumerate(self.failoverPriority):
                if label in _TOPOLOGY_LABELS:
                    p.add(("failoverPriority", i), f"failover and the topology label {label!r} in "
                          "failoverPriority cannot be set together", label)
        for i, d in enumerate(self.distribute):
            weights = list(d.to.values())
            if any(not 1 <= w <= 100 for w in weights):
                p.add(("distribute", i, "to"), "locality weights must be in [1, 100]")
            elif sum(weights) != 100:
                p.add(("distribute", i, "to"), f"locality weights must add up to 100 (they add up to {sum(weights)})")
            elif (problem := _localities_problem(d.to)) is not None:
                p.add(("distribute", i, "to"), problem)
        if (problem := _localities_problem(d.from_ for d in self.distribute)) is not None:
            p.add(("distribute",), problem)
        for i, f in enumerate(self.failover):
            if f.from_ == f.to:
                p.add(("failover", i), "failover must name two different regions")
            if "/" in f.from_ or "/" in f.to:
                p.add(("failover", i), "failover names regions only (no zone)")
            if "*" in f.from_ or "*" in f.to:
                p.add(("failover", i), "a failover region cannot contain '*'")
        p.raise_any("LocalityLbSetting")
        return self


class Warmup(IstioModel):
    duration: PositiveDuration
    minimumPercent: Annotated[float, Field(ge=0, le=100)] | None = None
    aggression: Annotated[float, Field(gt=0)] | None = None


class LoadBalancerSettings(IstioModel):
    simple: Literal["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"] | None = None
    consistentHash: ConsistentHash | None = None
    localityLbSetting: LocalityLbSetting | None = None
    warmupDurationSecs: PositiveDuration | None = None
    warmup: Warmup | None = None

    @model_validator(mode="after")
    def _one_policy(self) -> LoadBalancerSettings:
        if self.simple is not None and self.consistentHash is not None:
            raise ValueError("only one of simple, consistentHash may be set")
        return self


class TcpKeepalive(IstioModel):
    probes: UInt32 | None = None
    time: PositiveDuration | None = None
    interval: PositiveDuration | None = None

    @field_validator("time", "interval")
    @classmethod
    def _seconds(cls, d: Duration | None) -> Duration | None:
        if d is not None and d.nanos // 1_000_000_000 > 2**32 - 1:
            raise ValueError(f"Envoy counts keepalive times in 32-bit seconds: at most 4294967295s (got {d})")
        return d


class TCPSettings(IstioModel):
    maxConnections: Int32 | None = None
    connectTimeout: PositiveDuration | None = None
    tcpKeepalive: TcpKeepalive | None = None
    maxConnectionDuration: PositiveDuration | None = None
    idleTimeout: ZeroOrPositiveDuration | None = None  # 0s: no idle timeout


class HTTPSettings(IstioModel):
    http1MaxPendingRequests: Int32 | None = None
    http2MaxRequests: Int32 | None = None
    maxRequestsPerConnection: Int32 | None = None
    maxRetries: Int32 | None = None
    idleTimeout: PositiveDuration | None = None
    h2UpgradePolicy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    useClientProtocol: bool = False
    maxConcurrentStreams: Int32 | None = None

    @model_validator(mode="after")
    def _upgrade(self) -> HTTPSettings:
        if self.h2UpgradePolicy == "UPGRADE" and self.useClientProtocol:
            p = Problems()
            p.add(("useClientProtocol",), "useClientProtocol cannot be true when h2UpgradePolicy is UPGRADE", True)
            p.raise_any("HTTPSettings")
        return self


class ConnectionPoolSettings(IstioModel):
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None

    @model_validator(mode="after")
    def _something(self) -> ConnectionPoolSettings:
        if self.tcp is None and self.http is None:
            raise ValueError("a connectionPool must set tcp, http or both")
        return self


class OutlierDetection(IstioModel):
    consecutiveErrors: Int32 | None = None  # deprecated
    consecutive5xxErrors: UInt32 | None = None
    consecutiveGatewayErrors: UInt32 | None = None
    splitExternalLocalOriginErrors: bool = False
    consecutiveLocalOriginFailures: UInt32 | None = None
    interval: PositiveDuration | None = None
    baseEjectionTime: PositiveDuration | None = None
    maxEjectionPercent: Annotated[int, Field(ge=0, le=100)] | None = None
    minHealthPercent: Annotated[int, Field(ge=0, le=100)] | None = None

    @model_validator(mode="after")
    def _local_origin(self) -> OutlierDetection:
        if self.consecutiveLocalOriginFailures and not self.splitExternalLocalOriginErrors:
            p = Problems()
            p.add(("consecutiveLocalOriginFailures",), "consecutiveLocalOriginFailures needs "
                  "splitExternalLocalOriginErrors: true", self.consecutiveLocalOriginFailures)
            p.raise_any("OutlierDetection")
        return self


class ClientTLSSettings(IstioModel):
    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] = "DISABLE"
    clientCertificate: str = ""
    privateKey: str = ""
    caCertificates: str = ""
    credentialName: str = ""
    subjectAltNames: list[str] = []
    sni: Annotated[str, Field(max_length=255)] = ""
    insecureSkipVerify: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> ClientTLSSettings:
        # Istio's ValidateTLS, rule by rule.
        p = Problems()
        if self.insecureSkipVerify:
            if self.mode == "SIMPLE":
                for f in ("caCertificates", "credentialName", "subjectAltNames"):
                    if getattr(self, f):
                        p.add((f,), f"{f} cannot be set when insecureSkipVerify is true")
            elif self.mode == "MUTUAL":
                for f in ("caCertificates", "subjectAltNames"):
                    if getattr(self, f):
                        p.add((f,), f"{f} cannot be set when insecureSkipVerify is true")
        if self.mode in ("SIMPLE", "MUTUAL") and self.credentialName:
            for f in ("clientCertificate", "privateKey", "caCertificates"):
                if getattr(self, f):
                    p.add((f,), f"{f} cannot be set with credentialName (the credential holds the certificates)")
        elif self.mode == "MUTUAL":
            for f, what in (("clientCertificate", "a client certificate"), ("privateKey", "a private key")):
                if not getattr(self, f):
                    p.add((f,), f"MUTUAL needs {what} (or a credentialName)")
        p.raise_any("ClientTLSSettings")
        return self


_POLICY_PARTS = ("loadBalancer", "connectionPool", "outlierDetection", "tls")


class PortTrafficPolicy(IstioModel):
    port: PortSelector
    loadBalancer: LoadBalancerSettings | None = None
    connectionPool: ConnectionPoolSettings | None = None
    outlierDetection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None

    @model_validator(mode="after")
    def _something(self) -> PortTrafficPolicy:
        if all(getattr(self, f) is None for f in _POLICY_PARTS):
            raise ValueError("a port-level policy must set at least one of " + ", ".join(_POLICY_PARTS))
        return self


class TrafficPolicy(IstioModel):
    loadBalancer: LoadBalancerSettings | None = None
    connectionPool: ConnectionPoolSettings | None = None
    outlierDetection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    portLevelSettings: list[PortTrafficPolicy] = []

    @model_validator(mode="after")
    def _check(self) -> TrafficPolicy:
        p = Problems()
        if all(getattr(self, f) is None for f in _POLICY_PARTS) and not self.portLevelSettings and not self.model_extra:
            p.add((), "a trafficPolicy must set at least one field")
        seen: set[int] = set()
        for i, s in enumerate(self.portLevelSettings):
            if s.port.number in seen:
                p.add(("portLevelSettings", i, "port", "number"), f"port {s.port.number} has more than one entry",
                      s.port.number)
            seen.add(s.port.number)
        p.raise_any("TrafficPolicy")
        return self


class Subset(IstioModel):
    name: Annotated[str, Field(min_length=1)]
    labels: dict[str, str] = {}
    trafficPolicy: TrafficPolicy | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not is_dns1123_label(name):
            raise ValueError(f"subset name {name!r} is not a DNS-1123 label")
        return name

    @model_validator(mode="after")
    def _check(self) -> Subset:
        p = Problems()
        _labels(p, ("labels",), self.labels)
        p.raise_any("Subset")
        return self


class DestinationRuleSpec(IstioModel):
    host: Annotated[str, Field(min_length=1)]
    trafficPolicy: TrafficPolicy | None = None
    subsets: list[Subset] = []
    exportTo: list[str] = []
    workloadSelector: MatchLabelsSelector | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, host: str) -> str:
        if (problem := domain_problem(host)) is not None:
            raise ValueError(problem)
        return host

    @model_validator(mode="after")
    def _check(self) -> DestinationRuleSpec:
        p = Problems()
        seen: set[str] = set()
        for i, s in enumerate(self.subsets):
            if s.name in seen:
                p.add(("subsets", i, "name"), f"duplicate subset name {s.name!r}", s.name)
            seen.add(s.name)
        export_to_problems(p, ("exportTo",), self.exportTo, None)
        p.raise_any("DestinationRuleSpec")
        return self


class DestinationRule(Resource):
    KIND = "DestinationRule"
    API_VERSIONS = ISTIO_NETWORKING
    spec: DestinationRuleSpec

    @model_validator(mode="after")
    def _export(self) -> DestinationRule:
        p = Problems()
        ns, export_to = self.metadata.namespace, self.spec.exportTo
        if "." in export_to and ns in export_to:
            p.add(("spec", "exportTo", export_to.index(ns)), f"duplicate exportTo entry: '.' is {ns!r}", ns)
        if self.spec.workloadSelector is not None and export_to:
            own = {ns if e == "." else e for e in export_to}
            if own != {ns}:
                p.add(("spec", "exportTo"), "a DestinationRule with a workloadSelector can only be exported to its "
                      "own namespace", export_to)
        p.raise_any("DestinationRule")
        return self

