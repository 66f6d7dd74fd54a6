"""The Istio CRDs of charts/meshpilot/crds, generated from the models in translators.model.

Each Istio kind that has a model gets a structural ``openAPIV3Schema`` derived from it, so
the API server itself refuses wrong types at ``kubectl apply`` (``weight: "abc"``,
``hosts: 5``) while the Istio YAML users already have applies unchanged:

- only types are checked (string, integer, number, boolean, array, object), never values:
  those are the webhook's and the loader's job, with their better messages;
- every object keeps the fields it does not model (``x-kubernetes-preserve-unknown-fields``,
  as the models' ``extra="allow"``) instead of pruning them;
- a field the model accepts in more than one shape is typed only as far as all shapes agree:
  ``int | str`` is ``x-kubernetes-int-or-string``, a validator that runs before the type
  check (and does not declare its input with ``json_schema_input_type``) leaves the field
  open, and durations are strings, as in Istio's own CRDs.

An Istio kind without a model keeps whatever CRD file the chart has for it. Run after a
model changes (or a kind gains a model)::

    ./dev run python -m xds_server.sources.crds          # rewrite the files
    ./dev run python -m xds_server.sources.crds --check  # exit 1 if they are stale

tests/kube/test_crds.py checks the committed files equal this output.
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, PlainValidator, WrapValidator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from translators.model import KINDS, Resource

CHART_CRDS = Path(__file__).resolve().parents[2] / "charts" / "meshpilot" / "crds"
ISTIO_GROUPS = ("networking.istio.io", "security.istio.io", "telemetry.istio.io")
#: Short names as Istio's CRDs have them (``kubectl get vs``).
SHORT_NAMES = {
    "VirtualService": ["vs"], "DestinationRule": ["dr"], "ServiceEntry": ["se"], "WorkloadEntry": ["we"],
    "Gateway": ["gw"], "PeerAuthentication": ["pa"], "AuthorizationPolicy": ["ap"],
    "RequestAuthentication": ["ra"],
}

Schema = dict[str, Any]
#: Any value at all: what the model accepts there is not one JSON type.
OPEN: Schema = {"x-kubernetes-preserve-unknown-fields": True}
_SCALARS: dict[Any, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}


def plural(kind: str) -> str:
    """English, as Kubernetes resource names are: policy -> policies, gateway -> gateways."""
    lower = kind.lower()
    return lower[:-1] + "ies" if lower.endswith("y") and lower[-2:-1] not in "aeiou" else lower + "s"


def group_of(cls: type[Resource]) -> str:
    return cls.API_VERSIONS[0].split("/")[0] if "/" in cls.API_VERSIONS[0] else ""


def istio_kinds() -> list[type[Resource]]:
    """The modelled kinds served as Istio CRDs, in the order of ``KINDS``."""
    return [cls for cls in KINDS.values() if cls.API_VERSIONS and group_of(cls) in ISTIO_GROUPS]


# ---------------------------------------------------------------- model -> schema


def _validators_open(metadata: Sequence[object]) -> tuple[bool, object]:
    """Whether a validator that sees the raw value comes first, and the input type it declares."""
    for m in metadata:
        if isinstance(m, BeforeValidator | PlainValidator | WrapValidator):
            declared = m.json_schema_input_type
            return True, (PydanticUndefined if declared is Any else declared)
    return False, PydanticUndefined


def _nullable(schema: Schema) -> Schema:
    return schema if schema is OPEN else {**schema, "nullable": True}


class _Walker:
    def __init__(self) -> None:
        self._stack: list[type[BaseModel]] = []

    def type_schema(self, tp: Any) -> Schema:
        origin, args = get_origin(tp), get_args(tp)
        if origin is typing.Annotated:
            opened, declared = _validators_open(args[1:])
            if opened:
                return OPEN if declared is PydanticUndefined else self.type_schema(declared)
            return self.type_schema(args[0])
        if origin in (typing.Union, types.UnionType):
            return self._union(args)
        if origin is Literal:
            kinds = {_SCALARS.get(type(a)) for a in args}
            return {"type": kinds.pop()} if len(kinds) == 1 and None not in kinds else OPEN
        if tp in _SCALARS:
            return {"type": _SCALARS[tp]}
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return {"type": "string"}
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return self.model_schema(tp)
        if origin in (list, set, frozenset, Sequence) or origin is tuple and len(args) == 2 and args[1] is ...:
            return {"type": "array", "items": self.type_schema(args[0])}
        if origin in (dict, Mapping):
            return {"type": "object", "additionalProperties": self.type_schema(args[1])}
        return OPEN  # Any, tuples of fixed shape, NamedTuples without a declared input...

    def _union(self, args: tuple[Any, ...]) -> Schema:
        present = [a for a in args if a is not type(None)]
        schemas = [self.type_schema(a) for a in present]
        if len(schemas) == 1:
            return _nullable(schemas[0]) if len(present) < len(args) else schemas[0]
        kinds = {s.get("type") for s in schemas}
        if kinds == {"integer", "string"} and all(s.keys() == {"type"} for s in schemas):
            schema: Schema = {"x-kubernetes-int-or-string": True}
        elif len(kinds) == 1 and all(s == schemas[0] for s in schemas) and OPEN not in schemas:
            schema = schemas[0]
        else:
            return OPEN
        return _nullable(schema) if len(present) < len(args) else schema

    def field_schema(self, model: type[BaseModel], name: str, field: FieldInfo) -> Schema:
        opened, declared = _validators_open(field.metadata)
        for deco in model.__pydantic_decorators__.field_validators.values():
            if (name in deco.info.fields or "*" in deco.info.fields) and deco.info.mode != "after":
                opened, declared = True, deco.info.json_schema_input_type
        if opened:
            return OPEN if declared in (PydanticUndefined, Any) else self.type_schema(declared)
        return self.type_schema(field.annotation)

    def model_schema(self, model: type[BaseModel]) -> Schema:
        if model in self._stack or any(
            d.info.mode != "after" for d in model.__pydantic_decorators__.model_validators.values()
        ):
            return {"type": "object", **OPEN}  # recursive, or it reshapes its input first
        self._stack.append(model)
        try:
            properties = {
                field.alias or name: self.field_schema(model, name, field)
                for name, field in model.model_fields.items()
                if not field.exclude
            }
        finally:
            self._stack.pop()
        schema: Schema = {"type": "object", "properties": properties}
        if model.model_config.get("extra") != "forbid":
            schema["x-kubernetes-preserve-unknown-fields"] = True  # fields not modelled (yet) stay
        return schema


def spec_schema(cls: type[Resource]) -> Schema:
    """The structural schema of ``cls``'s ``spec``."""
    return _Walker().field_schema(cls, "spec", cls.model_fields["spec"])


# ---------------------------------------------------------------- CRD documents


def crd(cls: type[Resource]) -> dict[str, Any]:
    group = group_of(cls)
    name = plural(cls.KIND)
    root: Schema = {"type": "object", "properties": {
        "spec": spec_schema(cls),
        "status": {"type": "object", **OPEN},
    }}
    names: dict[str, Any] = {"kind": cls.KIND, "listKind": f"{cls.KIND}List", "plural": name,
                             "singular": cls.KIND.lower()}
    if cls.KIND in SHORT_NAMES:
        names["shortNames"] = SHORT_NAMES[cls.KIND]
    names["categories"] = ["istio-io", group.replace(".", "-").removesuffix("-io") + "-io"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{name}.{group}", "labels": {"app.kubernetes.io/part-of": "meshpilot"}},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": names,
            "versions": [
                # Each version the same schema (Istio's are identical too); the first is stored.
                {"name": v.split("/")[1], "served": True, "storage": i == 0, "subresources": {"status": {}},
                 "schema": {"openAPIV3Schema": root}}
                for i, v in enumerate(cls.API_VERSIONS)
            ],
        },
    }


def file_name(cls: type[Resource]) -> str:
    return f"{group_of(cls)}_{plural(cls.KIND)}.yaml"


def render(cls: type[Resource]) -> str:
    header = (f"# Generated from the {cls.KIND} model by `python -m xds_server.sources.crds`: do not edit.\n"
              "# Types are checked by the API server; values by meshpilot's validating webhook.\n")
    # No anchors: the versions share one schema object, but a reader wants each spelled out.
    dumper = type("_NoAliases", (yaml.SafeDumper,), {"ignore_aliases": lambda self, data: True})
    return header + yaml.dump(crd(cls), Dumper=dumper, sort_keys=False, width=120)


def generated() -> Iterator[tuple[str, str]]:
    """(file name, text) of each CRD the models define."""
    for cls in istio_kinds():
        yield file_name(cls), render(cls)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xds_server.sources.crds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=CHART_CRDS, help="where the CRD files are (default: the chart's)")
    parser.add_argument("--check", action="store_true", help="only report stale files (exit status 1)")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generated():
        path = args.dir / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    verb = "stale" if args.check else "written"
    print(f"{len(stale)} CRD file(s) {verb}{': ' + ', '.join(stale) if stale else ''}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
