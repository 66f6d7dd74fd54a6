"""Sidecar injection and identity from the pod's token, against the real API server.

One ``meshpilot serve --kubeconfig`` serves the webhooks (``/inject`` beside ``/validate``)
and TLS xDS. The chart's own MutatingWebhookConfiguration (rendered by helm, pointed at this
test's Service and limited to this test's namespaces) registers it, so its selectors are
what is tested:

* a Pod applied in a labelled namespace is stored with the init containers and the sidecar;
  opted-out pods (annotation or label), unlabelled namespaces and ``istio-injection=disabled``
  are left alone; a pod opting in by label in an unlabelled namespace is injected;
* the stored pod's bootstrap init container, run as the kubelet would (its env from the
  downward API, its token projected for the pod with audience ``istio-ca``), writes a
  bootstrap with which a real Envoy gets the certificate of the pod's service account;
* SDS believes the TokenReview, never the node metadata: another service account claimed,
  a token for another audience and the token of a deleted pod get no certificate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from harness import EnvoyProcess, MeshpilotServer, eventually
from harness.kube import REPO_ROOT, KubeCluster, kube_meshpilot, pod_manifest, track, webhook_service

from ca import CertificateAuthority
from tests.xds_server.test_sds import Client, secrets_of, verify
from xds_server.admission import inject
from xds_server.local.bootstrap import read_downward_labels
from xds_server.local.processes import free_port, http_request

SERVICE_PORT = 9443
CHART = REPO_ROOT / "charts" / "meshpilot"


@pytest.fixture
def other_namespaces(kube_cluster: KubeCluster, kube_namespace: str) -> Iterator[tuple[str, str]]:
    """Two more namespaces: one unlabelled, one labelled istio-injection=disabled."""
    names = (f"{kube_namespace}-plain", f"{kube_namespace}-off")
    for name in names:
        kube_cluster.create_namespace(name)
    kube_cluster.kubectl("label", "namespace", names[1], "istio-injection=disabled")
    yield names
    for name in names:
        kube_cluster.kubectl("delete", "pods", "--all", "-n", name, "--grace-period=0", "--force", check=False)
        kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def chart_injector(cluster: KubeCluster, ns: str, bundle: bytes, namespaces: list[str]) -> dict[str, Any]:
    """The chart's MutatingWebhookConfiguration, pointed at this test's Service, its
    namespace selectors also limited to ``namespaces`` (other tests share the cluster)."""
    out = cluster.helm("template", "meshpilot", str(CHART), "--namespace", "istio-system",
                       "--set", f"webhook.caBundle={base64.b64encode(bundle).decode()}").stdout
    (config,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "MutatingWebhookConfiguration"]
    config["metadata"] = {"name": f"meshpilot-injector-{ns}"}
    for hook in config["webhooks"]:
        hook["clientConfig"]["service"].update(name="meshpilot", namespace=ns, port=SERVICE_PORT)
        hook["namespaceSelector"]["matchExpressions"].append(
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces})
    return dict(config)


@pytest.fixture
def meshpilot(
    request: pytest.FixtureRequest, kube_cluster: KubeCluster, kube_namespace: str,
    other_namespaces: tuple[str, str], tmp_path: Path,
) -> Iterator[MeshpilotServer]:
    cluster, ns = kube_cluster, kube_namespace
    ip = cluster.pod_ip()
    port = free_port(ip)
    tls_port = free_port("127.0.0.1")
    server = kube_meshpilot(cluster.kubeconfig, workdir=tmp_path / "meshpilot", extra_args=(
        "--webhook-address", f"{ip}:{port}", "--webhook-san", f"meshpilot.{ns}.svc",
        # Proxies in this test reach the TLS port where the test runs it.
        "--inject-xds-address", f"127.0.0.1:{tls_port}", "--token-review-ttl", "1"))
    # kube_meshpilot keeps the harness's argv: set the TLS port the injected pods are told.
    argv = server._child.argv
    argv[argv.index("--xds-tls-address") + 1] = f"127.0.0.1:{tls_port}"
    server.tls_port = tls_port
    track(request, server)
    server.start(timeout=60)
    delete_service = webhook_service(cluster, ns, ip, port, service_port=SERVICE_PORT)
    config = chart_injector(cluster, ns, CertificateAuthority.load_or_create(server.ca_state).trust_bundle(),
                            [ns, *other_namespaces])
    try:
        cluster.apply(config)
        yield server
    finally:
        cluster.kubectl("delete", "mutatingwebhookconfiguration", config["metadata"]["name"], "--ignore-not-found",
                        check=False)
        delete_service()
        server.stop()


def containers(pod: dict[str, Any]) -> tuple[list[str], list[str]]:
    spec = pod["spec"]
    return [c["name"] for c in spec.get("initContainers") or []], [c["name"] for c in spec["containers"]]


def create_pod(cluster: KubeCluster, ns: str, name: str, *, labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None, service_account: str = "default") -> dict[str, Any]:
    manifest = pod_manifest(name, ns, {"app": name, **(labels or {})}, service_account=service_account)
    if annotations:
        manifest["metadata"]["annotations"] = annotations
    cluster.apply(manifest)
    return dict(cluster.get("pod", name, "-n", ns))


INJECTED = (["istio-init", "meshpilot-bootstrap"], ["app", "istio-proxy"])
PLAIN: tuple[list[str], list[str]] = ([], ["app"])


def test_pods_of_labelled_namespaces_are_stored_with_the_sidecar_and_opted_out_pods_are_not(
    kube_cluster: KubeCluster, kube_namespace: str, other_namespaces: tuple[str, str], meshpilot: MeshpilotServer,
) -> None:
    cluster, ns = kube_cluster, kube_namespace
    plain_ns, off_ns = other_namespaces
    cluster.kubectl("label", "namespace", ns, "istio-injection=enabled")

    probes = iter(range(1000))

    def registered() -> None:  # the API server picks up a new webhook configuration within a second or so
        name = f"probe{next(probes)}"
        pod = create_pod(cluster, ns, name)
        cluster.kubectl("delete", "pod", name, "-n", ns, "--grace-period=0", "--force", check=False)
        assert containers(pod) == INJECTED

    eventually(registered, timeout=30, interval=0.5)

    pod = create_pod(cluster, ns, "reviews", annotations={
        inject.EXCLUDE_OUTBOUND: "5432", inject.PROXY_CPU: "250m", inject.PROXY_MEMORY_LIMIT: "256Mi"})
    assert containers(pod) == INJECTED
    proxy = pod["spec"]["containers"][1]
    assert proxy["image"] == inject.DEFAULT_PROXY_IMAGE
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"}
    assert proxy["resources"] == {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    script = pod["spec"]["initContainers"][0]["command"][2]
    assert "--dport 5432 -j RETURN" in script and "--uid-owner 1337 -j RETURN" in script
    (token,) = [v for v in pod["spec"]["volumes"] if v["name"] == inject.TOKEN_VOLUME]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "istio-ca"
    assert json.loads(pod["metadata"]["annotations"][inject.STATUS])["containers"] == ["istio-proxy"]

    # Opting out: by annotation (seen by meshpilot) and by label (the objectSelector).
    assert containers(create_pod(cluster, ns, "anno-out", annotations={inject.INJECT: "false"})) == PLAIN
    assert containers(create_pod(cluster, ns, "label-out", labels={inject.INJECT: "false"})) == PLAIN
    # Unlabelled namespace: only a pod that opts in by label.
    assert containers(create_pod(cluster, plain_ns, "plain")) == PLAIN
    assert containers(create_pod(cluster, plain_ns, "opted-in", labels={inject.INJECT: "true"})) == INJECTED
    # istio-injection=disabled wins over the pod's opt-in.
    assert containers(create_pod(cluster, off_ns, "refused", labels={inject.INJECT: "true"})) == PLAIN
    # Our own label, and istio.io/rev, enable a namespace as istio-injection does.
    cluster.kubectl("label", "namespace", plain_ns, "meshpilot.io/inject=enabled")
    assert containers(create_pod(cluster, plain_ns, "ours")) == INJECTED


# ---------------------------------------------------------------- identity from the token


def token_for(cluster: KubeCluster, ns: str, sa: str, pod: str, audience: str = "istio-ca") -> str:
    return cluster.kubectl("create", "token", sa, "-n", ns, "--audience", audience, "--duration", "1h",
                           "--bound-object-kind", "Pod", "--bound-object-name", pod).stdout.strip()


def run_bootstrap_container(pod: dict[str, Any], pod_ip: str, token: str, workdir: Path) -> dict[str, Any]:
    """The injected ``meshpilot-bootstrap`` init container, run as the kubelet would: its env
    resolved from the pod, its volumes (labels, token, output) as directories here."""
    (container,) = [c for c in pod["spec"]["initContainers"] if c["name"] == inject.BOOTSTRAP_CONTAINER]
    env = dict(os.environ)
    fields = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"],
              "status.podIP": pod_ip, "spec.serviceAccountName": pod["spec"]["serviceAccountName"]}
    for var in container["env"]:
        env[var["name"]] = var["value"] if "value" in var else fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    mounts = {m["mountPath"]: workdir / m["name"] for m in container["volumeMounts"]}
    for path in mounts.values():
        path.mkdir(parents=True, exist_ok=True)
    labels = pod["metadata"]["labels"]
    (mounts[inject.PODINFO_DIR] / "labels").write_text("".join(f'{k}="{v}"\n' for k, v in sorted(labels.items())))
    (mounts[inject.TOKEN_DIR] / "istio-token").write_text(token)

    def local(arg: str) -> str:
        for var in ("POD_IP", "POD_NAMESPACE", "POD_NAME", "SERVICE_ACCOUNT"):
            arg = arg.replace(f"$({var})", env[var])
        for mount, path in mounts.items():
            arg = arg.replace(mount, str(path))
        return arg

    argv = [sys.executable, "-m", "xds_server.app.cli", *[local(a) for a in container["args"]]]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert read_downward_labels((mounts[inject.PODINFO_DIR] / "labels").read_text()) == labels
    return dict(json.loads((mounts[inject.ENVOY_DIR] / "envoy.json").read_text()))


def test_an_injected_pods_envoy_gets_the_certificate_of_its_service_account(
    kube_cluster: KubeCluster, kube_namespace: str, meshpilot: MeshpilotServer,
    start_envoy: Callable[..., EnvoyProcess], tmp_path: Path,
) -> None:
    cluster, ns = kube_cluster, kube_namespace
    cluster.kubectl("create", "serviceaccount", "reviews", "-n", ns)
    cluster.kubectl("label", "namespace", ns, "istio-injection=enabled")
    pod = eventually(lambda: _injected(create_pod(cluster, ns, "reviews-v1", service_account="reviews")),
                     timeout=30, interval=0.5)
    pod_ip = cluster.pod_ip()
    bootstrap = run_bootstrap_container(pod, pod_ip, token_for(cluster, ns, "reviews", "reviews-v1"), tmp_path)
    assert bootstrap["node"]["metadata"]["SERVICE_ACCOUNT"] == "reviews"

    envoy = start_envoy(bootstrap, wait="live")
    # The kubelet's probe: the health listener on the pod IP answers once Envoy is live.
    code, _ = envoy_health(pod_ip)
    assert code == 200

    def has_certificate() -> str:
        certs = json.loads(envoy.admin_get("/certs"))["certificates"]
        uris = [san["uri"] for c in certs for chain in c.get("cert_chain", []) for san in chain.get(
            "subject_alt_names", []) if "uri" in san]
        assert uris, certs
        return str(uris[0])

    assert eventually(has_certificate, timeout=30) == f"spiffe://cluster.local/ns/{ns}/sa/reviews"


def envoy_health(pod_ip: str) -> tuple[int, bytes]:
    status, body, _ = http_request(pod_ip, inject.HEALTH_PORT, "/healthz/ready")
    return status, body


def _injected(pod: dict[str, Any]) -> dict[str, Any]:
    assert containers(pod) == INJECTED
    return pod


async def ask(server: MeshpilotServer, token: str, ns: str, sa: str) -> Any:
    root = CertificateAuthority.load_or_create(server.ca_state).trust_bundle()
    channel = grpc.aio.secure_channel(f"127.0.0.1:{server.tls_port}", grpc.ssl_channel_credentials(root))
    client = Client(channel, token=token)
    try:
        return secrets_of(await client.ask_secrets(ns, sa, "10.244.200.1"))
    finally:
        client.cancel()
        await channel.close()


async def test_sds_believes_the_token_review_not_the_node_metadata(
    kube_cluster: KubeCluster, kube_namespace: str, meshpilot: MeshpilotServer,
) -> None:
    cluster, ns = kube_cluster, kube_namespace
    for sa in ("a", "b"):
        cluster.kubectl("create", "serviceaccount", sa, "-n", ns)
    create_pod(cluster, ns, "pa", service_account="a", annotations={inject.INJECT: "false"})
    token = token_for(cluster, ns, "a", "pa")

    got = await ask(meshpilot, token, ns, "a")
    assert verify(got["default"], got["ROOTCA"]) == f"spiffe://cluster.local/ns/{ns}/sa/a"
    # The node claims b: refused, as istiod refuses it (not silently given a's).
    assert await ask(meshpilot, token, ns, "b") == {}
    # A token for another audience proves nothing here.
    assert await ask(meshpilot, token_for(cluster, ns, "a", "pa", audience="other"), ns, "a") == {}
    # Garbage is refused without a crash.
    assert await ask(meshpilot, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln", ns, "a") == {}

    log = meshpilot.log_path.read_text()
    assert "identity_mismatch" in log and "invalid_token" in log
    assert token not in log

    # Deleted pod: its bound token stops reviewing as authenticated, once the API server's own
    # cache of successful authentications (10 s) and meshpilot's (1 s here) have expired.
    cluster.kubectl("delete", "pod", "pa", "-n", ns, "--grace-period=0", "--force")
    deleted = time.monotonic()
    while await ask(meshpilot, token, ns, "a"):
        assert time.monotonic() - deleted < 30, "a deleted pod's token still gets a certificate after 30 s"
        await asyncio.sleep(1)
