"""Sidecar injection: whether a Pod gets an Envoy, and the Pod it becomes. Pure: no I/O.

Used by the mutating webhook (``POST /inject``, :func:`review`) and by ``meshpilot
kube-inject`` (offline, on pod templates). Labels and annotations are Istio's, with
Istio's precedence (:func:`decide`).

What an injected Pod gains (names as Istio's where tools look for them):

* init container ``istio-init``: the iptables rules of :func:`iptables_script` (inbound TCP
  to 15006, outbound to 15001; the proxy's uid, excluded ports and ranges skipped);
* init container ``meshpilot-bootstrap``: ``meshpilot bootstrap`` writes the Envoy bootstrap
  into a shared emptyDir from the pod's own identity (downward API: name, namespace, IP,
  service account; labels from a downwardAPI volume) and its projected service-account
  token (audience ``istio-ca``), which meshpilot checks with a TokenReview before it serves
  the pod a certificate; ``--capture`` tells meshpilot to give it the 15001/15006
  listeners the iptables rules need; ``--delta``: Delta xDS, as Istio's proxies since 1.22
  (``ISTIO_DELTA_XDS``; a pod's ``proxy.istio.io/config`` ``proxyMetadata`` may turn it off);
* container ``istio-proxy``: the official Envoy image, uid 1337, readiness on the
  bootstrap's health listener (``:15021/healthz/ready``, the admin's ``/ready``);
* annotations ``prometheus.io/scrape``, ``/port`` (15090) and ``/path`` (``/stats/prometheus``):
  Prometheus's Kubernetes pod discovery scrapes the proxy's stats listener, as under Istio
  (a pod that already says ``prometheus.io/*`` keeps what it says);
* annotation ``sidecar.istio.io/status``: what was added. A Pod carrying it is never
  injected again, so injecting twice changes nothing.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from translators import capture
from xds_server.local.envoy_binary import ENVOY_VERSION

# ---------------------------------------------------------------- names

INJECT = "sidecar.istio.io/inject"
STATUS = "sidecar.istio.io/status"
NS_LABEL = "istio-injection"
REV_LABEL = "istio.io/rev"
#: Our own namespace label, for clusters that keep Istio's for Istio.
MESHPILOT_LABEL = "meshpilot.io/inject"
PROXY_CPU = "sidecar.istio.io/proxyCPU"
PROXY_MEMORY = "sidecar.istio.io/proxyMemory"
PROXY_CPU_LIMIT = "sidecar.istio.io/proxyCPULimit"
PROXY_MEMORY_LIMIT = "sidecar.istio.io/proxyMemoryLimit"
EXCLUDE_INBOUND = "traffic.sidecar.istio.io/excludeInboundPorts"
EXCLUDE_OUTBOUND = "traffic.sidecar.istio.io/excludeOutboundPorts"
INCLUDE_OUTBOUND_RANGES = "traffic.sidecar.istio.io/includeOutboundIPRanges"
EXCLUDE_OUTBOUND_RANGES = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
PROXY_CONFIG = "proxy.istio.io/config"
#: The ``proxyMetadata`` key of a pod's ProxyConfig that picks Delta (true) or SotW xDS.
DELTA_XDS = "ISTIO_DELTA_XDS"

PROXY_CONTAINER = "istio-proxy"
IPTABLES_CONTAINER = "istio-init"
BOOTSTRAP_CONTAINER = "meshpilot-bootstrap"
ENVOY_VOLUME, PODINFO_VOLUME, TOKEN_VOLUME = "meshpilot-envoy", "meshpilot-podinfo", "istio-token"
ENVOY_DIR, PODINFO_DIR, TOKEN_DIR = "/etc/meshpilot/envoy", "/etc/meshpilot/podinfo", "/var/run/secrets/tokens"
BOOTSTRAP_FILE = f"{ENVOY_DIR}/envoy.json"
TOKEN_FILE = f"{TOKEN_DIR}/istio-token"
TOKEN_AUDIENCE = "istio-ca"
ROOT_ENV = "MESHPILOT_XDS_ROOT_PEM"

PROXY_UID = 1337
#: Where the rules send captured traffic: the virtual listeners meshpilot serves there.
INBOUND_CAPTURE_PORT = capture.INBOUND_PORT
OUTBOUND_CAPTURE_PORT = capture.OUTBOUND_PORT
ADMIN_PORT = 15000
HEALTH_PORT = 15021
STATS_PORT = 15090
STATS_PATH = "/stats/prometheus"
#: Never captured inbound: the proxy's own ports (Istio's list, less the agent's).
PROXY_PORTS = (ADMIN_PORT, OUTBOUND_CAPTURE_PORT, INBOUND_CAPTURE_PORT, HEALTH_PORT, STATS_PORT)
#: What Prometheus's pod discovery (the usual relabelling) reads.
PROMETHEUS_ANNOTATIONS = {"prometheus.io/scrape": "true", "prometheus.io/port": str(STATS_PORT),
                          "prometheus.io/path": STATS_PATH}

DEFAULT_PROXY_IMAGE = f"envoyproxy/envoy:v{ENVOY_VERSION}"
DEFAULT_INIT_IMAGE = "ghcr.io/meshpilot/meshpilot:0.1.0"


class InjectionError(ValueError):
    """A Pod whose annotations cannot be honoured: names the annotation and the bad value."""


@dataclass(frozen=True)
class InjectConfig:
    """How injected proxies reach meshpilot, and which images they run."""

    #: meshpilot's TLS xDS address as pods dial it, e.g. ``meshpilot.istio-system.svc:15012``.
    xds_address: str
    #: PEM of the mesh trust bundle: the proxy verifies meshpilot's certificate against it.
    root_pem: bytes
    proxy_image: str = DEFAULT_PROXY_IMAGE
    #: An image with ``meshpilot`` and ``iptables`` (meshpilot's own).
    init_image: str = DEFAULT_INIT_IMAGE
    #: Lifetime asked of the projected token. The bootstrap embeds the token when the pod
    #: starts (Envoy cannot re-read it), so it must outlive the pod's xDS reconnects.
    token_seconds: int = 86400
    #: Delta xDS unless a pod's ProxyConfig says otherwise: istiod's default since Istio 1.22.
    #: Over delta a change sends only what changed (and routes over VHDS), not every cluster.
    delta: bool = True
    default_resources: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: {"requests": {"cpu": "100m", "memory": "128Mi"}}
    )


@dataclass(frozen=True)
class Decision:
    inject: bool
    reason: str


# ---------------------------------------------------------------- the decision


def _flag(value: Any) -> bool | None:
    if not isinstance(value, str):
        return None
    v = value.strip().lower()
    if v in ("true", "y", "yes", "enabled"):
        return True
    if v in ("false", "n", "no", "disabled"):
        return False
    return None


def decide(pod: Mapping[str, Any], namespace_labels: Mapping[str, str] | None) -> Decision:
    """Whether ``pod`` gets a sidecar, Istio's way.

    ``namespace_labels`` None means the API server's selectors already chose the namespace
    (the webhook): only the pod's own opt-out is left to check. Otherwise: the pod's
    ``sidecar.istio.io/inject`` label, else its annotation, wins when it says "false"; a
    namespace labelled ``istio-injection=disabled`` never injects; a namespace with
    ``istio-injection=enabled``, ``meshpilot.io/inject=enabled`` or ``istio.io/rev`` injects;
    otherwise only a pod that opts in (``sidecar.istio.io/inject: "true"``) is injected.
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    if STATUS in annotations or any(c.get("name") == PROXY_CONTAINER for c in spec.get("containers") or ()):
        return Decision(False, "already injected")
    if spec.get("hostNetwork"):
        return Decision(False, "hostNetwork pods share the node's network: never injected")
    pod_says = _flag(labels.get(INJECT)) if INJECT in labels else _flag(annotations.get(INJECT))
    if pod_says is False:
        return Decision(False, f"the pod sets {INJECT}: false")
    if namespace_labels is None:
        return Decision(True, "selected by the webhook's namespace or object selector")
    if _flag(namespace_labels.get(NS_LABEL)) is False:
        return Decision(False, f"the namespace is labelled {NS_LABEL}=disabled")
    if _flag(namespace_labels.get(NS_LABEL)) or _flag(namespace_labels.get(MESHPILOT_LABEL)):
        return Decision(True, "the namespace enables injection")
    if namespace_labels.get(REV_LABEL):
        return Decision(True, f"the namespace has {REV_LABEL}")
    if pod_says:
        return Decision(True, f"the pod sets {INJECT}: true")
    return Decision(False, "neither the namespace nor the pod enables injection")


# ---------------------------------------------------------------- annotations


def _ports(annotations: Mapping[str, str], key: str) -> list[int]:
    raw = annotations.get(key, "")
    out = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        if not part.isdigit() or not 0 < int(part) < 65536:
            raise InjectionError(f"metadata.annotations[{key}]: {part!r} is not a port")
        out.append(int(part))
    return out


def _ranges(annotations: Mapping[str, str], key: str, default: str = "") -> list[str]:
    raw = annotations.get(key, default)
    out = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        if part == "*":
            out.append("*")
            continue
        try:
            net = ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise InjectionError(f"metadata.annotations[{key}]: {part!r} is not a CIDR") from None
        if net.version == 4:  # the script programs IPv4 only
            out.append(str(net))
    return out


def _proxy_config(annotations: Mapping[str, str]) -> dict[str, Any]:
    """The pod's ``proxy.istio.io/config`` (a ProxyConfig in YAML); ``{}`` when it has none."""
    raw = annotations.get(PROXY_CONFIG)
    if not raw:
        return {}
    try:
        config = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise InjectionError(f"metadata.annotations[{PROXY_CONFIG}]: not YAML: {e}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise InjectionError(f"metadata.annotations[{PROXY_CONFIG}]: must be a ProxyConfig object")
    return config


def _hold_application(config: Mapping[str, Any]) -> bool:
    value = config.get("holdApplicationUntilProxyStarts", False)
    if not isinstance(value, bool):
        raise InjectionError(f"metadata.annotations[{PROXY_CONFIG}].holdApplicationUntilProxyStarts: must be a boolean")
    return value


#: What Go's strconv.ParseBool (Istio's reading of a boolean proxyMetadata value) accepts.
_TRUE, _FALSE = {"1", "t", "T", "TRUE", "true", "True"}, {"0", "f", "F", "FALSE", "false", "False"}


def _delta(config: Mapping[str, Any], default: bool) -> bool:
    metadata = config.get("proxyMetadata")
    if metadata is None:
        return default
    where = f"metadata.annotations[{PROXY_CONFIG}].proxyMetadata"
    if not isinstance(metadata, dict):
        raise InjectionError(f"{where}: must be a map of strings")
    value = metadata.get(DELTA_XDS)
    if value is None:
        return default
    if isinstance(value, bool):  # unquoted in the YAML: the intent is plain
        return value
    if str(value) in _TRUE:
        return True
    if str(value) in _FALSE:
        return False
    raise InjectionError(f"{where}.{DELTA_XDS}: {value!r} is not a boolean (\"true\" or \"false\")")


_QUANTITY_CHARS = set("0123456789.eEkKmMgGtTpPi")


def _resources(annotations: Mapping[str, str], defaults: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    out: dict[str, dict[str, str]] = {k: dict(v) for k, v in defaults.items()}
    for key, section, resource in ((PROXY_CPU, "requests", "cpu"), (PROXY_MEMORY, "requests", "memory"),
                                   (PROXY_CPU_LIMIT, "limits", "cpu"), (PROXY_MEMORY_LIMIT, "limits", "memory")):
        value = annotations.get(key)
        if value is None:
            continue
        value = value.strip()
        if not value or not set(value) <= _QUANTITY_CHARS or not value[0].isdigit():
            raise InjectionError(f"metadata.annotations[{key}]: {value!r} is not a quantity")
        out.setdefault(section, {})[resource] = value
    return {k: v for k, v in out.items() if v}


# ---------------------------------------------------------------- traffic capture


def iptables_script(
    *,
    exclude_inbound_ports: Sequence[int] = (),
    exclude_outbound_ports: Sequence[int] = (),
    include_outbound_ranges: Sequence[str] = ("*",),
    exclude_outbound_ranges: Sequence[str] = (),
    inbound_port: int = INBOUND_CAPTURE_PORT,
    outbound_port: int = OUTBOUND_CAPTURE_PORT,
    proxy_uid: int = PROXY_UID,
    iptables: str = "iptables",
) -> str:
    """The ``sh`` script that captures a pod's TCP traffic, as Istio's ``istio-iptables``
    programs it: inbound to ``inbound_port`` except the proxy's own and excluded ports;
    outbound to ``outbound_port`` except the proxy's own traffic (``proxy_uid``), loopback,
    excluded ports and ranges, and only for the included ranges (``*``: all).
    Arguments are numbers and CIDRs (checked), so the script quotes nothing."""
    ipt = f"{iptables} -t nat"
    lines = [
        "#!/bin/sh",
        "set -eu",
        f"{ipt} -N ISTIO_INBOUND",
        f"{ipt} -N ISTIO_IN_REDIRECT",
        f"{ipt} -N ISTIO_OUTPUT",
        f"{ipt} -N ISTIO_REDIRECT",
        f"{ipt} -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {int(inbound_port)}",
        f"{ipt} -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {int(outbound_port)}",
        # Inbound.
        f"{ipt} -A PREROUTING -p tcp -j ISTIO_INBOUND",
    ]
    for port in sorted({*PROXY_PORTS, *(int(p) for p in exclude_inbound_ports)}):
        lines.append(f"{ipt} -A ISTIO_INBOUND -p tcp --dport {port} -j RETURN")
    lines += [
        f"{ipt} -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        # Outbound.
        f"{ipt} -A OUTPUT -p tcp -j ISTIO_OUTPUT",
        # The proxy's own connections (to upstreams, to meshpilot) are never captured again.
        f"{ipt} -A ISTIO_OUTPUT -m owner --uid-owner {int(proxy_uid)} -j RETURN",
        f"{ipt} -A ISTIO_OUTPUT -m owner --gid-owner {int(proxy_uid)} -j RETURN",
        # The app talking to itself over loopback stays local.
        f"{ipt} -A ISTIO_OUTPUT -o lo -j RETURN",
        f"{ipt} -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
    ]
    for port in sorted({int(p) for p in exclude_outbound_ports}):
        lines.append(f"{ipt} -A ISTIO_OUTPUT -p tcp --dport {port} -j RETURN")
    for cidr in exclude_outbound_ranges:
        lines.append(f"{ipt} -A ISTIO_OUTPUT -d {ipaddress.ip_network(cidr, strict=False)} -j RETURN")
    if "*" in include_outbound_ranges:
        lines.append(f"{ipt} -A ISTIO_OUTPUT -j ISTIO_REDIRECT")
    else:
        for cidr in include_outbound_ranges:
            lines.append(f"{ipt} -A ISTIO_OUTPUT -d {ipaddress.ip_network(cidr, strict=False)} -j ISTIO_REDIRECT")
    return "\n".join(lines) + "\n"


def pod_iptables_script(annotations: Mapping[str, str]) -> str:
    """:func:`iptables_script` for a pod's ``traffic.sidecar.istio.io/*`` annotations."""
    return iptables_script(
        exclude_inbound_ports=_ports(annotations, EXCLUDE_INBOUND),
        exclude_outbound_ports=_ports(annotations, EXCLUDE_OUTBOUND),
        include_outbound_ranges=_ranges(annotations, INCLUDE_OUTBOUND_RANGES, "*"),
        exclude_outbound_ranges=_ranges(annotations, EXCLUDE_OUTBOUND_RANGES),
    )


# ---------------------------------------------------------------- the injected pod


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _bootstrap_container(config: InjectConfig, delta: bool) -> dict[str, Any]:
    argv = [
        "meshpilot", "bootstrap",
        "--xds-tls-address", config.xds_address,
        "--root-env", ROOT_ENV,
        "--token-file", TOKEN_FILE,
        "--proxy-ip", "$(POD_IP)", "--namespace", "$(POD_NAMESPACE)", "--pod", "$(POD_NAME)",
        "--service-account", "$(SERVICE_ACCOUNT)",
        "--labels-file", f"{PODINFO_DIR}/labels",
        # Admin on loopback only; the kubelet probes the health listener instead.
        "--admin-address", "127.0.0.1", "--admin-port", str(ADMIN_PORT),
        "--health-port", str(HEALTH_PORT),
        "--stats-port", str(STATS_PORT),
        "--no-bind-source",
        # The istio-init rules send the pod's traffic to 15001/15006: Istio's virtual listeners.
        "--capture",
        *(["--delta"] if delta else []),
        "--output", BOOTSTRAP_FILE,
    ]
    return {
        "name": BOOTSTRAP_CONTAINER,
        "image": config.init_image,
        "command": argv[:1],
        "args": argv[1:],
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            _field_env("POD_IP", "status.podIP"),
            _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            {"name": ROOT_ENV, "value": config.root_pem.decode()},
        ],
        "volumeMounts": [
            {"name": ENVOY_VOLUME, "mountPath": ENVOY_DIR},
            {"name": PODINFO_VOLUME, "mountPath": PODINFO_DIR, "readOnly": True},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
        ],
        "securityContext": {"runAsUser": PROXY_UID, "runAsGroup": PROXY_UID, "runAsNonRoot": True,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }


def _iptables_container(config: InjectConfig, annotations: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": IPTABLES_CONTAINER,
        "image": config.init_image,
        "command": ["sh", "-c", pod_iptables_script(annotations)],
        # Root with NET_ADMIN for the pod's network namespace only, as istio-init.
        "securityContext": {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}},
    }


#: postStart of a held application: the app's containers start only once this returns, and
#: the Envoy image has bash but no curl: ask the health listener over /dev/tcp.
_WAIT_READY = (
    "for i in $(seq 1 600); do "
    f"if exec 3<>/dev/tcp/127.0.0.1/{HEALTH_PORT}; then "
    "printf 'GET /healthz/ready HTTP/1.0\\r\\n\\r\\n' >&3; "
    "if head -n 1 <&3 | grep -q ' 200'; then exit 0; fi; exec 3<&-; fi; sleep 0.1; done; exit 1"
)


def _proxy_container(config: InjectConfig, annotations: Mapping[str, str], hold: bool) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": PROXY_CONTAINER,
        "image": config.proxy_image,
        "args": ["-c", BOOTSTRAP_FILE, "--log-level", "warning"],
        "ports": [{"name": "http-health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
                  {"name": "http-envoy-prom", "containerPort": STATS_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT},
                           "periodSeconds": 2, "failureThreshold": 30},
        "resources": _resources(annotations, config.default_resources),
        "volumeMounts": [{"name": ENVOY_VOLUME, "mountPath": ENVOY_DIR, "readOnly": True}],
        "securityContext": {"runAsUser": PROXY_UID, "runAsGroup": PROXY_UID, "runAsNonRoot": True,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if hold:
        container["lifecycle"] = {"postStart": {"exec": {"command": ["bash", "-c", _WAIT_READY]}}}
    return container


def _volumes(config: InjectConfig) -> list[dict[str, Any]]:
    return [
        {"name": ENVOY_VOLUME, "emptyDir": {"medium": "Memory"}},
        {"name": PODINFO_VOLUME, "downwardAPI": {"items": [{"path": "labels", "fieldRef": {
            "fieldPath": "metadata.labels"}}]}},
        {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE, "expirationSeconds": config.token_seconds, "path": "istio-token"}}]}},
    ]


def inject_pod(pod: Mapping[str, Any], config: InjectConfig) -> dict[str, Any]:
    """A copy of ``pod`` (a Pod or a pod template: ``metadata`` + ``spec``) with the sidecar.
    Does not decide (see :func:`decide`); a pod already injected comes back unchanged."""
    out = copy.deepcopy(dict(pod))
    meta = out.setdefault("metadata", {})
    spec = out.setdefault("spec", {})
    annotations = dict(meta.get("annotations") or {})
    if STATUS in annotations or any(c.get("name") == PROXY_CONTAINER for c in spec.get("containers") or ()):
        return out
    proxy_config = _proxy_config(annotations)
    hold, delta = _hold_application(proxy_config), _delta(proxy_config, config.delta)
    iptables = _iptables_container(config, annotations)
    proxy = _proxy_container(config, annotations, hold)
    volumes = _volumes(config)
    spec["initContainers"] = [iptables, _bootstrap_container(config, delta), *(spec.get("initContainers") or [])]
    containers = list(spec.get("containers") or [])
    # Held: the kubelet starts containers in order and runs each postStart before the next.
    spec["containers"] = [proxy, *containers] if hold else [*containers, proxy]
    spec["volumes"] = [*(spec.get("volumes") or []), *volumes]
    annotations[STATUS] = json.dumps({
        "initContainers": [IPTABLES_CONTAINER, BOOTSTRAP_CONTAINER], "containers": [PROXY_CONTAINER],
        "volumes": [v["name"] for v in volumes], "proxyImage": config.proxy_image,
    }, separators=(",", ":"))
    if not any(k.startswith("prometheus.io/") for k in annotations):
        annotations.update(PROMETHEUS_ANNOTATIONS)
    meta["annotations"] = annotations
    # As istiod: the app's "kubectl logs" and "exec" default to the app, not the proxy.
    if containers and "kubectl.kubernetes.io/default-container" not in annotations:
        annotations["kubectl.kubernetes.io/default-container"] = containers[0].get("name", "")
    return out


# ---------------------------------------------------------------- the webhook


def json_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """RFC 6902 operations taking ``before`` to ``after`` for what injection touches
    (whole lists and the annotation map: simple, and exact whatever was there)."""
    ops: list[dict[str, Any]] = []
    for section, keys in (("metadata", ("annotations",)), ("spec", ("initContainers", "containers", "volumes"))):
        old, new = before.get(section) or {}, after.get(section) or {}
        for key in keys:
            if new.get(key) != old.get(key):
                ops.append({"op": "replace" if key in old else "add", "path": f"/{section}/{key}",
                            "value": new.get(key)})
    return ops


def review(body: Any, config: InjectConfig) -> dict[str, Any]:
    """The AdmissionReview answer for a Pod CREATE: a JSONPatch that injects it, or none.

    The webhook's selectors chose the namespace (or the pod's opt-in label); what is left
    here is the pod's own annotation opt-out, and the pod already being injected."""
    request = body.get("request") if isinstance(body, dict) else None
    if not isinstance(request, dict):
        raise ValueError("not an AdmissionReview: no request")
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
    pod = request.get("object")
    kind = (request.get("kind") or {}).get("kind")
    if request.get("operation") == "CREATE" and kind == "Pod" and isinstance(pod, dict):
        if not (pod.get("metadata") or {}).get("namespace") and request.get("namespace"):
            pod = {**pod, "metadata": {**(pod.get("metadata") or {}), "namespace": request["namespace"]}}
        if decide(pod, None).inject:
            try:
                patch = json_patch(pod, inject_pod(pod, config))
            except InjectionError as e:
                response["allowed"] = False
                response["status"] = {"code": 400, "reason": "Invalid", "message": f"sidecar injection: {e}"}
                patch = []
            if patch:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


# ---------------------------------------------------------------- kube-inject


#: Kinds whose pod template is at ``spec.template`` (CronJob's is deeper).
_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}


def inject_object(obj: Any, config: InjectConfig, namespace_labels: Mapping[str, str] | None = None) -> Any:
    """``obj`` with its pod (template) injected when :func:`decide` says so (kube-inject
    injects unless the pod opts out: the user asked for it by running it)."""
    if not isinstance(obj, dict):
        return obj
    kind = obj.get("kind")
    if kind == "List":
        return {**obj, "items": [inject_object(i, config, namespace_labels) for i in obj.get("items") or []]}
    if kind == "Pod":
        return inject_pod(obj, config) if decide(obj, namespace_labels).inject else obj
    if kind == "CronJob":
        job = ((obj.get("spec") or {}).get("jobTemplate") or {})
        template = (job.get("spec") or {}).get("template")
        if isinstance(template, dict) and decide(template, namespace_labels).inject:
            out = copy.deepcopy(obj)
            out["spec"]["jobTemplate"]["spec"]["template"] = inject_pod(template, config)
            return out
        return obj
    if kind in _TEMPLATE_KINDS:
        template = (obj.get("spec") or {}).get("template")
        if isinstance(template, dict) and decide(template, namespace_labels).inject:
            out = copy.deepcopy(obj)
            out["spec"]["template"] = inject_pod(template, config)
            return out
    return obj
