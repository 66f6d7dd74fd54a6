"""Telemetry (telemetry.istio.io) and the mesh config's telemetry providers, as Envoy config.

* which Telemetry applies to a workload, Istio's way: the root namespace's (no selector),
  then its namespace's (no selector), then the ones of its namespace whose
  ``selector.matchLabels`` it has; each later one overrides the fields it sets, on the
  side (``match.mode``: CLIENT = outbound listeners, SERVER = inbound) it names;
* with no Telemetry saying anything, the mesh config's ``defaultProviders`` (and, for access
  logs, ``accessLogFile``: the built-in ``envoy`` provider);
* access logs: Envoy's file access logger on every HTTP connection manager and tcp_proxy, in
  Istio's default text format or its JSON one, behind the filter the CEL expression
  translates to (model/cel.py -> AccessLogFilter);
* tracing on every HTTP connection manager: Zipkin (HTTP JSON v2 to the provider's service
  cluster, B3 and W3C trace context) or OpenTelemetry (OTLP gRPC, W3C), with the sampling
  percentage and custom tags.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2 as al
from envoy.config.core.v3 import base_pb2, grpc_service_pb2
from envoy.config.core.v3 import substitution_format_string_pb2 as sfs
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from translators.errors import ConfigError
from translators.features._proto import to_any
from translators.model import cel
from translators.model.mesh import MeshConfig
from translators.model.telemetry import AccessLogging, ProviderRef, Telemetry, Tracing

# Istio's default formats (pilot/pkg/model/telemetry_logging.go), so log pipelines built for Istio parse ours.
TEXT_FORMAT = (
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% "
    "%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" "
    "\"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% "
    "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
JSON_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%", "route_name": "%ROUTE_NAME%", "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "protocol": "%PROTOCOL%", "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%", "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%", "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%", "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%", "request_id": "%REQ(X-REQUEST-ID)%", "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%", "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%", "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%", "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}
BUILTIN_LOG = "envoy"
STDOUT = "/dev/stdout"
#: Istio's default when nothing sets randomSamplingPercentage (PILOT_TRACE_SAMPLING).
DEFAULT_SAMPLING = 1.0
ZIPKIN_ENDPOINT = "/api/v2/spans"

HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY_TYPE = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


# ---------------------------------------------------------------- providers


@dataclass(frozen=True, slots=True)
class LogSink:
    path: str
    text: str = ""  # a text line, or
    json: str = ""  # JSON keys -> format operators, as sorted JSON text (hashable)


@dataclass(frozen=True, slots=True)
class Tracer:
    kind: str  # "zipkin" | "opentelemetry"
    host: str
    cluster: str
    max_tag_length: int = 0
    trace_id_64: bool = False


Provider = LogSink | Tracer
#: ``lookup(service, port)`` -> (host, cluster), or a message saying why there is none (security.provider_cluster).
Lookup = Callable[[str, int], "tuple[str, str] | str"]


def providers(mesh: MeshConfig | None, lookup: Lookup) -> tuple[dict[str, Provider], dict[str, ConfigError]]:
    """The telemetry providers of the mesh config by name, with the built-in ``envoy`` (stdout,
    or ``accessLogFile``, in ``accessLogEncoding`` / ``accessLogFormat``); and the tracing
    providers whose service is not in the registry, with why (reported where they are used)."""
    spec = mesh.spec if mesh is not None else MeshConfig.model_fields["spec"].default
    builtin_json = json.dumps(JSON_FORMAT, sort_keys=True) if spec.accessLogEncoding == "JSON" else ""
    if spec.accessLogFormat:  # a text line, or with JSON encoding a JSON object of operators (as Istio)
        builtin_json = _json_labels(spec.accessLogFormat) if spec.accessLogEncoding == "JSON" else ""
    out: dict[str, Provider] = {BUILTIN_LOG: LogSink(spec.accessLogFile or STDOUT,
                                                     text="" if builtin_json else spec.accessLogFormat or TEXT_FORMAT,
                                                     json=builtin_json)}
    errors: dict[str, ConfigError] = {}
    for i, p in enumerate(spec.extensionProviders):
        if p.envoyFileAccessLog is not None:
            fmt = p.envoyFileAccessLog.logFormat
            labels = fmt.labels if fmt is not None and fmt.labels else None
            out[p.name] = LogSink(p.envoyFileAccessLog.path or STDOUT,
                                  text="" if labels else (fmt.text if fmt is not None and fmt.text else TEXT_FORMAT),
                                  json=json.dumps(labels, sort_keys=True) if labels else "")
            continue
        tracer = p.zipkin or p.opentelemetry
        if tracer is None:
            continue
        kind = "zipkin" if p.zipkin is not None else "opentelemetry"
        found = lookup(tracer.service, tracer.port)
        if isinstance(found, str):
            assert mesh is not None
            errors[p.name] = ConfigError(mesh.source, str(mesh.key), f"spec.extensionProviders[{i}].{kind}.service",
                                         f"provider {p.name}: {found}; proxies using it send no spans", "warning")
            continue
        out[p.name] = Tracer(kind, found[0], found[1], tracer.maxTagLength,
                             bool(p.zipkin is not None and p.zipkin.enable64bitTraceId))
    return out, errors


def _json_labels(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return json.dumps(value if isinstance(value, dict) else JSON_FORMAT, sort_keys=True)


# ---------------------------------------------------------------- which Telemetry applies


@dataclass(frozen=True, slots=True)
class Side:
    """What one side (client: outbound, server: inbound) of a workload logs and traces."""

    logs: tuple[LogSink, ...] = ()
    log_filter: cel.Node | None = None
    tracer: Tracer | None = None
    sampling: float = DEFAULT_SAMPLING
    #: (tag, kind, name or value, default): kind is literal | environment | header
    tags: tuple[tuple[str, str, str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.logs and self.tracer is None


@dataclass(frozen=True, slots=True)
class WorkloadTelemetry:
    client: Side = Side()
    server: Side = Side()

    @property
    def empty(self) -> bool:
        return self.client.empty and self.server.empty


NONE = WorkloadTelemetry()


class TelemetryIndex:
    """The Telemetries by scope, and the providers they name; answers per workload, interned
    (equal answers are one object, so a proxy state compares them by identity)."""

    def __init__(self, telemetries: Iterable[Telemetry], root_namespace: str, mesh: MeshConfig | None,
                 provider_table: Mapping[str, Provider], broken: Mapping[str, ConfigError] | None = None,
                 interned: dict[WorkloadTelemetry, WorkloadTelemetry] | None = None) -> None:
        self.errors: list[ConfigError] = []
        self._broken = dict(broken or {})
        self._mesh = mesh
        self._providers = dict(provider_table)
        telemetries = list(telemetries)
        self._telemetries = telemetries
        by_ns: dict[str, list[Telemetry]] = {}
        for t in sorted(telemetries, key=lambda t: (t.metadata.namespace, t.metadata.name)):
            by_ns.setdefault(t.metadata.namespace, []).append(t)
        self._root = root_namespace
        self._ns_wide: dict[str, Telemetry] = {}
        self._selecting: dict[str, list[Telemetry]] = {}
        for ns, found in by_ns.items():
            wide = [t for t in found if t.spec.selector is None and not t.spec.targetRef and not t.spec.targetRefs]
            if wide:
                self._ns_wide[ns] = wide[0]
                for t in wide[1:]:  # Istio takes one (the oldest); we take the first by name
                    self.errors.append(_warn(t, "metadata", f"ignored: {wide[0].key} already applies to the "
                                             f"{'mesh' if ns == root_namespace else 'namespace ' + ns}"))
            self._selecting[ns] = [t for t in found if t.spec.selector is not None]
            for t in found:
                if t.spec.targetRef is not None or t.spec.targetRefs:
                    self.errors.append(_warn(t, "spec.targetRefs", "not supported: use selector.matchLabels"))
                if t.spec.metrics:
                    self.errors.append(_warn(t, "spec.metrics", "not supported: sidecars expose Envoy's stats on "
                                             ":15090/stats/prometheus"))
                self.errors += self._unknown_providers(t)
        if mesh is not None:  # a broken provider matters where something uses it
            defaults = mesh.spec.defaultProviders
            for name in (*defaults.accessLogging, *defaults.tracing):
                if name in self._broken:
                    self.errors.append(self._broken[name])
                elif name not in self._providers:
                    self.errors.append(ConfigError(mesh.source, str(mesh.key), "spec.defaultProviders",
                                                   f"{name!r} is not a provider of the mesh config: ignored", "warning"))
        #: Kept across indexes: an unchanged answer stays the same object, and proxies are not rebuilt.
        self.interned = interned if interned is not None else {NONE: NONE}
        self._memo: dict[tuple, WorkloadTelemetry] = {}

    def same_inputs(self, telemetries: Sequence[Telemetry], mesh: MeshConfig | None,
                    provider_table: Mapping[str, Provider], broken: Mapping[str, ConfigError]) -> bool:
        return (mesh is self._mesh and provider_table == self._providers and broken == self._broken
                and len(telemetries) == len(self._telemetries) and all(a is b for a, b in zip(telemetries, self._telemetries, strict=True)))

    def _unknown_providers(self, t: Telemetry) -> list[ConfigError]:
        out = []
        named: list[tuple[str, list[list[ProviderRef]]]] = [
            ("accessLogging", [a.providers for a in t.spec.accessLogging]),
            ("tracing", [tr.providers for tr in t.spec.tracing])]
        for field, entries in named:
            for i, refs in enumerate(entries):
                for k, ref in enumerate(refs):
                    p = self._providers.get(ref.name)
                    want = LogSink if field == "accessLogging" else Tracer
                    if ref.name in self._broken:
                        out.append(self._broken[ref.name])
                    elif not isinstance(p, want):
                        why = "is not a provider of the mesh config" if p is None else f"is not an {field} provider"
                        out.append(_warn(t, f"spec.{field}[{i}].providers[{k}].name", f"{ref.name!r} {why}: ignored"))
        return out

    def chain(self, namespace: str, labels: Mapping[str, str]) -> tuple[Telemetry, ...]:
        """The Telemetries that apply, least specific first."""
        found = [self._ns_wide.get(self._root)]
        if namespace != self._root:
            found.append(self._ns_wide.get(namespace))
        found += [t for t in self._selecting.get(namespace, ())
                  if t.spec.selector is not None and all(labels.get(k) == v for k, v in t.spec.selector.matchLabels.items())]
        return tuple(t for t in found if t is not None)

    def for_workload(self, namespace: str, labels: Mapping[str, str]) -> WorkloadTelemetry:
        chain = self.chain(namespace, labels)
        key = tuple(id(t) for t in chain)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        value = WorkloadTelemetry(self._side(chain, "CLIENT"), self._side(chain, "SERVER"))
        value = self.interned.setdefault(value, value)
        self._memo[key] = value
        return value

    def _side(self, chain: Sequence[Telemetry], mode: str) -> Side:
        defaults = self._mesh.spec.defaultProviders if self._mesh is not None else None
        # access logging
        said, names, disabled, expression = False, list[str](), False, ""
        for t in chain:
            for entry in _applying(t.spec.accessLogging, mode):
                said = True
                names = [p.name for p in entry.providers] or names
                disabled = entry.disabled if entry.disabled is not None else disabled
                if entry.filter is not None:
                    expression = entry.filter.expression
        if not names:
            names = list(defaults.accessLogging) if defaults is not None else []
        if not said and not names and self._mesh is not None and self._mesh.spec.accessLogFile:
            names = [BUILTIN_LOG]  # the mesh config's legacy switch
        logs = () if disabled else tuple(p for n in names if isinstance(p := self._providers.get(n), LogSink))
        # tracing
        tnames: list[str] = []
        sampling: float | None = None
        no_spans = False
        tags: dict[str, tuple[str, str, str, str]] = {}
        for t in chain:
            for tr in _applying(t.spec.tracing, mode):
                tnames = [p.name for p in tr.providers] or tnames
                sampling = tr.randomSamplingPercentage if tr.randomSamplingPercentage is not None else sampling
                no_spans = tr.disableSpanReporting if tr.disableSpanReporting is not None else no_spans
                for name, tag in tr.customTags.items():
                    if tag.literal is not None:
                        tags[name] = (name, "literal", tag.literal.value, "")
                    elif tag.environment is not None:
                        tags[name] = (name, "environment", tag.environment.name, tag.environment.defaultValue)
                    elif tag.header is not None:
                        tags[name] = (name, "header", tag.header.name, tag.header.defaultValue)
        if not tnames and defaults is not None:
            tnames = list(defaults.tracing)
        tracer = next((p for n in tnames if isinstance(p := self._providers.get(n), Tracer)), None)
        return Side(logs=logs, log_filter=cel.parse(expression) if expression and logs else None, tracer=tracer,
                    # Spans not reported: the trace context still flows, as under Istio.
                    sampling=0.0 if no_spans else DEFAULT_SAMPLING if sampling is None else sampling,
                    tags=tuple(sorted(tags.values())) if tracer is not None else ())


def _applying(entries: Sequence[AccessLogging] | Sequence[Tracing], mode: str) -> list:
    return [e for e in entries if e.match is None or e.match.mode in ("CLIENT_AND_SERVER", mode)]


def _warn(t: Telemetry, field: str, message: str) -> ConfigError:
    return ConfigError(t.source, str(t.key), field, message, "warning")


# ---------------------------------------------------------------- Envoy config


def _comparison(op: str, value: int) -> list[al.ComparisonFilter]:
    """``x op value`` as Envoy's comparisons (EQ, GE, LE only): one, or two for ``!=`` (either)."""
    def cmp(o: int, v: int) -> al.ComparisonFilter:
        return al.ComparisonFilter(op=o, value=base_pb2.RuntimeUInt32(default_value=v, runtime_key="meshpilot.access_log"))  # type: ignore[arg-type]
    eq, ge, le = al.ComparisonFilter.EQ, al.ComparisonFilter.GE, al.ComparisonFilter.LE
    match op:
        case "==":
            return [cmp(eq, value)]
        case ">=":
            return [cmp(ge, value)]
        case "<=":
            return [cmp(le, value)]
        case ">":
            return [cmp(ge, value + 1)]
        case "<":
            return [cmp(le, value - 1)]
        case _:  # !=
            return [*([cmp(le, value - 1)] if value > 0 else []), cmp(ge, value + 1)]


def access_log_filter(node: cel.Node) -> al.AccessLogFilter:
    if isinstance(node, cel.AllOf):
        return al.AccessLogFilter(and_filter=al.AndFilter(filters=[access_log_filter(n) for n in node.items]))
    if isinstance(node, cel.AnyOf):
        return al.AccessLogFilter(or_filter=al.OrFilter(filters=[access_log_filter(n) for n in node.items]))
    if isinstance(node, cel.Header):
        header = rc.HeaderMatcher(name=node.name, invert_match=node.negated)
        if node.value is None:
            header.present_match = True
        else:
            header.string_match.CopyFrom(string_pb2.StringMatcher(exact=node.value))
        return al.AccessLogFilter(header_filter=al.HeaderFilter(header=header))
    parts = _comparison(node.op, node.value)  # never empty: the parser refuses "< 0"

    def one(c: al.ComparisonFilter) -> al.AccessLogFilter:
        if node.attribute == "code":
            return al.AccessLogFilter(status_code_filter=al.StatusCodeFilter(comparison=c))
        return al.AccessLogFilter(duration_filter=al.DurationFilter(comparison=c))
    if len(parts) == 1:
        return one(parts[0])
    return al.AccessLogFilter(or_filter=al.OrFilter(filters=[one(c) for c in parts]))


def access_logs(side: Side) -> list[al.AccessLog]:
    out = []
    log_filter = access_log_filter(side.log_filter) if side.log_filter is not None else None
    for sink in side.logs:
        if sink.json:
            fmt = sfs.SubstitutionFormatString(json_format=_struct(json.loads(sink.json)))
        else:
            fmt = sfs.SubstitutionFormatString(text_format_source=base_pb2.DataSource(inline_string=sink.text))
        config = file_pb2.FileAccessLog(path=sink.path, log_format=fmt)
        entry = al.AccessLog(name="envoy.access_loggers.file", typed_config=to_any(config))
        if log_filter is not None:
            entry.filter.CopyFrom(log_filter)
        out.append(entry)
    return out


def _struct(value: Mapping[str, object]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def tracing(side: Side, service_name: str) -> hcm.HttpConnectionManager.Tracing | None:
    tracer = side.tracer
    if tracer is None:
        return None
    if tracer.kind == "zipkin":
        provider = http_tracer_pb2.Tracing.Http(name="envoy.tracers.zipkin", typed_config=to_any(zipkin_pb2.ZipkinConfig(
            collector_cluster=tracer.cluster, collector_endpoint=ZIPKIN_ENDPOINT, collector_hostname=tracer.host,
            collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON, trace_id_128bit=not tracer.trace_id_64,
            shared_span_context=wrappers_pb2.BoolValue(value=False), trace_context_option=zipkin_pb2.ZipkinConfig.USE_B3_WITH_W3C_PROPAGATION)))
    else:
        provider = http_tracer_pb2.Tracing.Http(name="envoy.tracers.opentelemetry", typed_config=to_any(
            opentelemetry_pb2.OpenTelemetryConfig(service_name=service_name, grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=tracer.cluster, authority=tracer.host)))))
    out = hcm.HttpConnectionManager.Tracing(
        client_sampling=percent_pb2.Percent(value=100.0), random_sampling=percent_pb2.Percent(value=side.sampling),
        overall_sampling=percent_pb2.Percent(value=100.0), provider=provider)
    if tracer.max_tag_length:
        out.max_path_tag_length.value = tracer.max_tag_length
    for tag, kind, name, default in side.tags:
        custom = custom_tag_pb2.CustomTag(tag=tag)
        if kind == "literal":
            custom.literal.value = name
        elif kind == "environment":
            custom.environment.name, custom.environment.default_value = name, default
        else:
            custom.request_header.name, custom.request_header.default_value = name, default
        out.custom_tags.append(custom)
    return out


def apply(listener: listener_pb2.Listener, side: Side, service_name: str) -> listener_pb2.Listener:
    """A copy of ``listener`` whose HTTP connection managers and tcp_proxies log (and trace) as
    ``side`` says; ``listener`` itself when there is nothing to add."""
    if side.empty:
        return listener
    logs = access_logs(side)
    trace = tracing(side, service_name)
    out = listener_pb2.Listener()
    out.CopyFrom(listener)
    for chain in out.filter_chains:
        for f in chain.filters:
            type_name = f.typed_config.TypeName()
            if type_name == HCM_TYPE:
                manager = hcm.HttpConnectionManager()
                f.typed_config.Unpack(manager)
                manager.access_log.extend(logs)
                if trace is not None:
                    manager.tracing.CopyFrom(trace)
                f.typed_config.Pack(manager, deterministic=True)
            elif type_name == TCP_PROXY_TYPE and logs:
                proxy = tcp_proxy_pb2.TcpProxy()
                f.typed_config.Unpack(proxy)
                proxy.access_log.extend(logs)
                f.typed_config.Pack(proxy, deterministic=True)
    return out
