"""Headers (request/response set, add, remove) -> Envoy header operations.

``set`` overwrites, ``add`` appends. Pseudo-headers and ``host`` cannot be edited by
Envoy: setting ``:authority``/``host`` becomes a host rewrite instead, as in istiod.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2

from translators.model import HeaderOperations, Headers

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD


def _internal(name: str) -> bool:
    return name.startswith(":") or name.lower() == "host"


def _authority(name: str) -> bool:
    return name.lower() in (":authority", "host")


@dataclass
class HeaderEdits:
    request_add: list[base_pb2.HeaderValueOption] = field(default_factory=list)
    request_remove: list[str] = field(default_factory=list)
    response_add: list[base_pb2.HeaderValueOption] = field(default_factory=list)
    response_remove: list[str] = field(default_factory=list)
    authority: str = ""  # a host rewrite, from set/add of :authority or host


def _options(values: dict[str, str], action: int) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=action)  # type: ignore[arg-type]
        for k, v in sorted(values.items())
        if not _internal(k)
    ]


def _authority_of(ops: HeaderOperations) -> str:
    chosen = ""
    for values in (ops.add, ops.set):  # set wins over add
        for k, v in values.items():
            if _authority(k):
                chosen = v
    return chosen


def header_edits(headers: Headers | None) -> HeaderEdits:
    out = HeaderEdits()
    if headers is None:
        return out
    if (req := headers.request) is not None:
        out.request_add = _options(req.set, _OVERWRITE) + _options(req.add, _APPEND)
        out.request_remove = [h for h in req.remove if not _internal(h)]
        out.authority = _authority_of(req)
    if (resp := headers.response) is not None:
        out.response_add = _options(resp.set, _OVERWRITE) + _options(resp.add, _APPEND)
        out.response_remove = [h for h in resp.remove if not _internal(h)]
    return out


def apply_edits(target, edits: HeaderEdits) -> None:  # type: ignore[no-untyped-def]
    """Add ``edits`` to a Route or a WeightedCluster.ClusterWeight (same field names)."""
    target.request_headers_to_add.extend(edits.request_add)
    target.request_headers_to_remove.extend(edits.request_remove)
    target.response_headers_to_add.extend(edits.response_add)
    target.response_headers_to_remove.extend(edits.response_remove)
