"""ClientTLSSettings -> the cluster's upstream TLS transport socket (DISABLE, SIMPLE,
MUTUAL with files on the proxy's disk). ISTIO_MUTUAL and credentialName need
certificates over SDS: no TLS is originated for them, and the translator warns.

As istiod: the server is verified unless insecureSkipVerify (against the system's CA
bundle when caCertificates is unset); without ``sni`` the request's host is sent as SNI
(auto_sni) and, without subjectAltNames, checked against the server's certificate
(auto_san_validation); TLS 1.2 to 1.3; ALPN h2 on HTTP/2 clusters.
"""

from __future__ import annotations

import ipaddress

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from envoy.type.matcher.v3 import string_pb2

from translators.features._proto import to_any
from translators.model import ClientTLSSettings

SOCKET = "envoy.transport_sockets.tls"
# Where istio-agent finds the "system" roots on the Debian/Ubuntu images proxies run on.
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"

_SAN = common_pb2.SubjectAltNameMatcher


def _san_matchers(san: str) -> list[common_pb2.SubjectAltNameMatcher]:
    # Istio matches a name against every SAN type (deprecated match_subject_alt_names); typed
    # matchers need one entry per type: DNS names, SPIFFE URIs, IP addresses.
    types = [_SAN.DNS, _SAN.URI]
    try:
        ipaddress.ip_address(san)
        types.append(_SAN.IP_ADDRESS)
    except ValueError:
        pass
    return [_SAN(san_type=t, matcher=string_pb2.StringMatcher(exact=san)) for t in types]


def upstream_tls(tls: ClientTLSSettings, http2: bool = False) -> tls_pb2.UpstreamTlsContext | None:
    # credentialName needs SDS; istiod, too, originates no TLS for it on sidecars (whose rules
    # have no workloadSelector), and MUTUAL without files would be rejected by Envoy.
    if tls.mode not in ("SIMPLE", "MUTUAL") or tls.credentialName:
        return None
    ctx = tls_pb2.UpstreamTlsContext(sni=tls.sni)
    common = ctx.common_tls_context
    common.tls_params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_2
    common.tls_params.tls_maximum_protocol_version = common_pb2.TlsParameters.TLSv1_3
    if tls.mode == "MUTUAL":
        common.tls_certificates.append(common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(filename=tls.clientCertificate),
            private_key=base_pb2.DataSource(filename=tls.privateKey),
        ))
    if not tls.insecureSkipVerify:
        common.validation_context.trusted_ca.filename = tls.caCertificates or SYSTEM_CA
        for san in tls.subjectAltNames:
            common.validation_context.match_typed_subject_alt_names.extend(_san_matchers(san))
    if http2:
        common.alpn_protocols.append("h2")
    return ctx


def apply_tls(c: cluster_pb2.Cluster, tls: ClientTLSSettings | None, options: hpo.HttpProtocolOptions) -> None:
    """The transport socket onto ``c``; auto SNI / SAN validation onto ``options`` (HTTP only)."""
    if tls is None:
        return
    http2 = options.explicit_http_config.HasField("http2_protocol_options")
    ctx = upstream_tls(tls, http2)
    if ctx is None:
        return
    c.transport_socket.CopyFrom(base_pb2.TransportSocket(name=SOCKET, typed_config=to_any(ctx)))
    if not tls.sni:
        options.upstream_http_protocol_options.auto_sni = True
        if not tls.subjectAltNames and not tls.insecureSkipVerify:
            options.upstream_http_protocol_options.auto_san_validation = True
