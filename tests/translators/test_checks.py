"""translators/checks.py: subsets that select no endpoint, VirtualServices bound to no Gateway,
and that a following World rechecks only what its changes reach."""

from __future__ import annotations

from typing import Any

import yaml

from translators.checks import Checks, gateway_key, gateway_problems
from translators.model import ObjectMeta, Resource, ResourceKey, parse_resource
from translators.model.world import World
from translators.translate import Translator

BASE = """
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1}}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v3, labels: {version: v3}}
  - {name: all}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: default}
spec:
  hosts: [shop.example.com]
  gateways: [edge-gateway]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: both, namespace: default}
spec:
  hosts: [reviews]
  gateways: [edge-gateway, mesh]
  http: [{route: [{destination: {host: reviews}}]}]
"""


def _resources(text: str) -> dict[ResourceKey, Resource]:
    return {r.key: r for r in (parse_resource(doc, "test.yaml") for doc in yaml.safe_load_all(text))}


def _gateway(namespace: str, name: str) -> Resource:
    """A Gateway as the World holds it (the kind's model may not exist yet: the check keys on the name)."""
    return Resource(apiVersion="networking.istio.io/v1", kind="Gateway",
                    metadata=ObjectMeta(name=name, namespace=namespace), source="gw.yaml")


class Run:
    def __init__(self) -> None:
        self.translator, self.checks, self.world = Translator(), Checks(), World()

    def apply(self, resources: dict[ResourceKey, Resource]) -> list[dict[str, Any]]:
        self.world = self.world.evolve(resources)
        self.translator.update(self.world)
        found = self.checks.run(self.world, self.translator._registry.services)
        return [{"resource": e.resource, "field": e.field, "message": e.message, "severity": e.severity} for e in found]


def test_subset_without_endpoints_and_vs_bound_to_no_gateway() -> None:
    run = Run()
    found = run.apply(_resources(BASE))
    assert [(e["resource"], e["field"]) for e in found] == [
        ("DestinationRule default/reviews", "spec.subsets[1].labels"),
    ]
    assert {e["severity"] for e in found} == {"warning"}
    assert found[0]["message"].startswith("subset v3 selects no endpoint of reviews.default.svc.cluster.local (version=v3)")
    vs = run.world.resources[ResourceKey("VirtualService", "default", "edge")]
    assert gateway_problems(vs, run.world.resources)[0].message.startswith(  # type: ignore[arg-type]
        "no Gateway edge-gateway exists: this VirtualService is bound to nothing")


def test_a_following_world_rechecks_what_changed() -> None:
    run = Run()
    resources = _resources(BASE)
    first = run.checks.run(run.world, {})  # empty world
    assert first == ()
    run.apply(resources)
    before = run.checks._rules[ResourceKey("DestinationRule", "default", "reviews")][2]

    # A pod with version v3 appears: the service changes, the rule is rechecked, the warning goes.
    pod = dict(yaml.safe_load(BASE.split("---")[1]))
    pod["metadata"] = {**pod["metadata"], "name": "reviews-v3", "labels": {"app": "reviews", "version": "v3"}}
    pod["status"] = {"phase": "Running", "podIP": "10.0.0.3"}
    v3 = parse_resource(pod, "pods.yaml")
    found = run.apply({**resources, v3.key: v3})
    assert found == []
    gw = _gateway("default", "edge-gateway")
    run.apply({**resources, v3.key: v3, gw.key: gw})
    # An unrelated change keeps the rule's result object (not rechecked).
    kept = run.checks._rules[ResourceKey("DestinationRule", "default", "reviews")][2]
    other = _gateway("other", "x")
    run.apply({**resources, v3.key: v3, gw.key: gw, other.key: other})
    assert run.checks._rules[ResourceKey("DestinationRule", "default", "reviews")][2] is kept
    assert kept is not before


def test_gateway_references() -> None:
    assert gateway_key("edge", "shop") == ResourceKey("Gateway", "shop", "edge")
    assert gateway_key("istio-system/edge", "shop") == ResourceKey("Gateway", "istio-system", "edge")
    assert gateway_key("edge.istio-system.svc.cluster.local", "shop") == ResourceKey("Gateway", "istio-system", "edge")


EMPTY = """
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}, weight: 50}, {destination: {host: ratings}, weight: 50}]
  tcp: [{route: [{destination: {host: ratings.default.svc.cluster.local}}]}]
"""

RATINGS_POD = """
apiVersion: v1
kind: Pod
metadata: {name: ratings-1, namespace: default, labels: {app: ratings}}
status: {phase: Running, podIP: 10.0.0.9}
"""


def test_routes_to_a_service_without_endpoints_are_warned_at_the_destination() -> None:
    run = Run()
    resources = {**_resources(BASE), **_resources(EMPTY)}
    found = [e for e in run.apply(resources) if e["resource"] == "VirtualService default/ratings"]
    assert [e["field"] for e in found] == ["spec.http[1].route[1].destination.host",
                                           "spec.tcp[0].route[0].destination.host"]
    assert found[0]["severity"] == "warning"
    assert found[0]["message"].startswith("ratings.default.svc.cluster.local has no endpoints: requests routed")
    key = ResourceKey("VirtualService", "default", "ratings")
    kept = run.checks._routes[key][3]
    # An unrelated change: the VirtualService is not rechecked (same result object).
    other = _gateway("other", "x")
    run.apply({**resources, other.key: other})
    assert run.checks._routes[key][3] is kept
    # A workload appears behind ratings: its service changes, the warnings go.
    found = run.apply({**resources, other.key: other, **_resources(RATINGS_POD)})
    assert [e for e in found if e["resource"] == "VirtualService default/ratings"] == []
    # Deleting the VirtualService drops its warnings with it.
    del resources[key]
    run.apply(resources)
    assert key not in run.checks._routes


TLS_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: ingress}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert}
  - port: {number: 8443, name: https-2, protocol: HTTPS}
    hosts: [admin.example.com]
    tls: {mode: SIMPLE, credentialNames: [admin-rsa, admin-ec]}
"""

SECRET = """
apiVersion: v1
kind: Secret
metadata: {name: %s, namespace: ingress}
type: kubernetes.io/tls
data: {tls.crt: "", tls.key: ""}
"""


def test_gateway_credentials_without_a_secret_are_warned_until_it_exists() -> None:
    run = Run()
    resources = _resources(TLS_GATEWAY)
    found = run.apply(resources)
    assert [e["field"] for e in found] == ["spec.servers[0].tls.credentialName",
                                           "spec.servers[1].tls.credentialNames[0]",
                                           "spec.servers[1].tls.credentialNames[1]"]
    assert found[0]["resource"] == "Gateway ingress/edge" and found[0]["severity"] == "warning"
    assert found[0]["message"].startswith("no Secret shop-cert exists: the TLS server on port 443 has no certificate")
    resources |= _resources(SECRET % "shop-cert") | _resources(SECRET % "admin-ec")
    assert [e["field"] for e in run.apply(resources)] == ["spec.servers[1].tls.credentialNames[0]"]
