"""Gateway and Secret validation as Istio does it (ValidateGateway), through ``parse_text``:
every error names the file, the resource and the exact field. tests/e2e/test_gateway.py
has what Envoy does with valid ones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from xds_server.sources.parse import parse_text

FILE = "mesh/gateway.yaml"
HTTP: dict[str, Any] = {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}


def _errors(doc: dict[str, Any], severity: str = "error") -> list[tuple[str, str]]:
    (parsed,) = parse_text(json.dumps(doc), FILE, is_json=True).documents
    for e in parsed.errors:
        assert e.file == FILE, e
    errors = [(e.field, e.message) for e in parsed.errors if e.severity == severity]
    if severity == "error":
        assert (parsed.resource is None) == bool(errors)
    return errors


def gw(*servers: dict[str, Any], name: str = "ingress", **spec: Any) -> list[tuple[str, str]]:
    return _errors({"apiVersion": "networking.istio.io/v1beta1", "kind": "Gateway",
                    "metadata": {"name": name, "namespace": "istio-system"},
                    "spec": {"selector": {"istio": "ingressgateway"}, "servers": list(servers), **spec}})


def server(**fields: Any) -> dict[str, Any]:
    return {**HTTP, **fields}


def https(tls: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*/a.example.com"],
            "tls": tls, **fields}


def only(errors: list[tuple[str, str]], field: str, *phrases: str) -> None:
    assert [f for f, _ in errors] == [field], errors
    for phrase in phrases:
        assert phrase in errors[0][1], (phrase, errors[0][1])


def test_a_valid_gateway_has_no_errors() -> None:
    assert gw(server(hosts=["ns/a.example.com", "./b.example.com", "*/c.example.com", "*.example.com", "*",
                            "10.1.2.3"]),
              https({"mode": "SIMPLE", "credentialName": "cert", "minProtocolVersion": "TLSV1_2"}),
              https({"mode": "MUTUAL", "credentialName": "cert"}, port={"number": 8443, "name": "m", "protocol": "HTTPS"}),
              https({"mode": "ISTIO_MUTUAL"}, port={"number": 15443, "name": "i", "protocol": "HTTPS"}),
              https({"mode": "SIMPLE", "serverCertificate": "/c.pem", "privateKey": "/k.pem"},
                    port={"number": 9443, "name": "f", "protocol": "HTTPS"}),
              server(port={"number": 8080, "name": "redirect", "protocol": "HTTP"}, tls={"httpsRedirect": True}),
              ) == []


def test_servers_are_required() -> None:
    only(gw(), "spec.servers", "gateway must have at least one server")


@pytest.mark.parametrize(("host", "phrase"), [
    ("reviews", "short names (non FQDN) are not allowed"),
    ("ns/reviews", "short names (non FQDN) are not allowed"),
    ("bad_ns/a.example.com", "invalid namespace value 'bad_ns' in gateway"),
    ("/a.example.com", "cannot be empty"),
    ("ns/", "cannot be empty"),
    ("a*.example.com", "invalid"),
    ("ns/-bad-.example.com", "invalid"),
])
def test_hosts(host: str, phrase: str) -> None:
    only(gw(server(hosts=["a.example.com", host])), "spec.servers[0].hosts[1]", phrase)


def test_hosts_must_not_be_empty() -> None:
    only(gw(server(hosts=[])), "spec.servers[0].hosts", "at least one host")


@pytest.mark.parametrize(("port", "field", "phrase"), [
    ({"number": 80, "name": "http", "protocol": "QUIC"}, "spec.servers[0].port.protocol", "invalid protocol 'QUIC'"),
    ({"number": 0, "name": "http", "protocol": "HTTP"}, "spec.servers[0].port.number", "1..65535"),
    ({"number": 70000, "name": "http", "protocol": "HTTP"}, "spec.servers[0].port.number", "1..65535"),
    ({"number": 80, "protocol": "HTTP"}, "spec.servers[0].port.name", "port name must be set"),
    ({"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}, "spec.servers[0].port.targetPort",
     "no impact"),
])
def test_port(port: dict[str, Any], field: str, phrase: str) -> None:
    only(gw(server(port=port)), field, phrase)


def test_port_is_required() -> None:
    only(gw({"hosts": ["*"]}), "spec.servers[0].port", "port is required")


def test_port_names_are_unique() -> None:
    only(gw(server(), server(port={"number": 81, "name": "http", "protocol": "HTTP"})), "spec.servers[1].port.name",
         "port names in servers must be unique: duplicate name http")


def test_protocols_and_tls_settings_agree() -> None:
    only(gw({"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"]}), "spec.servers[0].tls",
         "server must have TLS settings for HTTPS/TLS protocols")
    only(gw(server(tls={"mode": "SIMPLE", "credentialName": "c"})), "spec.servers[0].tls",
         "cannot have TLS settings for plain text HTTP ports")
    only(gw(server(port={"number": 9000, "name": "tcp", "protocol": "TCP"}, tls={"httpsRedirect": True})),
         "spec.servers[0].tls", "cannot have TLS settings for non HTTPS/TLS ports")


@pytest.mark.parametrize(("tls", "field", "phrase"), [
    ({"mode": "SIMPLE", "privateKey": "/k.pem"}, "spec.servers[0].tls.serverCertificate", "SIMPLE TLS requires a server certificate"),
    ({"mode": "SIMPLE", "serverCertificate": "/c.pem"}, "spec.servers[0].tls.privateKey",
     "SIMPLE TLS requires a private key"),
    ({"mode": "MUTUAL", "serverCertificate": "/c.pem", "privateKey": "/k.pem"}, "spec.servers[0].tls.caCertificates",
     "MUTUAL TLS requires a client CA bundle"),
    ({"mode": "ISTIO_MUTUAL", "credentialName": "c"}, "spec.servers[0].tls.credentialName",
     "ISTIO_MUTUAL TLS cannot have associated credentialName"),
    ({"mode": "ISTIO_MUTUAL", "privateKey": "/k.pem"}, "spec.servers[0].tls.privateKey",
     "ISTIO_MUTUAL TLS cannot have associated private key"),
    ({"mode": "SIMPLE", "credentialName": "c", "serverCertificate": "/c.pem", "privateKey": "/k.pem"},
     "spec.servers[0].tls", "only one of credentialName"),
    ({"mode": "MUTUAL", "credentialName": "c", "caCrl": "/crl.pem"}, "spec.servers[0].tls.caCrl",
     "CRL is not supported with credentialName"),
    ({"mode": "SIMPLE", "credentialName": "Not_A_Name"}, "spec.servers[0].tls.credentialName", "not a Secret name"),
    ({"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "TLSV1_4"}, "spec.servers[0].tls.minProtocolVersion",
     "TLSV1_3"),
    ({"mode": "STRICT"}, "spec.servers[0].tls.mode", "SIMPLE"),
])
def test_tls(tls: dict[str, Any], field: str, phrase: str) -> None:
    only(gw(https(tls)), field, phrase)


def test_gateway_name_is_a_dns_label() -> None:
    only(gw(server(), name="ingress.public"), "metadata.name", "invalid gateway name")


def test_selector_labels() -> None:
    only(gw(server(), selector={"bad key!": "x"}), "spec.selector.bad key!", "invalid label key")


def test_secret_data_must_be_base64_and_never_echoed() -> None:
    errors = _errors({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cert", "namespace": "istio-system"},
                      "data": {"tls.key": "not base64 TOP-SECRET!"}})
    only(errors, "data", "data.tls.key is not valid base64")
    assert "TOP-SECRET" not in json.dumps(errors)


def test_secret_keeps_its_bytes_out_of_dumps() -> None:
    doc = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": "cert", "namespace": "istio-system"},
           "data": {"tls.crt": "Y2VydA=="}, "stringData": {"tls.key": "TOP-SECRET"}}
    (parsed,) = parse_text(json.dumps(doc), FILE, is_json=True).documents
    secret = parsed.resource
    assert secret is not None and parsed.errors == ()
    assert secret.values() == {"tls.crt": b"cert", "tls.key": b"TOP-SECRET"}  # type: ignore[attr-defined]
    for shown in (repr(secret), str(secret), json.dumps(secret.model_dump()), secret.model_dump_json()):
        assert "TOP-SECRET" not in shown and "Y2VydA" not in shown, shown
