"""Istio mutual TLS between sidecars, with certificates over SDS (``default``, ``ROOTCA``).

Client side (outbound clusters), as istiod builds it:

* DestinationRule ``tls.mode: ISTIO_MUTUAL``: the cluster's transport socket originates
  mTLS to every endpoint;
* auto mTLS (no TLS settings in the rule, an in-mesh service whose mesh/namespace
  PeerAuthentication is not DISABLE): ``transport_socket_matches`` originate mTLS to the
  endpoints whose metadata says ``tlsMode: istio`` (pods labelled
  ``security.istio.io/tlsMode: istio``, as a sidecar-injected pod is) and plaintext to
  the others;
* SNI ``outbound_.<port>_.<subset>_.<host>``, ALPN ``istio-peer-exchange``, ``istio``
  (and ``h2`` on HTTP/2 clusters), the peer's certificate checked against ROOTCA and,
  when known, against the destination's SPIFFE IDs.

Server side (inbound listeners), per the workload's PeerAuthentication: STRICT terminates
mTLS only; PERMISSIVE adds a TLS inspector and one chain for mTLS (matched on the ALPN
Istio clients send) and one for plaintext; DISABLE stays plaintext. A client certificate
is required on the mTLS chain; the application learns the caller's SPIFFE ID from
``x-forwarded-client-cert``, which plaintext callers cannot forge (it is sanitized).

The SDS names come over ADS: Envoy asks meshpilot, which answers only a stream that
proved this identity. A proxy that proved none (plaintext xDS port, no token) is given
no mTLS config at all: it could never get the certificates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import struct_pb2

from translators.features._proto import to_any

SDS_DEFAULT = "default"
SDS_ROOT = "ROOTCA"
TLS_MODE_LABEL = "security.istio.io/tlsMode"
TLS_MODE_ISTIO = "istio"
#: Where Envoy looks for the keys ``transport_socket_matches`` match on.
SOCKET_MATCH = "envoy.transport_socket_match"
TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_SOCKET = "envoy.transport_sockets.raw_buffer"
TRUST_DOMAIN = "cluster.local"

#: What an Istio client offers (util.ALPNInMeshWithMxc / ALPNInMeshH2WithMxc).
CLIENT_ALPN = ("istio-peer-exchange", "istio")
CLIENT_ALPN_H2 = ("istio-peer-exchange", "istio", "h2")
#: What marks a connection as mesh mTLS on a PERMISSIVE port (allIstioMtlsALPNs).
MESH_ALPNS = ("istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2")
#: Istio's inbound TLS parameters (authn utils: SupportedCiphers, ALPNHttp, ALPNDownstreamWithMxc).
SERVER_ALPN_HTTP = ("h2", "http/1.1")
SERVER_ALPN_TCP = ("istio-peer-exchange", "h2", "http/1.1")
CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
)

_ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
)
_TLS_PARAMS = common_pb2.TlsParameters(
    tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2,
    tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
)


def spiffe_id(namespace: str, service_account: str, trust_domain: str = TRUST_DOMAIN) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def sni(port: int, host: str, subset: str = "") -> str:
    """istiod's BuildDNSSrvSubsetKey: ``outbound_.9080_.v1_.reviews.default.svc.cluster.local``."""
    return f"outbound_.{port}_.{subset}_.{host}"


def sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=_ADS)


def _mesh_common(alpn: Sequence[str], sans: Sequence[str] = ()) -> tls_pb2.CommonTlsContext:
    common = tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[sds(SDS_DEFAULT)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=[
                    common_pb2.SubjectAltNameMatcher(
                        san_type=common_pb2.SubjectAltNameMatcher.URI,
                        matcher=string_pb2.StringMatcher(exact=san),
                    )
                    for san in sans
                ]
            ),
            validation_context_sds_secret_config=sds(SDS_ROOT),
        ),
        alpn_protocols=list(alpn),
    )
    return common


# ---------------------------------------------------------------- client side


@functools.lru_cache(maxsize=4096)
def _client_common(http2: bool, sans: tuple[str, ...]) -> tls_pb2.CommonTlsContext:
    """Shared by every cluster with the same ALPN and SANs (callers copy from it)."""
    common = _mesh_common(CLIENT_ALPN_H2 if http2 else CLIENT_ALPN, sans)
    common.tls_params.CopyFrom(_TLS_PARAMS)
    return common


def upstream_context(server_name: str, sans: Sequence[str], http2: bool) -> tls_pb2.UpstreamTlsContext:
    ctx = tls_pb2.UpstreamTlsContext(sni=server_name)
    ctx.common_tls_context.CopyFrom(_client_common(http2, tuple(sans)))
    return ctx


def _tls_socket(ctx: tls_pb2.UpstreamTlsContext | tls_pb2.DownstreamTlsContext) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=to_any(ctx))


_RAW = base_pb2.TransportSocket(name=RAW_SOCKET, typed_config=to_any(raw_buffer_pb2.RawBuffer()))
_ISTIO_MATCH = struct_pb2.Struct(fields={"tlsMode": struct_pb2.Value(string_value=TLS_MODE_ISTIO)})


def apply_mesh_tls(
    c: cluster_pb2.Cluster,
    mode: str | None,
    *,
    auto: bool,
    server_name: str,
    sans: Sequence[str],
    http2: bool,
    explicit_sans: Sequence[str] = (),
) -> None:
    """Istio mTLS onto ``c``: ``mode`` is the DestinationRule's tls.mode (None: no TLS settings),
    ``auto`` whether auto mTLS applies to this service; ``explicit_sans`` (the rule's
    subjectAltNames) replace the destination's SPIFFE IDs ``sans``."""
    if mode == "ISTIO_MUTUAL":
        ctx = upstream_context(server_name, list(explicit_sans) or list(sans), http2)
        c.transport_socket.CopyFrom(_tls_socket(ctx))
    elif mode is None and auto:
        ctx = upstream_context(server_name, sans, http2)
        c.transport_socket_matches.extend([
            cluster_pb2.Cluster.TransportSocketMatch(
                name=f"tlsMode-{TLS_MODE_ISTIO}", match=_ISTIO_MATCH, transport_socket=_tls_socket(ctx)),
            cluster_pb2.Cluster.TransportSocketMatch(
                name="tlsMode-disabled", match=struct_pb2.Struct(), transport_socket=_RAW),
        ])


def without_auto_mtls(c: cluster_pb2.Cluster) -> cluster_pb2.Cluster:
    """``c`` for a proxy that has no certificate: auto mTLS becomes plaintext. (An explicit
    ISTIO_MUTUAL stays: that destination asked for mTLS, and failing closed is right.)"""
    if not c.transport_socket_matches or c.transport_socket_matches[0].name != f"tlsMode-{TLS_MODE_ISTIO}":
        return c
    plain = cluster_pb2.Cluster()
    plain.CopyFrom(c)
    del plain.transport_socket_matches[:]
    return plain


def endpoint_metadata(labels: Sequence[tuple[str, str]]) -> base_pb2.Metadata | None:
    """What ``transport_socket_matches`` read: ``tlsMode: istio`` for an endpoint with a sidecar."""
    if dict(labels).get(TLS_MODE_LABEL) != TLS_MODE_ISTIO:
        return None
    md = base_pb2.Metadata()
    md.filter_metadata[SOCKET_MATCH].CopyFrom(_ISTIO_MATCH)
    return md


# ---------------------------------------------------------------- server side


def downstream_context(http: bool) -> tls_pb2.DownstreamTlsContext:
    common = _mesh_common(SERVER_ALPN_HTTP if http else SERVER_ALPN_TCP)
    common.tls_params.CopyFrom(_TLS_PARAMS)
    common.tls_params.cipher_suites.extend(CIPHERS)
    ctx = tls_pb2.DownstreamTlsContext(common_tls_context=common)
    ctx.require_client_certificate.value = True
    return ctx


_TLS_INSPECTOR = lc.ListenerFilter(
    name="envoy.filters.listener.tls_inspector", typed_config=to_any(tls_inspector_pb2.TlsInspector())
)


def _deny_all(stat_prefix: str) -> lc.Filter:
    # ALLOW with no policy: nothing is allowed.
    config = network_rbac.RBAC(stat_prefix=stat_prefix, rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW))
    return lc.Filter(name="envoy.filters.network.rbac", typed_config=to_any(config))


def secure_inbound(listener: listener_pb2.Listener, mode: str, has_identity: bool, http: bool) -> None:
    """Turn ``listener``'s one plaintext filter chain into what PeerAuthentication ``mode`` asks.

    Without an identity the proxy cannot terminate mTLS: PERMISSIVE serves plaintext only
    and STRICT refuses every connection (it must not fall back to plaintext)."""
    (chain,) = listener.filter_chains
    if not has_identity:
        if mode == "STRICT":
            chain.filters.insert(0, _deny_all(f"{listener.name}.no_mesh_identity."))
        return
    if mode == "DISABLE":
        return
    socket = _tls_socket(downstream_context(http))
    if mode == "STRICT":
        chain.name = "mtls"
        chain.transport_socket.CopyFrom(socket)
        return
    secure = lc.FilterChain()
    secure.CopyFrom(chain)
    secure.name = "mtls"
    secure.filter_chain_match.transport_protocol = "tls"
    secure.filter_chain_match.application_protocols.extend(MESH_ALPNS)
    secure.transport_socket.CopyFrom(socket)
    plain = lc.FilterChain()
    plain.CopyFrom(chain)
    plain.name = "plaintext"
    plain.filter_chain_match.transport_protocol = "raw_buffer"
    del listener.filter_chains[:]
    listener.filter_chains.extend([secure, plain])
    listener.listener_filters.append(_TLS_INSPECTOR)
    # A server-speaks-first protocol sends nothing to inspect: serve it as plaintext after the wait.
    listener.continue_on_listener_filters_timeout = True
