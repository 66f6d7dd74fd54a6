"""The user's flow with the Helm chart, against the real test cluster and the real helm:

``helm install meshpilot charts/meshpilot -n istio-system --create-namespace``, then
meshpilot runs as the chart's ServiceAccount. There is no kubelet to run its pod, so
``meshpilot serve`` runs here as a local process with that ServiceAccount's token: once
through a kubeconfig (``--kubeconfig``), once exactly as in the pod (``--in-cluster``, the
token and CA mounted at the standard path in a mount namespace of its own). The chart's
RBAC is enough (ready, and it sees what kubectl applies) and no more than that.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import MeshpilotServer, eventually
from harness.kube import (
    APISERVER_IP,
    APISERVER_PORT,
    REPO_ROOT,
    KubeCluster,
    _kubeconfig,
    kube_meshpilot,
    run,
    track,
)

CHART = REPO_ROOT / "charts" / "meshpilot"
NS = "istio-system"
SA = "meshpilot"
#: Where a pod finds its ServiceAccount's token and the cluster's CA.
SA_DIR = "/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def installed(kube_cluster: KubeCluster) -> Iterator[KubeCluster]:
    kube_cluster.helm("install", "meshpilot", str(CHART), "-n", NS, "--create-namespace")
    try:
        yield kube_cluster
    finally:
        kube_cluster.helm("uninstall", "meshpilot", "-n", NS, check=False)
        kube_cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


@pytest.fixture(scope="module")
def sa_token(installed: KubeCluster) -> str:
    """A token of the chart's ServiceAccount, as the kubelet would mount in its pod."""
    return installed.kubectl("create", "token", SA, "-n", NS, "--duration=1h").stdout.strip()


@pytest.fixture(scope="module")
def sa_kubeconfig(installed: KubeCluster, sa_token: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sa") / "meshpilot.kubeconfig"
    path.write_text(json.dumps(_kubeconfig(installed.server, installed.pki["ca.crt"], SA, sa_token)))
    return path


def as_meshpilot(cluster: KubeCluster, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([*cluster.netns.exec_prefix(), str(cluster.bin / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
               check=False)


def _service(ns: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": ns},
            "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]}}


def _vs(ns: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": ns},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}}


def _peer_authentication(ns: str) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": ns}, "spec": {"mtls": {"mode": "STRICT"}}}


def _sees_what_kubectl_applies(cluster: KubeCluster, server: MeshpilotServer, ns: str) -> None:
    status, errors = server.get("/debug/errors")
    assert (status, errors) == (200, []), "every kind listed, every CRD installed: no failure, no warning"
    cluster.apply(_service(ns), _vs(ns), _peer_authentication(ns))
    wanted = {f"Service {ns}/reviews", f"VirtualService {ns}/reviews", f"PeerAuthentication {ns}/default",
              "Service default/kubernetes"}
    eventually(lambda: wanted <= set(server.get("/debug/world")[1]["resources"]), timeout=30,
               message="/debug/world shows what kubectl applied")
    assert server.get("/healthz")[0] == 200
    assert server.get("/debug/errors")[1] == []


def test_helm_install_creates_the_chart(installed: KubeCluster) -> None:
    cluster = installed
    (release,) = json.loads(cluster.helm("list", "-n", NS, "-o", "json").stdout)
    assert (release["name"], release["status"], release["app_version"]) == ("meshpilot", "deployed", "0.1.0")
    notes = cluster.helm("get", "notes", "meshpilot", "-n", NS).stdout
    assert "kubectl -n istio-system rollout status deployment/meshpilot" in notes
    assert "meshpilot.istio-system.svc:15010" in notes and "meshpilot.istio-system.svc:15012" in notes
    crds = {c["metadata"]["name"] for c in cluster.get("crds", "-l", "app.kubernetes.io/part-of=meshpilot")["items"]}
    assert {"virtualservices.networking.istio.io", "peerauthentications.security.istio.io",
            "authorizationpolicies.security.istio.io", "requestauthentications.security.istio.io"} <= crds
    assert len(crds) == 7
    assert cluster.get("serviceaccount", SA, "-n", NS)["metadata"]["name"] == SA
    service = cluster.get("service", "meshpilot", "-n", NS)
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [15010, 15012, 15014, 15017]

    # The controllers take the Deployment to a Pod running as the ServiceAccount (no kubelet starts it).
    def the_pod() -> dict[str, Any]:
        (pod,) = cluster.get("pods", "-n", NS, "-l", "app.kubernetes.io/name=meshpilot")["items"]
        return dict(pod)

    pod = eventually(the_pod, timeout=30, message="the Deployment's pod is created")
    assert pod["spec"]["serviceAccountName"] == SA
    assert pod["spec"]["containers"][0]["args"][:2] == ["serve", "--in-cluster"]


def test_serve_with_the_service_accounts_token_is_ready_and_sees_applied_config(
    request: pytest.FixtureRequest, installed: KubeCluster, sa_kubeconfig: Path, kube_namespace: str,
    tmp_path: Path,
) -> None:
    server = kube_meshpilot(sa_kubeconfig, workdir=tmp_path)
    track(request, server)
    try:
        server.start(timeout=60)  # /healthz 200: every kind listed and watched with the chart's RBAC
        _sees_what_kubectl_applies(installed, server, kube_namespace)
    finally:
        server.stop()


def test_serve_in_cluster_as_in_the_pod(
    request: pytest.FixtureRequest, installed: KubeCluster, sa_token: str, kube_namespace: str, tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text(sa_token)
    # KUBERNETES_SERVICE_HOST/PORT as a pod has them (the API server's advertised address).
    env = {"KUBERNETES_SERVICE_HOST": APISERVER_IP, "KUBERNETES_SERVICE_PORT": str(APISERVER_PORT)}
    server = MeshpilotServer(tmp_path / "unused", workdir=tmp_path, env=env, name="meshpilot-in-cluster")
    argv = server._child.argv
    at = argv.index("--config-dir")
    argv[at : at + 2] = ["--in-cluster"]
    # A private /run with the token and CA where the kubelet mounts them, then meshpilot unmodified.
    mount = (f'mount -t tmpfs -o size=1m tmpfs /run && mkdir -p {SA_DIR} && cp "$1" {SA_DIR}/token '
             f'&& cp "$2" {SA_DIR}/ca.crt && shift 2 && exec "$@"')
    argv[:0] = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh",
                str(token), str(installed.pki["ca.crt"])]
    track(request, server)
    try:
        server.start(timeout=60)
        _sees_what_kubectl_applies(installed, server, kube_namespace)
    finally:
        server.stop()


@pytest.mark.parametrize("verb, resource, allowed", [
    ("list", "services", True),
    ("watch", "pods", True),
    ("list", "namespaces", True),
    ("watch", "endpointslices.discovery.k8s.io", True),
    ("watch", "virtualservices.networking.istio.io", True),
    ("list", "workloadentries.networking.istio.io", True),
    ("watch", "authorizationpolicies.security.istio.io", True),
    ("list", "secrets", False),
    ("get", "configmaps", False),
    ("create", "virtualservices.networking.istio.io", False),
    ("update", "services", False),
    ("delete", "pods", False),
    ("patch", "endpointslices.discovery.k8s.io", False),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", False),
    ("create", "serviceaccounts/token", False),
])
def test_the_service_account_has_least_privilege(
    installed: KubeCluster, sa_kubeconfig: Path, verb: str, resource: str, allowed: bool
) -> None:
    done = as_meshpilot(installed, sa_kubeconfig, "auth", "can-i", verb, resource, "--all-namespaces")
    assert (done.stdout.strip(), done.returncode) == (("yes", 0) if allowed else ("no", 1)), done.stderr


def test_the_token_cannot_read_secrets(installed: KubeCluster, sa_kubeconfig: Path) -> None:
    # A real request, not only a review: the API server refuses it.
    done = as_meshpilot(installed, sa_kubeconfig, "get", "secrets", "-n", NS)
    assert done.returncode != 0
    assert 'cannot list resource "secrets"' in done.stderr and "system:serviceaccount:istio-system:meshpilot" in \
        done.stderr, done.stderr
    # While what meshpilot reads, it can.
    listed = as_meshpilot(installed, sa_kubeconfig, "get", "virtualservices", "-A", "-o", "json")
    assert listed.returncode == 0, listed.stderr
