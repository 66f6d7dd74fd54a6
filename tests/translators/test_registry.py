"""The registry's ServiceShape fields that other stages read: exportTo visibility."""

from __future__ import annotations

import yaml

from translators.model import parse_resource
from translators.model.index import ResourceIndex
from translators.model.registry import Registry, ServiceShape, export_scope, visible_to


def _registry(text: str) -> Registry:
    resources = {r.key: r for r in (parse_resource(doc, "test.yaml") for doc in yaml.safe_load_all(text))}
    index = ResourceIndex()
    index.apply(resources, resources)
    reg = Registry()
    reg.rebuild(index, {k.namespace for k in resources})
    return reg


def test_export_scope_resolves_dot_star_and_tilde() -> None:
    assert export_scope([], "a") is None
    assert export_scope(["*"], "a") is None
    assert export_scope(["~"], "a") == frozenset()
    assert export_scope([".", "b"], "a") == frozenset({"a", "b"})
    assert export_scope([" . ", ""], "a") == frozenset({"a"})  # the annotation's comma-separated form


def test_visible_to() -> None:
    shape = ServiceShape("h", "a", "n", False, ())
    assert visible_to(shape, "a") and visible_to(shape, "z")
    private = ServiceShape("h", "a", "n", False, (), export_to=frozenset({"a"}))
    assert visible_to(private, "a") and not visible_to(private, "b")
    hidden = ServiceShape("h", "a", "n", False, (), export_to=frozenset())
    assert not visible_to(hidden, "a")


def test_export_to_from_service_entry_and_service_annotation() -> None:
    reg = _registry("""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: se, namespace: a}
spec:
  hosts: [ext.example.com]
  exportTo: [".", b]
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hidden, namespace: a}
spec:
  hosts: [hidden.example.com]
  exportTo: ["~"]
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: a, annotations: {networking.istio.io/exportTo: "., c"}}
spec: {ports: [{port: 80, name: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: open, namespace: a}
spec: {ports: [{port: 80, name: http}]}
""")
    shapes = {h: s.shape for h, s in reg.services.items()}
    assert shapes["ext.example.com"].export_to == frozenset({"a", "b"})
    assert shapes["hidden.example.com"].export_to == frozenset()
    assert shapes["web.a.svc.cluster.local"].export_to == frozenset({"a", "c"})
    assert shapes["open.a.svc.cluster.local"].export_to is None
    assert [h for h, s in shapes.items() if visible_to(s, "b")] == ["ext.example.com", "open.a.svc.cluster.local"]


SE_AND_VM = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: vms}
spec:
  hosts: [legacy.vms.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: legacy}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: vms, labels: {app: legacy}}
spec: {address: 172.16.0.11, labels: {app: ignored, version: v1}, WEIGHT}
"""


def _rebuilt(reg: Registry, text: str) -> None:
    resources = {r.key: r for r in (parse_resource(doc, "test.yaml") for doc in yaml.safe_load_all(text))}
    index = ResourceIndex()
    index.apply(resources, resources)
    reg.rebuild(index, {"vms"})


def test_workload_entry_changes_touch_endpoints_or_shape_as_they_should() -> None:
    reg = _registry(SE_AND_VM.replace("WEIGHT", "weight: 1"))
    svc = reg.services["legacy.vms.example"]
    (ep,) = svc.endpoints[0]
    # metadata.labels win over spec.labels, as in Istio
    assert (ep.address, ep.port, dict(ep.labels), ep.weight) == ("172.16.0.11", 80, {"app": "legacy", "version": "v1"}, 1)
    assert svc.shape.service_accounts == () and not svc.shape.mesh_external

    _rebuilt(reg, SE_AND_VM.replace("WEIGHT", "weight: 5"))
    after = reg.services["legacy.vms.example"]
    assert after.shape is svc.shape and not reg.shapes_changed  # a weight is an endpoint matter only
    assert after.endpoints[0][0].weight == 5

    _rebuilt(reg, SE_AND_VM.replace("WEIGHT", "weight: 5, serviceAccount: vm"))
    identity = reg.services["legacy.vms.example"]
    assert identity.shape.service_accounts == ("vm",) and reg.shapes_changed
    assert ("security.istio.io/tlsMode", "istio") in identity.endpoints[0][0].labels  # a sidecar, for auto mTLS
