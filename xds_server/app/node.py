"""Who is on the other end of a stream: the Envoy node, read the way Istio writes it.

``node.id`` is ``<type>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`` and
``node.metadata`` carries NAMESPACE, LABELS, SERVICE_ACCOUNT, INSTANCE_IPS and NAME,
GENERATOR=grpc for proxyless gRPC applications (their own xDS client, not Envoy), and
INTERCEPTION_MODE=REDIRECT for a sidecar whose pod's traffic iptables captures (NONE, or
absent: no capture).
Metadata wins over what the id says; the id fills the gaps.
"""

from __future__ import annotations

from dataclasses import fields

from envoy.config.core.v3.base_pb2 import Node
from google.protobuf import json_format

from translators.model.world import Proxy


class NodeError(ValueError):
    """The node cannot be turned into a proxy; the stream is refused with this message."""


def proxy_from_node(node: Node) -> Proxy:
    if not node.id:
        raise NodeError("node.id is empty: the bootstrap must set node.id (see `meshpilot bootstrap`)")
    meta = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
    parts = node.id.split("~")
    id_type, id_ip, id_pod, id_ns = "sidecar", "", "", ""
    if len(parts) == 4:
        id_type, id_ip, pod_ns, domain = parts
        id_pod, _, id_ns = pod_ns.partition(".")
        id_ns = id_ns or domain.split(".", 1)[0]
    role = str(meta.get("MESHPILOT_ROLE") or ("gateway" if id_type == "router" else "sidecar"))
    if role not in ("sidecar", "gateway"):
        raise NodeError(f"node {node.id}: metadata MESHPILOT_ROLE must be sidecar or gateway, not {role!r}")
    ips = str(meta.get("INSTANCE_IPS") or id_ip).split(",")
    ip = ips[0].strip()
    if not ip:
        raise NodeError(f"node {node.id}: no IP (metadata INSTANCE_IPS, or the second part of the node id)")
    generator = str(meta.get("GENERATOR") or "envoy")
    if generator not in ("envoy", "grpc"):
        raise NodeError(f"node {node.id}: metadata GENERATOR must be grpc (or absent, for Envoy), not {generator!r}")
    interception = str(meta.get("INTERCEPTION_MODE") or "NONE")
    if interception not in ("REDIRECT", "NONE"):
        raise NodeError(f"node {node.id}: metadata INTERCEPTION_MODE must be REDIRECT or NONE, not {interception!r}"
                        " (TPROXY is not supported)")
    labels = meta.get("LABELS") or {}
    if not isinstance(labels, dict):
        raise NodeError(f"node {node.id}: metadata LABELS must be an object of strings")
    return Proxy(
        id=node.id,
        role=role,  # type: ignore[arg-type]
        ip=ip,
        namespace=str(meta.get("NAMESPACE") or id_ns or "default"),
        labels={str(k): str(v) for k, v in labels.items()},
        service_account=str(meta.get("SERVICE_ACCOUNT") or "default"),
        pod_name=str(meta.get("NAME") or id_pod),
        generator=generator,  # type: ignore[arg-type]
        locality="/".join((node.locality.region, node.locality.zone, node.locality.sub_zone)).rstrip("/"),
        capture=interception == "REDIRECT" and role == "sidecar",
    )


def proxy_as_dict(proxy: Proxy) -> dict[str, object]:
    """What translation reads of a proxy, as JSON (``/debug/proxies``); ``proxy_from_dict`` reverses it."""
    out = {f.name: getattr(proxy, f.name) for f in fields(proxy)}
    out["labels"] = dict(proxy.labels)
    return out


def proxy_from_dict(d: dict[str, object]) -> Proxy:
    known = {f.name for f in fields(Proxy)}
    return Proxy(**{k: v for k, v in d.items() if k in known})  # type: ignore[arg-type]
