"""ClientTLSSettings -> the cluster's upstream TLS transport socket (DISABLE, SIMPLE,
MUTUAL with files on the proxy's disk). ISTIO_MUTUAL and credentialName need the
mesh's certificates over SDS and are reported as not supported yet by the translator."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from translators.features._proto import to_any
from translators.model import ClientTLSSettings

SOCKET = "envoy.transport_sockets.tls"


def upstream_tls(tls: ClientTLSSettings) -> tls_pb2.UpstreamTlsContext | None:
    if tls.mode not in ("SIMPLE", "MUTUAL"):
        return None
    ctx = tls_pb2.UpstreamTlsContext(sni=tls.sni)
    common = ctx.common_tls_context
    if tls.mode == "MUTUAL":
        common.tls_certificates.append(common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(filename=tls.clientCertificate),
            private_key=base_pb2.DataSource(filename=tls.privateKey),
        ))
    if not tls.insecureSkipVerify:
        if tls.caCertificates:
            common.validation_context.trusted_ca.filename = tls.caCertificates
        for san in tls.subjectAltNames:
            common.validation_context.match_typed_subject_alt_names.append(common_pb2.SubjectAltNameMatcher(
                san_type=common_pb2.SubjectAltNameMatcher.DNS, matcher=string_pb2.StringMatcher(exact=san)))
    return ctx


def apply_tls(c: cluster_pb2.Cluster, tls: ClientTLSSettings | None) -> None:
    if tls is None:
        return
    ctx = upstream_tls(tls)
    if ctx is not None:
        c.transport_socket.CopyFrom(base_pb2.TransportSocket(name=SOCKET, typed_config=to_any(ctx)))
