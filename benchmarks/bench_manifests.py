"""The benchmark mesh: N services written the way a user would write them, parsed by the real parser.

Service ``svc-<i>`` in namespace ``default``: a Kubernetes Service (port 80, name http,
targetPort 8080), two Pods (``version: v1`` and ``v2``), a VirtualService (a ``/v2``
prefix route to subset v2, then an 80/20 split over v1/v2) and a DestinationRule with
the two subsets. Pod addresses are 127.1.x.y (v1) and 127.2.x.y (v2): 127/8 shapes
that nothing ever dials here. Benchmark clients (sidecars) use 127.3.x.y.
"""

from __future__ import annotations

from collections.abc import Mapping

from translators.model import Resource, ResourceKey
from xds_server.sources.parse import parse_text

NAMESPACE = "default"


def addr(prefix: int, i: int) -> str:
    """127.<prefix>.<i/256>.<i%256>, skipping .0 so no address looks like a network."""
    i += 1
    return f"127.{prefix}.{i // 256}.{i % 256}"


def name(i: int) -> str:
    return f"svc-{i}"


def host(i: int) -> str:
    return f"{name(i)}.{NAMESPACE}.svc.cluster.local"


def service_yaml(i: int) -> str:
    n = name(i)
    return f"""\
apiVersion: v1
kind: Service
metadata:
  name: {n}
  namespace: {NAMESPACE}
spec:
  selector:
    app: {n}
  ports:
    - name: http
      port: 80
      targetPort: 8080
"""


def pod_yaml(i: int, version: str, ip: str) -> str:
    n = name(i)
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {n}-{version}
  namespace: {NAMESPACE}
  labels:
    app: {n}
    version: {version}
spec:
  serviceAccountName: {n}
  containers:
    - name: app
      ports:
        - name: http
          containerPort: 8080
status:
  phase: Running
  podIP: {ip}
"""


def virtual_service_yaml(i: int, v1_weight: int = 80) -> str:
    n = name(i)
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {n}
  namespace: {NAMESPACE}
spec:
  hosts:
    - {n}
  http:
    - name: v2-by-path
      match:
        - uri:
            prefix: /v2
      route:
        - destination:
            host: {n}
            subset: v2
    - name: split
      route:
        - destination:
            host: {n}
            subset: v1
          weight: {v1_weight}
        - destination:
            host: {n}
            subset: v2
          weight: {100 - v1_weight}
"""


def destination_rule_yaml(i: int, lb: str = "LEAST_REQUEST") -> str:
    n = name(i)
    return f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {n}
  namespace: {NAMESPACE}
spec:
  host: {n}
  trafficPolicy:
    loadBalancer:
      simple: {lb}
  subsets:
    - name: v1
      labels:
        version: v1
    - name: v2
      labels:
        version: v2
"""


def service_file(i: int) -> str:
    """Everything for one service, as one multi-document file."""
    return "---\n".join(
        [
            service_yaml(i),
            pod_yaml(i, "v1", addr(1, i)),
            pod_yaml(i, "v2", addr(2, i)),
            virtual_service_yaml(i),
            destination_rule_yaml(i),
        ]
    )


def sidecar_yaml(window: int, services: list[int]) -> str:
    """A Sidecar for the proxies labelled ``scope: w<window>``, importing ``services``."""
    hosts = "".join(f"\n        - {NAMESPACE}/{host(i)}" for i in services)
    return f"""\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: scope-{window}
  namespace: {NAMESPACE}
spec:
  workloadSelector:
    labels:
      scope: w{window}
  egress:
    - hosts:{hosts}
"""


def parse(text: str, file: str) -> dict[ResourceKey, Resource]:
    """Parse through the real parser; any error or warning fails the benchmark loudly."""
    parsed = parse_text(text, file, NAMESPACE)
    problems = list(parsed.errors) + [e for d in parsed.documents for e in d.errors]
    if problems:
        raise ValueError(f"{file}: the benchmark manifests do not parse cleanly: {problems[:3]}")
    out: dict[ResourceKey, Resource] = {}
    for doc in parsed.documents:
        assert doc.resource is not None
        out[doc.resource.key] = doc.resource
    return out


def generate(services: int) -> dict[ResourceKey, Resource]:
    resources: dict[ResourceKey, Resource] = {}
    for i in range(services):
        resources.update(parse(service_file(i), f"mesh/{name(i)}.yaml"))
    return resources


def replaced(resources: Mapping[ResourceKey, Resource], text: str, file: str) -> dict[ResourceKey, Resource]:
    """The complete new resource set with the manifest(s) in ``text`` replacing their keys."""
    out = dict(resources)
    out.update(parse(text, file))
    return out
