"""The Helm chart, rendered and linted by the real helm (the built one): no cluster needed.

``helm template`` output is compared with testdata/chart.golden.yaml
(``UPDATE_GOLDEN=1`` regenerates it); the rendered chart is also checked against meshpilot
itself: the container's arguments parse as ``meshpilot serve``'s, and the ClusterRole grants
read access to exactly the kinds the Kubernetes source watches, and the crds/ directory
holds exactly the CRDs of the Istio kinds it watches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.kube import REPO_ROOT, ensure_binaries, run

from xds_server.app import serve
from xds_server.sources.kubernetes import WATCHED

CHART = REPO_ROOT / "charts" / "meshpilot"
GOLDEN = Path(__file__).parent / "testdata" / "chart.golden.yaml"


@pytest.fixture(autouse=True)
def _in_cluster_netns() -> Iterator[None]:
    """Overrides conftest.py's: these tests need only the helm binary, not the cluster."""
    yield


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = ensure_binaries() / "helm"
    home = tmp_path_factory.mktemp("helm")
    env = [f"HELM_{d}_HOME={home / d.lower()}" for d in ("CACHE", "CONFIG", "DATA")]

    def helm(*args: str, check: bool = True) -> Any:
        return run(["env", *env, str(binary), *args], check=check)

    return helm


def render(helm: Any, *args: str) -> str:
    return str(helm("template", "meshpilot", str(CHART), "--namespace", "istio-system", *args).stdout)


def documents(text: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


def test_helm_lint_is_clean(helm: Any) -> None:
    out = helm("lint", str(CHART), "--strict").stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


def test_rendered_chart_matches_the_golden_file(helm: Any) -> None:
    text = render(helm)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "helm template output changed (UPDATE_GOLDEN=1 regenerates the golden file)"
    assert set(documents(text)) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                                    "Service", "Deployment", "ConfigMap", "PodDisruptionBudget"}


def test_the_grafana_dashboard_ships_as_a_configmap_grafanas_sidecar_loads(helm: Any) -> None:
    configmap = documents(render(helm))["ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "meshpilot.json").read_text())
    assert json.loads(configmap["data"]["meshpilot.json"]) == shipped and shipped["panels"]
    assert "ConfigMap" not in documents(render(helm, "--set", "grafana.dashboards.enabled=false"))


def test_the_container_runs_meshpilot_serve_in_cluster_on_the_service_ports(helm: Any) -> None:
    docs = documents(render(helm, "--set", "logLevel=debug"))
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["meshpilot"]
    # The arguments are ones `meshpilot serve` accepts (a renamed flag fails here, not in a pod).
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(container["args"][1:])
    assert container["args"][0] == "serve"
    assert args.in_cluster and args.kubeconfig is None and args.config_dir is None
    assert (args.xds_address, args.xds_tls_address, args.http_address) == (
        "0.0.0.0:15010", "0.0.0.0:15012", "0.0.0.0:15014")
    assert args.log_level == "debug"
    assert "meshpilot.istio-system.svc" in args.xds_tls_san
    # The CA state is on the pod's writable volume (the root filesystem is read-only).
    (mount,) = container["volumeMounts"]
    assert str(args.ca_state).startswith(mount["mountPath"] + "/")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"] == "meshpilot"

    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = {p["port"]: named[p["targetPort"]] for p in docs["Service"]["spec"]["ports"]}
    assert service == {15010: 15010, 15012: 15012, 15014: 15014, 15017: 15017}
    assert args.webhook_address == "0.0.0.0:15017" and args.webhook_san == ["meshpilot.istio-system.svc"]
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items() >= \
        docs["Service"]["spec"]["selector"].items()


def test_the_webhook_configuration_needs_the_ca_bundle_and_calls_the_service(helm: Any) -> None:
    assert "ValidatingWebhookConfiguration" not in documents(render(helm))
    docs = documents(render(helm, "--set", "webhook.caBundle=Zm9v"))
    (hook,) = docs["ValidatingWebhookConfiguration"]["webhooks"]
    assert hook["clientConfig"] == {"caBundle": "Zm9v", "service": {
        "name": "meshpilot", "namespace": "istio-system", "path": "/validate", "port": 15017}}
    assert hook["failurePolicy"] == "Fail"
    ruled = {(g, r) for rule in hook["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert ruled == {(k.group, k.plural) for k in WATCHED if k.crd}


def test_the_cluster_role_reads_exactly_what_the_source_watches(helm: Any) -> None:
    docs = documents(render(helm))
    granted: set[tuple[str, str]] = set()
    for rule in docs["ClusterRole"]["rules"]:
        assert sorted(rule["verbs"]) == ["get", "list", "watch"], rule  # read only
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        granted |= {(group, resource) for group in rule["apiGroups"] for resource in rule["resources"]}
    assert granted == {(k.group, k.plural) for k in WATCHED}
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == docs["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "meshpilot", "namespace": "istio-system"}]


def test_replicas_share_the_root_secret_and_elect_with_a_lease_in_their_namespace_only(helm: Any) -> None:
    docs = documents(render(helm))
    assert docs["Deployment"]["spec"]["replicas"] == 2
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(container["args"][1:])
    assert (args.ca_secret, args.ca_secret_namespace, args.leader_elect_lease) == (
        "meshpilot-ca", "istio-system", "meshpilot-leader")
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    role = docs["Role"]
    assert role["metadata"]["namespace"] == "istio-system"
    granted = {(g, r, v, tuple(rule.get("resourceNames", ()))) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {
        ("coordination.k8s.io", "leases", "get", ("meshpilot-leader",)),
        ("coordination.k8s.io", "leases", "update", ("meshpilot-leader",)),
        ("coordination.k8s.io", "leases", "create", ()),  # create cannot be limited to a name
        ("", "secrets", "get", ("meshpilot-ca",)),
        ("", "secrets", "list", ("meshpilot-ca",)),
        ("", "secrets", "watch", ("meshpilot-ca",)),
        ("", "secrets", "create", ()),
    }
    binding = docs["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "meshpilot", "namespace": "istio-system"}]


def test_replicas_get_a_disruption_budget_and_one_replica_none(helm: Any) -> None:
    docs = documents(render(helm))
    pdb = docs["PodDisruptionBudget"]
    assert pdb["metadata"]["namespace"] == "istio-system" and pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]
    assert "PodDisruptionBudget" not in documents(render(helm, "--set", "replicas=1"))
    assert "PodDisruptionBudget" not in documents(render(helm, "--set", "podDisruptionBudget.enabled=false"))


def test_the_crds_are_those_of_the_istio_kinds_watched() -> None:
    crds = {}
    for path in sorted((CHART / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        assert crd["kind"] == "CustomResourceDefinition"
        spec = crd["spec"]
        assert path.stem == f"{spec['group']}_{spec['names']['plural']}"
        assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
        crds[(spec["group"], spec["names"]["plural"])] = (spec["names"]["kind"], spec)
    watched = {(k.group, k.plural): k for k in WATCHED if k.crd}
    assert crds.keys() == watched.keys()
    for key, (kind, spec) in crds.items():
        assert kind == watched[key].kind
        served = [v["name"] for v in spec["versions"] if v["served"]]
        assert served == list(watched[key].versions)  # every version meshpilot reads, newest stored
        assert [v["name"] for v in spec["versions"] if v["storage"]] == [served[0]]


@pytest.mark.parametrize("setting, message", [
    ("rootNamespace=mesh-root", 'rootNamespace "mesh-root": this version of meshpilot supports only istio-system'),
    ("trustDomain=example.org", 'trustDomain "example.org": this version of meshpilot supports only cluster.local'),
    ("logLevel=verbose", 'logLevel "verbose": one of debug, info, warning, error'),
])
def test_settings_meshpilot_cannot_honour_are_refused(helm: Any, setting: str, message: str) -> None:
    done = helm("template", "meshpilot", str(CHART), "--set", setting, check=False)
    assert done.returncode != 0
    assert message in done.stderr


def test_serve_in_cluster_outside_a_pod_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    done = subprocess.run([sys.executable, "-m", "xds_server.app.cli", "serve", "--in-cluster", "--log-format=json"],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 2
    assert "KUBERNETES_SERVICE_HOST is not set" in done.stderr


def test_the_trust_bundle_verb_never_makes_a_root(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "xds_server.app.cli", "ca", "trust-bundle", "--ca-state",
                           str(tmp_path / "none")], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 1
    assert "no CA state in" in done.stderr and not (tmp_path / "none").exists()
