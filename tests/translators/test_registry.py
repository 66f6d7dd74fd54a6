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
