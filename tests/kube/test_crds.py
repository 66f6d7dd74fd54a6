"""The chart's CRDs: generated from the models (the committed files are that output), and
the real API server refuses wrong types at ``kubectl apply`` while Istio's own samples and
Istio YAML in every shape meshpilot reads (durations, int-or-string, maps, fields it does not
model) are stored exactly as written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.kube import KubeCluster

from xds_server.sources import crds
from xds_server.sources.kubernetes import WATCHED

TESTDATA = Path(__file__).parent / "testdata"


@pytest.fixture
def _in_cluster_netns() -> Iterator[None]:
    """Overrides conftest.py's for the tests here that need no cluster (they ask for one by name)."""
    yield


def test_the_committed_crds_are_the_generated_ones() -> None:
    generated = dict(crds.generated())
    assert generated, "no Istio kind has a model"
    for name, text in generated.items():
        path = crds.CHART_CRDS / name
        assert path.exists() and path.read_text() == text, \
            f"{name} is stale: run ./dev run python -m xds_server.sources.crds"
    # Each watched Istio kind has its CRD in the chart.
    assert {f"{k.group}_{k.plural}.yaml" for k in WATCHED if k.crd} <= {p.name for p in crds.CHART_CRDS.iterdir()}


def test_the_check_mode_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crds.main(["--dir", str(tmp_path)]) == 0
    assert crds.main(["--dir", str(tmp_path), "--check"]) == 0
    (tmp_path / "networking.istio.io_virtualservices.yaml").write_text("stale")
    assert crds.main(["--dir", str(tmp_path), "--check"]) == 1
    assert "1 CRD file(s) stale: networking.istio.io_virtualservices.yaml" in capsys.readouterr().out


@pytest.mark.parametrize("kind, plural", [
    ("AuthorizationPolicy", "authorizationpolicies"), ("ServiceEntry", "serviceentries"), ("Gateway", "gateways"),
    ("Sidecar", "sidecars"), ("VirtualService", "virtualservices"),
])
def test_plural_names(kind: str, plural: str) -> None:
    assert crds.plural(kind) == plural


def test_schemas_follow_the_models() -> None:
    http = crds.spec_schema(crds.KINDS["VirtualService"])["properties"]["http"]["items"]
    route = http["properties"]["route"]["items"]["properties"]
    assert route["weight"] == {"type": "integer", "nullable": True}
    assert http["properties"]["timeout"] == {"type": "string", "nullable": True}  # a duration
    assert http["x-kubernetes-preserve-unknown-fields"] is True  # unmodelled fields are kept
    operation = crds.spec_schema(crds.KINDS["AuthorizationPolicy"])["properties"]["rules"]["items"]["properties"][
        "to"]["items"]["properties"]["operation"]["properties"]
    assert operation["ports"]["items"] == {"x-kubernetes-int-or-string": True}  # "8080" or 8080
    assert "from" in crds.spec_schema(crds.KINDS["AuthorizationPolicy"])["properties"]["rules"]["items"][
        "properties"]  # the alias, not the Python name


# ---------------------------------------------------------------- against the real API server


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("sample", ["istio-samples.yaml", "istio-shapes.yaml"])
def test_istio_yaml_applies_unchanged(
    kube_cluster: KubeCluster, kube_namespace: str, istio_crds: None, sample: str
) -> None:
    docs = _documents(TESTDATA / sample)
    done = kube_cluster.kubectl("apply", "-n", kube_namespace, "-f", str(TESTDATA / sample), check=False)
    assert done.returncode == 0, done.stderr
    for doc in docs:
        stored = kube_cluster.get(doc["kind"].lower(), doc["metadata"]["name"], "-n", kube_namespace)
        # Nothing pruned, nothing defaulted, nothing converted.
        assert stored["spec"] == doc["spec"], f"{doc['kind']} {doc['metadata']['name']}"


@pytest.mark.parametrize("kind, spec, field, expected", [
    ("VirtualService",
     {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}, "weight": "abc"}]}]},
     "spec.http[0].route[0].weight", "must be of type integer"),
    ("VirtualService", {"hosts": 5}, "spec.hosts", "must be of type array"),
    ("VirtualService", {"hosts": ["a"], "http": [{"retries": {"attempts": "three"}}]},
     "spec.http[0].retries.attempts", "must be of type integer"),
    ("DestinationRule", {"host": "reviews", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": "many"}}}},
     "spec.trafficPolicy.connectionPool.tcp.maxConnections", "must be of type integer"),
    ("DestinationRule", {"host": "reviews", "exportTo": "."}, "spec.exportTo", "must be of type array"),
    ("ServiceEntry", {"hosts": ["a.example.com"], "ports": [{"number": "443"}]}, "spec.ports[0].number",
     "must be of type integer"),
    ("Gateway", {"servers": [{"port": {"number": "eighty", "protocol": "HTTP"}, "hosts": ["*"]}]},
     "spec.servers[0].port.number", "must be of type integer"),
    ("PeerAuthentication", {"mtls": "STRICT"}, "spec.mtls", "must be of type object"),
    ("AuthorizationPolicy", {"rules": [{"to": [{"operation": {"ports": [True]}}]}]},
     "spec.rules[0].to[0].operation.ports[0]", "must be of type integer,string"),
    ("RequestAuthentication", {"jwtRules": [{"issuer": "i", "forwardOriginalToken": "yes"}]},
     "spec.jwtRules[0].forwardOriginalToken", "must be of type boolean"),
])
def test_wrong_types_are_refused_by_the_api_server(
    kube_cluster: KubeCluster, kube_namespace: str, istio_crds: None,
    kind: str, spec: dict[str, Any], field: str, expected: str,
) -> None:
    cls = crds.KINDS[kind]
    manifest = {"apiVersion": cls.API_VERSIONS[0], "kind": kind,
                "metadata": {"name": "wrong", "namespace": kube_namespace}, "spec": spec}
    done = kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
    assert done.returncode != 0
    assert f'The {kind} "wrong" is invalid: {field}: Invalid value' in done.stderr, done.stderr
    assert f"{field} in body {expected}" in done.stderr, done.stderr
    missing = kube_cluster.kubectl("get", kind.lower(), "wrong", "-n", kube_namespace, check=False)
    assert "NotFound" in missing.stderr
