"""Typed models of the Kubernetes and Istio resources meshpilot reads.

Field names follow the Kubernetes and Istio APIs (camelCase) so a manifest that
`kubectl apply` accepts parses here unchanged. Models are frozen: a World snapshot
shares unchanged objects between versions, and translators memoize on identity.

Fields of the Istio API that are not modelled yet are kept (``extra="allow"``) so
valid Istio YAML is never rejected for them; the loader reports them as ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class _Strict(BaseModel):
    """For Kubernetes core parts we only read: unknown fields are simply ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class ObjectMeta(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: str = "default"
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class ResourceKey(NamedTuple):
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class Resource(_Strict):
    """A top-level manifest. ``source`` records where it came from (file path) for errors."""

    KIND: ClassVar[str] = ""
    API_VERSIONS: ClassVar[tuple[str, ...]] = ()

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    source: str = Field(default="", exclude=True)

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)


# ---------------------------------------------------------------- Kubernetes core


class ServicePort(_Strict):
    name: str = ""
    port: Annotated[int, Field(ge=1, le=65535)]
    targetPort: int | str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    appProtocol: str | None = None


class ServiceSpec(_Strict):
    selector: dict[str, str] | None = None
    ports: list[ServicePort] = []
    clusterIP: str | None = None
    type: str = "ClusterIP"


class Service(Resource):
    KIND = "Service"
    API_VERSIONS = ("v1",)
    spec: ServiceSpec = ServiceSpec()


class EndpointConditions(_Strict):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class ObjectReference(_Strict):
    kind: str = ""
    name: str = ""
    namespace: str | None = None


class SliceEndpoint(_Strict):
    addresses: list[str] = Field(min_length=1)
    conditions: EndpointConditions = EndpointConditions()
    targetRef: ObjectReference | None = None
    nodeName: str | None = None
    zone: str | None = None


class SlicePort(_Strict):
    name: str = ""
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    protocol: str = "TCP"
    appProtocol: str | None = None


class EndpointSlice(Resource):
    KIND = "EndpointSlice"
    API_VERSIONS = ("discovery.k8s.io/v1",)
    addressType: Literal["IPv4", "IPv6", "FQDN"] = "IPv4"
    endpoints: list[SliceEndpoint] = []
    ports: list[SlicePort] = []

    @property
    def service_name(self) -> str | None:
        return self.metadata.labels.get("kubernetes.io/service-name")


class ContainerPort(_Strict):
    containerPort: int
    name: str | None = None
    protocol: str = "TCP"


class Container(_Strict):
    name: str = ""
    ports: list[ContainerPort] = []


class PodSpec(_Strict):
    serviceAccountName: str = "default"
    containers: list[Container] = []


class PodIP(_Strict):
    ip: str


class PodStatus(_Strict):
    podIP: str | None = None
    podIPs: list[PodIP] = []
    phase: str | None = None


class Pod(Resource):
    KIND = "Pod"
    API_VERSIONS = ("v1",)
    spec: PodSpec = PodSpec()
    status: PodStatus = PodStatus()

    @property
    def ips(self) -> list[str]:
        ips = [p.ip for p in self.status.podIPs]
        if self.status.podIP and self.status.podIP not in ips:
            ips.insert(0, self.status.podIP)
        return ips


# ---------------------------------------------------------------- Istio networking

_ISTIO_NET = ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3")


class WorkloadEntrySpec(_Model):
    address: str = ""
    ports: dict[str, int] = {}
    labels: dict[str, str] = {}
    network: str = ""
    locality: str = ""
    weight: int | None = None
    serviceAccount: str = ""


class WorkloadEntry(Resource):
    KIND = "WorkloadEntry"
    API_VERSIONS = _ISTIO_NET
    spec: WorkloadEntrySpec


class SEPort(_Model):
    number: Annotated[int, Field(ge=1, le=65535)]
    protocol: str = ""
    name: str = ""
    targetPort: int | None = None


class WorkloadSelector(_Model):
    labels: dict[str, str] = {}


class ServiceEntrySpec(_Model):
    hosts: list[str] = Field(min_length=1)
    addresses: list[str] = []
    ports: list[SEPort] = []
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"] = "NONE"
    endpoints: list[WorkloadEntrySpec] = []
    workloadSelector: WorkloadSelector | None = None
    exportTo: list[str] = []


class ServiceEntry(Resource):
    KIND = "ServiceEntry"
    API_VERSIONS = _ISTIO_NET
    spec: ServiceEntrySpec


class StringMatch(_Model):
    """Istio StringMatch: exactly one of exact, prefix, regex."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> StringMatch:
        set_ = [k for k in ("exact", "prefix", "regex") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"exactly one of exact, prefix, regex must be set (got {set_ or 'none'})")
        return self


class HTTPMatchRequest(_Model):
    name: str = ""
    uri: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch] = {}
    queryParams: dict[str, StringMatch] = {}
    ignoreUriCase: bool = False
    port: int | None = None
    sourceLabels: dict[str, str] = {}
    sourceNamespace: str | None = None


class PortSelector(_Model):
    number: Annotated[int, Field(ge=1, le=65535)]


class Destination(_Model):
    host: Annotated[str, Field(min_length=1)]
    subset: str = ""
    port: PortSelector | None = None


class HTTPRouteDestination(_Model):
    destination: Destination
    weight: Annotated[int, Field(ge=0, le=100)] | None = None


class HTTPRoute(_Model):
    name: str = ""
    match: list[HTTPMatchRequest] = []
    route: list[HTTPRouteDestination] = []

    @field_validator("route")
    @classmethod
    def _weights(cls, route: list[HTTPRouteDestination]) -> list[HTTPRouteDestination]:
        # Istio: with more than one destination, weights must be given and add up to 100.
        if len(route) > 1:
            total = sum(d.weight or 0 for d in route)
            if total != 100:
                raise ValueError(f"weights of the destinations must add up to 100, they add up to {total}")
        return route


class VirtualServiceSpec(_Model):
    hosts: list[str] = Field(min_length=1)
    gateways: list[str] = []
    http: list[HTTPRoute] = []
    exportTo: list[str] = []


class VirtualService(Resource):
    KIND = "VirtualService"
    API_VERSIONS = _ISTIO_NET
    spec: VirtualServiceSpec


class Subset(_Model):
    name: Annotated[str, Field(min_length=1)]
    labels: dict[str, str] = {}
    trafficPolicy: dict[str, Any] | None = None


class DestinationRuleSpec(_Model):
    host: Annotated[str, Field(min_length=1)]
    trafficPolicy: dict[str, Any] | None = None
    subsets: list[Subset] = []
    exportTo: list[str] = []

    @field_validator("subsets")
    @classmethod
    def _unique_subsets(cls, subsets: list[Subset]) -> list[Subset]:
        seen: set[str] = set()
        for s in subsets:
            if s.name in seen:
                raise ValueError(f"duplicate subset name {s.name!r}")
            seen.add(s.name)
        return subsets


class DestinationRule(Resource):
    KIND = "DestinationRule"
    API_VERSIONS = _ISTIO_NET
    spec: DestinationRuleSpec


#: kind -> model class, for the loaders.
KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls
    for cls in (Service, EndpointSlice, Pod, ServiceEntry, WorkloadEntry, VirtualService, DestinationRule)
}


def parse_resource(doc: dict[str, Any], source: str = "") -> Resource:
    """Validate one manifest into its model class, chosen by ``kind``.

    Raises KeyError for an unknown kind and pydantic.ValidationError for a bad document.
    """
    cls = KINDS[doc["kind"]]
    return cls.model_validate({**doc, "source": source})
