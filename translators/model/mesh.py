"""The mesh-wide settings istiod reads from its MeshConfig, as a document of its own:

    apiVersion: meshpilot.io/v1alpha1
    kind: MeshConfig
    metadata: {name: mesh, namespace: istio-system}   # the root namespace
    spec:                                             # Istio's meshConfig fields
      extensionProviders: [...]

Only the parts meshpilot uses are modelled: the ext_authz ``extensionProviders`` that
``AuthorizationPolicy`` ``action: CUSTOM`` names, ``outboundTrafficPolicy.mode``
(the default of sidecars whose Sidecar does not set it), and telemetry: the
``envoyFileAccessLog``, ``zipkin`` and ``opentelemetry`` providers a Telemetry names,
``defaultProviders`` (used when no Telemetry names one) and ``accessLogFile`` /
``accessLogEncoding`` / ``accessLogFormat`` (the built-in ``envoy`` provider). Other fields (and other provider kinds)
are kept and reported as not supported. The checks are Istio's (ValidateMeshConfig's
validateExtensionProvider): an invalid document is refused whole, as istiod keeps its
previous mesh config then.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import model_validator

from translators.model.base import IstioModel, Resource
from translators.model.networking import Problems
from translators.model.types import PositiveDuration, UInt32, domain_problem, is_dns1123_label, is_token

MESHPILOT_API = ("meshpilot.io/v1alpha1",)

#: Envoy's type.v3.StatusCode values: what ``statusOnError`` may say.
HTTP_STATUS_CODES = frozenset({
    100, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308, 400, 401, 402,
    403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 423, 424, 426, 428, 429,
    431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
})


class RequestBody(IstioModel):
    maxRequestBytes: UInt32 = 0
    allowPartialMessage: bool = False
    packAsBytes: bool = False


class EnvoyExtAuthzHttp(IstioModel):
    service: str = ""
    port: int = 0
    timeout: PositiveDuration | None = None
    pathPrefix: str = ""
    failOpen: bool = False
    statusOnError: str = ""
    includeRequestHeadersInCheck: list[str] = []
    includeHeadersInCheck: list[str] = []  # deprecated: used when the one above is empty
    includeAdditionalHeadersInCheck: dict[str, str] = {}
    includeRequestBodyInCheck: RequestBody | None = None
    headersToUpstreamOnAllow: list[str] = []
    headersToDownstreamOnDeny: list[str] = []
    headersToDownstreamOnAllow: list[str] = []


class EnvoyExtAuthzGrpc(IstioModel):
    service: str = ""
    port: int = 0
    timeout: PositiveDuration | None = None
    failOpen: bool = False
    statusOnError: str = ""
    includeRequestBodyInCheck: RequestBody | None = None


class LogFormat(IstioModel):
    """One of: a text line (Envoy's format operators), or JSON with these keys."""

    text: str = ""
    labels: dict[str, Any] | None = None


class EnvoyFileAccessLog(IstioModel):
    path: str = ""
    logFormat: LogFormat | None = None


class ZipkinTracing(IstioModel):
    service: str = ""
    port: int = 0
    maxTagLength: UInt32 = 0
    enable64bitTraceId: bool = False


class OpenTelemetryTracing(IstioModel):
    service: str = ""
    port: int = 0
    maxTagLength: UInt32 = 0


#: The provider kinds: one per ExtensionProvider.
PROVIDER_KINDS = ("envoyExtAuthzHttp", "envoyExtAuthzGrpc", "envoyFileAccessLog", "zipkin", "opentelemetry")


class ExtensionProvider(IstioModel):
    name: str = ""
    envoyExtAuthzHttp: EnvoyExtAuthzHttp | None = None
    envoyExtAuthzGrpc: EnvoyExtAuthzGrpc | None = None
    envoyFileAccessLog: EnvoyFileAccessLog | None = None
    zipkin: ZipkinTracing | None = None
    opentelemetry: OpenTelemetryTracing | None = None


class DefaultProviders(IstioModel):
    tracing: list[str] = []
    metrics: list[str] = []
    accessLogging: list[str] = []


class MeshOutboundTrafficPolicy(IstioModel):
    # ALLOW_ANY_DYNAMIC_DNS needs DNS proxying meshpilot does not do; it acts as ALLOW_ANY.
    mode: Literal["REGISTRY_ONLY", "ALLOW_ANY", "ALLOW_ANY_DYNAMIC_DNS"] = "ALLOW_ANY"


class MeshConfigSpec(IstioModel):
    extensionProviders: list[ExtensionProvider] = []
    #: Where sidecars send a destination the registry does not know, unless their Sidecar says.
    outboundTrafficPolicy: MeshOutboundTrafficPolicy = MeshOutboundTrafficPolicy()
    defaultProviders: DefaultProviders = DefaultProviders()
    #: The built-in "envoy" access log: where (empty: off unless a Telemetry asks), how, in what format.
    accessLogFile: str = ""
    accessLogEncoding: Literal["TEXT", "JSON"] = "TEXT"
    accessLogFormat: str = ""


def _service_problem(service: str) -> str | None:
    """Istio's validateExtensionProviderService: a host name, an IP, or namespace/host."""
    if not service:
        return "service must not be empty"
    ns, slash, host = service.partition("/")
    if slash:
        if ns not in ("*", ".") and not is_dns1123_label(ns):
            return f"invalid namespace {ns!r} in service {service!r}"
        return domain_problem(host)
    try:
        ipaddress.ip_address(service)
        return None
    except ValueError:
        pass
    if "*" in service:
        return f"invalid service {service!r}: a host name without wildcards"
    return domain_problem(service)


class MeshConfig(Resource):
    KIND = "MeshConfig"
    API_VERSIONS = MESHPILOT_API
    spec: MeshConfigSpec = MeshConfigSpec()

    @model_validator(mode="after")
    def _check(self) -> MeshConfig:
        p = Problems()
        seen: set[str] = set()
        for i, provider in enumerate(self.spec.extensionProviders):
            at = ("spec", "extensionProviders", i)
            if not provider.name:
                p.add((*at, "name"), "empty extension provider name")
            elif provider.name in seen:
                p.add((*at, "name"), f"duplicate extension provider name {provider.name}")
            seen.add(provider.name)
            kinds = [k for k in PROVIDER_KINDS if getattr(provider, k) is not None]
            if len(kinds) > 1:
                p.add(at, f"a provider is one kind, not {' and '.join(kinds)}")
            for kind in ("zipkin", "opentelemetry"):
                tracer = getattr(provider, kind)
                if tracer is None:
                    continue
                if not 1 <= tracer.port <= 65535:
                    p.add((*at, kind, "port"), f"port must be in the range [1, 65535], found: {tracer.port}")
                if (m := _service_problem(tracer.service)) is not None:
                    p.add((*at, kind, "service"), m)
            log = provider.envoyFileAccessLog
            if log is not None and log.logFormat is not None and log.logFormat.text and log.logFormat.labels:
                p.add((*at, "envoyFileAccessLog", "logFormat"), "logFormat is one of text or labels, not both")
            for kind in ("envoyExtAuthzHttp", "envoyExtAuthzGrpc"):
                config = getattr(provider, kind)
                if config is None:
                    continue
                loc = (*at, kind)
                if not 1 <= config.port <= 65535:
                    p.add((*loc, "port"), f"port must be in the range [1, 65535], found: {config.port}")
                if (m := _service_problem(config.service)) is not None:
                    p.add((*loc, "service"), m)
                if config.statusOnError and not (
                        config.statusOnError.isdigit() and int(config.statusOnError) in HTTP_STATUS_CODES):
                    p.add((*loc, "statusOnError"), f"unsupported statusOnError value {config.statusOnError}")
                if isinstance(config, EnvoyExtAuthzHttp):
                    if config.pathPrefix and not config.pathPrefix.startswith("/"):
                        p.add((*loc, "pathPrefix"), f"pathPrefix should begin with `/` but found {config.pathPrefix!r}")
                    for name in ("includeRequestHeadersInCheck", "includeHeadersInCheck", "headersToUpstreamOnAllow",
                                 "headersToDownstreamOnDeny", "headersToDownstreamOnAllow"):
                        for k, h in enumerate(getattr(config, name)):
                            if h == "*":
                                p.add((*loc, name, k), "a single wildcard (\"*\") is not supported, change it to "
                                      "either prefix or suffix match")
                    for h in config.includeAdditionalHeadersInCheck:
                        if not is_token(h):
                            p.add((*loc, "includeAdditionalHeadersInCheck", h), f"invalid header name {h!r}")
        p.raise_any("MeshConfig")
        return self
