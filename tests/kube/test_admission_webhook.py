"""The validating admission webhook, called by the real API server on ``kubectl apply``.

``meshpilot serve --webhook-address POD_IP:PORT`` serves it with a certificate from its
mesh CA; a Service + EndpointSlice point at it (the API server routes to the slice's
address: ``--enable-aggregator-routing``) and a ValidatingWebhookConfiguration carries the
mesh CA's root as its caBundle. An invalid VirtualService is refused with the message and
field file mode gives; a valid one is admitted.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import MeshpilotServer, eventually
from harness.kube import KubeCluster, kube_meshpilot, track, webhook_service

from ca import CertificateAuthority
from xds_server.local.processes import free_port

#: Not 443: the API server's own Service has it, and meshpilot would warn of the clash.
SERVICE_PORT = 9443
REGEX_ERROR = "spec.http[0].match[0].uri.regex: RE2 cannot compile 'a(b'"


def virtual_service(ns: str, name: str, regex: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"hosts": ["reviews"], "http": [{"match": [{"uri": {"regex": regex}}],
                                                    "route": [{"destination": {"host": "reviews"}}]}]}}


def apply(cluster: KubeCluster, manifest: dict[str, Any]) -> Any:
    return cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)


@pytest.fixture
def webhook(
    request: pytest.FixtureRequest, kube_cluster: KubeCluster, kube_namespace: str, istio_crds: None,
    tmp_path: Path,
) -> Iterator[MeshpilotServer]:
    cluster, ns = kube_cluster, kube_namespace
    ip = cluster.pod_ip()
    port = free_port(ip)
    server = kube_meshpilot(cluster.kubeconfig, workdir=tmp_path / "meshpilot", extra_args=(
        "--webhook-address", f"{ip}:{port}", "--webhook-san", f"meshpilot.{ns}.svc"))
    track(request, server)
    server.start(timeout=60)
    name = f"meshpilot-{ns}"
    delete_service = webhook_service(cluster, ns, ip, port, service_port=SERVICE_PORT)
    try:
        bundle = CertificateAuthority.load_or_create(server.ca_state).trust_bundle()
        cluster.apply({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "validation.meshpilot.io",
                "clientConfig": {"service": {"name": "meshpilot", "namespace": ns, "path": "/validate",
                                             "port": SERVICE_PORT},
                                 "caBundle": base64.b64encode(bundle).decode()},
                "rules": [{"apiGroups": ["networking.istio.io"], "apiVersions": ["*"],
                           "operations": ["CREATE", "UPDATE"], "resources": ["virtualservices"]}],
                # Only this test's namespace: other tests share the cluster.
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }],
        })
        yield server
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found", check=False)
        delete_service()
        server.stop()


def test_kubectl_apply_of_an_invalid_virtual_service_is_refused_with_meshpilots_message(
    kube_cluster: KubeCluster, kube_namespace: str, webhook: MeshpilotServer
) -> None:
    cluster, ns = kube_cluster, kube_namespace

    def refused() -> None:
        # The API server picks up a new webhook configuration within a second or so.
        out = apply(cluster, virtual_service(ns, "probe", "a(b"))
        assert out.returncode != 0 and REGEX_ERROR in out.stderr, out.stdout + out.stderr

    eventually(refused, timeout=30, interval=0.5)
    out = apply(cluster, virtual_service(ns, "bad", "a(b"))
    assert out.returncode != 0
    assert 'admission webhook "validation.meshpilot.io" denied the request' in out.stderr, out.stderr
    assert REGEX_ERROR in out.stderr
    missing = cluster.kubectl("get", "virtualservice", "bad", "-n", ns, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr

    ok = apply(cluster, virtual_service(ns, "good", "^/api/.*"))
    assert ok.returncode == 0, ok.stderr
    assert cluster.get("virtualservice", "good", "-n", ns)["spec"]["hosts"] == ["reviews"]
