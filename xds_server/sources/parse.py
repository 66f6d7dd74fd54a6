"""Manifest parsing and validation, shared by the file source and a future Kubernetes source.

Turns text (multi-document YAML, or JSON) into typed ``translators.model`` resources plus
``ConfigError``s that name the file, the resource and the field. Nothing here raises on
bad input: every problem becomes a ``ConfigError``.
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

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

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
    text: str | bytes, file: str, default_namespace: str = "default", *, is_json: bool = False
) -> ParsedFile:
    """Parse every document of one file. ``file`` is only used to name it in errors and ``source``."""
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
    for name in model.model_extra or {}:
        yield _join(path, name)
    for name in type(model).model_fields:
        yield from _unknown_in(getattr(model, name), _join(path, name))


def _unknown_in(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, BaseModel):
        yield from unknown_fields(value, path)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _unknown_in(v, f"{path}[{i}]")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _unknown_in(v, _join(path, str(k)))


# ---------------------------------------------------------------- helpers


class _SyntaxProblem(Exception):
    pass


def _load_yaml(text: str) -> list[Any]:
    # All documents are loaded before any is used: a syntax error anywhere fails the whole
    # file, so a half-read file is never mistaken for a file that dropped resources.
    loader = _Loader(text)
    try:
        docs = []
        while loader.check_data():
            docs.append(loader.get_data())
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


def _load_json(text: str) -> list[Any]:
    try:
        return [json.loads(text)]
    except json.JSONDecodeError as e:
        raise _SyntaxProblem(f"JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise _SyntaxProblem("JSON nested too deeply") from None


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
