"""A DestinationRule ``workloadSelector`` through two real Envoy sidecars of one namespace.

web has pods v1 and v2; its namespace-wide rule defines subset v1 only, and a second rule,
narrowed to the workloads labelled ``app: canary``, defines v1 and v2. web's VirtualService
sends everything to subset v2. So the canary client (selected) reaches v2, and the other
client, which has no cluster for subset v2, gets Envoy's 503; then the selector is changed
to the other client's labels and the answers swap. Every assertion is on requests through
the clients' Envoys (and the pods' own counts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import ConfigDir, EnvoyProcess, MeshpilotServer, UpstreamServer, eventually, request

from xds_server.app.verbs.describe import render_service
from xds_server.local.bootstrap import build_bootstrap

PORT, TARGET, NS = 9080, 8080, "default"
NET = "networking.istio.io/v1"


def canary_rule(selector: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": NET, "kind": "DestinationRule", "metadata": {"name": "web-canary", "namespace": NS},
            "spec": {"host": "web", "workloadSelector": {"matchLabels": selector},
                     "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")]}}


def test_a_selected_client_gets_its_rule_and_the_others_do_not(
    config_dir: ConfigDir, start_meshpilot: Callable[..., MeshpilotServer],
    start_envoy: Callable[..., EnvoyProcess], start_upstream: Callable[..., UpstreamServer],
    proxy_ip: str, loopback: Any,
) -> None:
    pods = {v: start_upstream(port=TARGET, service="web", version=v, pod=f"web-{v}") for v in ("v1", "v2")}
    config_dir.write("web.yaml", [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": PORT, "targetPort": TARGET}]}},
        *({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"web-{v}", "namespace": NS, "labels": {"app": "web", "version": v}},
           "status": {"phase": "Running", "podIP": up.ip}} for v, up in pods.items()),
        {"apiVersion": NET, "kind": "DestinationRule", "metadata": {"name": "web", "namespace": NS},
         "spec": {"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}},
        {"apiVersion": NET, "kind": "VirtualService", "metadata": {"name": "web", "namespace": NS},
         "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web", "subset": "v2"}}]}]}},
    ])
    config_dir.write("canary.yaml", canary_rule({"app": "canary"}))
    server = start_meshpilot(config_dir)
    canary_ip, other_ip = proxy_ip, loopback.allocate()
    # The canary client on Delta xDS, the other on SotW: the selected layers reach both kinds.
    start_envoy(build_bootstrap(xds_address=server.xds_address, proxy_ip=canary_ip, namespace=NS, pod="canary",
                                labels={"app": "canary"}, delta=True), wait="live", name="canary")
    start_envoy(build_bootstrap(xds_address=server.xds_address, proxy_ip=other_ip, namespace=NS, pod="other",
                                labels={"app": "other"}), wait="live", name="other")

    def answers(ip: str) -> tuple[int, str]:
        status, body = request(ip, PORT, "/", "web")
        return status, body["version"] if isinstance(body, dict) else ""

    eventually(lambda: answers(canary_ip) == (200, "v2"), timeout=20, message="the canary client reaches subset v2")
    assert answers(other_ip)[0] == 503  # no cluster outbound|9080|v2|web...: not its rule
    before = pods["v2"].requests
    assert [answers(canary_ip) for _ in range(5)] == [(200, "v2")] * 5
    assert pods["v2"].requests - before == 5 and pods["v1"].requests == 0
    errors = server.get("/debug/errors")[1]
    assert not [e for e in errors if e["field"] == "spec.workloadSelector"], errors
    # describe says whom each rule is for.
    described = server.get("/debug/describe?kind=service&name=web&namespace=default")[1]
    assert {d["name"]: d["workload_selector"] for d in described["destination_rules"]} == {
        "default/web": None, "default/web-canary": {"app": "canary"}}
    text = "\n".join(render_service(described))
    assert "For clients: the workloads of default with app=canary" in text, text

    # The rule now selects the other client: the answers swap.
    config_dir.write("canary.yaml", canary_rule({"app": "other"}))
    eventually(lambda: answers(other_ip) == (200, "v2"), timeout=20, message="the other client now reaches v2")
    eventually(lambda: answers(canary_ip)[0] == 503, timeout=20, message="and the canary client no longer does")
