"""The chart's injection and token-review parts, rendered by the real helm: the
MutatingWebhookConfiguration (only with a caBundle; selectors as Istio's; meshpilot's own
namespace never selected), the injector's arguments, and RBAC that adds exactly
``create tokenreviews``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.kube.test_chart import helm, render  # noqa: F401  (helm is a fixture)
from xds_server.admission import inject
from xds_server.app import serve


@pytest.fixture(autouse=True)
def _in_cluster_netns() -> Iterator[None]:
    """Overrides conftest.py's: these tests need only the helm binary, not the cluster."""
    yield


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def named(text: str, kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs(text) if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_token_review_rbac_grants_create_tokenreviews_and_nothing_else(helm: Any) -> None:  # noqa: F811
    text = render(helm)
    role = named(text, "ClusterRole", "meshpilot-tokenreview")
    assert role["rules"] == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
                              "verbs": ["create"]}]
    binding = named(text, "ClusterRoleBinding", "meshpilot-tokenreview")
    assert binding["roleRef"]["name"] == "meshpilot-tokenreview"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "meshpilot", "namespace": "istio-system"}]


def test_the_injector_serves_what_the_chart_sets(helm: Any) -> None:  # noqa: F811
    (deployment,) = [d for d in docs(render(helm, "--set", "injection.proxyImage=envoy:x")) if d["kind"] == "Deployment"]
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(deployment["spec"]["template"]["spec"]["containers"][0]["args"][1:])
    assert args.inject_xds_address == "meshpilot.istio-system.svc:15012"
    assert args.inject_proxy_image == "envoy:x"
    assert args.inject_init_image == "ghcr.io/meshpilot/meshpilot:0.1.0"
    off = [d for d in docs(render(helm, "--set", "injection.enabled=false")) if d["kind"] == "Deployment"][0]
    assert not any("--inject" in a for a in off["spec"]["template"]["spec"]["containers"][0]["args"])


def test_the_mutating_webhook_needs_the_ca_bundle_and_selects_as_istio(helm: Any) -> None:  # noqa: F811
    assert not [d for d in docs(render(helm)) if d["kind"] == "MutatingWebhookConfiguration"]
    assert not [d for d in docs(render(helm, "--set", "webhook.caBundle=Zm9v", "--set", "injection.enabled=false"))
                if d["kind"] == "MutatingWebhookConfiguration"]
    (config,) = [d for d in docs(render(helm, "--set", "webhook.caBundle=Zm9v"))
                 if d["kind"] == "MutatingWebhookConfiguration"]
    hooks = config["webhooks"]
    for hook in hooks:
        assert hook["clientConfig"] == {"caBundle": "Zm9v", "service": {
            "name": "meshpilot", "namespace": "istio-system", "path": "/inject", "port": 15017}}
        assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                  "resources": ["pods"]}]
        assert (hook["failurePolicy"], hook["reinvocationPolicy"], hook["sideEffects"]) == ("Fail", "Never", "None")
        assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": ["istio-system", "kube-system", "kube-public", "kube-node-lease"]} in \
            hook["namespaceSelector"]["matchExpressions"]

    def selects(hook: dict[str, Any], ns: dict[str, str], pod: dict[str, str]) -> bool:
        ns = {"kubernetes.io/metadata.name": "shop", **ns}
        return all(_matches(e, ns) for e in hook["namespaceSelector"]["matchExpressions"]) and all(
            _matches(e, pod) for e in hook["objectSelector"]["matchExpressions"])

    def called(ns: dict[str, str], pod: dict[str, str]) -> int:
        return sum(selects(h, ns, pod) for h in hooks)

    # Exactly one webhook where Istio injects, none where it does not (and none twice).
    assert called({"istio-injection": "enabled"}, {}) == 1
    assert called({"istio-injection": "enabled", "istio.io/rev": "x", "meshpilot.io/inject": "enabled"}, {}) == 1
    assert called({"meshpilot.io/inject": "enabled"}, {}) == 1
    assert called({"istio.io/rev": "default"}, {}) == 1
    assert called({}, {inject.INJECT: "true"}) == 1
    assert called({}, {}) == 0
    assert called({"istio-injection": "enabled"}, {inject.INJECT: "false"}) == 0
    assert called({"istio-injection": "disabled"}, {inject.INJECT: "true"}) == 0
    assert called({"istio-injection": "disabled", "istio.io/rev": "x"}, {}) == 0
    assert called({"istio-injection": "enabled", "kubernetes.io/metadata.name": "istio-system"}, {}) == 0


def _matches(expr: dict[str, Any], labels: dict[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values", [])
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    assert op == "DoesNotExist"
    return key not in labels
