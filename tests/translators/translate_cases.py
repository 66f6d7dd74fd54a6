"""Helpers for translator tests: load a golden case, translate it, render the output."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from google.protobuf import json_format

from translators import Translator, api
from translators.model import Resource, parse_resource
from translators.model.world import Proxy, World

TESTDATA = Path(__file__).parent / "testdata"
TYPES = {"clusters": api.CLUSTER, "endpoints": api.ENDPOINT, "listeners": api.LISTENER, "routes": api.ROUTE}


def load_case(case: str) -> tuple[list[Resource], Proxy]:
    """``<case>.in.yaml`` resources, and the proxy from a ``kind: TestProxy`` doc or ``<case>.proxy.yaml``."""
    docs = [d for d in yaml.safe_load_all((TESTDATA / f"{case}.in.yaml").read_text()) if d]
    proxy_file = TESTDATA / f"{case}.proxy.yaml"
    proxy_doc: dict[str, Any] = {}
    if proxy_file.exists():
        proxy_doc = yaml.safe_load(proxy_file.read_text())
    proxy_doc.update(next((d for d in docs if d.get("kind") == "TestProxy"), {}))
    proxy_doc.pop("kind", None)
    proxy_doc.setdefault("id", f"sidecar~{proxy_doc.get('ip', '10.0.0.100')}~{case}")
    proxy_doc.setdefault("ip", "10.0.0.100")
    proxy = Proxy(**proxy_doc)
    resources = [parse_resource(d, f"{case}.in.yaml") for d in docs if d.get("kind") != "TestProxy"]
    return resources, proxy


def world_of(resources: list[Resource], version: int = 1) -> World:
    by_key = {r.key: r for r in resources}
    return World(version, MappingProxyType(by_key), frozenset(by_key))


def render(layers: list[api.Layer]) -> dict[str, Any]:
    # Through JSON: MessageToDict renders Any as OrderedDict, which safe_dump refuses.
    return {
        name: json.loads(json_format.MessageToJson(msg, preserving_proto_field_name=True))
        for layer in layers
        for name, msg in layer.resources.items()
    }


def translate_case(case: str) -> dict[str, str]:
    """The golden texts of a case: ``{"clusters": yaml, ..., "errors": yaml}``."""
    resources, proxy = load_case(case)
    t = Translator()
    t.update(world_of(resources))
    out = t.for_proxy(proxy)
    texts = {kind: dump(render(out.get(type_url, []))) for kind, type_url in TYPES.items()}
    texts["errors"] = dump([e.as_dict() for e in t.errors])
    return texts


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, width=120)
