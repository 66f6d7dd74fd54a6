"""networking.istio.io (v1, v1beta1, v1alpha3): VirtualService, DestinationRule,
ServiceEntry, WorkloadEntry, with Istio's field names and its validation rules.

Validation here is per field (so an error names ``spec.http[0].retries.retryOn``); what
needs the rest of the mesh (does the subset exist?) is checked by the translators.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from translators.model.base import IstioModel, Resource
from translators.model.types import AnyDuration, Percent, PositiveDuration, Regex

ISTIO_NETWORKING = ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3")

Port = Annotated[int, Field(ge=1, le=65535)]

# ---------------------------------------------------------------- workloads and service entries


class WorkloadEntrySpec(IstioModel):
    address: str = ""
    ports: dict[str, Port] = {}
    labels: dict[str, str] = {}
    network: str = ""
    locality: str = ""
    weight: Annotated[int, Field(ge=0)] | None = None
    serviceAccount: str = ""


class WorkloadEntry(Resource):
    KIND = "WorkloadEntry"
    API_VERSIONS = ISTIO_NETWORKING
    spec: WorkloadEntrySpec


class SEPort(IstioModel):
    number: Port
    protocol: str = ""
    name: str = ""
    targetPort: Port | None = None


class WorkloadSelector(IstioModel):
    labels: dict[str, str] = {}


class ServiceEntrySpec(IstioModel):
    hosts: list[str] = Field(min_length=1)
    addresses: list[str] = []
    ports: list[SEPort] = []
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"] = "NONE"
    endpoints: list[WorkloadEntrySpec] = []
    workloadSelector: WorkloadSelector | None = None
    exportTo: list[str] = []


class ServiceEntry(Resource):
    KIND = "ServiceEntry"
    API_VERSIONS = ISTIO_NETWORKING
    spec: ServiceEntrySpec


# ---------------------------------------------------------------- VirtualService: matching


class StringMatch(IstioModel):
    """Istio StringMatch: one of exact, prefix, regex. Where Istio allows it (headers,
    withoutHeaders, queryParams) an empty match ``{}`` means "present"."""

    exact: str | None = None
    prefix: str | None = None
    regex: Regex | None = None

    @model_validator(mode="after")
    def _at_most_one(self) -> StringMatch:
        set_ = [k for k in ("exact", "prefix", "regex") if getattr(self, k) is not None]
        if len(set_) > 1:
            raise ValueError(f"only one of exact, prefix, regex may be set (got {', '.join(set_)})")
        return self

    @property
    def empty(self) -> bool:
        return self.exact is None and self.prefix is None and self.regex is None


def _not_empty(m: StringMatch | None) -> StringMatch | None:
    if m is not None and m.empty:
        raise ValueError("one of exact, prefix, regex must be set")
    return m


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

    _uri = field_validator("uri", "scheme", "method", "authority")(_not_empty)

    @field_validator("headers", "withoutHeaders")
    @classmethod
    def _header_names(cls, headers: dict[str, StringMatch]) -> dict[str, StringMatch]:
        for name in headers:
            if not name or name != name.lower():
                raise ValueError(f"header name {name!r} must be lower case")
        return headers

    @field_validator("queryParams")
    @classmethod
    def _query(cls, params: dict[str, StringMatch]) -> dict[str, StringMatch]:
        for name, m in params.items():
            if m.prefix is not None:
                raise ValueError(f"queryParams.{name}: prefix matching is not supported for query parameters; "
                                 "use exact or regex")
        return params


class PortSelector(IstioModel):
    number: Port


class Destination(IstioModel):
    host: Annotated[str, Field(min_length=1)]
    subset: str = ""
    port: PortSelector | None = None


# ---------------------------------------------------------------- VirtualService: actions


class HeaderOperations(IstioModel):
    set: dict[str, str] = {}
    add: dict[str, str] = {}
    remove: list[str] = []


class Headers(IstioModel):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPRouteDestination(IstioModel):
    destination: Destination
    weight: Annotated[int, Field(ge=0)] | None = None
    headers: Headers | None = None


class HTTPRedirect(IstioModel):
    uri: str = ""
    authority: str = ""
    port: Port | None = None
    derivePort: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str = ""
    redirectCode: Literal[301, 302, 303, 307, 308] | None = None

    @model_validator(mode="after")
    def _port_or_derive(self) -> HTTPRedirect:
        if self.port is not None and self.derivePort is not None:
            raise ValueError("only one of port, derivePort may be set")
        return self


class HTTPBody(IstioModel):
    string: str | None = None
    bytes: str | None = None  # base64, as in the protobuf JSON form


class HTTPDirectResponse(IstioModel):
    status: Annotated[int, Field(ge=200, le=599)]
    body: HTTPBody | None = None


class RegexRewrite(IstioModel):
    match: Regex
    rewrite: str


class HTTPRewrite(IstioModel):
    uri: str = ""
    authority: str = ""
    uriRegexRewrite: RegexRewrite | None = None

    @model_validator(mode="after")
    def _one_uri(self) -> HTTPRewrite:
        if self.uri and self.uriRegexRewrite is not None:
            raise ValueError("only one of uri, uriRegexRewrite may be set")
        return self


#: retryOn conditions Envoy knows (router filter), HTTP and gRPC; numbers are status codes.
RETRY_ON = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
    "unavailable",
})


class HTTPRetry(IstioModel):
    attempts: Annotated[int, Field(ge=0)] = 0
    perTryTimeout: PositiveDuration | None = None
    retryOn: str = ""
    retryRemoteLocalities: bool | None = None
    retryIgnorePreviousHosts: bool | None = None
    backoff: PositiveDuration | None = None

    @field_validator("retryOn")
    @classmethod
    def _retry_on(cls, value: str) -> str:
        for part in (p.strip() for p in value.split(",")):
            if part and part not in RETRY_ON and not (part.isdigit() and 100 <= int(part) <= 599):
                raise ValueError(f"{part!r} is not a retry condition Envoy knows "
                                 f"(one of {', '.join(sorted(RETRY_ON))}, or an HTTP status code)")
        return value


class FaultDelay(IstioModel):
    fixedDelay: PositiveDuration | None = None
    exponentialDelay: PositiveDuration | None = None
    percentage: Percent | None = None
    percent: Annotated[int, Field(ge=0, le=100)] | None = None  # deprecated integer form

    @model_validator(mode="after")
    def _delay(self) -> FaultDelay:
        if self.fixedDelay is None and self.exponentialDelay is None:
            raise ValueError("fixedDelay must be set")
        return self


class FaultAbort(IstioModel):
    httpStatus: Annotated[int, Field(ge=200, le=599)] | None = None
    grpcStatus: str | None = None
    http2Error: str | None = None
    percentage: Percent | None = None

    @model_validator(mode="after")
    def _one_error(self) -> FaultAbort:
        set_ = [k for k in ("httpStatus", "grpcStatus", "http2Error") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"exactly one of httpStatus, grpcStatus, http2Error must be set (got {set_ or 'none'})")
        return self


class HTTPFaultInjection(IstioModel):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


class HTTPMirrorPolicy(IstioModel):
    destination: Destination
    percentage: Percent | None = None


class CorsPolicy(IstioModel):
    allowOrigins: list[StringMatch] = []
    allowOrigin: list[str] = []  # deprecated exact-match form
    allowMethods: list[str] = []
    allowHeaders: list[str] = []
    exposeHeaders: list[str] = []
    maxAge: PositiveDuration | None = None
    allowCredentials: bool | None = None
    unmatchedPreflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] = "UNSPECIFIED"

    @field_validator("allowOrigins")
    @classmethod
    def _origins(cls, origins: list[StringMatch]) -> list[StringMatch]:
        for m in origins:
            _not_empty(m)
        return origins


class Delegate(IstioModel):
    name: Annotated[str, Field(min_length=1)]
    namespace: str = ""


class HTTPRoute(IstioModel):
    name: str = ""
    match: list[HTTPMatchRequest] = []
    route: list[HTTPRouteDestination] = []
    redirect: HTTPRedirect | None = None
    directResponse: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: AnyDuration | None = None
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
        # split is refused.
        if len(route) > 1 and sum(d.weight or 0 for d in route) == 0:
            raise ValueError("total destination weight is 0: give at least one destination a weight")
        return route

    @model_validator(mode="after")
    def _one_action(self) -> HTTPRoute:
        actions = [k for k in ("route", "redirect", "directResponse", "delegate") if getattr(self, k)]
        if len(actions) > 1:
            raise ValueError(f"only one of route, redirect, directResponse, delegate may be set (got {', '.join(actions)})")
        if not actions:
            raise ValueError("one of route, redirect, directResponse, delegate must be set")
        if self.rewrite is not None and (self.redirect is not None or self.directResponse is not None):
            raise ValueError("rewrite cannot be used with redirect or directResponse")
        if self.mirror is not None and self.mirrors:
            raise ValueError("only one of mirror, mirrors may be set")
        return self


class VirtualServiceSpec(IstioModel):
    hosts: list[str] = []  # empty only for a delegate VirtualService
    gateways: list[str] = []
    http: list[HTTPRoute] = []
    exportTo: list[str] = []


class VirtualService(Resource):
    KIND = "VirtualService"
    API_VERSIONS = ISTIO_NETWORKING
    spec: VirtualServiceSpec


# ---------------------------------------------------------------- DestinationRule


class HttpCookie(IstioModel):
    name: Annotated[str, Field(min_length=1)]
    path: str = ""
    ttl: AnyDuration | None = None


class RingHash(IstioModel):
    minimumRingSize: Annotated[int, Field(ge=0)] = 0


class Maglev(IstioModel):
    tableSize: Annotated[int, Field(ge=0)] = 0


class ConsistentHash(IstioModel):
    httpHeaderName: str | None = None
    httpCookie: HttpCookie | None = None
    useSourceIp: bool | None = None
    httpQueryParameterName: str | None = None
    ringHash: RingHash | None = None
    maglev: Maglev | None = None
    minimumRingSize: Annotated[int, Field(ge=0)] | None = None  # deprecated: ringHash.minimumRingSize

    @model_validator(mode="after")
    def _one_key(self) -> ConsistentHash:
        keys = [k for k in ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")
                if getattr(self, k) not in (None, False)]
        if len(keys) != 1:
            raise ValueError("exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName "
                             f"must be set (got {keys or 'none'})")
        if self.ringHash is not None and self.maglev is not None:
            raise ValueError("only one of ringHash, maglev may be set")
        return self


class LocalityDistribute(IstioModel):
    from_: str = Field(alias="from")
    to: dict[str, int] = {}


class LocalityFailover(IstioModel):
    from_: str = Field(alias="from")
    to: str = ""


class LocalityLbSetting(IstioModel):
    distribute: list[LocalityDistribute] = []
    failover: list[LocalityFailover] = []
    failoverPriority: list[str] = []
    enabled: bool | None = None


class Warmup(IstioModel):
    duration: PositiveDuration
    minimumPercent: Annotated[float, Field(ge=0, le=100)] | None = None
    aggression: Annotated[float, Field(ge=1)] | None = None


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
    probes: Annotated[int, Field(ge=0)] | None = None
    time: PositiveDuration | None = None
    interval: PositiveDuration | None = None


class TCPSettings(IstioModel):
    maxConnections: Annotated[int, Field(ge=0)] | None = None
    connectTimeout: PositiveDuration | None = None
    tcpKeepalive: TcpKeepalive | None = None
    maxConnectionDuration: PositiveDuration | None = None
    idleTimeout: AnyDuration | None = None


class HTTPSettings(IstioModel):
    http1MaxPendingRequests: Annotated[int, Field(ge=0)] | None = None
    http2MaxRequests: Annotated[int, Field(ge=0)] | None = None
    maxRequestsPerConnection: Annotated[int, Field(ge=0)] | None = None
    maxRetries: Annotated[int, Field(ge=0)] | None = None
    idleTimeout: PositiveDuration | None = None
    h2UpgradePolicy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    useClientProtocol: bool = False
    maxConcurrentStreams: Annotated[int, Field(ge=0)] | None = None


class ConnectionPoolSettings(IstioModel):
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(IstioModel):
    consecutiveErrors: Annotated[int, Field(ge=0)] | None = None  # deprecated
    consecutive5xxErrors: Annotated[int, Field(ge=0)] | None = None
    consecutiveGatewayErrors: Annotated[int, Field(ge=0)] | None = None
    splitExternalLocalOriginErrors: bool = False
    consecutiveLocalOriginFailures: Annotated[int, Field(ge=0)] | None = None
    interval: PositiveDuration | None = None
    baseEjectionTime: PositiveDuration | None = None
    maxEjectionPercent: Annotated[int, Field(ge=0, le=100)] | None = None
    minHealthPercent: Annotated[int, Field(ge=0, le=100)] | None = None


class ClientTLSSettings(IstioModel):
    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] = "DISABLE"
    clientCertificate: str = ""
    privateKey: str = ""
    caCertificates: str = ""
    credentialName: str = ""
    subjectAltNames: list[str] = []
    sni: str = ""
    insecureSkipVerify: bool | None = None

    @model_validator(mode="after")
    def _mutual(self) -> ClientTLSSettings:
        if self.mode == "MUTUAL" and not self.credentialName and not (self.clientCertificate and self.privateKey):
            raise ValueError("MUTUAL needs clientCertificate and privateKey (or credentialName)")
        return self


class PortTrafficPolicy(IstioModel):
    port: PortSelector
    loadBalancer: LoadBalancerSettings | None = None
    connectionPool: ConnectionPoolSettings | None = None
    outlierDetection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class TrafficPolicy(IstioModel):
    loadBalancer: LoadBalancerSettings | None = None
    connectionPool: ConnectionPoolSettings | None = None
    outlierDetection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    portLevelSettings: list[PortTrafficPolicy] = []

    @field_validator("portLevelSettings")
    @classmethod
    def _unique_ports(cls, settings: list[PortTrafficPolicy]) -> list[PortTrafficPolicy]:
        seen: set[int] = set()
        for s in settings:
            if s.port.number in seen:
                raise ValueError(f"port {s.port.number} has more than one entry")
            seen.add(s.port.number)
        return settings


class Subset(IstioModel):
    name: Annotated[str, Field(min_length=1)]
    labels: dict[str, str] = {}
    trafficPolicy: TrafficPolicy | None = None


class DestinationRuleSpec(IstioModel):
    host: Annotated[str, Field(min_length=1)]
    trafficPolicy: TrafficPolicy | None = None
    subsets: list[Subset] = []
    exportTo: list[str] = []
    workloadSelector: WorkloadSelector | None = None

    @field_validator("subsets")
    @classmethod
    def _unique_subsets(cls, subsets: list[Subset]) -> list[Subset]:
        seen: set[str] = set()
        for s in subsets:
            if s.name in seen:
                raise ValueError(f"duplicate subset name {s.name!r}")
            seen.add(s.name)
        return subsets


class DestinationRule(Resource):
    KIND = "DestinationRule"
    API_VERSIONS = ISTIO_NETWORKING
    spec: DestinationRuleSpec

