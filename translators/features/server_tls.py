"""A Gateway server's ``tls`` as Envoy's DownstreamTlsContext (istiod's
buildGatewayListenerTLSContext).

Certificates come over SDS, never inline: ``credentialName`` is the Secret
``kubernetes://<name>`` (and, for MUTUAL, its CA ``kubernetes://<name>-cacert``) that the
SDS server reads from the gateway's namespace; ISTIO_MUTUAL is the proxy's own mesh
certificate ``default`` and the mesh roots ``ROOTCA``. ``serverCertificate`` and
``privateKey`` name files on the gateway's host, which Envoy reads itself.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from translators.features._proto import to_any
from translators.features.mtls import SDS_DEFAULT, SDS_ROOT, TLS_SOCKET, sds
from translators.model.gateway import CIPHER_SUITES, ServerTLSSettings

CREDENTIAL_PREFIX = "kubernetes://"
CA_SUFFIX = "-cacert"
#: What a terminating HTTPS server offers (istiod: ALPNHttp); TLS servers offer none.
HTTP_ALPN = ("h2", "http/1.1")

_VERSIONS = {
    "TLS_AUTO": common_pb2.TlsParameters.TLS_AUTO,
    "TLSV1_0": common_pb2.TlsParameters.TLSv1_0,
    "TLSV1_1": common_pb2.TlsParameters.TLSv1_1,
    "TLSV1_2": common_pb2.TlsParameters.TLSv1_2,
    "TLSV1_3": common_pb2.TlsParameters.TLSv1_3,
}


def credential_secret(name: str) -> str:
    """The SDS name of a ``credentialName`` (istiod's: ``kubernetes://<name>``)."""
    return name if name.startswith(CREDENTIAL_PREFIX) else CREDENTIAL_PREFIX + name


def ca_secret(name: str) -> str:
    return credential_secret(name) + CA_SUFFIX


def _files(cert: str, key: str) -> common_pb2.TlsCertificate:
    return common_pb2.TlsCertificate(certificate_chain=base_pb2.DataSource(filename=cert),
                                     private_key=base_pb2.DataSource(filename=key))


def _validation(tls: ServerTLSSettings) -> common_pb2.CertificateValidationContext:
    ctx = common_pb2.CertificateValidationContext(
        verify_certificate_spki=tls.verifyCertificateSpki, verify_certificate_hash=tls.verifyCertificateHash)
    for san in tls.subjectAltNames:
        for kind in (common_pb2.SubjectAltNameMatcher.DNS, common_pb2.SubjectAltNameMatcher.URI):
            ctx.match_typed_subject_alt_names.append(
                common_pb2.SubjectAltNameMatcher(san_type=kind, matcher=string_pb2.StringMatcher(exact=san)))
    return ctx


def downstream_context(tls: ServerTLSSettings, http: bool) -> tls_pb2.DownstreamTlsContext:
    """The context of a terminating server (SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL)."""
    common = tls_pb2.CommonTlsContext(alpn_protocols=HTTP_ALPN if http else ())
    mutual = tls.mode in ("MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL")
    validation = _validation(tls)
    if tls.mode == "ISTIO_MUTUAL":
        common.tls_certificate_sds_secret_configs.append(sds(SDS_DEFAULT))
        ca = sds(SDS_ROOT)
    elif tls.credentialName or tls.credentialNames:
        names = [tls.credentialName] if tls.credentialName else tls.credentialNames
        common.tls_certificate_sds_secret_configs.extend(sds(credential_secret(n)) for n in names)
        ca = sds(ca_secret(names[0]))
    else:
        common.tls_certificates.append(_files(tls.serverCertificate, tls.privateKey))
        ca = None
        if tls.caCertificates:
            validation.trusted_ca.filename = tls.caCertificates
    if mutual and ca is not None:
        common.combined_validation_context.default_validation_context.CopyFrom(validation)
        common.combined_validation_context.validation_context_sds_secret_config.CopyFrom(ca)
    elif mutual or validation.ByteSize():
        common.validation_context.CopyFrom(validation)
    params = common.tls_params
    params.tls_minimum_protocol_version = _VERSIONS[tls.minProtocolVersion]
    params.tls_maximum_protocol_version = _VERSIONS[tls.maxProtocolVersion]
    if tls.minProtocolVersion == "TLS_AUTO":
        params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_2  # istiod's default
    params.cipher_suites.extend(dict.fromkeys(c for c in tls.cipherSuites if c in CIPHER_SUITES))
    ctx = tls_pb2.DownstreamTlsContext(common_tls_context=common)
    if tls.mode in ("MUTUAL", "ISTIO_MUTUAL"):
        ctx.require_client_certificate.value = True
    return ctx


def transport_socket(tls: ServerTLSSettings, http: bool) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=to_any(downstream_context(tls, http)))


def warnings(tls: ServerTLSSettings, http_server: bool) -> list[tuple[str, str]]:
    """(field under ``tls``, message): what Istio's validateTLSOptions only warns about."""
    out = []
    if tls.minProtocolVersion in ("TLSV1_0", "TLSV1_1") and not tls.cipherSuites:
        out.append(("minProtocolVersion", "TLS versions below TLSV1_2 need cipherSuites set: the default ones "
                    "are not compatible with them"))
    unknown = sorted({c for c in tls.cipherSuites if c not in CIPHER_SUITES})
    if unknown:
        out.append(("cipherSuites", f"ignoring invalid cipher suites: {unknown}"))
    dupes = sorted({c for i, c in enumerate(tls.cipherSuites) if c in tls.cipherSuites[:i]})
    if dupes:
        out.append(("cipherSuites", f"ignoring duplicate cipher suites: {dupes}"))
    if tls.mode in ("PASSTHROUGH", "AUTO_PASSTHROUGH") and not http_server and (
            tls.serverCertificate or tls.privateKey or tls.caCertificates or tls.credentialName or tls.credentialNames):
        out.append(("mode", f"{tls.mode} mode does not use certificates, they will be ignored"))
    if tls.httpsRedirect and not http_server:
        out.append(("httpsRedirect", "tls.httpsRedirect should only be used with http servers"))
    return out
