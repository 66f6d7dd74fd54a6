"""The user's flow with the Helm chart, against the real test cluster and the real helm:

``helm install meshpilot charts/meshpilot -n istio-system --create-namespace``, then
meshpilot runs as the chart's ServiceAccount. There is no kubelet to run its pod, so
``meshpilot serve`` runs here as a local process with that ServiceAccount's token: once
through a kubeconfig (``--kubeconfig``), once exactly as in the pod (``--in-cluster``, the
token and CA mounted at the standard path in a mount namespace of its own). The chart's
RBAC is enough (ready, and it sees what kubectl applies) and no more than that.

``test_the_users_flow`` is the whole of it: the chart's pod made Ready at an address where
the local meshpilot serves the webhook, the chart's webhook configuration installed with
``helm upgrade --set webhook.caBundle``, Envoy in front of two versions of a service, and
then a VirtualService 80/20 measured through Envoy, an invalid one refused by the webhook
at ``kubectl apply``, the default back after a delete, and an API server restart that loses
no update.
"""

from __future__ import annotations

import base64
import collections
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import EnvoyProcess, LoopbackAllocator, MeshpilotServer, UpstreamServer, eventually, request
from harness.kube import (
    APISERVER_IP,
    APISERVER_PORT,
    REPO_ROOT,
    KubeCluster,
    _kubeconfig,
    kube_meshpilot,
    pod_manifest,
    run,
    track,
)

from xds_server.app.verbs.proxy_status import type_status
from xds_server.local.bootstrap import build_bootstrap
from xds_server.sources.kubernetes import WATCHED

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


def the_pods(cluster: KubeCluster) -> list[dict[str, Any]]:
    """The Pods of the chart's Deployment (two replicas by default), by name."""
    pods = cluster.get("pods", "-n", NS, "-l", "app.kubernetes.io/name=meshpilot")["items"]
    return sorted(pods, key=lambda p: str(p["metadata"]["name"]))


def the_pod(cluster: KubeCluster) -> dict[str, Any]:
    """The first Pod of the chart's Deployment, once both replicas' Pods exist."""
    pods = the_pods(cluster)
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    return pods[0]


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
    # Every kind listed, every CRD installed: no failure. The one warning allowed is an earlier
    # test's VirtualService routing to its endpoint-less Service (its namespace may still be there).
    assert status == 200 and [e for e in errors if not _no_endpoints_warning(e)] == [], errors
    credential = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "reviews-cred", "namespace": ns},
                  "type": "kubernetes.io/tls", "stringData": {"tls.crt": "c", "tls.key": "k"}}
    cluster.apply(_service(ns), _vs(ns), _peer_authentication(ns), credential)
    wanted = {f"Service {ns}/reviews", f"VirtualService {ns}/reviews", f"PeerAuthentication {ns}/default",
              f"Secret {ns}/reviews-cred", "Service default/kubernetes"}
    eventually(lambda: wanted <= set(server.get("/debug/world")[1]["resources"]), timeout=30,
               message="/debug/world shows what kubectl applied")
    assert server.get("/healthz")[0] == 200
    # The applied Service has no pods: the "cannot work" check says so, on the VirtualService.
    mine = [e for e in server.get("/debug/errors")[1] if e["resource"].endswith(f" {ns}/reviews")]
    assert [(e["resource"], e["field"], e["severity"]) for e in mine] == [
        (f"VirtualService {ns}/reviews", "spec.http[0].route[0].destination.host", "warning")], mine
    assert all(_no_endpoints_warning(e) for e in server.get("/debug/errors")[1])


def _no_endpoints_warning(e: dict[str, Any]) -> bool:
    return e["severity"] == "warning" and "has no endpoints" in e["message"]


def test_helm_install_creates_the_chart(installed: KubeCluster) -> None:
    cluster = installed
    (release,) = json.loads(cluster.helm("list", "-n", NS, "-o", "json").stdout)
    assert (release["name"], release["status"], release["app_version"]) == ("meshpilot", "deployed", "0.1.0")
    notes = cluster.helm("get", "notes", "meshpilot", "-n", NS).stdout
    assert "kubectl -n istio-system rollout status deployment/meshpilot" in notes
    assert "meshpilot.istio-system.svc:15010" in notes and "meshpilot.istio-system.svc:15012" in notes
    assert "the CA root Secret meshpilot-ca" in " ".join(notes.split())
    crds = {c["metadata"]["name"] for c in cluster.get("crds", "-l", "app.kubernetes.io/part-of=meshpilot")["items"]}
    assert {"virtualservices.networking.istio.io", "peerauthentications.security.istio.io",
            "authorizationpolicies.security.istio.io", "requestauthentications.security.istio.io"} <= crds
    assert len(crds) == len([k for k in WATCHED if k.crd])
    assert cluster.get("serviceaccount", SA, "-n", NS)["metadata"]["name"] == SA
    service = cluster.get("service", "meshpilot", "-n", NS)
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [15010, 15012, 15014, 15017]
    # The disruption budget covers the Deployment's pods (the API server counts them for it).
    pdb = cluster.get("poddisruptionbudget", "meshpilot", "-n", NS)
    assert pdb["spec"]["minAvailable"] == 1
    assert eventually(lambda: cluster.get("poddisruptionbudget", "meshpilot", "-n", NS)["status"].get(
        "expectedPods"), timeout=30, message="the budget counts the Deployment's pods") == 2

    # The controllers take the Deployment to a Pod running as the ServiceAccount (no kubelet starts it).
    pod = eventually(lambda: the_pod(cluster), timeout=30, message="the Deployment's pod is created")
    assert pod["spec"]["serviceAccountName"] == SA
    assert pod["spec"]["containers"][0]["args"][:2] == ["serve", "--in-cluster"]


def test_serve_with_the_service_accounts_token_is_ready_and_sees_applied_config(
    request: pytest.FixtureRequest, installed: KubeCluster, sa_kubeconfig: Path, kube_namespace: str,
    tmp_path: Path,
) -> None:
    # Its CA root Secret and Lease in the chart's namespace, where its Role lets it write them.
    server = kube_meshpilot(sa_kubeconfig, workdir=tmp_path, extra_args=("--ca-secret-namespace", NS))
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
    # A private /run with the token, CA and namespace where the kubelet mounts them, then meshpilot
    # unmodified (the namespace file places its CA root Secret and Lease).
    mount = (f'mount -t tmpfs -o size=1m tmpfs /run && mkdir -p {SA_DIR} && cp "$1" {SA_DIR}/token '
             f'&& cp "$2" {SA_DIR}/ca.crt && echo -n {NS} > {SA_DIR}/namespace && shift 2 && exec "$@"')
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
    ("list", "secrets", True),  # gateway credentials
    ("watch", "secrets", True),
    ("create", "secrets", False),
    ("update", "secrets", False),
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


@pytest.mark.parametrize("verb, resource, allowed", [
    ("create", "leases.coordination.k8s.io", True),
    ("get", "leases.coordination.k8s.io/meshpilot-leader", True),
    ("update", "leases.coordination.k8s.io/meshpilot-leader", True),
    ("update", "leases.coordination.k8s.io/another", False),
    ("delete", "leases.coordination.k8s.io/meshpilot-leader", False),
    ("create", "secrets", True),  # the CA root Secret (create cannot be limited to a name)
    ("watch", "secrets/meshpilot-ca", True),
    ("update", "secrets/meshpilot-ca", False),
    ("delete", "secrets/meshpilot-ca", False),
    ("patch", "secrets", False),
])
def test_in_its_own_namespace_it_writes_only_its_lease_and_root_secret(
    installed: KubeCluster, sa_kubeconfig: Path, verb: str, resource: str, allowed: bool
) -> None:
    done = as_meshpilot(installed, sa_kubeconfig, "auth", "can-i", verb, resource, "-n", NS)
    assert (done.stdout.strip(), done.returncode) == (("yes", 0) if allowed else ("no", 1)), done.stderr


def test_the_token_cannot_write_secrets(installed: KubeCluster, sa_kubeconfig: Path) -> None:
    # A real request, not only a review: the API server refuses it outside the chart's namespace.
    done = as_meshpilot(installed, sa_kubeconfig, "create", "secret", "generic", "planted", "-n", "default",
                        "--from-literal=k=v")
    assert done.returncode != 0
    assert 'cannot create resource "secrets"' in done.stderr and "system:serviceaccount:istio-system:meshpilot" in \
        done.stderr, done.stderr
    # While what meshpilot reads, it can.
    listed = as_meshpilot(installed, sa_kubeconfig, "get", "virtualservices", "-A", "-o", "json")
    assert listed.returncode == 0, listed.stderr


# ---------------------------------------------------------------- the user's flow, end to end

PORT, TARGET = 9080, 8080
#: 400 requests split 80/20 at random: the v2 share's standard deviation is 2 points, so
#: 20 % +- 8 points (4 standard deviations) fails by chance about once in 16,000 runs.
SPLIT_REQUESTS, SPLIT_TOLERANCE = 400, 0.08
REGEX_ERROR = "spec.http[0].match[0].uri.regex: RE2 cannot compile 'a(b'"


def _reviews_vs(ns: str, weights: dict[str, int], regex: str | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {"route": [{"destination": {"host": "reviews", "subset": v}, "weight": w}
                                       for v, w in weights.items()]}
    if regex is not None:
        route["match"] = [{"uri": {"regex": regex}}]
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": ns}, "spec": {"hosts": ["reviews"], "http": [route]}}


def _versions(client_ip: str, n: int) -> collections.Counter[str]:
    def one() -> str:
        status, body = request(client_ip, PORT, "/", "reviews")
        return str(body.get("version")) if status == 200 and isinstance(body, dict) else f"HTTP {status}"

    return collections.Counter(one() for _ in range(n))


@pytest.fixture
def webhook_ca_bundle(installed: KubeCluster) -> Iterator[Callable[[bytes], None]]:
    """``install(root_pem)``: ``helm upgrade`` with the CA bundle, which adds the chart's
    ValidatingWebhookConfiguration; removed again at the end (it covers every namespace with
    failurePolicy Fail, and later tests apply Istio kinds with no meshpilot running)."""
    set_once: list[bool] = []

    def install(root: bytes) -> None:
        installed.helm("upgrade", "meshpilot", str(CHART), "-n", NS, "--reuse-values",
                       "--set", f"webhook.caBundle={base64.b64encode(root).decode()}")
        set_once.append(True)

    yield install
    if set_once:
        installed.helm("upgrade", "meshpilot", str(CHART), "-n", NS, "--reuse-values", "--set", "webhook.caBundle=")


def test_the_users_flow(
    request: pytest.FixtureRequest, installed: KubeCluster, sa_kubeconfig: Path, kube_namespace: str,
    webhook_ca_bundle: Callable[[bytes], None], start_envoy: Callable[..., EnvoyProcess],
    start_upstream: Callable[..., UpstreamServer], loopback: LoopbackAllocator, tmp_path: Path,
) -> None:
    cluster, ns = installed, kube_namespace
    # The workloads: a Service, two Pods whose apps answer on their 10.244 addresses.
    ips = {v: cluster.pod_ip() for v in ("v1", "v2")}
    apps = {v: start_upstream(ip, TARGET, service="reviews", version=v, pod=f"reviews-{v}") for v, ip in ips.items()}
    cluster.apply(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": ns},
         "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": PORT, "targetPort": TARGET}]}},
        *(pod_manifest(f"reviews-{v}", ns, {"app": "reviews", "version": v}, ports=(TARGET,)) for v in ips),
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
         "metadata": {"name": "reviews", "namespace": ns},
         "spec": {"host": "reviews", "subsets": [{"name": v, "labels": {"version": v}} for v in ips]}},
    )
    for v, ip in ips.items():
        cluster.set_pod_ready(ns, f"reviews-{v}", ip)

    # meshpilot as the chart's pod: its ServiceAccount's token, and the webhook on the pod's
    # address, which the API server reaches through the chart's Service once the pod is Ready.
    pod_ip = cluster.pod_ip()
    server = kube_meshpilot(sa_kubeconfig, workdir=tmp_path / "meshpilot", extra_args=(
        "--webhook-address", f"{pod_ip}:15017", "--webhook-san", f"meshpilot.{NS}.svc", "--ca-secret-namespace", NS))
    track(request, server)
    server.start(timeout=60)
    try:
        chart_pod = eventually(lambda: the_pod(cluster), timeout=30)["metadata"]["name"]
        cluster.bind_pod(NS, chart_pod)
        cluster.set_pod_ready(NS, chart_pod, pod_ip)
        # As the README says: `meshpilot ca trust-bundle` of the pod's CA state.
        bundle = run([sys.executable, "-m", "xds_server.app.cli", "ca", "trust-bundle", "--ca-state",
                      str(server.ca_state)]).stdout
        assert bundle.startswith("-----BEGIN CERTIFICATE-----")
        webhook_ca_bundle(bundle.encode())

        client_ip = loopback.allocate()
        start_envoy(build_bootstrap(xds_address=server.xds_address, proxy_ip=client_ip, namespace=ns,
                                    pod="productpage", labels={"app": "productpage"}), wait="live", name="client")
        eventually(lambda: set(_versions(client_ip, 20)) == {"v1", "v2"}, timeout=30,
                   message="with no VirtualService both versions serve")

        # An invalid VirtualService is refused at kubectl apply, in meshpilot's words.
        def refused() -> None:  # the API server picks up a new webhook configuration within seconds
            out = cluster.kubectl("apply", "-f", "-", input=json.dumps(_reviews_vs(ns, {"v1": 100}, "a(b")),
                                  check=False)
            assert out.returncode != 0 and REGEX_ERROR in out.stderr, out.stdout + out.stderr
            assert 'admission webhook "validation.meshpilot.io" denied the request' in out.stderr, out.stderr

        eventually(refused, timeout=30, interval=0.5)
        assert cluster.kubectl("get", "virtualservice", "reviews", "-n", ns, check=False).returncode != 0

        # 80/20, measured through Envoy once it has ACKed the new routes.
        def routes() -> tuple[str, str]:
            (stream,) = server.get("/debug/syncz")[1]
            return stream["types"]["rds"].get("sent_version"), type_status(stream["types"]["rds"])

        before, _ = routes()
        cluster.apply(_reviews_vs(ns, {"v1": 80, "v2": 20}))
        eventually(lambda: (r := routes())[0] != before and r[1] == "SYNCED", timeout=30,
                   message="the client's sidecar ACKs the routes of the VirtualService")
        split = _versions(client_ip, SPLIT_REQUESTS)
        assert set(split) == {"v1", "v2"}, split
        assert abs(split["v2"] / SPLIT_REQUESTS - 0.2) <= SPLIT_TOLERANCE, split

        # Deleted: back to the default, both versions.
        cluster.kubectl("delete", "virtualservice", "reviews", "-n", ns)
        eventually(lambda: f"VirtualService {ns}/reviews" not in server.get("/debug/world")[1]["resources"],
                   timeout=30)
        default = eventually(lambda: (c := _versions(client_ip, 40)) and min(c["v1"], c["v2"]) >= 10 and c,
                             timeout=30, message="round robin over both versions again")
        assert set(default) == {"v1", "v2"}, default

        # The API server restarts; traffic keeps flowing meanwhile, and the changes made right
        # after it is back (while meshpilot may still be backing off) all arrive.
        assert cluster.apiserver is not None
        cluster.apiserver.stop(10)
        assert set(_versions(client_ip, 20)) == {"v1", "v2"}, "the last config keeps serving"
        cluster.start_apiserver()
        cluster.apply(_reviews_vs(ns, {"v1": 100}))
        cluster.apply(_reviews_vs(ns, {"v2": 100}))
        eventually(lambda: _versions(client_ip, 20) == collections.Counter({"v2": 20}), timeout=60,
                   message="the last edit arrives")
        eventually(lambda: server.get("/healthz")[0] == 200, timeout=40, message="healthy again")
        assert apps["v2"].requests >= 20
        # The webhook still answers after the restart.
        eventually(refused, timeout=30, interval=0.5)
        assert [e for e in server.get("/debug/errors")[1] if e["severity"] == "error"] == []
    finally:
        server.stop()
