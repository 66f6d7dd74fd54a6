"""Manifest parsing and validation, shared by the file source and a future Kubernetes source.

Turns text (multi-document YAML, or JSON) into typed ``translators.model`` resources plus
``ConfigError``s that name the file, the resource and the field. Nothing here raises on
bad input: every problem becomes a ``ConfigError``.

YAML is composed by libyaml when present (``CSafeLoader``) and turned into Python objects
here, checking as it goes: a duplicate key, or aliases that expand beyond a budget (an
alias bomb), fail the file before any of it is validated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from translators.errors import ConfigError
from translators.model import KINDS, Resource, ResourceKey

#: Larger inputs are not parsed at all (the file source does not even read them).
MAX_BYTES = 16 * 1024 * 1024
#: Nodes that aliases may add to a file once expanded, beyond this or the number of nodes
#: written in it (whichever is larger). Manifests rarely use aliases; a "billion laughs"
#: document expands a few hundred bytes to billions of nodes.
ALIAS_BUDGET = 10_000

IGNORED_KIND = "kind {kind} is not read by meshpilot; ignored"
UNKNOWN_FIELD = "field not supported by meshpilot yet; ignored"


@dataclass(frozen=True)
class ParsedDocument:
    """One manifest (a YAML document, or one item of a ``kind: List``).

    ``key`` is known whenever kind, name and namespace could be read, even if the rest is
    invalid, so a caller can keep serving the last good version of that resource.
    ``resource`` is None when the document is invalid or of a kind meshpilot ignores.
    ``errors`` holds its errors and warnings.
    """

    label: str
    key: ResourceKey | None
    resource: Resource | None
    errors: tuple[ConfigError, ...] = ()


@dataclass(frozen=True)
class ParsedFile:
    """``errors`` are file-level failures (unreadable, YAML syntax): then ``documents`` is empty
    and the caller should not trust that the file means "no resources"."""

    documents: tuple[ParsedDocument, ...] = ()
    errors: tuple[ConfigError, ...] = ()

    @property
    def failed(self) -> bool:
        return bool(self.errors)


def parse_text(
    text: str | bytes,
    file: str,
    default_namespace: str = "default",
    *,
    is_json: bool = False,
    max_bytes: int = MAX_BYTES,
) -> ParsedFile:
    """Parse every document of one file. ``file`` is only used to name it in errors and ``source``."""
    if _too_large(text, max_bytes):
        return ParsedFile(
            errors=(ConfigError(file, "", "", f"file is larger than {max_bytes} bytes; not read"),)
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            return ParsedFile(
                errors=(ConfigError(file, "", "", f"not UTF-8 text (byte {e.start}); file not read"),)
            )
    try:
        raw = _load_json(text) if is_json else _load_yaml(text)
    except _SyntaxProblem as e:
        return ParsedFile(errors=(ConfigError(file, "", "", str(e)),))

    docs: list[ParsedDocument] = []
    for n, obj in enumerate(raw, start=1):
        if obj is None:  # empty document, e.g. a trailing '---'
            continue
        if _is_list(obj):
            for m, item in enumerate(obj["items"], start=1):
                docs.append(parse_object(item, file, f"doc {n}, item {m}", default_namespace))
        else:
            docs.append(parse_object(obj, file, f"doc {n}", default_namespace))
    return ParsedFile(documents=tuple(docs))


def parse_object(obj: Any, source: str, where: str, default_namespace: str = "default") -> ParsedDocument:
    """Validate one decoded manifest. ``where`` names it when it has no name (``doc 2``)."""
    if not isinstance(obj, dict):
        what = type(obj).__name__ if obj is not None else "null"
        return ParsedDocument(
            f"<{where}>",
            None,
            None,
            (ConfigError(source, f"<{where}>", "", f"not a manifest (a mapping), got {what}"),),
        )
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        label = f"<{where}>"
        return ParsedDocument(label, None, None, (ConfigError(source, label, "kind", "kind is missing"),))
    cls = KINDS.get(kind)
    if cls is None:
        label = f"{kind} {_name_of(obj, default_namespace) or f'<{where}>'}"
        return ParsedDocument(
            label,
            None,
            None,
            (ConfigError(source, label, "kind", IGNORED_KIND.format(kind=kind), "warning"),),
        )

    data = dict(obj)
    meta = data.get("metadata")
    if isinstance(meta, dict) and meta.get("namespace") is None:
        data["metadata"] = {**meta, "namespace": default_namespace}
    data["source"] = source
    qualified = _name_of(data, default_namespace)
    key = ResourceKey(kind, *qualified.split("/", 1)) if qualified else None
    label = str(key) if key else f"{kind} <{where}>"

    errors: list[ConfigError] = []
    api = data.get("apiVersion")
    if api is not None and api not in cls.API_VERSIONS:
        errors.append(
            ConfigError(
                source,
                label,
                "apiVersion",
                f"apiVersion {api} is not valid for {kind}; use {' or '.join(cls.API_VERSIONS)}",
            )
        )
    try:
        resource: Resource | None = cls.model_validate(data)
    except ValidationError as e:
        resource = None
        errors.extend(ConfigError(source, label, field, msg) for field, msg in _validation_errors(e, data))
    except (RecursionError, ValueError, TypeError) as e:  # absurd inputs pydantic itself chokes on
        resource = None
        errors.append(ConfigError(source, label, "", f"cannot validate: {e}"))
    if errors:
        return ParsedDocument(label, key, None, tuple(errors))
    assert resource is not None
    warnings = tuple(
        ConfigError(source, label, f, UNKNOWN_FIELD, "warning") for f in unknown_fields(resource)
    )
    return ParsedDocument(label, key, resource, warnings)


def unknown_fields(model: BaseModel, path: str = "") -> Iterator[str]:
    """Dotted paths of fields kept by ``extra="allow"`` but not modelled, in nested models too."""
    found: list[str] = []
    _unknown_in(model, path, found)
    return iter(found)


def _unknown_in(value: Any, path: str, found: list[str]) -> None:
    # Runs on every field of every resource: scalars are skipped before any path is built.
    if isinstance(value, BaseModel):
        found.extend(_join(path, name) for name in value.__pydantic_extra__ or {})
        fields = value.__dict__
        for name in _field_names(type(value)):
            v = fields.get(name)
            if type(v) not in _ATOMS:
                _unknown_in(v, _join(path, name), found)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            if type(v) not in _ATOMS:
                _unknown_in(v, f"{path}[{i}]", found)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if type(v) not in _ATOMS:
                _unknown_in(v, _join(path, str(k)), found)


_ATOMS = frozenset({str, int, float, bool, type(None)})
_FIELD_NAMES: dict[type[BaseModel], tuple[str, ...]] = {}


def _field_names(cls: type[BaseModel]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(cls.model_fields)
    return names


# ---------------------------------------------------------------- helpers


class _SyntaxProblem(Exception):
    pass


def _make_loader(base: type[Any]) -> type[Any]:
    if base.yaml_path_resolvers:
        return base  # tags may depend on where a node is: resolve them the usual way

    class Loader(base):  # type: ignore[valid-type,misc]
        """A node's tag depends only on its kind and, for a plain scalar, its text: the
        same few texts repeat, so their tags come from a cache."""

        _tags: dict[str, str] = {}

        def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
            if kind is yaml.ScalarNode:
                if not implicit[0]:
                    return str(self.DEFAULT_SCALAR_TAG)
                tag = self._tags.get(value)
                if tag is None:
                    tag = super().resolve(kind, value, implicit)
                    if len(self._tags) < 20_000 and len(value) < 100:
                        self._tags[value] = tag
                return tag
            return str(self.DEFAULT_SEQUENCE_TAG if kind is yaml.SequenceNode else self.DEFAULT_MAPPING_TAG)

        def descend_resolver(self, current_node: Any, current_index: Any) -> None:
            pass

        def ascend_resolver(self) -> None:
            pass

    return Loader


# libyaml's parser and composer when PyYAML was built with it; the checks are the same either way.
_Loader = _make_loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _load_yaml(text: str) -> list[Any]:
    # All documents are loaded before any is used: a syntax error anywhere fails the whole
    # file, so a half-read file is never mistaken for a file that dropped resources.
    loader = _Loader(text)
    try:
        build = _Builder(loader)
        docs = []
        while loader.check_node():
            docs.append(build.document(loader.get_node()))
        return docs
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        raise _SyntaxProblem(f"YAML syntax error at {where}{problem}") from None
    except yaml.reader.ReaderError as e:  # control characters, binary: no line/column mark
        raise _SyntaxProblem(f"not YAML text: {e.reason} (character {e.position})") from None
    except yaml.YAMLError as e:
        raise _SyntaxProblem(f"YAML syntax error: {e}") from None
    except RecursionError:
        raise _SyntaxProblem("YAML nested too deeply") from None
    finally:
        loader.dispose()


_TAG = "tag:yaml.org,2002:"
_STR, _INT, _BOOL, _NULL = _TAG + "str", _TAG + "int", _TAG + "bool", _TAG + "null"
_MAP, _SEQ, _SET, _OMAP, _PAIRS = _TAG + "map", _TAG + "seq", _TAG + "set", _TAG + "omap", _TAG + "pairs"
_MERGE, _VALUE = _TAG + "merge", _TAG + "value"


class _Builder:
    """Python objects from composed YAML nodes, as PyYAML's SafeConstructor builds them, but
    refusing duplicate keys and alias bombs.

    An alias is the same node object met again: its object is built once and shared (as
    PyYAML does), and the nodes it stands for are counted against the budget, so counting
    costs what the text costs however far the aliases would expand.
    """

    def __init__(self, loader: Any, budget: int = ALIAS_BUDGET):
        self.loader = loader
        self.budget = budget
        self.nodes = 0  # nodes built from the text
        self.aliased = 0  # nodes reached again through aliases, expanded
        self.done: dict[int, tuple[Any, int]] = {}  # id(collection node) -> (object, expanded size)
        self.open: set[int] = set()  # collections being built: met again, they contain themselves

    def document(self, root: yaml.Node | None) -> Any:
        self.done.clear()  # anchors do not cross documents (and ids of freed nodes are reused)
        return None if root is None else self.build(root, root)[0]

    def build(self, node: yaml.Node, parent: yaml.Node) -> tuple[Any, int]:
        """The node's object and how many nodes it stands for once aliases are expanded."""
        if type(node) is yaml.ScalarNode:
            self.nodes += 1
            return self.scalar(node), 1
        key = id(node)
        hit = self.done.get(key)
        if hit is not None:
            self.aliased += hit[1]
            limit = max(self.budget, self.nodes)
            if self.aliased > limit:
                raise _SyntaxProblem(
                    f"line {_line(parent)}: YAML aliases expand to more than {limit} nodes; "
                    "refused (an alias bomb?)"
                )
            return hit
        if key in self.open:
            raise _SyntaxProblem(
                f"line {_line(parent)}: a YAML alias refers to a collection that contains it"
            )
        self.nodes += 1
        self.open.add(key)
        result = self.mapping(node) if type(node) is yaml.MappingNode else self.sequence(node)
        self.open.discard(key)
        self.done[key] = result
        return result

    def scalar(self, node: yaml.Node) -> Any:
        tag, value = node.tag, node.value
        if tag in (_STR, _VALUE):
            return value
        if tag == _INT and value.isascii() and value.isdigit() and (value[0] != "0" or value == "0"):
            return int(value)
        if tag == _BOOL:
            return self.loader.bool_values[value.lower()]
        if tag == _NULL:
            return None
        # Other ints (0x1F, 1_000, -3), floats, timestamps, !!binary; an unknown tag raises.
        return self.loader.construct_object(node, deep=True)

    def mapping(self, node: yaml.Node) -> tuple[Any, int]:
        if node.tag not in (_MAP, _SET):
            raise _no_constructor(node)
        out: dict[Any, Any] = {}
        merged: dict[Any, Any] | None = None
        size = 1
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE and type(key_node) is yaml.ScalarNode:
                merged = {} if merged is None else merged
                size += 1 + self.merge(value_node, node, merged)
                continue
            # Scalars inline (most nodes are): what build() does for them, without the calls.
            if type(key_node) is yaml.ScalarNode:
                key = key_node.value if key_node.tag == _STR else self.scalar(key_node)
                self.nodes += 1
                size += 1
            else:
                key, key_size = self.build(key_node, node)
                size += key_size
            if type(value_node) is yaml.ScalarNode:
                value = self.scalar(value_node)
                self.nodes += 1
                size += 1
            else:
                value, value_size = self.build(value_node, node)
                size += value_size
            try:
                seen = key in out
            except TypeError:
                raise _SyntaxProblem(
                    f"line {_line(key_node)}: a mapping key must be a scalar, not a {type(key).__name__}"
                ) from None
            if seen:
                first = next(
                    (k, v)
                    for k, v in node.value
                    if type(k) is yaml.ScalarNode and k.tag != _MERGE and self.scalar(k) == key
                )
                raise _SyntaxProblem(
                    f"line {_key_line(node, key_node, value_node)}: duplicate key {_show(key)} in a mapping "
                    f"(first at line {_key_line(node, *first)})"
                )
            out[key] = value
        if merged:  # explicit keys win over merged ones (YAML's merge key, `<<: *defaults`)
            merged.update(out)
            out = merged
        return (set(out) if node.tag == _SET else out), size

    def merge(self, value_node: yaml.Node, parent: yaml.Node, into: dict[Any, Any]) -> int:
        sources = value_node.value if type(value_node) is yaml.SequenceNode else [value_node]
        size = 0
        for source in sources:
            if type(source) is not yaml.MappingNode:
                raise _SyntaxProblem(f"line {_line(source)}: `<<` merges a mapping or a list of mappings")
            obj, n = self.build(source, parent)
            size += n
            for k, v in obj.items():
                into.setdefault(k, v)  # the first mapping listed wins
        return size

    def sequence(self, node: yaml.Node) -> tuple[Any, int]:
        items = []
        size = 1
        for child in node.value:
            value, n = self.build(child, node)
            items.append(value)
            size += n
        if node.tag == _SEQ:
            return items, size
        if node.tag in (_OMAP, _PAIRS):
            if not all(isinstance(i, dict) and len(i) == 1 for i in items):
                raise _SyntaxProblem(
                    f"line {_line(node)}: {node.tag[len(_TAG) :]} items must be one-key mappings"
                )
            return [pair for i in items for pair in i.items()], size
        raise _no_constructor(node)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _key_line(mapping: yaml.Node, key: yaml.Node, value: yaml.Node) -> int:
    # An alias key is its anchor's node, marked where the anchor is: then say where its value is.
    return _line(key) if key.start_mark.index >= mapping.start_mark.index else _line(value)


def _show(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _no_constructor(node: yaml.Node) -> yaml.MarkedYAMLError:
    return yaml.constructor.ConstructorError(
        None, None, f"could not determine a constructor for the tag {node.tag!r}", node.start_mark
    )


def _too_large(text: str | bytes, limit: int) -> bool:
    # A str's length in characters is a lower bound of its UTF-8 size: encode only when close.
    if len(text) > limit:
        return True
    return (
        isinstance(text, str) and len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit
    )


def _load_json(text: str) -> list[Any]:
    try:
        return [json.loads(text, object_pairs_hook=_json_object)]
    except json.JSONDecodeError as e:
        raise _SyntaxProblem(f"JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise _SyntaxProblem("JSON nested too deeply") from None


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _SyntaxProblem(f"duplicate key {_show(key)} in an object")
        out[key] = value
    return out


def _is_list(obj: Any) -> bool:
    # `kubectl get -o yaml` writes `kind: List`; typed lists (VirtualServiceList) appear too.
    if not isinstance(obj, dict) or not isinstance(obj.get("items"), list):
        return False
    kind = obj.get("kind")
    return kind == "List" or (isinstance(kind, str) and kind.endswith("List") and kind[:-4] in KINDS)


def _name_of(obj: dict[str, Any], default_namespace: str) -> str | None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    name, ns = meta.get("name"), meta.get("namespace")
    if ns is None:
        ns = default_namespace
    if isinstance(name, str) and name and isinstance(ns, str) and ns:
        return f"{ns}/{name}"
    return None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _validation_errors(e: ValidationError, data: Any) -> list[tuple[str, str]]:
    """(field path, message) per problem; messages of one field are merged (union branches)."""
    by_field: dict[str, list[str]] = {}
    for err in e.errors(include_url=False):
        field = _field_path(err["loc"], data)
        msg = _message(err)
        msgs = by_field.setdefault(field, [])
        if msg not in msgs:
            msgs.append(msg)
    return [(f, "; ".join(m)) for f, m in by_field.items()]


_MISSING = object()


def _field_path(loc: tuple[int | str, ...], data: Any) -> str:
    """pydantic's loc as ``spec.http[0].route``, following the input data.

    Following the data tells field names from the tags pydantic inserts for union members
    (``targetPort.int``): a tag is a string step where the data is not a mapping.
    """
    path = ""
    cur: Any = data
    for step in loc:
        if isinstance(step, int) and isinstance(cur, list):
            path += f"[{step}]"
            cur = cur[step] if 0 <= step < len(cur) else _MISSING
        elif isinstance(cur, dict):
            path = _join(path, str(step))
            cur = cur.get(step, _MISSING)
        elif cur is _MISSING:
            path = _join(path, str(step)) if isinstance(step, str) else f"{path}[{step}]"
        # else: a union tag on a scalar or list: not part of the user's path
    return path


def _message(err: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        return "field is required"
    if kind == "value_error":
        return str(err.get("ctx", {}).get("error", msg.removeprefix("Value error, ")))
    value = err.get("input")
    if isinstance(value, bool | int | float | str) and len(repr(value)) <= 60:
        return f"{msg} (got {value!r})"
    return msg
