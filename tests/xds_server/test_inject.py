"""Sidecar injection without a cluster: Istio's decision, the injected pod, the webhook's
JSONPatch, ``meshpilot kube-inject``, the TokenReview reading, and the injected bootstrap
validated by the real Envoy."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.core.v3.base_pb2 import Node
from google.protobuf import json_format
from harness import validate_bootstrap
from harness.pods import container_args

from ca import CertificateAuthority
from xds_server.admission import inject
from xds_server.admission.inject import InjectConfig, InjectionError, decide, inject_object, inject_pod
from xds_server.app.cli import main
from xds_server.app.node import NodeError, proxy_from_node
from xds_server.local.bootstrap import build_bootstrap, read_downward_labels
from xds_server.xds.tokenreview import ReviewFailed, TokenReviewer, identity_from_status

ROOT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
CONFIG = InjectConfig(xds_address="meshpilot.istio-system.svc:15012", root_pem=ROOT)


def pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "shop", "labels": labels or {"app": "p"},
                         "annotations": annotations or {}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec}}


# ---------------------------------------------------------------- the decision


@pytest.mark.parametrize(
    ("ns_labels", "labels", "annotations", "expected"),
    [
        ({"istio-injection": "enabled"}, {}, {}, True),
        ({"meshpilot.io/inject": "enabled"}, {}, {}, True),
        ({"istio.io/rev": "default"}, {}, {}, True),
        ({}, {}, {}, False),
        ({}, {inject.INJECT: "true"}, {}, True),
        ({}, {}, {inject.INJECT: "true"}, True),
        ({"istio-injection": "enabled"}, {inject.INJECT: "false"}, {}, False),
        ({"istio-injection": "enabled"}, {}, {inject.INJECT: "false"}, False),
        # The label wins over the annotation, as in Istio.
        ({"istio-injection": "enabled"}, {inject.INJECT: "true"}, {inject.INJECT: "false"}, True),
        ({"istio-injection": "disabled"}, {inject.INJECT: "true"}, {}, False),
        ({"istio-injection": "disabled", "istio.io/rev": "x"}, {}, {}, False),
        # None: the webhook's selectors chose the namespace; only the pod's opt-out is left.
        (None, {}, {}, True),
        (None, {}, {inject.INJECT: "false"}, False),
    ],
)
def test_the_decision_follows_istios_precedence(
    ns_labels: dict[str, str] | None, labels: dict[str, str], annotations: dict[str, str], expected: bool
) -> None:
    assert decide(pod({"app": "p", **labels}, annotations), ns_labels).inject is expected


def test_host_network_and_injected_pods_are_never_injected() -> None:
    assert not decide(pod(hostNetwork=True), {"istio-injection": "enabled"}).inject
    assert not decide(inject_pod(pod(), CONFIG), {"istio-injection": "enabled"}).inject


# ---------------------------------------------------------------- the injected pod


def test_the_injected_pod_and_injecting_again_changes_nothing() -> None:
    original = pod()
    before = copy.deepcopy(original)
    out = inject_pod(original, CONFIG)
    assert original == before  # a copy, never the caller's object
    spec = out["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["istio-init", "meshpilot-bootstrap"]
    assert [c["name"] for c in spec["containers"]] == ["app", "istio-proxy"]
    boot = spec["initContainers"][1]
    args = boot["args"]
    assert args[args.index("--xds-tls-address") + 1] == "meshpilot.istio-system.svc:15012"
    assert args[args.index("--token-file") + 1] == inject.TOKEN_FILE
    assert {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in boot["env"]} == {
        "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "POD_IP": "status.podIP",
        "SERVICE_ACCOUNT": "spec.serviceAccountName", inject.ROOT_ENV: None}
    volumes = {v["name"]: v for v in spec["volumes"]}
    token = volumes[inject.TOKEN_VOLUME]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "istio-ca"
    proxy = spec["containers"][1]
    assert proxy["image"] == f"envoyproxy/envoy:v{inject.ENVOY_VERSION}"
    assert proxy["securityContext"]["runAsUser"] == 1337
    assert proxy["readinessProbe"]["httpGet"]["port"] == inject.HEALTH_PORT
    assert "lifecycle" not in proxy
    assert out["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "app"
    # Prometheus's pod discovery scrapes the proxy's stats listener, which the bootstrap opens.
    assert {k: v for k, v in out["metadata"]["annotations"].items() if k.startswith("prometheus.io/")} == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "15090", "prometheus.io/path": "/stats/prometheus"}
    assert args[args.index("--stats-port") + 1] == "15090"
    assert {"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"} in proxy["ports"]
    assert "15090" in inject.pod_iptables_script({})  # never captured inbound
    assert inject_pod(out, CONFIG) == out
    # A pod that says how to scrape it keeps what it says.
    own = inject_pod(pod(annotations={"prometheus.io/port": "9000"}), CONFIG)["metadata"]["annotations"]
    assert own["prometheus.io/port"] == "9000" and "prometheus.io/path" not in own


def test_annotations_set_resources_capture_and_holding_the_application() -> None:
    out = inject_pod(pod(annotations={
        inject.PROXY_CPU: "250m", inject.PROXY_MEMORY: "64Mi", inject.PROXY_CPU_LIMIT: "1",
        inject.PROXY_MEMORY_LIMIT: "1Gi",
        inject.EXCLUDE_INBOUND: "9090, 9091", inject.EXCLUDE_OUTBOUND: "5432",
        inject.INCLUDE_OUTBOUND_RANGES: "10.96.0.0/12,10.244.0.0/16",
        inject.PROXY_CONFIG: "holdApplicationUntilProxyStarts: true\n",
    }), CONFIG)
    spec = out["spec"]
    proxy = spec["containers"][0]  # held: the proxy starts first and its postStart waits for it
    assert proxy["name"] == "istio-proxy" and "postStart" in proxy["lifecycle"]
    assert proxy["resources"] == {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    script = spec["initContainers"][0]["command"][2]
    for rule in ("ISTIO_INBOUND -p tcp --dport 9090 -j RETURN", "ISTIO_INBOUND -p tcp --dport 9091 -j RETURN",
                 "ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN", "ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT",
                 "ISTIO_OUTPUT -d 10.244.0.0/16 -j ISTIO_REDIRECT", "--uid-owner 1337 -j RETURN"):
        assert rule in script
    assert "ISTIO_OUTPUT -j ISTIO_REDIRECT" not in script  # only the included ranges


def _speaks_delta(out: dict[str, Any]) -> bool:
    boot = next(c for c in out["spec"]["initContainers"] if c["name"] == inject.BOOTSTRAP_CONTAINER)
    return "--delta" in boot["args"]


@pytest.mark.parametrize(("proxy_config", "default", "expected"), [
    (None, True, True),  # istiod's default since 1.22: ISTIO_DELTA_XDS=true
    (None, False, False),  # serve --inject-xds-api sotw
    ('proxyMetadata:\n  ISTIO_DELTA_XDS: "false"\n', True, False),
    ('proxyMetadata:\n  ISTIO_DELTA_XDS: "true"\n', False, True),
    ("proxyMetadata:\n  ISTIO_DELTA_XDS: false\n", True, False),  # unquoted: a YAML boolean
    ('proxyMetadata:\n  ISTIO_DELTA_XDS: "0"\n', True, False),  # as Go's strconv.ParseBool
    ('proxyMetadata:\n  OTHER: "x"\n', False, False),
    ("holdApplicationUntilProxyStarts: true\n", True, True),
])
def test_the_xds_protocol_is_delta_unless_the_pod_or_the_server_says_sotw(
    proxy_config: str | None, default: bool, expected: bool
) -> None:
    annotations = {inject.PROXY_CONFIG: proxy_config} if proxy_config else {}
    config = InjectConfig(xds_address=CONFIG.xds_address, root_pem=ROOT, delta=default)
    assert _speaks_delta(inject_pod(pod(annotations=annotations), config)) is expected


@pytest.mark.parametrize(("key", "value"), [
    (inject.PROXY_CONFIG, 'proxyMetadata:\n  ISTIO_DELTA_XDS: "sometimes"\n'),
    (inject.PROXY_CONFIG, "proxyMetadata: [ISTIO_DELTA_XDS]\n"),
    (inject.EXCLUDE_OUTBOUND, "5432;rm -rf /"),
    (inject.EXCLUDE_INBOUND, "70000"),
    (inject.INCLUDE_OUTBOUND_RANGES, "10.0.0.0/8 && reboot"),
    (inject.PROXY_CPU, "lots"),
    (inject.PROXY_CONFIG, "holdApplicationUntilProxyStarts: maybe"),
])
def test_bad_annotations_are_refused_by_name_and_never_reach_the_script(key: str, value: str) -> None:
    with pytest.raises(InjectionError, match=rf"metadata\.annotations\[{key}\]"):
        inject_pod(pod(annotations={key: value}), CONFIG)


# ---------------------------------------------------------------- the webhook's answer


def apply_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add/replace on object paths: what the API server does with the answer."""
    out = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] in ("add", "replace")
        *parents, last = op["path"].lstrip("/").split("/")
        target = out
        for p in parents:
            target = target[p]
        assert (last in target) == (op["op"] == "replace")
        target[last] = op["value"]
    return out


def admission(obj: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "shop",
                        "operation": operation, "object": obj}}


def test_the_webhook_patch_gives_the_injected_pod() -> None:
    original = pod()
    del original["metadata"]["annotations"]  # "add", not "replace", where nothing was
    response = inject.review(admission(original), CONFIG)["response"]
    assert response["allowed"] and response["uid"] == "u1" and response["patchType"] == "JSONPatch"
    patched = apply_patch(original, json.loads(base64.b64decode(response["patch"])))
    assert patched == inject_pod(original, CONFIG)
    # Reinvoked on its own result: nothing to do.
    assert "patch" not in inject.review(admission(patched), CONFIG)["response"]


def test_the_webhook_leaves_opted_out_pods_and_refuses_bad_annotations() -> None:
    out = inject.review(admission(pod(annotations={inject.INJECT: "false"})), CONFIG)["response"]
    assert out == {"uid": "u1", "allowed": True}
    assert "patch" not in inject.review(admission(pod(), "UPDATE"), CONFIG)["response"]
    bad = inject.review(admission(pod(annotations={inject.EXCLUDE_OUTBOUND: "x"})), CONFIG)["response"]
    assert not bad["allowed"] and inject.EXCLUDE_OUTBOUND in bad["status"]["message"]
    with pytest.raises(ValueError):
        inject.review({"kind": "AdmissionReview"}, CONFIG)


# ---------------------------------------------------------------- kube-inject

MANIFESTS = """
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec: {ports: [{port: 9080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {containers: [{name: app, image: a}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 0 * * *"
  jobTemplate: {spec: {template: {spec: {containers: [{name: app, image: a}]}}}}
---
apiVersion: v1
kind: Pod
metadata: {name: out, annotations: {sidecar.istio.io/inject: "false"}}
spec: {containers: [{name: app, image: a}]}
"""

TEMPLATED = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


def _templated(kind: str) -> str:
    return yaml.safe_dump({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": kind.lower()},
                           "spec": {"template": {"metadata": {"labels": {"app": "x"}},
                                                 "spec": {"containers": [{"name": "app", "image": "a"}]}}}})


def _names(p: dict[str, Any]) -> list[str]:
    return [c["name"] for c in p["spec"]["containers"]]


def test_kube_inject_injects_every_pod_template_and_is_idempotent(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.yaml"
    source.write_text(MANIFESTS + "".join(f"---\n{_templated(k)}" for k in TEMPLATED))
    state = tmp_path / "ca"
    assert main(["kube-inject", "-f", str(source), "--ca-state", str(state), "-o", str(tmp_path / "out.yaml")]) == 0
    docs = list(yaml.safe_load_all((tmp_path / "out.yaml").read_text()))
    by_name = {d["metadata"]["name"]: d for d in docs}
    assert by_name["reviews"]["kind"] == "Service" and "template" not in by_name["reviews"]["spec"]
    assert _names(by_name["p"]) == ["app", "istio-proxy"]
    assert _names(by_name["out"]) == ["app"]
    assert _names(by_name["nightly"]["spec"]["jobTemplate"]["spec"]["template"]) == ["app", "istio-proxy"]
    for kind in TEMPLATED:
        assert _names(by_name[kind.lower()]["spec"]["template"]) == ["app", "istio-proxy"], kind
    # The root the proxies trust is the CA state's.
    env = {e["name"]: e.get("value") for e in by_name["p"]["spec"]["initContainers"][1]["env"]}
    assert env[inject.ROOT_ENV].encode() == CertificateAuthority.load_or_create(state).trust_bundle()

    assert _speaks_delta(by_name["p"])
    assert main(["kube-inject", "-f", str(source), "--ca-state", str(state), "--xds-api", "sotw",
                 "-o", str(tmp_path / "sotw.yaml")]) == 0
    assert not _speaks_delta(next(d for d in yaml.safe_load_all((tmp_path / "sotw.yaml").read_text())
                                  if d["metadata"]["name"] == "p"))

    # Again, on its own output, to stdout: the same text.
    assert main(["kube-inject", "-f", str(tmp_path / "out.yaml"), "--ca-state", str(state)]) == 0
    assert capsys.readouterr().out == (tmp_path / "out.yaml").read_text()


def test_kube_inject_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.yaml"
    source.write_text(yaml.safe_dump(pod(annotations={inject.EXCLUDE_INBOUND: "http"})))
    assert main(["kube-inject", "-f", str(source), "--ca-state", str(tmp_path / "ca")]) == 1
    assert inject.EXCLUDE_INBOUND in capsys.readouterr().err


def test_inject_object_leaves_what_has_no_pod() -> None:
    service = {"kind": "Service", "metadata": {"name": "s"}}
    assert inject_object(service, CONFIG) is service


# ---------------------------------------------------------------- the injected bootstrap


def test_downward_api_labels_are_read_back() -> None:
    text = 'app="reviews"\nversion="v1"\nquote="a\\"b"\n'
    assert read_downward_labels(text) == {"app": "reviews", "version": "v1", "quote": 'a"b'}


def test_envoy_validates_the_injected_bootstrap(envoy_binary: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The bootstrap the injected init container writes (its own arguments, env and files)."""
    root = CertificateAuthority.load_or_create(tmp_path / "ca").trust_bundle()
    boot = inject_pod(pod(), InjectConfig(xds_address="10.96.0.10:15012", root_pem=root))["spec"]["initContainers"][1]
    files = {inject.TOKEN_FILE: "header.payload.sig", f"{inject.PODINFO_DIR}/labels": 'app="p"\n'}
    env = {"POD_IP": "10.244.1.5", "POD_NAME": "p-1", "POD_NAMESPACE": "shop", "SERVICE_ACCOUNT": "web"}
    monkeypatch.setenv(inject.ROOT_ENV, root.decode())
    paths = {inject.BOOTSTRAP_FILE: tmp_path / "envoy.json"}
    for name, text in files.items():
        paths[name] = tmp_path / Path(name).name
        paths[name].write_text(text)
    assert main(container_args(boot["args"], env, paths)) == 0
    config = json.loads((tmp_path / "envoy.json").read_text())
    assert config["node"]["metadata"]["SERVICE_ACCOUNT"] == "web"
    # Its traffic is captured: meshpilot gives it the virtual listeners 15001/15006.
    assert config["node"]["metadata"]["INTERCEPTION_MODE"] == "REDIRECT"
    assert proxy_from_node(json_format.ParseDict(config["node"], Node(), ignore_unknown_fields=True)).capture
    assert config["node"]["metadata"]["LABELS"] == {"app": "p"}
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert config["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"] == [
        {"key": "authorization", "value": "Bearer header.payload.sig"}]
    stats = next(lst for lst in config["static_resources"]["listeners"] if lst["name"] == "meshpilot-stats")
    assert stats["address"]["socket_address"] == {"address": "10.244.1.5", "port_value": 15090}
    result = validate_bootstrap(envoy_binary, tmp_path / "envoy.json")
    assert result.returncode == 0, result.stdout + result.stderr
    plain = build_bootstrap(xds_address="127.0.0.1:1", proxy_ip="127.0.0.9")
    assert "listeners" not in plain["static_resources"]  # only with --health-port / --stats-port
    assert "INTERCEPTION_MODE" not in plain["node"]["metadata"]  # file mode: no capture
    assert not proxy_from_node(json_format.ParseDict(plain["node"], Node(), ignore_unknown_fields=True)).capture


def test_a_node_with_an_unsupported_interception_mode_is_refused() -> None:
    node = Node(id="sidecar~10.0.0.1~p.shop~shop.svc.cluster.local")
    node.metadata.update({"INTERCEPTION_MODE": "TPROXY"})
    with pytest.raises(NodeError, match="INTERCEPTION_MODE must be REDIRECT or NONE, not 'TPROXY'"):
        proxy_from_node(node)


# ---------------------------------------------------------------- reading a TokenReview


def status(user: str = "system:serviceaccount:shop:web", **kw: Any) -> dict[str, Any]:
    return {"authenticated": True, "audiences": ["istio-ca"], "user": {"username": user, "extra": {
        "authentication.kubernetes.io/pod-name": ["web-1"]}}, **kw}


def test_a_review_names_the_service_account_or_fails() -> None:
    got = identity_from_status(status(), "istio-ca")
    assert (got.namespace, got.service_account, got.pod) == ("shop", "web", "web-1")
    for bad in (status(authenticated=False, error="token expired"), status(audiences=["other"]),
                status("admin"), status("system:serviceaccount:shop")):
        with pytest.raises(ReviewFailed):
            identity_from_status(bad, "istio-ca")


def test_reviews_are_cached_briefly_by_token() -> None:
    calls: list[str] = []
    now = [0.0]
    answers = {"good": status(), "bad": {"authenticated": False}}

    def call(token: str, audience: str) -> dict[str, Any]:
        assert audience == "istio-ca"
        calls.append(token)
        if token == "down":
            raise ConnectionError("connection refused")
        return answers[token]

    reviewer = TokenReviewer(call, ttl=10, failure_ttl=2, clock=lambda: now[0])

    async def run() -> None:
        assert (await reviewer.review("good")).service_account == "web"
        await reviewer.review("good")
        for _ in range(2):
            with pytest.raises(ReviewFailed):
                await reviewer.review("bad")
        with pytest.raises(ReviewFailed, match="ConnectionError"):
            await reviewer.review("down")
        assert calls == ["good", "bad", "down"]
        now[0] = 3.0  # failures expired, the success not yet
        await reviewer.review("good")
        with pytest.raises(ReviewFailed):
            await reviewer.review("bad")
        assert calls == ["good", "bad", "down", "bad"]
        now[0] = 11.0
        await reviewer.review("good")
        assert calls[-1] == "good"

    asyncio.run(run())


def test_ca_trust_bundle_prints_the_roots_for_the_webhook_ca_bundle(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "trust-bundle", "--ca-state", str(tmp_path / "none")]) == 1
    assert not (tmp_path / "none").exists()  # never creates a CA by asking for its roots
    bundle = CertificateAuthority.load_or_create(tmp_path / "ca").trust_bundle()
    capsys.readouterr()
    assert main(["ca", "trust-bundle", "--ca-state", str(tmp_path / "ca")]) == 0
    out = capsys.readouterr().out
    assert out.encode() == bundle and "PRIVATE KEY" not in out
