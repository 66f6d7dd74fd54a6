"""``/debug/config?proxy=``: what a proxy should have, in Envoy's JSON, secrets redacted.

Each type keeps ``version`` and ``resources`` (name -> version) as before, and adds
``full``: name -> {"version", "resource"}, the resource as ``json_format.MessageToDict``
renders it with Envoy's field names. Secrets never appear as messages: only their name,
SPIFFE ID, serial and dates, as ``SecretStore.describe`` gives them.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from xds_server.xds.cache import ProxyView, Resource
from xds_server.xds.status import short

SECRET_TYPE = "sds"


def resource_json(res: Resource) -> dict[str, Any]:
    body = json_format.MessageToDict(res.message, preserving_proto_field_name=True)
    return {"@type": res.type_url, **body}


def proxy_config(proxy_id: str, view: ProxyView, secrets: list[dict[str, Any]] | None = None,
                 roots: object = None) -> dict[str, Any]:
    """``secrets``: the ``SecretStore.describe()`` entries of the identities this proxy's streams proved;
    ``roots``: the trusted roots as the CA describes them (subject, fingerprint, not_after)."""
    types: dict[str, Any] = {}
    for type_url, tv in view.types.items():
        types[short(type_url)] = {
            "version": tv.version,
            "resources": {r.name: r.version for r in tv.resources()},
            "full": {r.name: {"version": r.version, "resource": resource_json(r)} for r in tv.resources()},
        }
    for described in secrets or ():
        types[SECRET_TYPE] = redacted_secrets(described, [r for r in roots if isinstance(r, dict)]
                                              if isinstance(roots, list) else [])
    return {"proxy": proxy_id, "generation": view.generation, "types": types}


def redacted_secrets(described: dict[str, Any], roots: list[dict[str, Any]]) -> dict[str, Any]:
    """An identity's SDS secrets as names, versions and certificate facts; never key material."""
    cert = described.get("certificate") or {}
    versions: dict[str, str] = dict(described.get("secrets") or {})
    full: dict[str, Any] = {}
    for name, version in versions.items():
        resource: dict[str, Any] = {"name": name, "redacted": True, "identity": described.get("identity")}
        if name == "default":
            resource.update({k: cert[k] for k in ("serial", "not_before", "not_after") if k in cert})
        elif roots:
            resource["roots"] = [{k: r[k] for k in ("subject", "fingerprint", "not_after") if k in r} for r in roots]
            resource["not_after"] = min(str(r.get("not_after")) for r in roots)
        full[name] = {"version": version, "resource": resource}
    return {"version": "", "resources": versions, "full": full}


def add_credentials(dumped: dict[str, Any], versions: dict[str, str]) -> None:
    """A gateway's ``kubernetes://`` credentials beside its own secrets: name and version only."""
    sds = dumped["types"].setdefault(SECRET_TYPE, {"version": "", "resources": {}, "full": {}})
    for name, version in versions.items():
        sds["resources"][name] = version
        sds["full"][name] = {"version": version, "resource": {"name": name, "redacted": True}}
